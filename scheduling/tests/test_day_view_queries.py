"""The front desk's day costs the same number of queries for 1 appointment or 300, and decrypts
only what it shows: each patient's last name and first names, one audit row per patient
(DESIGN.md targets: constant query count, at most 12; Invariant 1: list views load only the
fields they show)."""

import datetime
import re

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.chain import SQL_TAG
from audit.models import AuditEvent, EventType
from conftest import client_for, make_patient
from practice.models import Practitioner
from scheduling.tests.conftest import DAY, at, book, make_doctor, make_type

TRAIL_INSERT = re.compile(r'^\s*INSERT INTO "?audit_auditevent"?', re.IGNORECASE)
# Transaction control is not a query against the data: pytest-django's test transaction turns
# every atomic block into SAVEPOINT / RELEASE pairs that production (autocommit) does not send.
TRANSACTION_CONTROL = re.compile(r"^\s*(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT|BEGIN|COMMIT)\b", re.I)

MAX_QUERIES = 12


def _clinic(name: str, practitioners: int, per_practitioner: int) -> list:
    """Practitioners side by side, each with a day of 20-minute appointments, one patient each."""
    patients = []
    kind = None
    for p in range(practitioners):
        user = User.objects.create_user(f"dr.{name}{p}", password="x" * 20)
        doctor = make_doctor(user, f"Dr {name} {p:02d}")
        if kind is None:
            kind = make_type(doctor)
        else:
            kind.practitioners.add(doctor)
        starts = [at(DAY, 8) + datetime.timedelta(minutes=20 * i) for i in range(12)]
        starts += [at(DAY, 13) + datetime.timedelta(minutes=20 * i) for i in range(18)]
        for n, start in enumerate(starts[:per_practitioner]):
            patient = make_patient(last_name=f"{name}{p}x{n}", email="", nir="", phone_mobile="")
            book(doctor, patient, kind, start, reason="Motif confidentiel", internal_note="Note interne")
            patients.append(patient)
    return patients


def _day_view(user) -> tuple[CaptureQueriesContext, str, str]:
    url = reverse("scheduling:day", args=[DAY])
    client = client_for(user)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return captured, response.content.decode(), url


def _counts(captured) -> tuple[int, int]:
    """(queries other than the trail write, INSERT statements of the trail write)."""
    statements = [q["sql"] for q in captured.captured_queries if not TRANSACTION_CONTROL.match(q["sql"])]
    # The chain's lock and tail read (audit/chain.py, tagged) belong to the trail write.
    statements = [s for s in statements if not s.startswith(SQL_TAG)]
    trail = [s for s in statements if TRAIL_INSERT.match(s)]
    return len(statements) - len(trail), len(trail)


def _check_reads(url: str, patients) -> None:
    """One READ row per patient shown, naming exactly the two name fields; nothing else decrypted."""
    reads = list(AuditEvent.objects.filter(event_type=EventType.READ, path=url))
    assert sorted(str(e.patient_id) for e in reads) == sorted(str(p.pk) for p in patients)
    for event in reads:
        assert event.model_label == "patients.Patient"
        assert event.object_pk == str(event.patient_id)
        assert event.fields == ["first_names", "last_name"]
    assert not [e for e in reads if {"reason", "internal_note"} & set(e.fields)]


@pytest.mark.slow
def test_it_costs_the_same_queries_for_one_or_three_hundred_appointments(secretary, audit_trail_writable):
    few = _clinic("Small", 1, 1)
    small, body, url = _day_view(secretary)
    assert body.count('class="appt ') == 1
    assert "SMALL0X0" in body
    _check_reads(url, few)

    Practitioner.objects.update(is_active=False)
    AuditEvent.objects.filter(event_type=EventType.READ).delete()
    many = _clinic("Large", 10, 30)
    large, body, url = _day_view(secretary)
    assert body.count('class="appt ') == 300
    assert body.count('class="col-head ') == 10
    _check_reads(url, many)

    small_queries, small_trail = _counts(small)
    large_queries, large_trail = _counts(large)
    assert large_queries == small_queries
    # The trail write is one bulk INSERT: one statement on PostgreSQL; SQLite splits it into
    # batches of its 999 bound parameters (Django's limit), all written before the response.
    assert small_trail == 1
    if connection.vendor == "postgresql":
        assert large_trail == 1
    assert large_queries + 1 <= MAX_QUERIES, [q["sql"][:120] for q in large.captured_queries]
