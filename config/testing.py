"""What the tests build the clinic with: its people (one persona per role), its agenda
(practitioners, their hours, appointment types, bookings), its patients, and the tools that
read or break the audit trail. Imported by tests like any module (``from config.testing
import ...``); the pytest fixtures that hand these out are in the conftest files.

Patients and bookings go through the services the pages call (``patients.services``,
``scheduling.services``), inside an audit system context, so the trail, the reminders and the
checks are what they are in production. Practitioners, their hours and appointment types
have no service (the practice admin enters them in Django admin, which saves the model):
they are saved here as admin saves them.

config is the top layer (pyproject ``[tool.importlinter]``): this module may import every
app; no app imports it. Nothing here runs in production.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import threading
import time
import zoneinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from kombu import pools
from playwright.sync_api import sync_playwright

from audit.context import system_context
from audit.fields import encrypted_fields
from audit.models import AuditEvent, EventType
from config.celery import app as celery_app
from patients.models import Patient
from patients.services import patient_create
from patients.validators import nir_key
from practice.models import LoginThrottle, Practitioner, Specialty
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, roles_sync
from scheduling import services as scheduling_services
from scheduling.models import AppointmentType, Weekday, WorkingHours

# ---------------------------------------------------------------------------------------------
# Time: the practice's zone, and a day far enough ahead that "now" never gets in the way

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
# A Monday far enough ahead that "now" never gets in the way of booking it.
DAY = datetime.date(2030, 3, 4)


def paris(year, month, day, hour=0, minute=0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=PARIS)


def at(day: datetime.date, hour: int, minute: int = 0) -> datetime.datetime:
    """An aware moment in the practice's time zone."""
    return datetime.datetime.combine(day, datetime.time(hour, minute), tzinfo=PARIS)


def today() -> datetime.date:
    return datetime.datetime.now(PARIS).date()


# ---------------------------------------------------------------------------------------------
# People: one persona per role

PASSWORD = "correct horse battery staple 42"  # noqa: S105 (test persona)

# name -> (username, role, extra fields of the user). The root conftest has a fixture per name.
PERSONAS = {
    "secretary": ("sophie.secretary", SECRETARY, {}),
    "practitioner": ("dr.martin", PRACTITIONER, {}),
    "other_practitioner": ("dr.bernard", PRACTITIONER, {}),
    "practice_admin": ("alice.admin", PRACTICE_ADMIN, {"is_staff": True}),
    "outsider": ("olivier.outsider", None, {}),  # an account with no role
}


def user_create(username: str, role: str | None = None, *, password: str = PASSWORD, **extra) -> User:
    """An account in a role (a group of practice.roles, with its permissions), or in none."""
    user = User.objects.create_user(username=username, password=password, **extra)
    if role:
        user.groups.add(Group.objects.filter(name=role).first() or roles_sync()[role])
    return user


def persona(name: str) -> User:
    """The account of a persona of PERSONAS."""
    username, role, extra = PERSONAS[name]
    return user_create(username, role, **extra)


def superuser_create() -> User:
    return User.objects.create_superuser("root", "root@cabinet.test", PASSWORD)


def totp_device(user) -> TOTPDevice:
    """The user's confirmed authenticator (created on first use), as enrolment leaves it."""
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)


def totp_code(device) -> str:
    """The code the user's phone shows now."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def totp_next_code(user) -> str:
    """The code the user's phone shows at the next time step, the throttle of earlier wrong codes
    waited out (django-otp accepts each code once and slows down after a wrong one)."""
    device = totp_device(user)
    device.last_t = -1
    device.throttling_failure_count, device.throttling_failure_timestamp = 0, None
    device.save(update_fields=["last_t", "throttling_failure_count", "throttling_failure_timestamp"])
    return totp_code(device)


def log_in(client: Client, user, password: str = PASSWORD):
    """Log in through the real pages: password, then the code of the user's authenticator."""
    device = totp_device(user)
    response = client.post("/accounts/login/", {"username": user.get_username(), "password": password})
    assert response.status_code == 302, response.status_code
    response = client.post("/accounts/two-factor/", {"code": totp_code(device)})
    assert response.status_code == 302, response.content.decode()[:500]
    return response


def client_for(user, *, verified: bool = True) -> Client:
    """A logged-in browser. ``verified``: as after the second factor (the state every page needs)."""
    client = Client()
    client.force_login(user)
    if verified:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = totp_device(user).persistent_id
        session.save()
    return client


