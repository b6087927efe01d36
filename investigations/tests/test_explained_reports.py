"""Reports say why: what a practice admin sees of explained reads in the
patient access report, the breach scope, the anomaly page and the reads chart. Reads are made
through the real pages."""

import datetime
import io
from types import SimpleNamespace

import pytest
import time_machine
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from audit.context import SESSION_KEY, AuditContext, opened
from audit.describe import when_text
from audit.models import AuditEvent, EventType, ReadReason
from audit.services import audit_event_write
from config.testing import at, book, client_for, make_doctor, make_patient, make_type, today, totp_next_code
from investigations.reports import breach_scope
from scheduling.models import Appointment, AppointmentStatus


@pytest.fixture
def clinic(practitioner, other_practitioner):
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    other = make_doctor(other_practitioner, "Dr Paul Bernard")
    return {"doctor": doctor, "other": other, "kind": make_type(doctor, other)}


def _person(last_name: str, first_names: str = "Zoé"):
    return make_patient(last_name=last_name, first_names=first_names, email="", nir="")


def _report(admin, patient, **query):
    response = client_for(admin).get(reverse("investigations:patient_access", args=[patient.pk]), query)
    assert response.status_code == 200
    return response, response.content.decode()


def _window() -> dict:
    now = timezone.now()
    return {"start": now - datetime.timedelta(hours=1), "end": now + datetime.timedelta(hours=1)}


def _edit(client, patient, **changes):
    data = {
        "last_name": "Lefèvre",
        "first_names": "Anne-Marie",
        "sex": "F",
        "birth_date": "1984-03-09",
        "phone_mobile": "+33612345678",
        "email": "",
        "nir": "",
        "address": "12 rue des Lilas",
        "postal_code": "75011",
        "city": "Paris",
        "language": "fr",
        **changes,
    }
    response = client.post(reverse("patients:edit", args=[patient.pk]), data)
    assert response.status_code == 302, response.content.decode()[:1000]


# --------------------------------------------------------------------------- the access report


def test_each_read_says_what_explained_it_in_words(secretary, practice_admin, clinic):
    patient = _person("Expliquée")
    start = at(today() + datetime.timedelta(days=1), 10)
    appointment = book(clinic["doctor"], patient, clinic["kind"], start, force=True)
    assert client_for(secretary).get(patient.get_absolute_url()).status_code == 200

    response, body = _report(practice_admin, patient)
    words = f"appointment of {when_text(appointment.start)} with Dr Claire Martin (Consultation)"
    assert words in body
    assert "Opened the record" in body
    assert "Patient record opened" in body
    # The report decrypted the patient's name for its header, nothing else (no reason, no note).
    admin_reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=practice_admin.pk)
    assert [(r.patient_id, r.model_label, r.fields) for r in admin_reads] == [
        (patient.pk, "patients.Patient", ["first_names", "last_name"])
    ]


def test_a_read_explained_afterwards_then_by_the_users_own_action(secretary, practice_admin):
    patient = make_patient(email="", nir="")
    client = client_for(secretary)
    assert client.get(patient.get_absolute_url()).status_code == 200
    _edit(client, patient, phone_mobile="+33698765432")
    assert AuditEvent.objects.filter(event_type=EventType.READ_EXPLAINED, patient_id=patient.pk).exists()
    assert client.get(patient.get_absolute_url()).status_code == 200

    response, body = _report(practice_admin, patient)
    first, *_ = sorted(
        (e for e in response.context["page"] if e.event_type == EventType.READ and e.actor_user_id == secretary.pk),
        key=lambda e: e.pk,
    )
    assert first.why_words == "unexplained (allowance)"
    assert first.afterwards.startswith("explained afterwards by a change to the record at ")
    assert "explained afterwards by a change to the record" in body
    changed = AuditEvent.objects.get(event_type=EventType.CHANGE, patient_id=patient.pk)
    last = max(
        (e for e in response.context["page"] if e.event_type == EventType.READ and e.actor_user_id == secretary.pk),
        key=lambda e: e.pk,
    )
    assert last.why_words == f"own action: changed patient on {when_text(changed.occurred_at)}"
    assert last.why_words in body


def test_a_booking_after_the_call_is_named(secretary, practice_admin, clinic):
    patient = _person("Appel")
    client = client_for(secretary)
    assert client.get(patient.get_absolute_url()).status_code == 200
    slot = {
        "practitioner": clinic["doctor"].pk,
        "appointment_type": clinic["kind"].pk,
        "date": (today() + datetime.timedelta(days=7)).isoformat(),
        "time": "10:00",
        "reason": "",
        "internal_note": "",
        "action": "book_existing",
        "patient": str(patient.pk),
    }
    assert client.post(reverse("scheduling:book"), slot).status_code == 302
    _response, body = _report(practice_admin, patient)
    assert "unexplained (allowance)" in body
    assert "explained afterwards by a booking at" in body


