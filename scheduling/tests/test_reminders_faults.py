"""Reminders when things break: a trail that refuses writes, a worker killed at each step of a
send, a broker that hangs.

Real components throughout: the database (PostgreSQL in CI), Redis, Celery workers in their own
processes (killed with SIGKILL, as the fault campaign did), and a local HTTP server that
answers like Brevo: its e-mail API drops a repeated idempotency key, as Brevo documents; its
SMS API has no key. At each request the server looks in the trail, over its own database
connection, for the committed read of the address it is about to deliver to.

What must hold:
- no message leaves without its audit row committed first, and none when the row cannot be
  written;
- a worker killed between the claim, the send and the record leaves at most one delivery per
  reminder; over a channel with an idempotency key, none is lost either;
- the restarted worker takes up what the killed one left at once, not after 15 minutes;
- a booking answers within 3 s while Redis is paused, and its reminder goes out later.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core import mail
from django.db import connection, connections
from django.urls import reverse
from django.utils import timezone

from audit.chain import ADVISORY_LOCK_ID
from audit.models import AuditEvent, EventType
from config.testing import (
    PARIS,
    TEST_BROKER_URL,
    book,
    broker_connections_drop,
    client_for,
    make_doctor,
    make_patient,
    make_type,
    wait_until,
)
from practice import sms
from practice.models import Clinic
from scheduling.models import Appointment, Reminder, ReminderStatus
from scheduling.tasks import reminder_send, reminders_sweep

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "xkeysib-test-0123456789"
READY_TIMEOUT = 90  # a worker process starting on a loaded 2-core machine


def _reminder_reads(patient) -> int:
    """Committed reads of the patient's data by the reminders job (this thread's connection)."""
    return AuditEvent.objects.filter(
        event_type=EventType.READ, actor_username="system:reminders", patient_id=patient.pk
    ).count()


# ---------------------------------------------------------------------------------------------
# A local server answering like Brevo


class FakeBrevo(ThreadingHTTPServer):
    """Brevo's transactional e-mail and SMS endpoints.

    ``deliveries`` lists what reached a patient: (channel, key), once per e-mail idempotency
    key, once per SMS request. ``requests`` lists every request with the number of the
    patient's reads committed to the trail when it arrived. ``hold`` = "before" or "after"
    makes the next request wait for ``release`` before (never delivered: the connection is
    cut) or after its delivery (delivered, the answer lost).
    """

    daemon_threads = True

    def __init__(self, patient):
        super().__init__(("127.0.0.1", 0), _BrevoHandler)
        self.patient = patient
        self.requests: list[dict] = []
        self.deliveries: list[tuple[str, str]] = []
        self.message_ids: dict[str, str] = {}
        self.hold = ""
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def deliver(self, channel: str, key: str) -> str:
        with self.lock:
            if channel == "email" and key in self.message_ids:
                return self.message_ids[key]  # a repeated key: Brevo sends nothing more
            message_id = f"<{uuid.uuid4()}@smtp-relay.example>"
            self.deliveries.append((channel, key))
            if key:
                self.message_ids[key] = message_id
            return message_id


class _BrevoHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        channel = "sms" if "transactionalSMS" in self.path else "email"
        key = (payload.get("headers") or {}).get("idempotencyKey", "")
        server = self.server
        try:
            audited = _reminder_reads(server.patient)
        finally:
            connections.close_all()  # this thread's own connection
        with server.lock:
            server.requests.append({"channel": channel, "key": key, "audited": audited})
            hold, server.hold = server.hold, ""
        if hold == "before":  # the worker dies before the provider took the message
            server.arrived.set()
            server.release.wait(60)
            return
        message_id = server.deliver(channel, key)
        if hold == "after":  # delivered; the worker dies before it hears so
            server.arrived.set()
            server.release.wait(60)
            return
        data = json.dumps({"messageId": message_id}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


# ---------------------------------------------------------------------------------------------
# Worker processes

WORKER = """
import sys
import django
django.setup()
from config.celery import app
queue, node = sys.argv[1], sys.argv[2]
app.conf.task_default_queue = queue
app.worker_main(["worker", "-Q", queue, "-n", node, "--pool=solo", "--loglevel=INFO",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"])
"""


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Workers:
    """Celery workers in processes of their own, all under one node name (a restart of the
    same worker, as a supervisor would do it), on the test's queue."""

    def __init__(self, queue: str, env: dict, log: Path):
        self.queue, self.env, self.log = queue, env, log
        self.node = f"cabinet-tests-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(b"=== worker start\n")
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER, self.queue, self.node],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no clean-up, no acknowledgement, no rollback but the database's own."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def clinic(db):
    clinic = Clinic.current()
    clinic.name, clinic.phone, clinic.email = "Cabinet des Lilas", "04 72 00 00 00", "accueil@lilas.example"
    clinic.save()
    return clinic


@pytest.fixture
def agenda(practitioner, clinic):
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    kind = make_type(doctor)
    kind.reminder_hours = 72  # a booking for the day after tomorrow is reminded at once
    kind.save()
    return doctor, kind


def _day_after_tomorrow_at_ten() -> datetime.datetime:
    day = timezone.now().astimezone(PARIS).date() + datetime.timedelta(days=2)
    return datetime.datetime.combine(day, datetime.time(10), tzinfo=PARIS)


@pytest.fixture
def brevo_setup(settings, tmp_path):
    """Both channels through the fake Brevo, here and in the worker processes."""
    servers = []

    def start(patient) -> FakeBrevo:
        server = FakeBrevo(patient)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        values = {
            "EMAIL_BACKEND": "practice.mail.BrevoEmailBackend",
            "EMAIL_HTTP_URL": server.url("/v3/smtp/email"),
            "EMAIL_HTTP_API_KEY": API_KEY,
            "SMS_BACKEND": "practice.sms.BrevoBackend",
            "SMS_HTTP_URL": server.url("/v3/transactionalSMS/send"),
            "SMS_HTTP_API_KEY": API_KEY,
        }
        for name, value in values.items():
            setattr(settings, name, value)
        return server, values

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def workers(celery_app, tmp_path):
    _app, queue = celery_app
    made = []

    def make(extra_env: dict) -> Workers:
        env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": TEST_BROKER_URL,
            "DEBUG": "0",
            "REMINDERS_ENABLED": "1",
            **extra_env,
        }
        group = Workers(queue, env, tmp_path / "worker.log")
        made.append(group)
        return group

    yield make
    for group in made:
        group.stop()