# ---------------------------------------------------------------------------------------------
# Browsers: Debian's Chromium, headless, driven by Playwright (tests marked slow)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
]


@contextlib.contextmanager
def chromium():
    """A headless Chromium. Playwright runs an event loop in the calling thread: Django refuses
    database work there unless DJANGO_ALLOW_ASYNC_UNSAFE is set (the test sets it first)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def browser_page(browser, base_url: str, user, *, width: int, height: int = 800, locale: str = "en-GB", **options):
    """A tab of its own browser (cookies, language, size) logged in as ``user``, past the second
    factor: the session of ``client_for``, as its cookie. ``options`` go to Playwright's
    ``new_context`` (``timezone_id``...)."""
    session = client_for(user).cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context(viewport={"width": width, "height": height}, locale=locale, **options)
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": base_url}])
    return context.new_page()


def boxes_overlap(a: dict, b: dict) -> bool:
    """Whether two bounding boxes (Playwright's: x, y, width, height) share any area."""
    across = a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
    down = a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]
    return across and down


# ---------------------------------------------------------------------------------------------
# The agenda: practitioners, their hours, appointment types, bookings

Hours = tuple[tuple[int, int, int, int], ...]  # ((start hour, start minute, end hour, end minute), ...)

EVERY_DAY = tuple(Weekday.values)
MONDAY_TO_SATURDAY = tuple(range(6))
LONG_DAY: Hours = ((8, 0, 12, 0), (13, 0, 19, 0))
OFFICE_HOURS: Hours = ((9, 0, 12, 0), (14, 0, 18, 0))


def working_hours_add(practitioner: Practitioner, *, days=EVERY_DAY, hours: Hours = LONG_DAY) -> None:
    """The practitioner works these hours on these weekdays (0 is Monday)."""
    for weekday in days:
        for h1, m1, h2, m2 in hours:
            WorkingHours.objects.create(
                practitioner=practitioner,
                weekday=Weekday(weekday),
                start_time=datetime.time(h1, m1),
                end_time=datetime.time(h2, m2),
            )


def practitioner_create(
    user: User, display_name: str, *, colour: str = "#0b6bcb", days=EVERY_DAY, hours: Hours = LONG_DAY
) -> Practitioner:
    """The user's practitioner profile (general medicine), with its working hours."""
    specialty, _ = Specialty.objects.get_or_create(name="Médecine générale")
    practitioner = Practitioner.objects.create(user=user, display_name=display_name, specialty=specialty, colour=colour)
    working_hours_add(practitioner, days=days, hours=hours)
    return practitioner


def make_doctor(user: User, name: str, *, colour: str = "#0b6bcb") -> Practitioner:
    """A persona as a practitioner working every day, 8:00-12:00 and 13:00-19:00 (so tests on
    "today" work whatever the weekday)."""
    return practitioner_create(user, name, colour=colour)


def make_practitioner(
    username: str = "dr.test", *, hours: Hours = OFFICE_HOURS, days=MONDAY_TO_SATURDAY
) -> Practitioner:
    """A practitioner named after the account (created in the Practitioner role if it does not
    exist), Monday to Saturday, 9:00-12:00 and 14:00-18:00 unless told otherwise."""
    user = User.objects.filter(username=username).first() or user_create(username, password="x" * 20)
    user.groups.add(Group.objects.filter(name=PRACTITIONER).first() or roles_sync()[PRACTITIONER])
    return practitioner_create(user, f"Dr {username}", days=days, hours=hours)


def make_type(
    *practitioners, name: str = "Consultation", minutes: int = 20, colour: str = "#3366cc"
) -> AppointmentType:
    """An appointment type these practitioners offer."""
    kind = AppointmentType.objects.create(name=name, duration_minutes=minutes, colour=colour)
    kind.practitioners.set(practitioners)
    return kind


def book(practitioner, patient, kind, start, **kwargs):
    """A booking through the service (``scheduling.services.appointment_book``), by the system."""
    with system_context("tests"):
        return scheduling_services.appointment_book(
            practitioner=practitioner, patient=patient, appointment_type=kind, start=start, actor=None, **kwargs
        )


def make_appointment(patient, practitioner_user, *, reason: str = "Douleur au genou droit", day: int = 5, **kwargs):
    """An appointment of the patient with this account's practitioner (its profile created, open
    every day, if it has none), on 2026-01-``day`` at 9:00 UTC, with an encrypted reason,
    booked through the service."""
    doctor = Practitioner.objects.filter(user=practitioner_user).first() or make_doctor(practitioner_user, "Dr Martin")
    kind = AppointmentType.objects.filter(practitioners=doctor).first() or make_type(doctor)
    start = datetime.datetime(2026, 1, day, 9, tzinfo=datetime.UTC)
    return book(doctor, patient, kind, start, reason=reason, **kwargs)


