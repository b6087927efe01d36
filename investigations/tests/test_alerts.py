"""Security alert mails: practice admins hear about lockouts and the like, in batches, and the
mail never holds patient data."""

import datetime
import threading
from zoneinfo import ZoneInfo

import pytest
from celery.contrib.testing.worker import start_worker
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from kombu.exceptions import OperationalError

from audit.context import Actor
from audit.models import AlertCursor, AuditEvent, EventType
from audit.services import audit_event_write
from config.testing import make_patient
from investigations import alerts
from investigations.tasks import security_alerts_send
from practice.roles import PRACTICE_ADMIN

NOW = datetime.timedelta(0)
ATTACKER = "203.0.113.66"


@pytest.fixture
def admins(practice_admin, settings):
    """Who should be mailed: a practice admin with an address, and ADMINS. Not mailed: an
    admin without an address, an inactive one, and a secretary."""
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    User.objects.create_user("no.mail.admin").groups.add(Group.objects.get(name=PRACTICE_ADMIN))
    gone = User.objects.create_user("gone.admin", email="gone@clinic.example", is_active=False)
    gone.groups.add(Group.objects.get(name=PRACTICE_ADMIN))
    User.objects.create_user("sophie", email="sophie@clinic.example")
    settings.ADMINS = [("Ops", "ops@it.example"), ("Alice again", "ALICE@clinic.example")]
    return ["alice@clinic.example", "ops@it.example"]


def lockout(username: str = "sophie", ip: str = ATTACKER) -> AuditEvent:
    """A lockout as audit.signals writes it (the actor is the anonymous login page)."""
    return audit_event_write(event_type=EventType.LOCKOUT, extra={"username": username, "ip": ip})


def test_it_mails_a_burst_of_a_hundred_lockouts_once_with_all_of_them(admins, mailoutbox):
    events = [lockout(f"user{n:03}", f"198.51.100.{n}") for n in range(100)]

    assert alerts.security_alerts_send(settle=NOW) == 100

    [mail] = mailoutbox
    assert mail.to == admins
    assert mail.subject == "[Cabinet] Security alert: 100 events (Locked out × 100)"
    lines = [line for line in mail.body.splitlines() if "Locked out" in line]
    assert len(lines) == 100
    for event, line in zip(events, lines, strict=True):
        assert event.extra["username"] in line
        assert f"IP: {event.extra['ip']}" in line
        assert line.endswith(f"/admin/audit/auditevent/{event.pk}/change/")
    assert AlertCursor.objects.get().last_event_id == events[-1].pk


def test_it_sends_nothing_when_nothing_happened_since_and_mails_the_next_event_alone(admins, mailoutbox):
    lockout()
    alerts.security_alerts_send(settle=NOW)
    mailoutbox.clear()

    assert alerts.security_alerts_send(settle=NOW) == 0
    assert mailoutbox == []

    later = lockout("dr.martin")
    assert alerts.security_alerts_send(settle=NOW) == 1
    [mail] = mailoutbox
    assert "dr.martin" in mail.body
    assert "sophie" not in mail.body
    assert f"/admin/audit/auditevent/{later.pk}/change/" in mail.body


def test_it_mails_only_security_events(admins, mailoutbox, practitioner):
    audit_event_write(event_type=EventType.LOGIN, actor=Actor.for_user(practitioner))
    audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": "x"})
    audit_event_write(event_type=EventType.OTP_FAILED, actor=Actor.for_user(practitioner))
    assert alerts.security_alerts_send(settle=NOW) == 0

    for event_type in sorted(alerts.ALERT_EVENT_TYPES):
        audit_event_write(event_type=event_type, actor=Actor.for_user(practitioner))
    assert alerts.security_alerts_send(settle=NOW) == len(alerts.ALERT_EVENT_TYPES)
    [mail] = mailoutbox
    for event_type in alerts.ALERT_EVENT_TYPES:
        assert f"{EventType(event_type).label}  user: dr.martin" in mail.body


