"""The front desk's day costs the same number of queries for 1 appointment or 300, and decrypts
only what it shows: each patient's last name and first names, one audit row per patient
(docs/design.md: the target is a constant query count, at most 12; invariant 1: list views load only the
fields they show)."""

import datetime
import re

import pytest
import time_machine
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent, EventType
from config.testing import DAY, at, book, client_for, make_doctor, make_patient, make_type
from practice.models import Practitioner

# The trail write (audit/services.py): the chain's statements (tagged) and the INSERT of the
# reads, which on PostgreSQL also upserts the read budget's tally (WITH trail AS (INSERT ...)).
TRAIL_WRITE = re.compile(
    r'^\s*(/\* audit chain \*/|BEGIN; /\* audit chain|WITH trail AS|INSERT INTO "?audit_auditevent"?)', re.I
)

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


def _day_view(client) -> tuple[list[str], str, int]:
    """The statements of one load of the day (as a logged-in front desk's second visit), the
    page, and the last trail id before it."""
    url = reverse("scheduling:day", args=[DAY])
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return [q["sql"] for q in captured.captured_queries], response.content.decode(), before


def _check_reads(after_id: int, patients) -> None:
    """One READ row per patient shown, naming exactly the two name fields; nothing else decrypted."""
    reads = list(AuditEvent.objects.filter(event_type=EventType.READ, id__gt=after_id))
    assert sorted(str(e.patient_id) for e in reads) == sorted(str(p.pk) for p in patients)
    for event in reads:
        assert event.model_label == "patients.Patient"
        assert event.object_pk == str(event.patient_id)
        assert event.fields == ["first_names", "last_name"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_costs_the_same_queries_for_one_or_three_hundred_appointments(secretary, settings):
    """Counted as production runs it (autocommit, no test transaction around the request):
    every statement the page sends, the session, the read budget with the explanations of the
    day's patients (one query for both) and the trail write included."""
    # DAY lies years ahead: let its appointments explain the reads, as today's do.
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10
    client = client_for(secretary)
    few = _clinic("Small", 1, 1)
    _day_view(client)  # the session's first page; the count is for the pages after it
    small, body, before = _day_view(client)
    assert body.count('class="appt ') == 1
    assert "SMALL0X0" in body
    _check_reads(before, few)

    Practitioner.objects.update(is_active=False)
    many = _clinic("Large", 10, 30)
    large, body, before = _day_view(client)
    assert body.count('class="appt ') == 300
    assert body.count('class="col-head ') == 10
    _check_reads(before, many)

    _same_statements(small, large)


def page_statements(statements: list[str]) -> list[str]:
    # SQLite writes the read budget's tally in statements of their own (audit/services.py).
    # The budget's load (alone, or with the explanations: audit/explain.py) is the page's own.
    tally = [
        sql
        for sql in statements
        if "audit_readtally" in sql and not sql.startswith(("WITH lift AS", "/* read admission */"))
    ]
    return [sql for sql in statements if not TRAIL_WRITE.match(sql) and sql not in tally]


def _same_statements(small: list[str], large: list[str]) -> None:
    assert len(page_statements(large)) == len(page_statements(small))
    if connection.vendor == "postgresql":
        # The trail write is two statements (audit.chain.chain_write_alone), whatever the rows.
        assert len(large) == len(small)
        assert len(large) - len(page_statements(large)) == 2
        assert len(large) <= MAX_QUERIES, [sql[:120] for sql in large]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_costs_the_same_queries_with_todays_buttons_and_free_time(secretary, settings):
    """The clickable grid (scheduling/grid.py) adds no statement: on today's day view, with
    one-click status buttons and links on the free time, 1 and 300 appointments cost the same,
    at most 12 on PostgreSQL (session and trail included)."""
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10
    with time_machine.travel(at(DAY, 7, 30), tick=False):
        client = client_for(secretary)
        few = _clinic("Small", 1, 1)
        _day_view(client)
        small, body, before = _day_view(client)
        assert body.count('class="go ') == 1
        assert body.count('class="free ') == 4 * 10 - 1  # 8-12 and 13-19 by quarters, less 8:00-8:20
        _check_reads(before, few)

        Practitioner.objects.update(is_active=False)
        many = _clinic("Large", 10, 30)
        large, body, before = _day_view(client)
        assert body.count('class="appt ') == 300
        assert body.count('class="go ') == 10 * 5  # "arrived" for the next two hours: 8:00 to 9:20
        assert 'class="free ' not in body  # 30 appointments fill 8-12 and 13-19
        _check_reads(before, many)
    _same_statements(small, large)
