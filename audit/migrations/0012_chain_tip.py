"""The chain's tip: the largest trail id ever drawn, so that ids have no gaps and a gap is a removal.

Before, PostgreSQL drew the trail's ids from its sequence, which a rolled-back transaction
does not give back: gaps were normal, so ``audit_verify`` could not report them, and rows cut
from the tail left no trace until a head had been exported. From here on the chain draws ids
itself, under its lock, from ``audit_chaintip`` (one row): ``last_id`` is the largest id
drawn and committed, in the writer's transaction, so a rollback gives the ids back and a
removed row leaves a gap (audit/chain.py). ``gap_free_after`` is the largest id drawn when
this migration ran: gaps at or below it may be rolled-back writes of before, and are not
reported.

The table is not a model: nothing but the chain reads or writes it (SQL in audit/chain.py).
"""

from django.db import migrations

# The chain writers' PostgreSQL advisory lock, frozen from audit/chain.py (a migration runs the
# code of its own time, never the live module's).
ADVISORY_LOCK_ID = 0x6175646974
CREATE_SQL = """
CREATE TABLE audit_chaintip (
    id integer PRIMARY KEY CHECK (id = 1),
    last_id bigint NOT NULL,
    gap_free_after bigint NOT NULL
)
"""


def tip_create(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # No writer is between drawing an id and committing while the tip is set.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_ID])
            # The sequence may be past the largest row (rolled-back writes, a deleted tail).
            cursor.execute("SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_auditevent', 'id')::regclass)")
        else:
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_auditevent'")
        drawn = cursor.fetchone()
        cursor.execute("SELECT MAX(id) FROM audit_auditevent")
        # Never an id drawn before: the tip starts at the largest of the two.
        last_id = max((drawn[0] if drawn else None) or 0, cursor.fetchone()[0] or 0)
        cursor.execute(CREATE_SQL)
        cursor.execute(
            "INSERT INTO audit_chaintip (id, last_id, gap_free_after) VALUES (1, %s, %s)", [last_id, last_id]
        )


def tip_drop(apps, schema_editor):
    schema_editor.execute("DROP TABLE IF EXISTS audit_chaintip")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0011_explained_reads"),
    ]

    operations = [
        migrations.RunPython(tip_create, tip_drop),
    ]
