"""A lock held on the trail: the fault campaign held
``LOCK TABLE audit_auditevent IN ACCESS EXCLUSIVE MODE`` for 30 s, and every gunicorn worker
waited the 30 s with it (no lock or statement timeout), longer than gunicorn's own timeout.

Every connection now waits at most ``DATABASE_LOCK_TIMEOUT`` for a lock and runs a statement
at most ``DATABASE_STATEMENT_TIMEOUT`` (config/settings.py); a page that needs the trail then
answers the 503 "cannot be shown" page within about the lock timeout, with nothing of the
patient in it, and pages that do not need the trail are served as usual meanwhile.

PostgreSQL only: SQLite has no table lock another session can hold (its writers queue on the
database's write lock, bounded by its busy timeout, and readers are never blocked in WAL mode).
"""

import contextlib
import threading
import time

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.urls import reverse

from config.testing import TEST_ROLES, client_for, make_patient, reads

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite has no table lock that another session can hold (writers queue on its busy timeout)",
)

# Anne-Marie Lefèvre (config.testing.make_patient) as her record page would show her.
ANNE = ["Lefèvre", "LEFÈVRE", "Anne-Marie", "1984"]
# How long past the lock timeout a withheld page may take: the rest of the request, on a busy
# machine (two shared cores in CI).
SLACK_SECONDS = 3.0


@contextlib.contextmanager
def trail_locked(*, hold_at_most: float):
    """Another session takes ACCESS EXCLUSIVE on the trail, as the fault campaign did, and
    keeps it until the block ends, or ``hold_at_most`` seconds at the latest (so that, without
    a lock timeout, the request waiting on it ends instead of waiting for this very block)."""
    # As the trail's owner (config.testing.TEST_ROLES when the suite runs as the app's role, which may
    # only read and append to the trail, so cannot lock it this way).
    credentials = TEST_ROLES.get("owner_credentials") or connection.settings_dict
    holder = psycopg.connect(
        dbname=connection.settings_dict["NAME"],
        user=credentials["USER"],
        password=credentials["PASSWORD"] or None,
        host=credentials["HOST"] or None,
        port=credentials["PORT"] or None,
    )
    released = threading.Lock()

    def release() -> None:
        if released.acquire(blocking=False):
            holder.rollback()

    holder.execute("LOCK TABLE audit_auditevent IN ACCESS EXCLUSIVE MODE")  # a transaction until released
    timer = threading.Timer(hold_at_most, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        release()
        holder.close()


@pytest.mark.django_db
def test_every_connection_waits_for_locks_and_runs_statements_only_so_long():
    # A connection as Django opens one for each request (CONN_MAX_AGE=0), with its parameters.
    fresh = connection.get_new_connection(connection.get_connection_params())
    try:
        found = dict(
            fresh.execute(
                "SELECT name, setting::float / 1000 FROM pg_settings "
                "WHERE name IN ('lock_timeout', 'statement_timeout')"
            ).fetchall()
        )
    finally:
        fresh.close()

    assert settings.DATABASE_LOCK_TIMEOUT > 0
    assert 0 < settings.DATABASE_STATEMENT_TIMEOUT < 30  # under gunicorn's worker timeout
    assert found == {
        "lock_timeout": settings.DATABASE_LOCK_TIMEOUT,
        "statement_timeout": settings.DATABASE_STATEMENT_TIMEOUT,
    }


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_record_is_withheld_within_the_lock_timeout_while_the_trail_is_locked(secretary):
    anne = make_patient()
    client = client_for(secretary)  # logging in writes to the trail: before the lock
    client.raise_request_exception = False
    lock_timeout = settings.DATABASE_LOCK_TIMEOUT

    with trail_locked(hold_at_most=lock_timeout + 10):
        started = time.monotonic()
        response = client.get(reverse("patients:detail", args=[anne.pk]))
        elapsed = time.monotonic() - started

    body = response.content.decode()
    assert response.status_code == 503, (response.status_code, f"{elapsed:.1f} s")
    assert elapsed < lock_timeout + SLACK_SECONDS, f"{elapsed:.1f} s"
    assert "This page cannot be shown right now" in body
    assert "no-store" in response["Cache-Control"]
    folded = body.casefold()
    assert not [value for value in ANNE if value.casefold() in folded]
    assert "Traceback" not in body
    assert "lock timeout" not in body

    # Once the lock is gone, the same record is served and its read recorded.
    again = client.get(reverse("patients:detail", args=[anne.pk]))
    assert again.status_code == 200
    assert "lefèvre" in again.content.decode().casefold()
    assert [r.object_pk for r in reads()] == [str(anne.pk)]


@pytest.mark.django_db(transaction=True)
def test_pages_that_do_not_need_the_trail_are_served_while_it_is_locked(secretary):
    client = client_for(secretary)

    with trail_locked(hold_at_most=settings.DATABASE_LOCK_TIMEOUT + 10):
        started = time.monotonic()
        account = client.get(reverse("account"))
        login_page = Client().get(reverse("login"))
        elapsed = time.monotonic() - started

    assert account.status_code == 200
    assert "sophie.secretary" in account.content.decode()
    assert login_page.status_code == 200
    assert elapsed < min(2.0, settings.DATABASE_LOCK_TIMEOUT), f"{elapsed:.1f} s"
