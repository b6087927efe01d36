"""Investigation reports: the patient access report (screen and print), the breach scope
(function, page, command) and its notification list. Practice admins only."""

from __future__ import annotations

import csv
import datetime
import io
from types import SimpleNamespace

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.context import SESSION_KEY, AuditContext, opened
from audit.models import AuditEvent, EventType
from audit.services import audit_event_write
from config.testing import client_for, make_patient
from investigations.reports import _cell, breach_scope
from practice.models import Clinic

T0 = datetime.datetime(2026, 3, 4, 8, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
PURPOSE = "notify patients of incident 2026-03"


def reads_as(user, patients, *, at, ip="192.0.2.10", session="sess-a", fields=("last_name", "first_names"), model=None):
    """Decrypted reads recorded as a request of `user` would record them, at time `at`."""
    request = SimpleNamespace(user=user, session={SESSION_KEY: session})
    ctx = AuditContext(purpose="patients:detail", request=request, ip=ip, path="/patients/")
    for patient in patients:
        for name in fields:
            ctx.record_read(
                model_label=model or "patients.Patient",
                object_pk=patient.pk,
                patient_id=patient.pk,
                field_name=name,
            )
    with time_machine.travel(at, tick=False):
        ctx.flush()


def _local(moment: datetime.datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture
def four(db):
    return [make_patient(last_name=f"Patient{i}", email=f"p{i}@example.fr") for i in range(4)]


# ---------------------------------------------------------------------------------------------
# The patient access report


def test_it_reports_reads_and_changes_of_that_patient_only(secretary, practice_admin, patient, four):
    client = client_for(secretary)
    client.get(patient.get_absolute_url(), REMOTE_ADDR="192.0.2.44")
    client.get(four[0].get_absolute_url(), REMOTE_ADDR="192.0.2.99")
    response = client.post(
        reverse("patients:edit", args=[patient.pk]),
        {**_patient_form_data(), "phone_mobile": "+33698765432"},
        REMOTE_ADDR="192.0.2.44",
    )
    assert response.status_code == 302
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, patient_id=patient.pk).exists()

    response = client_for(practice_admin).get(reverse("investigations:patient_access", args=[patient.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert secretary.username in body
    assert "Secretary" in body
    assert "192.0.2.44" in body
    assert "192.0.2.99" not in body  # the other patient's read
    assert "Decrypted read" in body
    assert "Changed" in body
    assert "Patient record opened" in body  # the purpose, in words
    assert "last name" in body
    assert "mobile phone" in body
    assert reverse("investigations:patient_access_print", args=[patient.pk]) in body


def _patient_form_data() -> dict:
    return {
        "last_name": "Lefèvre",
        "first_names": "Anne-Marie",
        "sex": "F",
        "birth_date": "1984-03-09",
        "phone_mobile": "+33612345678",
        "email": "anne-marie.lefevre@example.fr",
        "nir": "284037511512331",
        "address": "12 rue des Lilas",
        "postal_code": "75011",
        "city": "Paris",
        "language": "fr",
    }


def test_it_prints_the_report_with_the_practice_and_the_patient(secretary, practice_admin, patient):
    clinic = Clinic.current()
    clinic.name, clinic.phone = "Cabinet des Lilas", "01 23 45 67 89"
    clinic.save()
    client_for(secretary).get(patient.get_absolute_url(), REMOTE_ADDR="192.0.2.44")
    response = client_for(practice_admin).get(reverse("investigations:patient_access_print", args=[patient.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert "Cabinet des Lilas" in body
    assert "01 23 45 67 89" in body
    assert "LEFÈVRE Anne-Marie" in body
    assert "css/print.css" in body
    assert secretary.username in body
    assert "192.0.2.44" in body
    assert "last name" in body
    # Naming the patient in the header is a read, audited like any other.
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_user_id=practice_admin.pk)
    assert read.patient_id == patient.pk
    assert read.fields == ["first_names", "last_name"]
    assert read.purpose == "investigations:patient_access_print"


# ---------------------------------------------------------------------------------------------
# Breach scope: the function


def test_it_scopes_one_actor_and_a_window_exactly(secretary, practitioner, four):
    a, b, c, d = four
    reads_as(secretary, [a, b], at=T0)
    reads_as(secretary, [a], at=T0 + HOUR, fields=("nir",))
    reads_as(secretary, [c], at=T0 - datetime.timedelta(seconds=1))  # before the window
    reads_as(secretary, [c], at=T0 + 2 * HOUR)  # the end is excluded
    reads_as(practitioner, [d], at=T0 + HOUR)  # someone else
    scope = breach_scope(start=T0, end=T0 + 2 * HOUR, actor_user_id=secretary.pk)
    assert set(scope.patient_ids) == {a.pk, b.pk}
    by_id = {p.patient_id: p for p in scope.patients}
    assert by_id[a.pk].reads == 2
    assert by_id[a.pk].fields == {
        ("patients.Patient", "first_names"): 1,
        ("patients.Patient", "last_name"): 1,
        ("patients.Patient", "nir"): 1,
    }
    assert by_id[b.pk].reads == 1
    totals = {(t.model_label, t.name): (t.patients, t.reads) for t in scope.field_totals}
    assert totals == {
        ("patients.Patient", "first_names"): (2, 2),
        ("patients.Patient", "last_name"): (2, 2),
        ("patients.Patient", "nir"): (1, 1),
    }
    assert scope.patient_count == 2
    assert scope.total_reads == 3


def test_it_scopes_an_ip_a_session_and_everyone(secretary, practitioner, four):
    a, b, c, d = four
    reads_as(secretary, [a], at=T0, ip="203.0.113.5", session="s-one")
    reads_as(secretary, [b], at=T0, ip="192.0.2.10", session="s-two")
    reads_as(practitioner, [c], at=T0, ip="203.0.113.5", session="s-three", model="scheduling.Appointment")
    end = T0 + HOUR
    assert set(breach_scope(start=T0, end=end, ip="203.0.113.5").patient_ids) == {a.pk, c.pk}
    assert breach_scope(start=T0, end=end, session="s-two").patient_ids == [b.pk]
    assert breach_scope(start=T0, end=end, actor_user_id=secretary.pk, ip="203.0.113.5").patient_ids == [a.pk]
    everyone = breach_scope(start=T0, end=end)
    assert set(everyone.patient_ids) == {a.pk, b.pk, c.pk}
    assert ("scheduling.Appointment", "first_names") in {(t.model_label, t.name) for t in everyone.field_totals}
    assert breach_scope(start=T0, end=end, session="nobody").patient_ids == []


def test_it_counts_exports_but_not_changes_or_logins(secretary, four):
    a, b, *_ = four
    ctx = AuditContext(purpose="x", request=SimpleNamespace(user=secretary, session={}), ip="192.0.2.10")
    with time_machine.travel(T0, tick=False), opened(ctx):
        label = "patients.Patient"
        audit_event_write(event_type=EventType.EXPORT, patient_id=a.pk, model_label=label, fields=["email"])
        audit_event_write(event_type=EventType.CHANGE, patient_id=b.pk, model_label=label, fields=["email"])
        audit_event_write(event_type=EventType.LOGIN)
    scope = breach_scope(start=T0, end=T0 + HOUR, actor_user_id=secretary.pk)
    assert scope.patient_ids == [a.pk]
    assert scope.patients[0].fields == {("patients.Patient", "email"): 1}


def test_it_finds_a_deleted_account_or_a_job_by_the_name_the_trail_kept(secretary, four):
    reads_as(secretary, [four[0]], at=T0)
    username = secretary.username
    secretary.delete()
    scope = breach_scope(start=T0, end=T0 + HOUR, actor_username=username)
    assert scope.patient_ids == [four[0].pk]


def test_it_asks_the_trail_once(secretary, four, django_assert_num_queries):
    for i, patient in enumerate(four):
        reads_as(secretary, [patient], at=T0 + i * HOUR, fields=("last_name", "nir")[: 1 + i % 2])
    with django_assert_num_queries(1):
        scope = breach_scope(start=T0, end=T0 + 10 * HOUR)
    assert scope.patient_count == 4


# ---------------------------------------------------------------------------------------------
# Breach scope: the page and the notification list


def _scope_query(**overrides) -> dict:
    now = timezone.now()
    return {
        "actor": "",
        "ip": "",
        "session": "",
        "start": _local(now - HOUR),
        "end": _local(now + HOUR),
        **overrides,
    }


def test_it_shows_the_scope_by_patient_id_without_decrypting(secretary, practice_admin, four):
    client_for(secretary).get(four[0].get_absolute_url(), REMOTE_ADDR="198.51.100.23")
    client_for(secretary).get(four[1].get_absolute_url(), REMOTE_ADDR="192.0.2.1")
    admin = client_for(practice_admin)
    reads_before = AuditEvent.objects.filter(event_type=EventType.READ).count()
    response = admin.get(
        reverse("investigations:breach_scope"), _scope_query(actor=secretary.username, ip="198.51.100.23")
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert str(four[0].pk) in body
    assert str(four[1].pk) not in body
    assert "1 patient exposed" in body
    assert "last name" in body  # a field total
    assert "Patient0" not in body
    assert "PATIENT0" not in body
    assert AuditEvent.objects.filter(event_type=EventType.READ).count() == reads_before  # nothing decrypted
    assert "Download the notification list (CSV)" in body


def test_it_rejects_a_window_that_ends_before_it_starts(practice_admin):
    now = timezone.now()
    response = client_for(practice_admin).get(
        reverse("investigations:breach_scope"), _scope_query(start=_local(now), end=_local(now - HOUR))
    )
    assert response.status_code == 200
    assert "The end must come after the start." in response.content.decode()


def test_the_notification_list_needs_a_purpose(secretary, practice_admin, four):
    client_for(secretary).get(four[0].get_absolute_url())
    admin = client_for(practice_admin)
    response = admin.post(
        reverse("investigations:breach_scope_csv"), {**_scope_query(actor=secretary.username), "purpose": ""}
    )
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert not AuditEvent.objects.filter(event_type=EventType.EXPORT).exists()
    assert not AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=practice_admin.pk).exists()


def test_the_notification_list_is_audited_and_watermarked(secretary, practice_admin, four):
    client = client_for(secretary)
    for patient in four[:3]:
        client.get(patient.get_absolute_url())
    response = client_for(practice_admin).post(
        reverse("investigations:breach_scope_csv"), {**_scope_query(actor=secretary.username), "purpose": PURPOSE}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert "no-store" in response["Cache-Control"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    watermark, header, *patients = rows
    assert practice_admin.username in watermark[0]
    assert PURPOSE in watermark[0]
    assert timezone.localtime().strftime("%Y-%m-%d") in watermark[0]
    assert header[:4] == ["patient id", "last name", "first names", "birth date"]
    assert {r[0] for r in patients} == {str(p.pk) for p in four[:3]}
    row = next(r for r in patients if r[0] == str(four[0].pk))
    assert row[1:11] == [
        "Patient0",
        "Anne-Marie",
        "1984-03-09",
        "+33612345678",
        "",
        "p0@example.fr",
        "12 rue des Lilas",
        "75011",
        "Paris",
        "fr",
    ]
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=practice_admin.pk)
    assert {r.patient_id for r in reads} == {p.pk for p in four[:3]}
    assert {r.purpose for r in reads} == {PURPOSE}
    assert "phone_mobile" in reads.first().fields
    assert "nir" not in reads.first().fields
    export = AuditEvent.objects.get(event_type=EventType.EXPORT)
    assert export.actor_user_id == practice_admin.pk
    assert export.purpose == PURPOSE
    assert export.extra["purpose"] == PURPOSE
    assert export.extra["count"] == 3
    assert export.extra["scope"]["actor_user_id"] == secretary.pk


def test_the_notification_list_counts_against_the_admins_read_budget(secretary, practice_admin, four, settings):
    client = client_for(secretary)
    for patient in four[:3]:
        client.get(patient.get_absolute_url())
    settings.READ_BUDGETS = {**settings.READ_BUDGETS, "Practice admin": (2, 2)}
    response = client_for(practice_admin).post(
        reverse("investigations:breach_scope_csv"), {**_scope_query(actor=secretary.username), "purpose": PURPOSE}
    )
    assert response.status_code == 429
    assert not response["Content-Type"].startswith("text/csv")
    assert "Patient0" not in response.content.decode()
    assert not AuditEvent.objects.filter(event_type=EventType.EXPORT).exists()
    assert AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK, actor_user_id=practice_admin.pk).exists()


def test_it_keeps_spreadsheet_formulas_out_of_the_list():
    assert _cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("-2+3") == "'-2+3"  # a spreadsheet would compute it
    assert _cell("-12") == "-12"
    assert _cell("+33612345678") == "+33612345678"
    assert _cell("+cmd|' /C calc'!A0") == "'+cmd|' /C calc'!A0"
    assert _cell("Dupont") == "Dupont"


# ---------------------------------------------------------------------------------------------
# The command


def test_the_command_prints_fields_and_patients(secretary, four, capsys):
    reads_as(secretary, four[:2], at=T0, fields=("last_name", "nir"))
    out = io.StringIO()
    call_command(
        "audit_breach_scope", "--from", "2026-03-04", "--to", "2026-03-04", "--user", secretary.username, stdout=out
    )
    text = out.getvalue()
    assert "2 patients exposed, 2 reads" in text
    assert "patients.Patient.nir (social security number (NIR)): 2, 2" in text
    assert str(four[0].pk) in text
    assert str(four[1].pk) in text
    assert str(four[2].pk) not in text
    assert not AuditEvent.objects.filter(event_type=EventType.EXPORT).exists()


def test_the_command_writes_the_notification_list_audited(secretary, four, tmp_path):
    reads_as(secretary, four[:2], at=T0, ip="203.0.113.9")
    target = tmp_path / "notify.csv"
    call_command(
        "audit_breach_scope",
        "--from",
        "2026-03-04 09:00",  # practice time (Paris): T0 is 08:00 UTC
        "--to",
        "2026-03-04 10:00",
        "--ip",
        "203.0.113.9",
        "--csv",
        str(target),
        "--purpose",
        PURPOSE,
        stdout=io.StringIO(),
    )
    rows = list(csv.reader(target.open(encoding="utf-8")))
    assert "system:command:audit_breach_scope" in rows[0][0]
    assert PURPOSE in rows[0][0]
    assert {r[0] for r in rows[2:]} == {str(p.pk) for p in four[:2]}
    assert target.stat().st_mode & 0o077 == 0
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_username="system:command:audit_breach_scope")
    assert {r.patient_id for r in reads} == {p.pk for p in four[:2]}
    assert {r.purpose for r in reads} == {PURPOSE}
    export = AuditEvent.objects.get(event_type=EventType.EXPORT)
    assert export.extra["count"] == 2
    assert export.extra["scope"]["ip"] == "203.0.113.9"


def test_the_command_wants_a_purpose_for_the_list(tmp_path, db):
    with pytest.raises(CommandError, match="--purpose"):
        call_command("audit_breach_scope", "--from", "2026-03-04", "--to", "2026-03-04", "--csv", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Who may open them


@pytest.mark.parametrize("name", ["patient_access", "patient_access_print", "breach_scope"])
def test_it_keeps_the_reports_from_everyone_but_practice_admins(name, secretary, practitioner, outsider, patient):
    url = reverse(f"investigations:{name}", args=[patient.pk] if name.startswith("patient") else [])
    for user in (secretary, practitioner, outsider):
        response = client_for(user).get(url, _scope_query() if name == "breach_scope" else {})
        assert response.status_code == 403, user
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exclude(actor_username="system:tests:fixture")


def test_it_keeps_the_notification_list_from_everyone_but_practice_admins(secretary, practitioner, outsider, four):
    client_for(secretary).get(four[0].get_absolute_url())
    url = reverse("investigations:breach_scope_csv")
    data = {**_scope_query(), "purpose": PURPOSE}
    for user in (secretary, practitioner, outsider):
        response = client_for(user).post(url, data)
        assert response.status_code == 403
        assert not AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk, purpose=PURPOSE)
    assert not AuditEvent.objects.filter(event_type=EventType.EXPORT).exists()


def test_the_admin_index_links_the_investigations(practice_admin):
    body = client_for(practice_admin).get(reverse("admin:index")).content.decode()
    assert reverse("investigations:breach_scope") in body
