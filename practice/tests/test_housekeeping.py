"""Nightly housekeeping: expired sessions and old login records go, live ones and lockouts
in force stay."""

import datetime

import pytest
from axes.models import AccessAttempt, AccessLog
from django.test import Client
from django.utils import timezone

from audit.context import current
from config.testing import PASSWORD, client_for
from practice.models import UserSession
from practice.sessions import SessionStore
from practice.tasks import lockouts_purge, sessions_purge

ATTACKER = "203.0.113.66"


def ago(**delta) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**delta)


def attempt(username: str, ip: str, failures: int, when: datetime.datetime, agent: str = "curl") -> AccessAttempt:
    row = AccessAttempt.objects.create(
        username=username,
        ip_address=ip,
        user_agent=agent,
        http_accept="*/*",
        path_info="/accounts/login/",
        get_data="",
        post_data="",
        failures_since_start=failures,
    )
    AccessAttempt.objects.filter(pk=row.pk).update(attempt_time=when)
    return row


def login_log(username: str, when: datetime.datetime) -> AccessLog:
    row = AccessLog.objects.create(username=username, ip_address="198.51.100.7", user_agent="firefox", http_accept="")
    AccessLog.objects.filter(pk=row.pk).update(attempt_time=when)
    return row


def lock(username: str) -> None:
    client = Client()
    statuses = [
        client.post("/accounts/login/", {"username": username, "password": f"wrong {n}"}, REMOTE_ADDR=ATTACKER)
        for n in range(5)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 200, 429]


def is_locked(username: str) -> bool:
    """The right password from the address that locked the username (a lock is by username and
    address together: practice/lockout.py)."""
    response = Client().post("/accounts/login/", {"username": username, "password": PASSWORD}, REMOTE_ADDR=ATTACKER)
    return response.status_code == 429


def test_it_purges_expired_sessions_and_keeps_live_ones(secretary, practitioner):
    live = client_for(secretary)
    expired = client_for(practitioner)
    UserSession.objects.filter(session_key=expired.session.session_key).update(expire_date=ago(minutes=1))
    anonymous = SessionStore()
    anonymous["language"] = "fr"
    anonymous.create()
    UserSession.objects.filter(session_key=anonymous.session_key).update(expire_date=ago(days=3))

    assert sessions_purge() == 2

    assert list(UserSession.objects.values_list("user_id", flat=True)) == [secretary.pk]
    assert live.get("/").url == "/agenda/"  # still logged in: home sends the front desk to the day


def test_it_purges_login_records_past_the_retention_and_keeps_recent_ones(secretary, settings):
    settings.LOCKOUT_RECORDS_RETENTION_DAYS = 30
    old = attempt("someone", "198.51.100.1", 2, ago(days=31))
    recent = attempt("someone.else", "198.51.100.2", 2, ago(days=29))
    old_login, recent_login = login_log("sophie", ago(days=45)), login_log("sophie", ago(days=2))

    assert lockouts_purge() == {"attempts": 1, "logins": 1, "failures": 0}

    assert list(AccessAttempt.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(AccessLog.objects.values_list("pk", flat=True)) == [recent_login.pk]
    assert not AccessAttempt.objects.filter(pk=old.pk).exists()
    assert not AccessLog.objects.filter(pk=old_login.pk).exists()


def test_it_keeps_the_attempts_of_a_lockout_in_force_whatever_the_retention(secretary, settings):
    settings.LOCKOUT_RECORDS_RETENTION_DAYS = 0
    lock(secretary.username)
    stale = attempt("someone", "198.51.100.1", 2, ago(minutes=20))  # past the 15-minute cool-off
    locking = set(AccessAttempt.objects.exclude(pk=stale.pk).values_list("pk", flat=True))
    assert locking

    assert lockouts_purge()["attempts"] == 1

    assert set(AccessAttempt.objects.values_list("pk", flat=True)) == locking
    assert is_locked(secretary.username)


def test_without_a_cool_off_it_keeps_every_attempt_of_a_locked_username_or_address(db, settings):
    settings.AXES_COOLOFF_TIME = None  # locked until an admin lifts it
    settings.LOCKOUT_RECORDS_RETENTION_DAYS = 30
    locked_user = [
        attempt("sophie", "198.51.100.1", 3, ago(days=40)),
        attempt("sophie", "198.51.100.2", 2, ago(days=40)),
    ]
    locked_ip = [attempt("a", ATTACKER, 3, ago(days=40)), attempt("b", ATTACKER, 2, ago(days=40), agent="wget")]
    forgotten = attempt("dr.martin", "198.51.100.3", 2, ago(days=40))

    assert lockouts_purge()["attempts"] == 1

    assert not AccessAttempt.objects.filter(pk=forgotten.pk).exists()
    assert AccessAttempt.objects.count() == len(locked_user) + len(locked_ip)


@pytest.mark.parametrize("task", [sessions_purge, lockouts_purge])
def test_it_runs_as_an_audited_system_job(task, db):
    seen = []
    original = task.run

    def spy(*args, **kwargs):
        seen.append(current().current_actor().username)
        return original(*args, **kwargs)

    task.run = spy
    try:
        task.apply()
    finally:
        task.run = original
    assert seen == [f"system:{task.name.rsplit('.', 1)[-1]}"]
