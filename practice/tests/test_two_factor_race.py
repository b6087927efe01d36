"""Parallel wrong second-factor codes are checked one at a time: the
device's failure count and throttle, and the session's count of wrong codes, are read and
written under a row lock, so a burst of 24 parallel guesses checks no more codes than a client
sending them one after the other would, and ends the session where that client's would end."""

import threading

import pytest
import time_machine
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp.oath import TOTP

from audit.models import AuditEvent, EventType
from config.testing import PASSWORD, make_patient, totp_code, totp_device, totp_next_code
from practice.models import UserSession
from practice.twofactor import second_factor_check

ATTEMPTS = 24


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_parallel_wrong_codes_checks_no_more_than_a_sequential_client(roles):
    user = User.objects.create_user("race.secretary")
    device = totp_device(user)
    barrier = threading.Barrier(ATTEMPTS)
    outcomes: list[str] = []

    def guess(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            ok, locked_until = second_factor_check(user, f"{n:06d}")
            outcomes.append("accepted" if ok else ("throttled" if locked_until else "checked"))
        finally:
            connection.close()

    # The clock stands still during the burst (whatever the machine's speed): a sequential
    # client, throttled 1 s after its first wrong code (then 2, 4...), checks one code in it.
    with time_machine.travel(timezone.now(), tick=False):
        threads = [threading.Thread(target=guess, args=(n,)) for n in range(ATTEMPTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    device.refresh_from_db()
    checked = outcomes.count("checked")
    assert len(outcomes) == ATTEMPTS
    assert "accepted" not in outcomes
    # Every code checked was counted: no failure lost to a race.
    assert device.throttling_failure_count == checked
    assert checked <= 1, outcomes


def _wrong_code(device) -> str:
    """Six digits that no clock drift the device tolerates would accept."""
    valid = set()
    for drift in range(-3, 4):
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift + drift)
        valid.add(f"{totp.token():06d}")
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


def _parallel_posts(cookies, code: str, count: int) -> list:
    """``count`` requests of one browser (one session cookie) posting ``code`` at once."""
    barrier = threading.Barrier(count)
    answers: list = []
    lock = threading.Lock()

    def send() -> None:
        browser = Client()
        browser.cookies = cookies.__class__(cookies)
        try:
            barrier.wait(timeout=30)
            response = browser.post("/accounts/two-factor/", {"code": code})
            answer = (response.status_code, response.get("Location", "").split("?", 1)[0])
        except Exception as exc:
            answer = ("error", repr(exc))
        finally:
            connection.close()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


@pytest.mark.django_db(transaction=True)
def test_parallel_wrong_codes_in_one_session_stop_at_the_session_limit_and_log_it_out(roles, settings):
    """The password known, one session sends 24 wrong codes at once. A client sending them one
    by one has TWO_FACTOR_MAX_FAILURES checked and is then logged out: so is this one. (Before:
    each request loaded the session's failure count, 0, and saved its own: 24 codes checked,
    the count at 1, the session still logged in.)"""
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # no back-off between codes: only the session's count limits
    limit = settings.TWO_FACTOR_MAX_FAILURES
    user = User.objects.create_user("race.session", password=PASSWORD)
    device = totp_device(user)
    browser = Client()
    assert browser.post("/accounts/login/", {"username": user.username, "password": PASSWORD}).status_code == 302
    session_key = browser.cookies[django_settings.SESSION_COOKIE_NAME].value

    answers = _parallel_posts(browser.cookies, _wrong_code(device), ATTEMPTS)

    device.refresh_from_db()
    failed = AuditEvent.objects.filter(event_type=EventType.OTP_FAILED, actor_user_id=user.pk)
    # Codes checked: what the device counted, and what the trail says, attempt by attempt.
    assert device.throttling_failure_count == limit, answers
    assert sorted(e.extra["attempt"] for e in failed) == list(range(1, limit + 1))
    # The codes checked before the limit answer "not valid" (or 400, Django's answer when the
    # session a page was for ended while it was being rendered); every other request is sent
    # to the login page. Never a 500.
    assert set(answers) <= {(200, ""), (400, ""), (302, "/accounts/login/")}, answers
    assert answers.count((200, "")) + answers.count((400, "")) == limit - 1, answers
    # Logged out, as a sequential client would be: the session is gone, the right code is useless.
    assert not UserSession.objects.filter(session_key=session_key).exists()
    assert AuditEvent.objects.filter(event_type=EventType.LOGOUT, actor_user_id=user.pk).exists()
    again = browser.post("/accounts/two-factor/", {"code": totp_code(device)})
    assert again.status_code == 302
    assert again["Location"].startswith("/accounts/login/")
    assert not AuditEvent.objects.filter(event_type=EventType.OTP_VERIFIED, actor_user_id=user.pk).exists()


def test_a_right_code_starts_the_session_count_again_at_login_and_on_the_step_up_page(secretary, settings):
    """The count read from the trail keeps the rule the session's own count had: wrong codes
    since the session's last right one (at login, or on the step-up page)."""
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.READ_ALLOWANCES = {**settings.READ_ALLOWANCES, "Secretary": (0, 0)}  # every patient asks
    limit = settings.TWO_FACTOR_MAX_FAILURES
    device = totp_device(secretary)
    browser = Client()
    assert browser.post("/accounts/login/", {"username": secretary.username, "password": PASSWORD}).status_code == 302
    for _attempt in range(limit - 1):
        assert browser.post("/accounts/two-factor/", {"code": _wrong_code(device)}).status_code == 200
    assert browser.post("/accounts/two-factor/", {"code": totp_next_code(secretary)}).status_code == 302

    reason = "La patiente appelle pour sa facture de mars"
    for patient in (make_patient(last_name="Recount", nir=""), make_patient(last_name="Recount", nir="")):
        assert browser.get(patient.get_absolute_url()).status_code == 403  # the step-up page
        url = reverse("patients:reason", args=[patient.pk])
        for _attempt in range(limit - 1):
            assert browser.post(url, {"reason": reason, "code": _wrong_code(device)}).status_code == 400
        assert browser.post(url, {"reason": reason, "code": totp_next_code(secretary)}).status_code == 302
        assert browser.get(patient.get_absolute_url()).status_code == 200

    failed = AuditEvent.objects.filter(event_type=EventType.OTP_FAILED, actor_user_id=secretary.pk).order_by("id")
    assert [e.extra["attempt"] for e in failed] == list(range(1, limit)) * 3
    assert AuditEvent.objects.filter(event_type=EventType.OTP_VERIFIED, actor_user_id=secretary.pk).count() == 3
    assert not AuditEvent.objects.filter(event_type=EventType.LOGOUT, actor_user_id=secretary.pk).exists()
