"""A block reaches the practice admins' mailbox within 60 seconds: measured end to end, with a
real Celery worker fed through the real Redis broker (a block is urgent: it does not wait
for the 60-second batch of other alerts).

A secretary opens the records of patients nothing explains (no appointment, no care, no
reason) until the account is blocked (``ReadBlock``, window "reasons", and a
``BUDGET_BLOCK`` event): the request's commit enqueues the urgent alert task, which travels
through Redis to a worker thread; the worker mails the admins through Django's file-based
e-mail backend. The mail is a file on disk: its modification time is when it was sent,
measured against the event's ``occurred_at`` (one machine, one clock). Same setup as
audit/tests/test_celery_worker.py and scheduling/tests/test_reminders_worker.py: committed
data (``transaction=True``), a queue of the test's own as the default queue (the enqueueing
names no queue, and only this test's worker must take it).
"""

import datetime
import email
import os
import time
from email.policy import default as default_policy
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from audit.models import AlertCursor, AuditEvent, EventType, ReadBlock
from config.testing import client_for, make_patient
from investigations.tasks import security_alerts_send

PROMISED = datetime.timedelta(seconds=60)

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def mail_dir(settings, tmp_path) -> Path:
    """Mail goes to files, one per message: what the worker sent, and when."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = str(tmp_path)
    return tmp_path


@pytest.fixture
def tight_reads(settings):
    """One unexplained patient, then one reason asked: the third patient blocks the account."""
    settings.READ_ALLOWANCES = dict.fromkeys(settings.READ_ALLOWANCES, (1, 1))
    settings.READ_REASONS = (1, 1)


def _mails(directory: Path) -> list[tuple[float, email.message.EmailMessage]]:
    """(sent at, as an epoch, message) of each mail written, oldest first."""
    mails = []
    for path in sorted(directory.iterdir()):
        raw = path.read_bytes()
        mails.append((path.stat().st_mtime, email.message_from_bytes(raw, policy=default_policy)))
    return sorted(mails, key=lambda m: m[0])


def test_a_block_is_mailed_to_the_admins_within_60_seconds_by_a_real_worker(
    celery_app, finished, mail_dir, tight_reads, secretary, practice_admin, settings
):
    app, queue = celery_app
    settings.ADMINS = []
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    # Lockouts keep their 60-second window: the block must not wait for one.
    assert settings.SECURITY_ALERT_BATCH_SECONDS >= 60
    patients = [make_patient(last_name=f"Bloc{n}", email="", nir="") for n in range(6)]
    client = client_for(secretary)

    with start_worker(app, perform_ping_check=False, queues=[queue], shutdown_timeout=20):
        statuses = []
        for patient in patients:
            statuses.append(client.get(f"/patients/{patient.pk}/").status_code)
            if statuses[-1] == 429:
                break
        assert statuses[-1] == 429, statuses
        # Only the worker touches the database until its task is over (SQLite's shared
        # in-memory test database takes one writer at a time): wait on the worker's signal.
        finished.wait_for("security_alerts_send", 1, timeout=PROMISED.total_seconds())
        mailed = time.time()
        # A sweep right after (beat's, every 5 minutes) finds nothing more to mail.
        security_alerts_send.delay()
        finished.wait_for("security_alerts_send", 2)

    block = ReadBlock.objects.get(user_id=secretary.pk)
    assert (block.window, block.lifted_at) == ("reasons", None)
    [event] = AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK)
    assert event.actor_username == "sophie.secretary"
    assert [(n, s, r) for n, s, r in finished.runs] == [
        ("security_alerts_send", "SUCCESS", 1),
        ("security_alerts_send", "SUCCESS", 0),
    ]
    [(sent_at, message)] = _mails(mail_dir)  # exactly one mail for the block
    assert message["To"] == "alice@clinic.example"
    assert " ".join(message["Subject"].split()) == "[Cabinet] Security alert: 1 event (Read budget exceeded × 1)"
    body = message.get_content()
    assert "Read budget exceeded  user: sophie.secretary" in body
    assert f"/admin/audit/auditevent/{event.pk}/change/" in body
    assert not any(p.last_name.casefold() in body.casefold() for p in patients if p.last_name)

    latency = sent_at - event.occurred_at.timestamp()
    cursor = AlertCursor.objects.get()
    assert cursor.last_event_id == event.pk
    print(
        f"\nblock -> mail: {latency:.2f} s (mail file written); cursor moved "
        f"{(cursor.last_sent_at - event.occurred_at).total_seconds():.2f} s after the block; "
        f"task seen done {mailed - event.occurred_at.timestamp():.2f} s after; load {os.getloadavg()[0]:.2f}"
    )
    assert 0 < latency < PROMISED.total_seconds()
    assert cursor.last_sent_at - event.occurred_at < PROMISED
