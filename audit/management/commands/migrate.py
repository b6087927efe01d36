"""``manage.py migrate`` as the database's owner, then the app's grants.

Rule enforced here: migrations run as the owner of the tables (``DATABASE_OWNER_URL``) when
it is set, never as the app's role, which cannot create or alter tables, and must not: it
would own what it creates, the audit trail included. After migrating, the app's role (the
user of ``DATABASE_URL``) gets its privileges again (``manage.py db_app_role``), so new
tables are covered at once. Without ``DATABASE_OWNER_URL`` this is Django's ``migrate``.
"""

from __future__ import annotations

from django.core.management.commands import migrate
from django.db import connections

from audit.management.commands.db_app_role import app_role_grant, as_owner


class Command(migrate.Command):
    help = (
        "Django's migrate, as the database's owner (DATABASE_OWNER_URL) when set; then grants the app's role "
        "(DATABASE_URL's user) its privileges."
    )

    def handle(self, *args, **options):
        database = options["database"]
        with as_owner(database) as app:
            super().handle(*args, **options)
            if app is not None and not options.get("plan") and not options.get("check_unapplied"):
                for line in app_role_grant(connections[database], app["USER"], password=app["PASSWORD"] or ""):
                    if options["verbosity"] >= 1:
                        self.stdout.write(line)
