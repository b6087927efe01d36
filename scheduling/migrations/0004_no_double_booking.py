"""No double booking on PostgreSQL: an exclusion constraint over practitioner and time range
for active appointments (btree_gist gives GiST the `=` operator on integers).

SQLite has no exclusion constraints: there, scheduling.services books inside immediate
transactions (DATABASES OPTIONS transaction_mode=IMMEDIATE), which serialize writers.
"""

from django.contrib.postgres.operations import BtreeGistExtension
from django.db import migrations

CONSTRAINT = """
ALTER TABLE scheduling_appointment
ADD CONSTRAINT appointment_no_overlap
EXCLUDE USING gist (practitioner_id WITH =, tstzrange("start", "end", '[)') WITH &&)
WHERE (status IN ('booked', 'arrived', 'in_consultation', 'done'))
"""


def add_constraint(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CONSTRAINT)


def drop_constraint(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE scheduling_appointment DROP CONSTRAINT appointment_no_overlap")


class Migration(migrations.Migration):
    dependencies = [("scheduling", "0003_appointment_types_hours_absences")]

    operations = [
        BtreeGistExtension(),
        migrations.RunPython(add_constraint, drop_constraint),
    ]