def test_reasons_grants_and_care_are_said_in_words(secretary, practitioner, practice_admin, clinic, settings):
    settings.READ_ALLOWANCES = {**settings.READ_ALLOWANCES, "Secretary": (0, 0)}
    settings.READ_REASONS = (5, 5)
    asked = _person("Raison")
    client = client_for(secretary)
    assert client.get(asked.get_absolute_url()).status_code == 403  # the step-up page
    reason = "La patiente appelle pour sa facture de mars"
    done = client.post(
        reverse("patients:reason", args=[asked.pk]), {"reason": reason, "code": totp_next_code(secretary)}
    )
    assert done.status_code == 302
    assert client.get(asked.get_absolute_url()).status_code == 200
    _response, body = _report(practice_admin, asked)
    assert f"reason: {reason}" in body

    urgent = _person("Urgence")
    doctor = client_for(practitioner)
    why = "Patient au cabinet sans rendez-vous, malaise en salle d'attente"
    doctor.post(reverse("patients:break_glass", args=[urgent.pk]), {"reason": why})
    assert doctor.get(urgent.get_absolute_url()).status_code == 200
    _response, body = _report(practice_admin, urgent)
    assert escape(f"emergency access: {why}") in body

    seen = _person("Suivie")
    visit = book(clinic["doctor"], seen, clinic["kind"], at(today(), 10) - datetime.timedelta(days=365), force=True)
    Appointment.objects.filter(pk=visit.pk).update(status=AppointmentStatus.DONE)
    assert doctor.get(seen.get_absolute_url()).status_code == 200
    _response, body = _report(practice_admin, seen)
    day = when_text(visit.start, with_time=False)
    assert f"care relationship: seen on {day} by Dr Claire Martin" in body
    assert ReadReason.objects.count() == 1


def test_list_appearances_are_apart_and_summarised_per_person_and_hour(secretary, practice_admin, clinic):
    patient = _person("Listée")
    appointment = book(clinic["doctor"], patient, clinic["kind"], at(today(), 23, 30), force=True)
    client = client_for(secretary)
    for _ in range(5):
        assert client.get(reverse("patients:list")).status_code == 200
    assert client.get(patient.get_absolute_url()).status_code == 200
    list_reads = AuditEvent.objects.filter(event_type=EventType.READ, patient_id=patient.pk, purpose="patients:list")
    assert list_reads.count() == 5

    response, body = _report(practice_admin, patient)
    opened = [e for e in response.context["page"] if e.event_type == EventType.READ and e.actor_user_id == secretary.pk]
    assert [e.purpose for e in opened] == ["patients:detail"]
    [line] = [r for r in response.context["lists"] if r["actor_username"] == secretary.username]
    assert line["reads"] == 5
    assert line["purpose"] == "patients:list"
    assert not line["held"]
    assert line["why_words"].startswith(f"appointment of {when_text(appointment.start)}")
    assert "Appeared in a list or agenda" in body
    assert "Patient list or search" in body


def test_the_report_pages_and_keeps_its_filters(secretary, practitioner, practice_admin):
    patient = make_patient(email="", nir="")
    for user in (secretary, practitioner):
        request = SimpleNamespace(user=user, session={SESSION_KEY: "s"})
        for n in range(30 if user is secretary else 5):
            ctx = AuditContext(purpose="patients:detail", request=request, ip="192.0.2.1", path="/patients/")
            ctx.record_read(
                model_label="patients.Patient", object_pk=patient.pk, patient_id=patient.pk, field_name="city"
            )
            ctx.record_read(
                model_label="scheduling.Appointment", object_pk=f"a{n}", patient_id=patient.pk, field_name="reason"
            )
            ctx.flush()
    response, body = _report(practice_admin, patient, who=secretary.username)
    page = response.context["page"]
    assert page.paginator.count == 60
    assert len(page.object_list) == 50
    assert {e.actor_username for e in page.object_list} == {secretary.username}
    assert f"who={secretary.username}&amp;page=2" in body
    response, _body = _report(practice_admin, patient, who=secretary.username, page=2)
    assert len(response.context["page"].object_list) == 10


# --------------------------------------------------------------------------- withheld pages


@pytest.fixture
def withheld_search(secretary, settings):
    """A masked search past the masked allowance: two Duponts decrypted, the page withheld."""
    settings.READ_MASKED_ALLOWANCES = {**settings.READ_MASKED_ALLOWANCES, "Secretary": (2, 2)}
    duponts = [_person("Dupont", first) for first in ("Anne", "Bruno", "Chloé")]
    response = client_for(secretary).post(reverse("patients:list"), {"last_name": "dupont"})
    assert response.status_code == 403
    decrypted = set(
        AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=secretary.pk).values_list(
            "patient_id", flat=True
        )
    )
    assert len(decrypted) == 2
    return [p for p in duponts if p.pk in decrypted]


def test_a_withheld_page_is_shown_as_decrypted_not_served(secretary, practice_admin, withheld_search):
    response, body = _report(practice_admin, withheld_search[0])
    [line] = response.context["lists"]
    assert line["held"]
    assert line["why_words"] == "masked search line"
    assert "decrypted, not served" in body


