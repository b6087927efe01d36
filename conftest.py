"""The suite's fixtures: the database set-up (owner and app's role), the test settings, and the
personas and clinic of config/testing.py handed out as fixtures. Helpers are not imported from
here: tests import them from config.testing.

Every test runs against the settings of production (DEBUG off) except for TLS redirects
(TLS ends at the proxy) and the static manifest (built by collectstatic at deploy).
"""

import threading
import uuid
from unittest import mock

import pytest
from celery.signals import task_postrun
from django.conf import settings as django_settings
from django.db import connection, connections
from django.db.backends.postgresql.operations import DatabaseOperations
from django.db.backends.sqlite3.base import DatabaseOperations as SQLiteOperations  # (operations alone: a cycle)

from audit.context import system_context
from audit.management.commands.db_app_role import CREDENTIALS, app_role_grant
from config.celery import app as celery_project_app
from config.testing import (
    TEST_BROKER_URL,
    TEST_ROLES,
    TaskRuns,
    broker_connections_drop,
    celery_eager,
    make_patient,
    persona,
    superuser_create,
)
from practice.roles import roles_sync


@pytest.fixture(scope="session", autouse=True)
def _no_tls_redirect_for_live_server():
    # The live server's middleware is built once per session, before function fixtures.
    django_settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(scope="session", autouse=True)
def _no_stray_connections(django_db_setup, django_db_blocker):
    """Threads that ran real work (the live server, a Celery worker, concurrent bookings) can
    leave a connection open; end them so the test database can be dropped at the end."""
    yield
    with django_db_blocker.unblock():
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
# tests), to drop the database at the end, and for the tests of OWNER_TESTS. The fixtures below
# fill config.testing.TEST_ROLES: the owner's name and both roles' credentials.

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
    credentials = TEST_ROLES["owner_credentials"] if who == "owner" else TEST_ROLES["app"]
    if TEST_ROLES.get("connected") != who:
        connection.close()
        connection.settings_dict.update({key: credentials[key] for key in CREDENTIALS})
        TEST_ROLES["connected"] = who


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    owner = django_settings.DATABASE_OWNER
    default = django_settings.DATABASES["default"]
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
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT tableowner, current_user FROM pg_tables WHERE tablename = 'audit_auditevent'")
            owner, user = cursor.fetchone()
            if owner != user:
                cursor.execute(f"SET LOCAL ROLE {connection.ops.quote_name(owner)}")
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_trail_append_only")
    return


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


@pytest.fixture
def secretary(roles):
    return persona("secretary")


@pytest.fixture
def practitioner(roles):
    return persona("practitioner")


@pytest.fixture
def other_practitioner(roles):
    return persona("other_practitioner")


@pytest.fixture
def practice_admin(roles):
    return persona("practice_admin")


@pytest.fixture
def outsider(roles):
    return persona("outsider")


@pytest.fixture
def superuser(roles):
    return superuser_create()


@pytest.fixture
def audit_ctx():
    """An open audit context for tests that read encrypted fields outside a request."""
    with system_context("tests") as ctx:
        yield ctx


@pytest.fixture
def patient(db):
    return make_patient()


@pytest.fixture
def eager():
    """Celery as in the embedded default (no broker): tasks run in the caller's process, errors
    propagate (CI may point the suite at a broker). Yields the app."""
    with celery_eager(True) as app:
        yield app


@pytest.fixture
def queued():
    """Celery with a broker: tasks are published (tests replace the publishing, or run a worker)."""
    with celery_eager(False) as app:
        yield app


@pytest.fixture
def celery_app():
    """The project's Celery app, not eager, publishing to and consuming from a queue of this
    test's own (no other worker on the broker takes its tasks, and its worker takes no one
    else's). Yields (app, queue); ``app.conf.broker_url`` may be changed by the test."""
    app = celery_project_app
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


@pytest.fixture
def finished_tasks():
    """Task id -> (state, return value, ran eagerly, thread), as reported after each run."""
    done: dict[str, tuple] = {}
    finished = threading.Event()

    def on_postrun(task_id=None, task=None, state=None, retval=None, **kwargs):
        done[task_id] = (state, retval, bool(task.request.is_eager), threading.get_ident())
        finished.set()

    task_postrun.connect(on_postrun, weak=False)
    try:
        yield done, finished
    finally:
        task_postrun.disconnect(on_postrun)


@pytest.fixture
def finished():
    """The runs of the tasks, as the worker reports them (``config.testing.TaskRuns``)."""
    tracker = TaskRuns()
    task_postrun.connect(tracker, weak=False)
    try:
        yield tracker
    finally:
        task_postrun.disconnect(tracker)
