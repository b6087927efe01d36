"""The event type without its choices in the migration state (``audit.models.EventTypeField``).

A new ``EventType`` member used to need a migration re-listing every type; from here on the
state holds a plain small integer and the choices live on the model field only (validation,
forms, the admin). No SQL on either database: choices are not part of the schema.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0012_chain_tip"),
    ]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="event_type",
            field=models.PositiveSmallIntegerField(verbose_name="event"),
        ),
    ]
