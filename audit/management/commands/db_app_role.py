"""Give the app a PostgreSQL role that does not own the audit trail, and keep its grants.

    manage.py db_app_role [ROLE]

Rules enforced here:
- The app's role (ROLE, by default the user of ``DATABASE_URL``) may read and append to the
  trail (``audit_auditevent``) and nothing more: no UPDATE, DELETE, TRUNCATE, REFERENCES or
  TRIGGER. It is not the trail's owner, so it cannot turn the trail's triggers off or alter
  the table either; it is refused if it owns a table, is a superuser or is the owner.
- It has full DML (SELECT, INSERT, UPDATE, DELETE) on every other table, USAGE, SELECT and
  UPDATE on the sequences, and the same on the tables and sequences the owner creates
  later (default privileges), so a migration never leaves the app locked out. Append-only
  bookkeeping of the trail keeps its DELETE revoked: the chain's tip (``audit_chaintip``) and
  the nightly check's heads (``audit_audithead``).
- It runs as the owner: the connection of ``DATABASE_OWNER_URL`` when set (the command
  switches to it), else ``DATABASE_URL``'s own user, which must then be the owner.
  Idempotent: run it again at any time; ``manage.py migrate`` runs it after migrating when
  ``DATABASE_OWNER_URL`` is set. A role that does not exist is created (LOGIN, NOINHERIT,
  with ``DATABASE_URL``'s password when it is that URL's user); creating one needs
  CREATEROLE.

``as_owner`` is the switch ``migrate`` uses too: docs/operations.md explains the set-up.
"""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.translation import gettext as _

# What the owner's URL replaces in the connection's settings (the database is the same).
CREDENTIALS = ("USER", "PASSWORD", "HOST", "PORT")
TRAIL = "audit_auditevent"
# The trail's bookkeeping: appended to (and the tip updated), never deleted from by the app.
NO_DELETE = ("audit_chaintip", "audit_audithead")


@contextlib.contextmanager
def as_owner(alias: str = DEFAULT_DB_ALIAS):
    """The connection ``alias`` as the database's owner (``settings.DATABASE_OWNER``) while the
    block runs, as the app's role again after it (both connections are closed at the switch).

    Yields the app's credentials it replaced (a dict: USER, PASSWORD, HOST, PORT), or None
    when there is nothing to switch: no owner set, not PostgreSQL, or already the owner.
    """
    owner = getattr(settings, "DATABASE_OWNER", None)
    connection = connections[alias]
    if not owner or connection.vendor != "postgresql" or owner["USER"] == connection.settings_dict["USER"]:
        yield None
        return
    if connection.in_atomic_block:
        raise CommandError(_("Cannot switch to the database's owner inside a transaction."))
    app = {key: connection.settings_dict.get(key) for key in CREDENTIALS}
    connection.close()
    connection.settings_dict.update({key: owner.get(key) or app[key] for key in CREDENTIALS})
    try:
        yield app
    finally:
        connection.close()
        connection.settings_dict.update(app)


def app_role_grant(connection, role: str, *, password: str = "") -> list[str]:
    """Create ``role`` if missing and give it the app's privileges (module docstring); run as
    the trail's owner. Returns what was done, in words."""
    quote = connection.ops.quote_name
    done = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_database(), current_schema()")
        user, database, schema = cursor.fetchone()
        cursor.execute("SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = %s", [schema, TRAIL])
        found = cursor.fetchone()
        if found is None:
            raise CommandError(_("No audit trail in this database: run manage.py migrate first."))
        owner = found[0]
        if role in (owner, user):
            raise CommandError(_("%(role)s owns the audit trail: the app must run as another role.") % {"role": role})
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
        found = cursor.fetchone()
        if found is None:
            cursor.execute(
                f"CREATE ROLE {quote(role)} LOGIN NOINHERIT" + (" PASSWORD %s" if password else ""),
                [password] if password else None,
            )
            done.append(_("role %(role)s created") % {"role": role})
        elif found[0]:
            raise CommandError(_("%(role)s is a superuser: the app must run as an ordinary role.") % {"role": role})
        elif password:
            cursor.execute(f"ALTER ROLE {quote(role)} PASSWORD %s", [password])
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tableowner = %s", [schema, role])
        owned = [name for (name,) in cursor.fetchall()]
        if owned:
            raise CommandError(
                _(
                    "%(role)s owns tables (%(tables)s): give them to the owner first, as a superuser: "
                    "REASSIGN OWNED BY %(role)s TO %(owner)s;"
                )
                % {"role": role, "tables": ", ".join(owned[:5]), "owner": owner}
            )
        r, s = quote(role), quote(schema)
        for statement in (
            f"GRANT CONNECT, TEMPORARY ON DATABASE {quote(database)} TO {r}",
            f"GRANT USAGE ON SCHEMA {s} TO {r}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
            f"REVOKE ALL ON {s}.{quote(TRAIL)} FROM {r}",
            f"REVOKE ALL ON {s}.{quote(TRAIL)} FROM PUBLIC",
            f"GRANT SELECT, INSERT ON {s}.{quote(TRAIL)} TO {r}",
            *(f"REVOKE DELETE, TRUNCATE ON {s}.{quote(name)} FROM {r}" for name in NO_DELETE),
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote(owner)} IN SCHEMA {s} "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote(owner)} IN SCHEMA {s} "
            f"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}",
        ):
            cursor.execute(statement)
    done.append(
        _(
            "%(role)s: SELECT and INSERT on the audit trail, full DML on the other tables of schema %(schema)s, "
            "the sequences, and the same on what %(owner)s creates later"
        )
        % {"role": role, "schema": schema, "owner": owner}
    )
    return done


class Command(BaseCommand):
    help = (
        "Create or update the app's PostgreSQL role: SELECT and INSERT on the audit trail only, full DML "
        "elsewhere; run as the owner (DATABASE_OWNER_URL). Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("role", nargs="?", default=None, help="the app's role (default: DATABASE_URL's user)")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the database alias (default: default)")

    def handle(self, *args, role, database, **options):
        connection = connections[database]
        if connection.vendor != "postgresql":
            raise CommandError(
                _("Database roles are PostgreSQL's: nothing to do on %(vendor)s.") % {"vendor": connection.vendor}
            )
        with as_owner(database) as app:
            configured = app or {key: connection.settings_dict.get(key) for key in ("USER", "PASSWORD")}
            role = role or configured["USER"]
            if not role:
                raise CommandError(_("Name the app's role (DATABASE_URL has no user)."))
            password = (configured["PASSWORD"] or "") if role == configured["USER"] else ""
            for line in app_role_grant(connection, role, password=password):
                self.stdout.write(line)