def test_the_breach_scope_counts_what_left_explained_or_not(secretary, practice_admin, clinic, withheld_search):
    explained, unexplained, later = _person("Rdv"), _person("Inconnu"), _person("Rappel")
    book(clinic["doctor"], explained, clinic["kind"], at(today() + datetime.timedelta(days=1), 9), force=True)
    client = client_for(secretary)
    for patient in (explained, unexplained, later):
        assert client.get(patient.get_absolute_url()).status_code == 200
    _edit(client, later, last_name="Rappel")  # the call ended in a change: explained afterwards

    scope = breach_scope(actor_user_id=secretary.pk, **_window())
    assert set(scope.patient_ids) == {explained.pk, unexplained.pk, later.pk}
    assert scope.unexplained_ids == [unexplained.pk]
    assert {p.patient_id for p in scope.explained_patients} == {explained.pk, later.pk}
    assert set(scope.withheld_ids) == {p.pk for p in withheld_search}
    assert scope.withheld_reads == 2

    now = timezone.localtime()
    query = {
        "actor": secretary.username,
        "start": (now - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "end": (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    }
    body = client_for(practice_admin).get(reverse("investigations:breach_scope"), query).content.decode()
    assert "3 patients exposed" in body
    assert "2 patients explained" in body
    assert "1 patient unexplained" in body
    assert "Decrypted and withheld" in body
    assert str(withheld_search[0].pk) in body
    assert "Dupont" not in body
    assert "DUPONT" not in body

    out = io.StringIO()
    day = now.date().isoformat()
    call_command("audit_breach_scope", "--from", day, "--to", day, "--user", secretary.username, stdout=out)
    text = out.getvalue()
    assert "3 patients exposed" in text
    assert "unexplained: 1 patients" in text
    assert "Decrypted and withheld (not served, not in the list): 2 patients" in text


def test_a_page_refused_after_its_reads_were_written_is_withheld_too(secretary):
    patient = make_patient(email="", nir="")
    request = SimpleNamespace(user=secretary, session={SESSION_KEY: "s"})
    ctx = AuditContext(purpose="patients:detail", request=request, ip="192.0.2.1", path="/patients/")
    ctx.record_read(model_label="patients.Patient", object_pk=patient.pk, patient_id=patient.pk, field_name="city")
    ctx.flush()
    with opened(AuditContext(purpose="x", request=request, request_id=ctx.request_id)):
        audit_event_write(event_type=EventType.WITHHELD, extra={"withheld": "read-limit"})
    scope = breach_scope(actor_user_id=secretary.pk, **_window())
    assert scope.patient_ids == []
    assert scope.withheld_ids == [patient.pk]


def test_the_breach_scope_stays_one_query(secretary, clinic, withheld_search, django_assert_num_queries):
    client = client_for(secretary)
    for patient in (_person("Un"), _person("Deux")):
        client.get(patient.get_absolute_url())
    with django_assert_num_queries(1):
        scope = breach_scope(**_window())
    assert scope.unexplained_count == 2
    assert scope.withheld_count == 2


# --------------------------------------------------------------------------- anomaly page, reads chart


def test_the_anomaly_page_and_the_chart_count_unexplained_patients_per_account(secretary, practice_admin, clinic):
    explained, *strangers = _person("Rdv"), _person("Un"), _person("Deux")
    book(clinic["doctor"], explained, clinic["kind"], at(today() + datetime.timedelta(days=1), 9), force=True)
    client = client_for(secretary)
    for patient in (explained, *strangers, strangers[0]):
        assert client.get(patient.get_absolute_url()).status_code == 200
    admin = client_for(practice_admin)

    response = admin.get(reverse("investigations:anomalies"))
    assert response.status_code == 200
    [row] = response.context["unexplained"]
    assert (row["username"], row["unexplained"], row["afterwards"]) == (secretary.username, 2, 0)
    assert "Unexplained reads today" in response.content.decode()

    response = admin.get(reverse("investigations:read_chart"))
    assert response.status_code == 200
    [series] = [s for s in response.context["chart"]["series"] if s["username"] == secretary.username]
    assert sum(series["unexplained"]) == 2
    assert max(series["counts"]) == 3
    assert "Unexplained: distinct patients per user and hour" in response.content.decode()


def test_nothing_unexplained_is_counted_for_reads_on_an_appointment(secretary, practice_admin, clinic):
    # The read and the page on the same day whatever the hour: at noon today, the clock stopped.
    with time_machine.travel(at(today(), 12), tick=False):
        patient = _person("Rdv")
        book(clinic["doctor"], patient, clinic["kind"], at(today() + datetime.timedelta(days=1), 9), force=True)
        client_for(secretary).get(patient.get_absolute_url())
        response = client_for(practice_admin).get(reverse("investigations:anomalies"))
    assert response.context["unexplained"] == []
    assert "No unexplained read today." in response.content.decode()