def _worker_log(tmp_path) -> str:
    path = tmp_path / "worker.log"
    return path.read_text(errors="replace")[-12000:] if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# The read is in the trail before the message leaves; no trail, no message


@pytest.fixture
def trail_refuses_reminders():
    """The database refuses the trail's rows of the reminders job: a real refusal by the
    database (a constraint on PostgreSQL, a trigger on SQLite), as a revoked INSERT would."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "ALTER TABLE audit_auditevent ADD CONSTRAINT test_refuse_reminders "
                "CHECK (actor_username <> 'system:reminders') NOT VALID"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER test_refuse_reminders BEFORE INSERT ON audit_auditevent "
                "WHEN NEW.actor_username = 'system:reminders' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )

    def lift():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("ALTER TABLE audit_auditevent DROP CONSTRAINT IF EXISTS test_refuse_reminders")
            else:
                cursor.execute("DROP TRIGGER IF EXISTS test_refuse_reminders")

    yield lift
    lift()


@pytest.fixture
def locmem_outboxes(settings):
    settings.SMS_BACKEND = "practice.sms.LocmemBackend"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.REMINDERS_ENABLED = True
    mail.outbox = []
    sms.outbox.clear()
    yield
    sms.outbox.clear()


def test_nothing_is_sent_while_the_trail_refuses_the_read_then_it_is_sent_with_its_row(
    agenda, eager, locmem_outboxes, trail_refuses_reminders
):
    doctor, kind = agenda
    patient = make_patient(consent_sms=True, consent_email=True)
    book(doctor, patient, kind, _day_after_tomorrow_at_ten())  # eager: reminder_send runs at commit
    assert mail.outbox == []
    assert sms.outbox == []
    assert _reminder_reads(patient) == 0
    assert set(Reminder.objects.values_list("status", flat=True)) == {ReminderStatus.PENDING}

    trail_refuses_reminders()
    for reminder in Reminder.objects.all():
        assert reminder_send.apply(args=[reminder.pk]).get() == ReminderStatus.SENT
    assert len(mail.outbox) == 1
    assert len(sms.outbox) == 1
    assert _reminder_reads(patient) == 2  # one row per message, each naming its one field
    fields = sorted(
        f for (fs,) in AuditEvent.objects.filter(actor_username="system:reminders").values_list("fields") for f in fs
    )
    assert fields == ["email", "phone_mobile"]


def test_the_read_is_committed_before_the_provider_gets_the_message(agenda, eager, brevo_setup):
    doctor, kind = agenda
    patient = make_patient(consent_sms=True, consent_email=True)
    server, _env = brevo_setup(patient)
    book(doctor, patient, kind, _day_after_tomorrow_at_ten())  # eager: sent at commit
    # The first message found its read in the trail, the second found both.
    assert sorted(r["channel"] for r in server.requests) == ["email", "sms"]
    assert [r["audited"] for r in server.requests] == [1, 2]
    assert len(server.deliveries) == 2
    assert set(Reminder.objects.values_list("status", flat=True)) == {ReminderStatus.SENT}


# ---------------------------------------------------------------------------------------------
# A worker killed between the claim, the send and the record


def _book_with_worker_up(agenda, brevo_setup, workers, *, email: bool):
    doctor, kind = agenda
    patient = make_patient(consent_email=email, consent_sms=not email)
    server, env = brevo_setup(patient)
    group = workers(env)
    return doctor, kind, patient, server, group


@pytest.mark.slow
@pytest.mark.parametrize("hold", ["before", "after"])
def test_an_email_interrupted_by_a_killed_worker_is_delivered_exactly_once_after_the_restart(
    hold, agenda, brevo_setup, workers, tmp_path
):
    doctor, kind, patient, server, group = _book_with_worker_up(agenda, brevo_setup, workers, email=True)
    server.hold = hold
    group.start()
    book(doctor, patient, kind, _day_after_tomorrow_at_ten())
    assert server.arrived.wait(READY_TIMEOUT), _worker_log(tmp_path)
    reminder = Reminder.objects.get()
    assert reminder.status == ReminderStatus.SENDING
    group.kill()
    server.release.set()

    killed_at = time.monotonic()
    group.start()  # the same worker, restarted: its start-up sweep takes up the claim
    wait_until(
        lambda: Reminder.objects.get().status == ReminderStatus.SENT,
        f"the reminder to be sent after the restart\n{_worker_log(tmp_path)}",
        timeout=READY_TIMEOUT,
        interval=0.1,
    )
    taken_up_in = time.monotonic() - killed_at

    keys = {r["key"] for r in server.requests}
    assert len(server.requests) == 2, server.requests
    assert len(keys) == 1, server.requests  # the same key twice
    assert server.deliveries == [("email", keys.pop())]  # one e-mail reached the patient
    assert all(r["audited"] for r in server.requests)  # each time, the read was in the trail first
    assert Reminder.objects.get().error == ""
    assert taken_up_in < 60  # the restart's sweep, not the 15-minute requeue


@pytest.mark.slow
@pytest.mark.parametrize("hold", ["before", "after"])
def test_an_sms_interrupted_by_a_killed_worker_is_never_sent_twice(hold, agenda, brevo_setup, workers, tmp_path):
    """Brevo's SMS API takes no idempotency key: whether the message left is unknown, so it is
    not sent again; the front desk sees it as interrupted."""
    doctor, kind, patient, server, group = _book_with_worker_up(agenda, brevo_setup, workers, email=False)
    server.hold = hold
    group.start()
    book(doctor, patient, kind, _day_after_tomorrow_at_ten())
    assert server.arrived.wait(READY_TIMEOUT), _worker_log(tmp_path)
    group.kill()
    server.release.set()

    group.start()
    wait_until(
        lambda: Reminder.objects.get().status == ReminderStatus.FAILED,
        f"the interrupted SMS to be closed after the restart\n{_worker_log(tmp_path)}",
        timeout=READY_TIMEOUT,
        interval=0.1,
    )
    assert Reminder.objects.get().error == "interrupted"
    assert len(server.requests) == 1
    assert len(server.deliveries) == (1 if hold == "after" else 0)
    assert server.requests[0]["audited"] == 1


CHAIN_LOCK_WAIT = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
)


@pytest.mark.slow
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="holds PostgreSQL's chain advisory lock (SQLite has none; CI runs the suite on PostgreSQL)",
)
def test_a_worker_killed_inside_its_claim_leaves_no_row_no_message_and_the_restart_sends_it(
    agenda, brevo_setup, workers, tmp_path
):
    """Killed after decrypting, while its claim waits for the trail: the database rolls the
    claim and its audit row back together; the message that was queued before the kill (not
    acknowledged: it is lost with the worker until Redis's visibility time-out) is queued again
    by the restart's sweep."""
    doctor, kind, patient, server, group = _book_with_worker_up(agenda, brevo_setup, workers, email=True)
    book(doctor, patient, kind, _day_after_tomorrow_at_ten())  # queued; no worker is up yet
    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_ID])
        group.start()
        with connection.cursor() as cursor:

            def claim_waits() -> bool:
                cursor.execute(CHAIN_LOCK_WAIT)
                return cursor.fetchone()[0] > 0

            wait_until(
                claim_waits,
                f"the worker's claim to wait on the chain lock\n{_worker_log(tmp_path)}",
                timeout=READY_TIMEOUT,
                interval=0.1,
            )
        group.kill()
    finally:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")
        holder.close()
    reminder = Reminder.objects.get()
    assert reminder.status == ReminderStatus.PENDING
    assert reminder.enqueued_at is not None
    assert _reminder_reads(patient) == 0
    assert server.requests == []

    group.start()
    wait_until(
        lambda: Reminder.objects.get().status == ReminderStatus.SENT,
        f"the reminder to be sent after the restart\n{_worker_log(tmp_path)}",
        timeout=READY_TIMEOUT,
        interval=0.1,
    )
    assert len(server.deliveries) == 1
    assert server.requests[0]["audited"] == 1
    assert _reminder_reads(patient) == 1


