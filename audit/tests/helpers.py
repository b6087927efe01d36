"""Helpers for the Invariant 1 tests: reading the trail, raw SQL on encrypted columns,
and scanning the whole database for plaintext."""

from __future__ import annotations

import datetime

from django.db import connection

from audit.fields import encrypted_fields
from audit.models import AuditEvent, EventType
from patients.models import Patient
from patients.validators import nir_key

PATIENT_FIELDS = frozenset(f.name for f in encrypted_fields(Patient))
AUDIT_INSERT = 'INSERT INTO "audit_auditevent"'


def reads(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=EventType.READ, **filters).order_by("id"))


def read_map(**filters) -> dict[tuple[str, str], set[str]]:
    """(model label, primary key) -> decrypted field names, one entry per READ row.

    Fails if a row was recorded twice: each decrypted row is one audit row.
    """
    found: dict[tuple[str, str], set[str]] = {}
    for event in reads(**filters):
        key = (event.model_label, event.object_pk)
        assert key not in found, f"{key} recorded twice"
        found[key] = set(event.fields)
    return found


def patient_key(patient) -> tuple[str, str]:
    return ("patients.Patient", str(patient.pk))


def audit_inserts(captured) -> int:
    """INSERT statements into the trail among queries captured by CaptureQueriesContext (on
    PostgreSQL, a request's reads are inserted by a statement that also upserts the read
    budget's tally: ``WITH trail AS (INSERT INTO "audit_auditevent" ...``)."""
    return sum(
        1
        for q in captured.captured_queries
        if q["sql"].lstrip().removeprefix("WITH trail AS (").startswith(AUDIT_INSERT)
    )


def valid_nir(body: str) -> str:
    return body + nir_key(body)


def make_appointment(patient, practitioner_user, *, reason: str = "Douleur au genou droit", day: int = 5):
    """An appointment with an encrypted reason, with its practitioner and specialty."""
    from practice.models import Practitioner, Specialty
    from scheduling.models import Appointment

    specialty, _ = Specialty.objects.get_or_create(name="Médecine générale")
    doctor, _ = Practitioner.objects.get_or_create(
        user=practitioner_user, defaults={"display_name": "Dr Martin", "specialty": specialty}
    )
    start = datetime.datetime(2026, 1, day, 9, tzinfo=datetime.UTC)
    appointment = Appointment(
        practitioner=doctor,
        patient=patient,
        start=start,
        end=start + datetime.timedelta(minutes=20),
        reason=reason,
    )
    appointment.save()
    return appointment


# Raw SQL on encrypted columns: what an attacker with database access (or a bad migration) does.


def _db_pk(pk):
    return Patient._meta.pk.get_db_prep_value(pk, connection)


def raw_patient_column(pk, column: str):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM patients_patient WHERE id = %s", [_db_pk(pk)])
        return cursor.fetchone()[0]


def raw_patient_set(pk, column: str, value) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE patients_patient SET {column} = %s WHERE id = %s", [value, _db_pk(pk)])
        assert cursor.rowcount == 1


def _cell_text(value) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def plaintext_in_database(needles: list[str]) -> list[tuple[str, str, str]]:
    """Every (table, column, needle) where a cell of any table holds a needle (case-insensitive).

    Session payloads are signed and base64-encoded: they are decoded before the scan.
    """
    from django.contrib.sessions.backends.db import SessionStore

    wanted = [n.casefold() for n in needles]
    hits = []
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {quote(table)}")
            columns = [c[0] for c in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    text = _cell_text(value)
                    if table in ("django_session", "practice_usersession") and column == "session_data":
                        text += repr(SessionStore().decode(text))
                    folded = text.casefold()
                    hits.extend((table, column, n) for n in wanted if n in folded)
    return hits
