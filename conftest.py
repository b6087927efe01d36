"""Shared test personas and helpers: the clinic's people, built in code.

Every test runs against the settings of production (DEBUG off) except for TLS redirects
(TLS ends at the proxy) and the static manifest (built by collectstatic at deploy).
"""

import contextlib
import datetime
import os
import uuid

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from audit.context import system_context
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, roles_sync

PASSWORD = "correct horse battery staple 42"  # noqa: S105 (test persona)


@pytest.fixture(scope="session", autouse=True)
def _no_tls_redirect_for_live_server():
    # The live server's middleware is built once per session, before function fixtures.
    from django.conf import settings

    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(scope="session", autouse=True)
def _no_stray_connections(django_db_setup, django_db_blocker):
    """Threads that ran real work (the live server, a Celery worker, concurrent bookings) can
    leave a connection open; end them so the test database can be dropped at the end."""
    yield
    with django_db_blocker.unblock():
        from django.db import connection

        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


# When DATABASE_OWNER_URL is set (CI), the suite runs as the app's role, DATABASE_URL's user,
# which does not own the audit trail, as in production (docs/operations.md): the owner
# creates and migrates the test database, the app's role gets its grants (what
# `manage.py db_app_role` gives), and from then on every connection of the tests (threads,
# live server, Celery workers) is the app's role. The owner comes back to flush (transactional
# tests), to drop the database at the end, and for the tests of OWNER_TESTS. Filled by the
# fixtures below: the owner's name and both roles' credentials.
TEST_ROLES: dict = {}

# Test files that break the database on purpose with the owner's rights (a trigger or a
# constraint added to the trail, ALTER DATABASE, LOCK TABLE ... ACCESS EXCLUSIVE), on
# Django's connection or on connections of their own made with its parameters: they run as
# the owner, whole. To run one as the app's role, do its DDL in ``trail_owner`` (Django's
# connection) or connect as ``TEST_ROLES["owner_credentials"]``, and take it off this list.
OWNER_TESTS = (
    "audit/tests/test_fail_closed.py",
    "audit/tests/test_trail_lock.py",
    "practice/tests/test_database_errors.py",
    "scheduling/tests/test_reminders_faults.py",
)


