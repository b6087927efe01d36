"""Emergencies squeezed in over an existing appointment, without weakening double booking for
everyone else.

`squeezed` marks an appointment booked over another one (scheduling.services, when the clinic
allows it, by the front desk, with a reason). The one exclusion constraint of migration 0004
becomes two, over the same practitioner and time range of active appointments:

- `appointment_no_overlap`: ordinary appointments (not squeezed) never overlap each other,
  exactly as before for every booking that is not a squeeze;
- `appointment_no_overlap_squeezed`: squeezed appointments never overlap each other.

So at any moment a practitioner holds at most one ordinary and one squeezed appointment: a
double booking at most, never a triple, whatever runs concurrently. That an ordinary booking
does not overlap a squeezed one is the service's check (the squeeze was made over a booking
anyway). SQLite has no exclusion constraints: there the services' checks run in immediate
transactions, which serialize writers (DATABASES OPTIONS transaction_mode=IMMEDIATE).

The two constraints are built over the whole table (GiST): the migration lifts the statement
timeout for its own transaction first (docs/contributing.md). Both are swapped in the same
transaction as the drop, under the table's lock: no booking commits in between.
"""

from django.db import migrations, models

ACTIVE = "status IN ('booked', 'arrived', 'in_consultation', 'done')"
OVERLAP = """(practitioner_id WITH =, tstzrange("start", "end", '[)') WITH &&)"""

FORWARD = [
    "ALTER TABLE scheduling_appointment DROP CONSTRAINT appointment_no_overlap",
    f"ALTER TABLE scheduling_appointment ADD CONSTRAINT appointment_no_overlap "
    f"EXCLUDE USING gist {OVERLAP} WHERE ({ACTIVE} AND NOT squeezed)",
    f"ALTER TABLE scheduling_appointment ADD CONSTRAINT appointment_no_overlap_squeezed "
    f"EXCLUDE USING gist {OVERLAP} WHERE ({ACTIVE} AND squeezed)",
]

# Back to migration 0004's one constraint: refused by the database while squeezed appointments
# still overlap others (cancel or move them first).
BACKWARD = [
    "ALTER TABLE scheduling_appointment DROP CONSTRAINT appointment_no_overlap_squeezed",
    "ALTER TABLE scheduling_appointment DROP CONSTRAINT appointment_no_overlap",
    f"ALTER TABLE scheduling_appointment ADD CONSTRAINT appointment_no_overlap EXCLUDE USING gist {OVERLAP} "
    f"WHERE ({ACTIVE})",
]


def no_statement_timeout(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET LOCAL statement_timeout = 0")


def constraints_split(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in FORWARD:
            schema_editor.execute(statement)


def constraints_join(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in BACKWARD:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("scheduling", "0008_reminder_claims"),
    ]

    operations = [
        migrations.RunPython(no_statement_timeout, no_statement_timeout),
        migrations.AddField(
            model_name="appointment",
            name="squeezed",
            field=models.BooleanField(
                default=False,
                help_text="Booked over another appointment as an emergency; the reason is in the audit trail.",
                verbose_name="squeezed in",
            ),
        ),
        migrations.RunPython(constraints_split, constraints_join),
    ]