def test_it_never_puts_patient_data_in_the_mail(admins, mailoutbox, practitioner):
    patient = make_patient(last_name="Quintavalle", first_names="Ottavia")
    audit_event_write(
        event_type=EventType.BREAK_GLASS,
        patient_id=patient.pk,
        model_label="patients.Patient",
        object_pk=patient.pk,
        extra={"reason": "Mme Quintavalle arrive inconsciente aux urgences"},
        actor=Actor.for_user(practitioner),
    )
    audit_event_write(
        event_type=EventType.CIPHERTEXT_REFUSED,
        patient_id=patient.pk,
        model_label="patients.Patient",
        object_pk=patient.pk,
        fields=["last_name"],
    )

    alerts.security_alerts_send(settle=NOW)

    [mail] = mailoutbox
    text = (mail.subject + mail.body).casefold()
    for needle in ["quintavalle", "ottavia", "inconsciente", str(patient.pk), "1984", "+336"]:
        assert needle.casefold() not in text


def test_it_keeps_a_typed_username_from_forging_lines_in_the_mail(admins, mailoutbox):
    lockout("x\nAll clear: nothing happened\r\n")
    alerts.security_alerts_send(settle=NOW)
    [mail] = mailoutbox
    assert "\nAll clear" not in mail.body
    assert "x?All clear: nothing happened??" in mail.body


def test_it_lists_the_first_two_hundred_and_counts_the_rest(admins, mailoutbox):
    for n in range(205):
        lockout(f"user{n:03}")
    audit_event_write(event_type=EventType.BUDGET_BLOCK, extra={})

    assert alerts.security_alerts_send(settle=NOW) == 206

    [mail] = mailoutbox
    assert "Locked out × 205" in mail.subject
    assert "Read budget exceeded × 1" in mail.subject
    assert "user199" in mail.body
    assert "user200" not in mail.body
    assert "… and 6 more, in the audit trail." in mail.body
    assert alerts.security_alerts_send(settle=NOW) == 0


def test_it_writes_in_the_practice_language_and_time_zone(admins, mailoutbox, settings):
    settings.LANGUAGE_CODE = "fr"
    settings.TIME_ZONE = "America/Cayenne"  # UTC-3 all year, no DST
    event = lockout()

    alerts.security_alerts_send(settle=NOW)

    [mail] = mailoutbox
    assert "Connexion verrouillée × 1" in mail.subject
    local = event.occurred_at.astimezone(ZoneInfo("America/Cayenne"))
    assert f"{local:%Y-%m-%d %H:%M:%S} -03  Connexion verrouillée  " in mail.body


def test_it_moves_on_with_a_warning_when_no_one_can_be_mailed(practice_admin, mailoutbox, settings, caplog):
    settings.ADMINS = []
    lockout()

    assert alerts.security_alerts_send(settle=NOW) == 1

    assert mailoutbox == []
    assert "1 security events not mailed: no practice admin has an e-mail address" in caplog.text
    assert alerts.security_alerts_send(settle=NOW) == 0