def _connect_as(who: str) -> None:
    """Point the default connection at the owner or the app's role (closing it: the next
    query reconnects). Between tests only: no transaction is open then."""
    from django.db import connection

    from audit.management.commands.db_app_role import CREDENTIALS

    credentials = TEST_ROLES["owner_credentials"] if who == "owner" else TEST_ROLES["app"]
    if TEST_ROLES.get("connected") != who:
        connection.close()
        connection.settings_dict.update({key: credentials[key] for key in CREDENTIALS})
        TEST_ROLES["connected"] = who


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    from django.conf import settings
    from django.db import connections

    from audit.management.commands.db_app_role import CREDENTIALS

    owner = settings.DATABASE_OWNER
    default = settings.DATABASES["default"]
    if owner and default["ENGINE"] == "django.db.backends.postgresql" and owner["USER"] != default["USER"]:
        app = {key: default.get(key) for key in CREDENTIALS}
        connections["default"].close()
        default.update({key: owner.get(key) or app[key] for key in CREDENTIALS})
        TEST_ROLES.update(owner=owner["USER"], owner_credentials=dict(default), app=app, connected="owner")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's set-up, then (with DATABASE_OWNER_URL) the switch to the app's role.

    The app's role is also made a NOINHERIT member of the owner: it has none of the owner's
    rights, but tests that play the attacker or break the database can ``SET ROLE`` to it
    (``trail_owner``); the app never does. Revoked at the end."""
    if "app" not in TEST_ROLES:
        yield
        return
    from django.db import connection

    from audit.management.commands.db_app_role import app_role_grant

    app, quote = TEST_ROLES["app"], connection.ops.quote_name
    with django_db_blocker.unblock():
        app_role_grant(connection, app["USER"], password=app["PASSWORD"] or "")
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER ROLE {quote(app['USER'])} NOINHERIT")
            cursor.execute(f"GRANT {quote(TEST_ROLES['owner'])} TO {quote(app['USER'])}")
        # The test being set up may be one of OWNER_TESTS (pytest_runtest_setup below).
        _connect_as("owner" if TEST_ROLES.get("owner_test") else "app")
    yield
    with django_db_blocker.unblock():
        _connect_as("owner")
        with connection.cursor() as cursor:
            cursor.execute(f"REVOKE {quote(TEST_ROLES['owner'])} FROM {quote(app['USER'])}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    # Before the test's fixtures (its transaction among them): the owner for OWNER_TESTS.
    TEST_ROLES["owner_test"] = item.nodeid.split("::")[0] in OWNER_TESTS
    if TEST_ROLES.get("connected"):
        _connect_as("owner" if TEST_ROLES["owner_test"] else "app")
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    # After the test's fixtures (its rollback or flush): back to the app's role.
    if TEST_ROLES.get("owner_test") and TEST_ROLES.get("connected") == "owner" and nextitem is not None:
        TEST_ROLES["owner_test"] = False
        _connect_as("app")
    return result


@pytest.fixture(scope="session", autouse=True)
def _flush_past_the_trail_trigger():
    """Transactional tests end with ``flush``: one TRUNCATE of every table, which the trail's
    append-only trigger refuses (PostgreSQL, audit migration 0007). In the test database
    only, the flush disables that trigger around its TRUNCATE, in the flush's own
    transaction (so the trigger is back even if the TRUNCATE fails), as the owner when the
    suite runs as the app's role (which may neither TRUNCATE the trail nor alter it).
    Production keeps it: a flush there is refused, as it should be. On both databases the
    chain's tip (audit/chain.py, not a model: Django's flush does not know it) goes with the
    trail, else the next test's trail would start past ids that were never there."""
    from unittest import mock

    from django.db.backends.postgresql.operations import DatabaseOperations
    from django.db.backends.sqlite3.base import DatabaseOperations as SQLiteOperations  # (operations alone: a cycle)

    sql_flush, sqlite_flush = DatabaseOperations.sql_flush, SQLiteOperations.sql_flush

    def flush_with_trail(self, style, tables, **kwargs):
        statements = sql_flush(self, style, tables, **kwargs)
        if statements and "audit_auditevent" in tables:
            statements = [
                "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_trail_no_truncate;",
                *statements,
                "ALTER TABLE audit_auditevent ENABLE TRIGGER audit_trail_no_truncate;",
                "DELETE FROM audit_chaintip;",
            ]
            if "owner" in TEST_ROLES:
                statements = [f"SET ROLE {self.quote_name(TEST_ROLES['owner'])};", *statements, "RESET ROLE;"]
        return statements

    def sqlite_flush_with_trail(self, style, tables, **kwargs):
        statements = sqlite_flush(self, style, tables, **kwargs)
        if statements and "audit_auditevent" in tables:
            statements = [*statements, "DELETE FROM audit_chaintip;"]
        return statements

    with (
        mock.patch.object(DatabaseOperations, "sql_flush", flush_with_trail),
        mock.patch.object(SQLiteOperations, "sql_flush", sqlite_flush_with_trail),
    ):
        yield