# ---------------------------------------------------------------------------------------------
# Patients

PATIENT = {
    "last_name": "Lefèvre",
    "first_names": "Anne-Marie",
    "sex": "F",
    "birth_date": datetime.date(1984, 3, 9),
    "phone_mobile": "+33612345678",
    "email": "anne-marie.lefevre@example.fr",
    "nir": "284037511512331",
    "address": "12 rue des Lilas",
    "postal_code": "75011",
    "city": "Paris",
}


def make_patient(**overrides) -> Patient:
    """A patient created through the service (``patients.services.patient_create``), as the
    front desk would: Anne-Marie Lefèvre unless told otherwise."""
    with system_context("tests:fixture"):
        return patient_create(data={**PATIENT, **overrides}, actor=None)


def valid_nir(body: str) -> str:
    """A social security number (NIR) with its key: ``body`` is its first 13 characters."""
    return body + nir_key(body)


# ---------------------------------------------------------------------------------------------
# Reading the trail

PATIENT_FIELDS = frozenset(f.name for f in encrypted_fields(Patient))
AUDIT_INSERT = 'INSERT INTO "audit_auditevent"'


def reads(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=EventType.READ, **filters).order_by("id"))


def read_map(**filters) -> dict[tuple[str, str], set[str]]:
    """(model label, primary key) -> decrypted field names, one entry per READ row.

    Fails if a row was recorded twice: each decrypted row is one audit row.
    """
    found: dict[tuple[str, str], set[str]] = {}
    for event in reads(**filters):
        key = (event.model_label, event.object_pk)
        assert key not in found, f"{key} recorded twice"
        found[key] = set(event.fields)
    return found


def patient_key(patient) -> tuple[str, str]:
    return ("patients.Patient", str(patient.pk))


def audit_inserts(captured) -> int:
    """INSERT statements into the trail among queries captured by CaptureQueriesContext (on
    PostgreSQL, a request's reads are inserted by a statement that also upserts the read
    budget's tally: ``WITH trail AS (INSERT INTO "audit_auditevent" ...``)."""
    return sum(
        1
        for q in captured.captured_queries
        if q["sql"].lstrip().removeprefix("WITH trail AS (").startswith(AUDIT_INSERT)
    )


# ---------------------------------------------------------------------------------------------
# Behind the application's back: raw SQL, the trail's owner, plaintext anywhere in the database
# (what an attacker with database access, or a bad migration, does)


def _db_pk(pk):
    return Patient._meta.pk.get_db_prep_value(pk, connection)


def raw_patient_column(pk, column: str):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM patients_patient WHERE id = %s", [_db_pk(pk)])
        return cursor.fetchone()[0]


def raw_patient_set(pk, column: str, value) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE patients_patient SET {column} = %s WHERE id = %s", [value, _db_pk(pk)])
        assert cursor.rowcount == 1


