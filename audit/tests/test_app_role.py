"""The app runs as a PostgreSQL role that does not own the audit trail.

The trail's triggers refuse UPDATE, DELETE and TRUNCATE, but the table's owner can turn them
off. So the app's role (``DATABASE_URL``) is not the owner: it may read and append to the
trail and nothing more, and PostgreSQL itself refuses the rest. ``manage.py db_app_role``
gives it exactly that; ``manage.py migrate`` runs as the owner (``DATABASE_OWNER_URL``).

With ``DATABASE_OWNER_URL`` set (CI), the whole suite already runs as the app's role
(conftest.py): the tests here use that role. Without it, each test makes a role of its own
with ``db_app_role`` and connects as it, the current user standing in for the owner.
"""

import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.db.models.signals import pre_migrate

from audit.keys import canary_write
from audit.management.commands.db_app_role import CREDENTIALS
from audit.models import AuditEvent, EventType
from audit.services import audit_event_write

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="database roles are PostgreSQL's; SQLite has the chain alone"
)


def user_and_owner() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, tableowner FROM pg_tables WHERE tablename = 'audit_auditevent'")
        return cursor.fetchone()


@pytest.fixture
def app_role(transactional_db, settings):
    """(app's role, owner), the default connection being the app's role and
    ``settings.DATABASE_OWNER`` the owner, as in production."""
    user, owner = user_and_owner()
    if user != owner:  # the suite runs as the app's role
        yield user, owner
        return
    role = f"cabinet_test_{uuid.uuid4().hex[:10]}"
    call_command("db_app_role", role, stdout=io.StringIO())
    saved = {key: connection.settings_dict.get(key) for key in CREDENTIALS}
    settings.DATABASE_OWNER = {**saved, "NAME": ""}
    connection.close()
    connection.settings_dict.update(USER=role, PASSWORD="")
    try:
        yield role, owner
    finally:
        connection.close()
        connection.settings_dict.update(saved)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def write_events(n: int) -> list[AuditEvent]:
    return [audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": f"u{i}"}) for i in range(n)]


REFUSED = [
    "UPDATE audit_auditevent SET actor_username = 'someone.else'",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_trail_append_only",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
    "DROP TRIGGER audit_trail_append_only ON audit_auditevent",
    "DROP TABLE audit_auditevent",
    "SET session_replication_role = replica",  # how a superuser gets past triggers
    "DELETE FROM audit_chaintip",  # the chain's tip, which shows a cut tail
    "DELETE FROM audit_audithead",
]


def test_postgresql_refuses_the_app_role_every_way_to_rewrite_the_trail(app_role):
    role, _owner = app_role
    canary_write()
    events = write_events(3)  # the app's role writes the chain: trail, tip, sequence
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (role, False)

    refused = {}
    for statement in REFUSED:
        with pytest.raises(DatabaseError) as failure, transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
        refused[statement] = str(failure.value).splitlines()[0]

    assert all(("permission denied" in why or "must be owner" in why) for why in refused.values()), refused
    assert list(AuditEvent.objects.order_by("id").values_list("id", "mac")) == [(e.pk, e.mac) for e in events]
    out = io.StringIO()
    call_command("audit_verify", stdout=out, stderr=io.StringIO())
    assert "chain is intact" in out.getvalue()


def test_db_app_role_is_idempotent_and_grants_what_the_app_needs(app_role):
    role, owner = app_role
    out = io.StringIO()
    for _ in range(2):
        call_command("db_app_role", role, stdout=out)
    assert f"{role}: SELECT and INSERT on the audit trail" in out.getvalue()

    def privileges(table: str) -> set[str]:
        kinds = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT k FROM unnest(%s::text[]) AS k WHERE has_table_privilege(%s, %s, k)", [list(kinds), role, table]
            )
            return {k for (k,) in cursor.fetchall()}

    assert privileges("audit_auditevent") == {"SELECT", "INSERT"}
    assert privileges("audit_chaintip") == {"SELECT", "INSERT", "UPDATE"}
    assert privileges("audit_audithead") == {"SELECT", "INSERT", "UPDATE"}
    assert privileges("patients_patient") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tableowner = %s", [role])
        assert cursor.fetchone() == (0,)
        # What the owner creates later is the app's too (a migration never locks the app out).
        cursor.execute(
            "SELECT d.defaclobjtype, array_agg(a.privilege_type ORDER BY a.privilege_type) "
            "FROM pg_default_acl AS d, aclexplode(d.defaclacl) AS a "
            "WHERE a.grantee = %s::regrole AND d.defaclrole = %s::regrole GROUP BY d.defaclobjtype",
            [role, owner],
        )
        assert dict(cursor.fetchall()) == {
            "r": ["DELETE", "INSERT", "SELECT", "UPDATE"],
            "S": ["SELECT", "UPDATE", "USAGE"],
        }

    with pytest.raises(CommandError, match="owns the audit trail"):
        call_command("db_app_role", owner, stdout=io.StringIO())


def test_migrate_runs_as_the_owner_and_the_app_is_itself_again_after(app_role):
    role, owner = app_role
    seen = set()

    def who(sender, using, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            seen.add(cursor.fetchone()[0])

    pre_migrate.connect(who, weak=False, dispatch_uid="test_app_role")
    try:
        call_command("migrate", verbosity=0)
    finally:
        pre_migrate.disconnect(dispatch_uid="test_app_role")

    assert seen == {owner}
    assert user_and_owner() == (role, owner)