@pytest.fixture
def audit_trail_writable(db):
    """For tests whose set-up rewrites trail rows (deletes earlier reads, backdates an event):
    the append-only trigger (PostgreSQL) is off for the test, inside its transaction, so it
    comes back with the rollback. The app itself never gets this: only tests ask for it.
    When the suite runs as the app's role, the test runs as the trail's owner (``SET ROLE``
    in its transaction, undone by the rollback): the app's role may not rewrite the trail."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT tableowner, current_user FROM pg_tables WHERE tablename = 'audit_auditevent'")
            owner, user = cursor.fetchone()
            if owner != user:
                cursor.execute(f"SET LOCAL ROLE {connection.ops.quote_name(owner)}")
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_trail_append_only")
    return


@contextlib.contextmanager
def trail_owner(cursor):
    """Statements on ``cursor`` run as the trail's owner (PostgreSQL), what tests that play the
    attacker or break the database need. When the suite runs as the app's role (which does not
    own the trail: ``DATABASE_OWNER_URL``, see ``django_db_setup`` below) this is ``SET ROLE``
    to the owner: the test set-up makes the app's role a NOINHERIT member of the owner, so it
    has none of the owner's rights unless it asks, and only tests ask."""
    from django.db import connection

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
    from django.db import connection

    with connection.cursor() as cursor, trail_owner(cursor):
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        try:
            yield cursor
        finally:
            if connection.vendor == "postgresql" and connection.connection.info.transaction_status != 3:
                cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


@pytest.fixture(autouse=True)
def _test_settings(settings):
    settings.SECURE_SSL_REDIRECT = False
    settings.LANGUAGE_CODE = "en"  # assertions read English; French has its own tests
    # Password hashing strength is not under test here; the default hasher costs 0.3 s a user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def roles(db):
    return roles_sync()


def _user(username: str, role: str | None, **extra) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, **extra)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def secretary(roles):
    return _user("sophie.secretary", SECRETARY)


@pytest.fixture
def practitioner(roles):
    return _user("dr.martin", PRACTITIONER)


@pytest.fixture
def other_practitioner(roles):
    return _user("dr.bernard", PRACTITIONER)


@pytest.fixture
def practice_admin(roles):
    return _user("alice.admin", PRACTICE_ADMIN, is_staff=True)


@pytest.fixture
def outsider(roles):
    return _user("olivier.outsider", None)


def totp_device(user):
    """The user's confirmed authenticator (created on first use), as enrolment leaves it."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)


def totp_code(device) -> str:
    """The code the user's phone shows now."""
    from django_otp.oath import TOTP

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
    from django_otp import DEVICE_ID_SESSION_KEY

    client = Client()
    client.force_login(user)
    if verified:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = totp_device(user).persistent_id
        session.save()
    return client


@pytest.fixture
def audit_ctx():
    """An open audit context for tests that read encrypted fields outside a request."""
    with system_context("tests") as ctx:
        yield ctx


def make_patient(**overrides):
    """A patient created through the service (as the front desk would)."""
    from patients.services import patient_create

    data = {
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
    data.update(overrides)
    with system_context("tests:fixture"):
        return patient_create(data=data, actor=None)


@pytest.fixture
def patient(db):
    return make_patient()


# Real Celery workers on Redis (the CI broker, or a local Redis): each test on a queue of its own.
TEST_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/15"


def broker_connections_drop(app) -> None:
    """Connections are pooled per app: drop them so the next use reads the broker URL afresh."""
    from kombu import pools

    pools.reset()
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@pytest.fixture
def celery_app():
    """The project's Celery app, not eager, publishing to and consuming from a queue of this
    test's own (no other worker on the broker takes its tasks, and its worker takes no one
    else's). Yields (app, queue); ``app.conf.broker_url`` may be changed by the test."""
    from config.celery import app

    queue = f"cabinet-tests-{uuid.uuid4().hex}"
    overrides = {
        "broker_url": TEST_BROKER_URL,
        "task_always_eager": False,
        "task_default_queue": queue,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": False,
    }
    saved = {key: app.conf[key] for key in overrides}
    broker_connections_drop(app)
    app.conf.update(overrides)
    try:
        yield app, queue
    finally:
        broker_connections_drop(app)
        app.conf.broker_url = TEST_BROKER_URL
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        broker_connections_drop(app)
        app.conf.update(saved)