def _cell_text(value) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def plaintext_in_database(needles: list[str]) -> list[tuple[str, str, str]]:
    """Every (table, column, needle) where a cell of any table holds a needle (case-insensitive).

    Session payloads are signed and base64-encoded: they are decoded before the scan.
    """
    wanted = [n.casefold() for n in needles]
    hits = []
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {quote(table)}")
            columns = [c[0] for c in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    text = _cell_text(value)
                    if table in ("django_session", "practice_usersession") and column == "session_data":
                        text += repr(SessionStore().decode(text))
                    folded = text.casefold()
                    hits.extend((table, column, n) for n in wanted if n in folded)
    return hits


# When DATABASE_OWNER_URL is set (CI), the suite runs as the app's role, which does not own the
# trail (root conftest.py, ``django_db_setup``). Filled by the conftest's fixtures: the owner's
# name and both roles' credentials.
TEST_ROLES: dict = {}


@contextlib.contextmanager
def trail_owner(cursor):
    """Statements on ``cursor`` run as the trail's owner (PostgreSQL), what tests that play the
    attacker or break the database need. When the suite runs as the app's role (which does not
    own the trail: ``DATABASE_OWNER_URL``, see ``django_db_setup`` in the root conftest) this is
    ``SET ROLE`` to the owner: the test set-up makes the app's role a NOINHERIT member of the
    owner, so it has none of the owner's rights unless it asks, and only tests ask."""
    if connection.vendor != "postgresql":
        yield cursor
        return
    cursor.execute("SELECT tableowner, current_user FROM pg_tables WHERE tablename = 'audit_auditevent'")
    owner, user = cursor.fetchone()
    if owner == user:
        yield cursor
        return
    cursor.execute(f"SET ROLE {connection.ops.quote_name(owner)}")
    try:
        yield cursor
    finally:
        if connection.connection.info.transaction_status != 3:  # not in a failed transaction
            cursor.execute("RESET ROLE")


@contextlib.contextmanager
def trail_tampering():
    """A cursor that gets past the trail's protection as its owner does (PostgreSQL: the
    owner's rights and the triggers disabled, in the caller's transaction if there is one);
    on SQLite nothing stands in the way."""
    with connection.cursor() as cursor, trail_owner(cursor):
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        try:
            yield cursor
        finally:
            if connection.vendor == "postgresql" and connection.connection.info.transaction_status != 3:
                cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


# ---------------------------------------------------------------------------------------------
# Logins refused: the lockout (django-axes, practice/lockout.py)

ATTACKER = "203.0.113.66"  # TEST-NET-3: where the attacks come from
LOCKED_URL = "/admin/axes/accessattempt/"  # the lockouts in admin


def login_post(username: str, password: str, ip: str = ATTACKER, client: Client | None = None):
    """One attempt on the login page (the password step alone), from ``ip``."""
    client = client or Client()
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def login_page_text(response, username: str = "") -> str:
    """The login page without what legitimately differs between two requests: the CSRF token,
    and the username the form echoes back."""
    body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', 'name="csrfmiddlewaretoken" value=""', response.text)
    return body.replace(username, "USERNAME") if username else body


def elapse(delta: datetime.timedelta) -> None:
    """Time passes for the lockout alone: every stored attempt and counter moves ``delta`` back
    (explicit timestamps, not the clock: the sessions and the rest of the test stay as they are)."""
    for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= delta
        attempt.save(update_fields=["attempt_time"])
    for throttle in LoginThrottle.objects.all():
        throttle.window_started_at -= delta
        throttle.retry_at -= delta
        throttle.save(update_fields=["window_started_at", "retry_at"])


# ---------------------------------------------------------------------------------------------
# A local server answering like Brevo (the SMS and e-mail provider)

BREVO_API_KEY = "xkeysib-test-0123456789"


class FakeBrevo(ThreadingHTTPServer):
    """Records each request and answers with ``self.answer``: (status, JSON body), or
    ("slow", seconds) to stay silent that long."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _BrevoHandler)
        self.requests: list[dict] = []
        self.answer: tuple = (201, {"messageId": 1511882900176220})
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v3/transactionalSMS/send"


class _BrevoHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "json": json.loads(self.rfile.read(length)),
            }
        )
        status, payload = self.server.answer
        if status == "slow":
            self.server.released.wait(payload)
            return
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


# ---------------------------------------------------------------------------------------------
# Waiting for another process or thread (never for time to pass: tests move the clock with
# time-machine)


def wait_until(predicate, what: str, *, timeout: float = 60, interval: float = 0.05) -> None:
    """Poll until ``predicate()`` holds: a worker, a server, a subprocess or a thread doing its
    part. The deadline only bounds the wait; it never decides the outcome."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Celery

# Real Celery workers on Redis (the CI broker, or a local Redis): each test on a queue of its own.
TEST_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/15"


@contextlib.contextmanager
def celery_eager(eager: bool = True):
    """Tasks run in the caller's process (``eager``, the embedded default without a broker) or
    are published to the broker, errors propagating; the app's settings come back after."""
    saved = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = eager, True
    try:
        yield celery_app
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = saved


def broker_connections_drop(app) -> None:
    """Connections are pooled per app: drop them so the next use reads the broker URL afresh."""
    pools.reset()
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


class TaskRuns:
    """Counts task runs by name, as the worker reports them (connected to Celery's
    ``task_postrun`` by the ``finished`` fixture)."""

    def __init__(self):
        self.runs: list[tuple[str, str, object]] = []
        self.changed = threading.Condition()

    def __call__(self, task=None, state=None, retval=None, **kwargs):
        with self.changed:
            self.runs.append((task.name.rsplit(".", 1)[-1], state, retval))
            self.changed.notify_all()

    def wait_for(self, name: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(1 for n, _s, _r in self.runs if n == name) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"the worker ran {self.runs}, not {count} x {name}"
                self.changed.wait(left)