# ---------------------------------------------------------------------------------------------
# A hung broker does not hold a booking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def paused_redis(tmp_path):
    """A Redis of this test's own, then paused with SIGSTOP: it accepts connections (the
    kernel does) and never answers, like a Redis swapping or a half-open connection."""
    port = _free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(answers, "the test's Redis to start", timeout=30, interval=0.1)
    server.send_signal(signal.SIGSTOP)
    try:
        yield server, url
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_a_booking_answers_within_3_s_with_redis_paused_and_the_sweep_sends_its_reminder_later(
    agenda, locmem_outboxes, secretary, celery_app, paused_redis, monkeypatch
):
    app, _queue = celery_app
    redis, url = paused_redis
    broker_connections_drop(app)
    # Celery reads CELERY_BROKER_URL from the environment before its own setting (CI sets it).
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    app.conf.broker_url = url
    try:
        _book_and_sweep_with_paused_redis(app, agenda, secretary, redis)
    finally:
        broker_connections_drop(app)
        monkeypatch.setenv("CELERY_BROKER_URL", TEST_BROKER_URL)
        app.conf.broker_url = TEST_BROKER_URL


def _book_and_sweep_with_paused_redis(app, agenda, secretary, redis) -> None:
    doctor, kind = agenda
    patient = make_patient(consent_email=True)
    start = _day_after_tomorrow_at_ten()
    data = {
        "practitioner": doctor.pk,
        "appointment_type": kind.pk,
        "date": start.date().isoformat(),
        "time": "10:00",
        "reason": "",
        "internal_note": "",
        "action": "book_existing",
        "patient": str(patient.pk),
    }
    client = client_for(secretary)
    answers: list = []
    posting = threading.Thread(target=lambda: answers.append(client.post(reverse("scheduling:book"), data)))
    began = time.monotonic()
    posting.start()
    posting.join(20)
    took = time.monotonic() - began
    assert answers, "the booking did not answer within 20 s with Redis paused"
    assert took < 3, f"the booking took {took:.1f} s with Redis paused"
    appointment = Appointment.objects.get()
    assert answers[0].status_code == 302
    assert answers[0]["Location"] == appointment.get_absolute_url()
    reminder = Reminder.objects.get()
    assert reminder.status == ReminderStatus.PENDING
    assert reminder.enqueued_at is None
    assert mail.outbox == []

    redis.send_signal(signal.SIGCONT)
    broker_connections_drop(app)  # the pool's connections to the paused Redis are stale
    app.conf.update(task_always_eager=True)  # the sweep's send runs here, the way the worker would
    try:
        assert reminders_sweep.apply().get() == 1
    finally:
        app.conf.update(task_always_eager=False)
    assert Reminder.objects.get().status == ReminderStatus.SENT
    assert len(mail.outbox) == 1
