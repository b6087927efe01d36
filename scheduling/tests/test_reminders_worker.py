"""Reminders through a real Celery worker and the real Redis broker.

The booking runs here; the sweep and the sends run in the worker's thread with their own
database connection (hence committed data: `transaction=True`), as in production. Same setup
as audit/tests/test_celery_worker.py, plus a default queue of the test's own: the sweep
queues `reminder_send` without naming a queue, and only this test's worker must take it.
"""

import datetime
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.core import mail
from django.utils import timezone

from config.testing import (
    DAY,
    TEST_BROKER_URL,
    TaskRuns,
    at,
    book,
    broker_connections_drop,
    make_doctor,
    make_patient,
    make_type,
    reads,
)
from practice import sms
from practice.models import Clinic
from scheduling.models import Reminder, ReminderStatus
from scheduling.tasks import reminders_sweep

DEAD_BROKER_URL = "redis://127.0.0.1:1/14"  # nothing listens there: the broker is down

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _outboxes(settings):
    settings.SMS_BACKEND = "practice.sms.LocmemBackend"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.REMINDERS_ENABLED = True
    mail.outbox = []
    sms.outbox.clear()
    yield
    sms.outbox.clear()


@pytest.fixture
def agenda(practitioner):
    clinic = Clinic.current()
    clinic.name, clinic.address, clinic.phone = "Cabinet des Lilas", "3 place de la Mairie, Lyon", "04 72 00 00 00"
    clinic.save()
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    return doctor, make_type(doctor), make_patient(consent_sms=True, consent_email=True, language="en")


def _sweep_in_worker(finished: TaskRuns, *, sweeps: int, sends: int) -> None:
    reminders_sweep.delay()
    # Only the worker touches the database until its tasks are over (SQLite's shared
    # in-memory test database takes one writer at a time).
    finished.wait_for("reminders_sweep", sweeps)
    finished.wait_for("reminder_send", sends)


def test_it_books_then_the_sweep_sends_one_email_and_one_sms_in_the_worker(celery_app, finished, agenda):
    app, queue = celery_app
    doctor, kind, patient = agenda
    appointment = book(doctor, patient, kind, at(DAY, 9), reason="Douleur au genou droit", internal_note="Anxieuse")
    assert mail.outbox == []
    assert sms.outbox == []
    Reminder.objects.update(due_at=timezone.now() - datetime.timedelta(minutes=1))  # the day comes

    with start_worker(app, perform_ping_check=False, queues=[queue], shutdown_timeout=20):
        _sweep_in_worker(finished, sweeps=1, sends=2)
        _sweep_in_worker(finished, sweeps=2, sends=2)  # the second sweep queues nothing

    assert [(n, s) for n, s, _r in finished.runs] == [
        ("reminders_sweep", "SUCCESS"),
        ("reminder_send", "SUCCESS"),
        ("reminder_send", "SUCCESS"),
        ("reminders_sweep", "SUCCESS"),
    ]
    assert [r for n, _s, r in finished.runs if n == "reminders_sweep"] == [2, 0]
    assert len(mail.outbox) == 1
    assert len(sms.outbox) == 1
    assert sms.outbox[0].body == (
        "Reminder: appointment at Cabinet des Lilas on Monday 4 March 2030 at 09:00. "
        "3 place de la Mairie, Lyon. To cancel, call 04 72 00 00 00."
    )
    email = mail.outbox[0]
    assert email.subject == "Your appointment at Cabinet des Lilas on Monday 4 March 2030 at 09:00"
    for text in (sms.outbox[0].body, email.subject, email.body):
        assert "genou" not in text
        assert "Anxieuse" not in text
        assert "Médecine" not in text
    rows = Reminder.objects.filter(appointment=appointment)
    assert {(r.channel, r.status) for r in rows} == {("email", "sent"), ("sms", "sent")}
    assert {r.provider_id for r in rows} == {sms.outbox[0].provider_id, email.extra_headers["Message-ID"]}

    events = reads(actor_username="system:reminders")
    assert sorted(tuple(e.fields) for e in events) == [("email",), ("phone_mobile",)]
    assert {e.patient_id for e in events} == {patient.pk}
    assert all(e.extra.get("task_id") for e in events)
    assert not reads(actor_username="system:reminders_sweep")
    assert not reads(actor_username="system:reminder_send")


def test_a_booking_made_while_the_broker_is_down_is_reminded_once_when_it_is_back(
    celery_app, finished, agenda, monkeypatch
):
    app, queue = celery_app
    doctor, kind, patient = agenda
    broker_connections_drop(app)
    # Celery reads CELERY_BROKER_URL from the environment before its own setting (CI sets it).
    monkeypatch.setenv("CELERY_BROKER_URL", DEAD_BROKER_URL)
    app.conf.broker_url = DEAD_BROKER_URL
    soon = timezone.now() + datetime.timedelta(hours=5)  # its reminder is due at once
    began = time.monotonic()
    appointment = book(doctor, patient, kind, soon, force=True)  # commits: on_commit tries the broker
    assert time.monotonic() - began < 10  # fails fast (CELERY_BROKER_CONNECTION_TIMEOUT)
    rows = Reminder.objects.filter(appointment=appointment)
    assert {(r.status, r.enqueued_at) for r in rows} == {(ReminderStatus.PENDING, None)}

    broker_connections_drop(app)
    monkeypatch.setenv("CELERY_BROKER_URL", TEST_BROKER_URL)
    app.conf.broker_url = TEST_BROKER_URL  # the broker is back
    with start_worker(app, perform_ping_check=False, queues=[queue], shutdown_timeout=20):
        _sweep_in_worker(finished, sweeps=1, sends=2)
        _sweep_in_worker(finished, sweeps=2, sends=2)

    assert len(mail.outbox) == 1
    assert len(sms.outbox) == 1
    assert {r.status for r in rows.all()} == {ReminderStatus.SENT}