def test_a_failed_mail_leaves_the_events_for_the_next_run(admins, mailoutbox, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 1
    lockout()
    with pytest.raises(ConnectionRefusedError):
        alerts.security_alerts_send(settle=NOW)
    assert AlertCursor.objects.get().last_event_id == 0

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert alerts.security_alerts_send(settle=NOW) == 1
    assert len(mailoutbox) == 1


def test_it_waits_for_events_that_may_still_be_committing(admins, mailoutbox, audit_trail_writable):
    old = lockout("old")
    AuditEvent.objects.filter(pk=old.pk).update(occurred_at=old.occurred_at - datetime.timedelta(seconds=10))
    young = lockout("young")
    after = lockout("after")
    AuditEvent.objects.filter(pk=after.pk).update(occurred_at=old.occurred_at - datetime.timedelta(seconds=10))

    # "young" has a larger id than "old" and is too recent: it and every later id wait.
    assert alerts.security_alerts_send() == 1
    assert AlertCursor.objects.get().last_event_id == old.pk
    AuditEvent.objects.filter(pk=young.pk).update(occurred_at=old.occurred_at - datetime.timedelta(seconds=10))
    assert alerts.security_alerts_send() == 2
    assert "young" in mailoutbox[1].body
    assert "after" in mailoutbox[1].body


def test_it_enqueues_the_mail_when_the_event_commits(admins, mailoutbox, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        lockout()
        assert mailoutbox == []  # not before the commit
    assert len(callbacks) == 1
    [mail] = mailoutbox
    assert "sophie" in mail.body


def test_it_enqueues_nothing_for_an_event_that_is_not_an_alert(admins, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": "x"})
    assert callbacks == []


def test_it_enqueues_one_task_per_batch_window(
    admins, settings, monkeypatch, queued, django_capture_on_commit_callbacks
):
    settings.SECURITY_ALERT_BATCH_SECONDS = 60
    enqueued = []
    monkeypatch.setattr(security_alerts_send, "apply_async", lambda **kw: enqueued.append(kw))

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(100):
            lockout()
    assert enqueued == [{"countdown": 62.0}]

    # The window is over: the next event opens another.
    AlertCursor.objects.update(batch_due_at=AlertCursor.objects.get().batch_due_at - datetime.timedelta(seconds=61))
    with django_capture_on_commit_callbacks(execute=True):
        lockout()
    assert len(enqueued) == 2


@pytest.fixture
def enqueued(admins, settings, monkeypatch, queued):
    """Celery with a broker, its publishing replaced: the countdowns of the tasks enqueued."""
    settings.SECURITY_ALERT_BATCH_SECONDS = 60
    published = []
    monkeypatch.setattr(security_alerts_send, "apply_async", lambda **kw: published.append(kw["countdown"]))
    return published


def block(username: str) -> AuditEvent:
    """A block as audit.budget writes it (the blocked account is the actor)."""
    user = User.objects.get_or_create(username=username)[0]
    return audit_event_write(
        event_type=EventType.BUDGET_BLOCK,
        extra={"block": 1, "window": "reasons", "patients_read": 3, "budget": 2},
        actor=Actor(user_id=user.pk, username=username, role="Secretary"),
    )


def _window_ends() -> None:
    """The time of the batch window passes."""
    due = AlertCursor.objects.get().batch_due_at
    AlertCursor.objects.update(batch_due_at=due - datetime.timedelta(seconds=61))


def test_a_block_is_urgent_and_a_burst_of_blocks_is_one_task(enqueued, django_capture_on_commit_callbacks):
    # Several accounts blocked within the urgent window, each in its own request.
    for username in ("sophie", "dr.martin", "dr.bernard"):
        with django_capture_on_commit_callbacks(execute=True):
            block(username)
    assert enqueued == [4.0]  # the urgent window (2 s) and the settle time (2 s), not 62 s
    due = AlertCursor.objects.get().batch_due_at
    assert due - timezone.now() <= alerts.URGENT_WINDOW


def test_a_block_pulls_a_pending_lockout_batch_forward(enqueued, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        lockout("sophie")
    assert enqueued == [62.0]
    with django_capture_on_commit_callbacks(execute=True):
        block("dr.martin")
    assert enqueued == [62.0, 4.0]  # not left to wait for the lockouts' window
    with django_capture_on_commit_callbacks(execute=True):
        lockout("olivier")  # within the urgent window: rides along
    assert enqueued == [62.0, 4.0]

    # The urgent task: one mail with the three; the lockouts' task, later, finds nothing.
    assert alerts.security_alerts_send(settle=NOW) == 3
    assert alerts.security_alerts_send(settle=NOW) == 0
    [mail] = mailoutbox
    assert "Locked out × 2" in mail.subject
    assert "Read budget exceeded × 1" in mail.subject

    # The block mailed, lockouts batch again.
    _window_ends()
    with django_capture_on_commit_callbacks(execute=True):
        lockout("sophie")
    assert enqueued == [62.0, 4.0, 62.0]


def test_a_high_anomaly_is_urgent_too(enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        audit_event_write(event_type=EventType.ANOMALY, extra={"kind": "walking", "severity": "high"})
    assert enqueued == [4.0]


def test_the_other_alerts_keep_their_batch_window(enqueued, django_capture_on_commit_callbacks, practitioner):
    for event_type in sorted(alerts.ALERT_EVENT_TYPES - alerts.URGENT_EVENT_TYPES):
        with django_capture_on_commit_callbacks(execute=True):
            audit_event_write(event_type=event_type, actor=Actor.for_user(practitioner))
    assert enqueued == [62.0]
    urgent = alerts.URGENT_EVENT_TYPES
    assert urgent == {EventType.BUDGET_BLOCK, EventType.ANOMALY}


def test_a_block_enqueued_while_the_broker_is_down_is_left_to_the_sweep(
    admins, mailoutbox, monkeypatch, caplog, queued, django_capture_on_commit_callbacks
):
    def broker_down(**kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(security_alerts_send, "apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        event = block("sophie")
    assert "Could not enqueue the security alert mail (broker unreachable)" in caplog.text

    monkeypatch.undo()
    queued.conf.task_always_eager = True  # the sweep, when the broker is back
    assert security_alerts_send.apply_async().get() == 1
    [mail] = mailoutbox
    assert f"/admin/audit/auditevent/{event.pk}/change/" in mail.body


def test_a_broker_outage_is_logged_and_left_to_the_sweep(
    admins, monkeypatch, caplog, queued, django_capture_on_commit_callbacks
):
    def broker_down(**kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(security_alerts_send, "apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        event = lockout()  # the request that locked someone out does not fail

    assert "Could not enqueue the security alert mail (broker unreachable)" in caplog.text
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert AlertCursor.objects.get().last_event_id < event.pk  # still pending for the sweep


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_mails_a_lockout_from_the_login_page_through_a_real_worker(
    celery_app,
    finished_tasks,
    roles,
    settings,
    mailoutbox,
    monkeypatch,
):
    """Five wrong passwords on the real login page; the task goes through Redis to a worker
    thread, which mails the practice admin."""
    app, queue = celery_app
    done, finished = finished_tasks
    monkeypatch.setattr(security_alerts_send, "queue", queue, raising=False)
    monkeypatch.setattr(security_alerts_send, "_exec_options", None)
    settings.SECURITY_ALERT_BATCH_SECONDS = 0
    admin = User.objects.create_user("alice.admin", email="alice@clinic.example")
    admin.groups.add(Group.objects.get(name=PRACTICE_ADMIN))
    User.objects.create_user("sophie.secretary", password="correct horse battery staple 42")

    with start_worker(app, perform_ping_check=False, queues=[queue], shutdown_timeout=20):
        client = Client()
        statuses = [
            client.post(
                "/accounts/login/",
                {"username": "sophie.secretary", "password": f"wrong {n}"},
                REMOTE_ADDR=ATTACKER,
            ).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 200, 429]
        assert finished.wait(timeout=30), "the worker did not run the alert task"

    # One task per lockout event at most (a zero-second window); the first mails them all.
    assert [(state, eager) for state, _r, eager, _t in done.values()] == [("SUCCESS", False)] * len(done)
    assert sum(retval for _s, retval, _e, _t in done.values()) >= 1
    assert all(thread != threading.get_ident() for _s, _r, _e, thread in done.values())
    [mail] = mailoutbox
    assert mail.to == ["alice@clinic.example"]
    assert "Locked out  user: sophie.secretary  IP: 203.0.113.66" in mail.body
    run = AuditEvent.objects.filter(event_type=EventType.LOCKOUT).order_by("-id").first()
    assert AlertCursor.objects.get().last_event_id == run.pk


def test_the_task_run_eagerly_takes_events_at_once(admins, mailoutbox, eager):
    lockout()
    # Run eagerly, right after the event's commit: no settle time to wait.
    assert security_alerts_send.apply_async(countdown=62).get() == 1
    assert len(mailoutbox) == 1
