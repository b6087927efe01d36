"""The agenda pages as the front desk, the practitioners and outsiders see them: the actions
refused, booking (existing and new patient, slot taken, forced), the appointment's actions, and
bad input that comes back with errors instead of a 500. Which page each role gets, and that
none is cached, is in the one access table: practice/tests/test_url_access.py."""

import datetime
import re
import uuid
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import DAY, at, book, client_for, make_patient, today
from patients.models import Patient
from patients.services import patient_archive
from scheduling import services
from scheduling.models import Absence, Appointment, AppointmentStatus, AppointmentType


def _booking(doctor, kind, **changes) -> dict:
    """The slot part of the booking form: DAY at 10:00 unless changed."""
    data = {
        "practitioner": doctor.pk,
        "appointment_type": kind.pk,
        "date": DAY.isoformat(),
        "time": "10:00",
        "reason": "Renouvellement d'ordonnance",
        "internal_note": "Appeler la veille",
    }
    data.update(changes)
    return data


def _new_patient(**changes) -> dict:
    data = {
        "new-last_name": "Durand",
        "new-first_names": "Léa",
        "new-sex": "F",
        "new-birth_date": "1990-05-17",
        "new-phone_mobile": "06 11 22 33 44",
    }
    data.update(changes)
    return data


def _reads(path: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=EventType.READ, path=path).order_by("id"))


# ---------------------------------------------------------------------------------------------
# Who may do what (every page for every role, and that none is cached: practice/tests/test_url_access.py)


@pytest.mark.parametrize("action", ["move", "change_type", "cancel", "status"])
def test_it_refuses_actions_to_anonymous_and_outsiders(client, outsider, appointment, action):
    url = reverse(f"scheduling:{action}", args=[appointment.pk])
    assert client.post(url, {"status": "arrived"}).status_code == 302
    assert client_for(outsider).post(url, {"status": "arrived"}).status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED


@pytest.mark.parametrize("action", ["move", "change_type", "cancel", "status"])
def test_it_hides_another_practitioners_appointment_behind_404(other_practitioner, appointment, action):
    url = reverse(f"scheduling:{action}", args=[appointment.pk])
    response = client_for(other_practitioner).post(url, {"status": "arrived", "reason": "x"})
    assert response.status_code == 404
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED
    assert not AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=other_practitioner.pk).exists()


@pytest.mark.parametrize("action", ["move", "change_type", "cancel"])
def test_it_lets_practitioners_not_move_change_or_cancel_their_own(practitioner, appointment, action):
    url = reverse(f"scheduling:{action}", args=[appointment.pk])
    response = client_for(practitioner).post(url, {"date": "2030-03-05", "time": "09:00", "reason": "x"})
    assert response.status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED
    assert appointment.start == at(DAY, 9)


def test_it_answers_404_for_an_unknown_appointment(secretary, appointment):
    assert client_for(secretary).get(reverse("scheduling:appointment", args=[uuid.uuid4()])).status_code == 404
    assert client_for(secretary).get("/appointments/1/").status_code == 404


def test_it_does_not_decrypt_anything_for_a_refused_appointment_page(other_practitioner, appointment):
    response = client_for(other_practitioner).get(appointment.get_absolute_url())
    assert response.status_code == 404
    assert not _reads(appointment.get_absolute_url())


@pytest.mark.parametrize(
    "url",
    [
        "/agenda/2026-02-30/",
        "/agenda/2026-13-01/",
        "/agenda/0000-01-01/",
        "/agenda/9999-12-31/",
        "/agenda/26-01-01/",
        "/agenda/tomorrow/",
        "/agenda/practitioner/1/week/2026-02-30/",
        "/agenda/2026-02-30/practitioner/1/print/",
    ],
)
def test_it_answers_404_for_a_bad_date_in_the_url(secretary, doctor, url):
    assert client_for(secretary).get(url).status_code == 404


# ---------------------------------------------------------------------------------------------
# The front desk's day


def test_it_shows_every_practitioner_side_by_side_with_appointments(secretary, appointment, others_appointment):
    with system_context("tests"):
        Absence.objects.create(
            practitioner=others_appointment.practitioner,
            start=at(DAY, 14),
            end=at(DAY, 19),
            kind="training",
            label="Congrès",
        )
    response = client_for(secretary).get(reverse("scheduling:day", args=[DAY]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "Dr Claire Martin" in body
    assert "Dr Paul Bernard" in body
    assert "LEFÈVRE Anne-Marie" in body
    assert "GARNIER Hugo" in body
    assert body.count('class="open ') == 4  # two working ranges each
    assert "Training: Congrès" in body
    assert f'href="{appointment.get_absolute_url()}"' in body
    assert f"type-{appointment.appointment_type_id}" in body
    # 9:00 on a 7:00 grid of 5-minute rows is line 25; 20 minutes later, line 29.
    assert re.search(r'class="appt [^"]*rs-25 re-29', body)
    assert "Douleur" not in body
    assert "Préfère le matin" not in body


def test_it_renders_without_inline_script_or_style(secretary, appointment):
    body = client_for(secretary).get(reverse("scheduling:day", args=[DAY])).content.decode()
    # One script, from the site's static files (the CSP allows 'self' only), no inline code.
    assert re.findall(r"<script\b[^>]*>(.*?)</script>", body, re.S) == [""]
    assert re.findall(r"<script\b[^>]*>", body) == ['<script src="/static/js/agenda.js" defer>']
    assert "style=" not in body
    assert not re.search(r"\son[a-z]+\s*=", body)


def test_it_escapes_patient_names(secretary, doctor, consultation):
    someone = make_patient(last_name="<script>alert(1)</script>", first_names="<b>x</b>", email="", nir="")
    book(doctor, someone, consultation, at(DAY, 11))
    body = client_for(secretary).get(reverse("scheduling:day", args=[DAY])).content.decode()
    assert "<script>alert(1)" not in body
    assert "&lt;SCRIPT&gt;ALERT(1)&lt;/SCRIPT&gt;" in body


def test_it_shows_today_and_navigates_between_days(secretary, doctor):
    client = client_for(secretary)
    body = client.get(reverse("scheduling:today")).content.decode()
    assert reverse("scheduling:day", args=[today() + datetime.timedelta(days=1)]) in body
    body = client.get(reverse("scheduling:day", args=[DAY])).content.decode()
    assert reverse("scheduling:day", args=[DAY - datetime.timedelta(days=1)]) in body
    assert reverse("scheduling:day", args=[DAY + datetime.timedelta(days=1)]) in body
    assert 'type="date"' in body


def test_it_jumps_to_the_picked_date(secretary, doctor):
    client = client_for(secretary)
    response = client.get(reverse("scheduling:today"), {"day": "2030-03-04"})
    assert response.status_code == 302
    assert response["Location"] == reverse("scheduling:day", args=[DAY])
    response = client.get(reverse("scheduling:today"), {"day": "2030-02-31"})
    assert response.status_code == 200
    assert "Enter a date as yyyy-mm-dd." in response.content.decode()


def test_it_serves_colours_as_css_and_skips_bad_values(secretary, doctor, consultation):
    AppointmentType.objects.filter(pk=consultation.pk).update(colour="#3366CC")
    bad = AppointmentType.objects.create(name="Bad", colour="red;}*{")  # 7 characters: what the column holds
    response = client_for(secretary).get(reverse("scheduling:colours"))
    css = response.content.decode()
    assert response["Content-Type"].startswith("text/css")
    assert "max-age=300" in response["Cache-Control"]
    assert f".type-{consultation.pk} {{ background: #d2ddf4; border-color: #3366cc; }}" in css
    assert f".prac-{doctor.pk} {{ border-color: #0b6bcb; }}" in css
    assert f".type-{bad.pk}" not in css
    assert "red;" not in css


def test_it_has_a_grid_class_for_every_grid_line(settings):
    css = (Path(settings.BASE_DIR) / "static" / "css" / "agenda.css").read_text()
    for line in range(1, 24 * 60 // settings.AGENDA_SLOT_MINUTES + 2):
        assert f".rs-{line} {{ grid-row-start: {line}; }}" in css
        assert f".re-{line} {{ grid-row-end: {line}; }}" in css


# ---------------------------------------------------------------------------------------------
# A practitioner's week, my day, the waiting room, the print sheet


def test_it_shows_a_practitioner_their_week(practitioner, doctor, appointment, others_appointment):
    response = client_for(practitioner).get(reverse("scheduling:week", args=[doctor.pk, DAY + datetime.timedelta(2)]))
    body = response.content.decode()
    assert response.status_code == 200
    assert response.context["monday"] == DAY
    assert len(response.context["columns"]) == 7
    assert "LEFÈVRE Anne-Marie" in body
    assert "GARNIER Hugo" not in body


def _arrive(appointment, minutes_ago: int):
    with system_context("tests"):
        services.appointment_set_status(appointment=appointment, status="arrived", actor=None)
    Appointment.objects.filter(pk=appointment.pk).update(
        arrived_at=timezone.now() - datetime.timedelta(minutes=minutes_ago, seconds=30)
    )


def test_it_lists_my_day_in_order_with_waiting_times(practitioner, doctor, consultation, patient):
    late = book(doctor, patient, consultation, at(today(), 11))
    early = book(doctor, make_patient(last_name="Morel", email="", nir=""), consultation, at(today(), 9))
    _arrive(late, 12)
    response = client_for(practitioner).get(reverse("scheduling:my_day"))
    body = response.content.decode()
    assert response.status_code == 200
    assert [row["appt"].pk for row in response.context["rows"]] == [early.pk, late.pk]
    assert body.index("MOREL Anne-Marie") < body.index("LEFÈVRE Anne-Marie")
    assert "13 min" in body
    assert 'value="in_consultation"' in body


def test_it_moves_a_patient_along_my_day(practitioner, doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, at(today(), 11))
    client = client_for(practitioner)
    for status in ["arrived", "in_consultation", "done"]:
        response = client.post(
            reverse("scheduling:status", args=[appointment.pk]), {"status": status, "next": "/my-day/"}
        )
        assert response.status_code == 302
        assert response["Location"] == "/my-day/"
        appointment.refresh_from_db()
        assert appointment.status == status
    assert appointment.arrived_at
    assert appointment.consultation_started_at
    assert appointment.done_at


def test_it_shows_the_waiting_room_by_role(secretary, practitioner, doctor, other_doctor, consultation, patient):
    mine = book(doctor, patient, consultation, at(today(), 11))
    theirs = book(other_doctor, make_patient(last_name="Morel", email="", nir=""), consultation, at(today(), 11))
    _arrive(mine, 25)
    _arrive(theirs, 5)
    body = client_for(secretary).get(reverse("scheduling:waiting_room")).content.decode()
    assert "LEFÈVRE Anne-Marie" in body
    assert "MOREL Anne-Marie" in body
    assert body.index("LEFÈVRE") < body.index("MOREL")  # longest wait first
    assert "26 min" in body
    assert "Dr Paul Bernard" in body
    body = client_for(practitioner).get(reverse("scheduling:waiting_room")).content.decode()
    assert "LEFÈVRE Anne-Marie" in body
    assert "MOREL" not in body


def test_it_prints_a_day_sheet(secretary, doctor, appointment):
    response = client_for(secretary).get(reverse("scheduling:print_day", args=[DAY, doctor.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "css/print.css" in body
    assert "LEFÈVRE Anne-Marie" in body
    assert "08:00–12:00" in body


# ---------------------------------------------------------------------------------------------
# Free slots


def test_it_lists_free_slots_as_booking_links(secretary, doctor, consultation):
    """Each filter of the finder, and what it shows: scheduling/tests/test_finder.py."""
    response = client_for(secretary).get(
        reverse("scheduling:free_slots"), {"practitioner": doctor.pk, "appointment_type": consultation.pk}
    )
    body = response.content.decode()
    assert response.status_code == 200
    links = re.findall(r'href="(/appointments/new/\?[^"]+)"', body)
    assert len(links) >= 10  # the first morning and afternoon slot of each day shown
    assert f"practitioner={doctor.pk}" in links[0]
    assert f"type={consultation.pk}" in links[0]
    assert "start=" in links[0]


def test_it_refuses_free_slots_for_a_type_the_practitioner_does_not_offer(secretary, other_doctor, long_visit):
    response = client_for(secretary).get(
        reverse("scheduling:free_slots"), {"practitioner": other_doctor.pk, "appointment_type": long_visit.pk}
    )
    assert response.status_code == 200
    assert "does not offer" in response.content.decode()
    assert response.context["days"] == []


def test_it_rerenders_free_slots_with_bad_input(secretary, doctor):
    response = client_for(secretary).get(
        reverse("scheduling:free_slots"), {"practitioner": "x", "appointment_type": ""}
    )
    assert response.status_code == 200
    assert response.context["form"].errors


# ---------------------------------------------------------------------------------------------
# Booking


def test_it_prefills_the_booking_form_from_a_free_slot(secretary, doctor, consultation):
    start = at(DAY, 14, 40).isoformat()
    response = client_for(secretary).get(
        reverse("scheduling:book"), {"practitioner": doctor.pk, "type": consultation.pk, "start": start}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert 'value="2030-03-04"' in body
    assert 'value="14:40"' in body
    assert f'<option value="{doctor.pk}" selected>' in body


@pytest.mark.parametrize("query", [{"start": "garbage", "practitioner": "x"}, {"start": "99999-01-01T00:00"}])
def test_it_ignores_a_bad_prefill(secretary, doctor, query):
    assert client_for(secretary).get(reverse("scheduling:book"), query).status_code == 200


def test_it_finds_the_patient_by_name_and_birth_date_and_keeps_the_slot(secretary, doctor, consultation, patient):
    data = {
        **_booking(doctor, consultation),
        "action": "search",
        "find-last_name": "lefevre",
        "find-birth_date": patient_birth_date(patient),
    }
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    body = response.content.decode()
    assert response.status_code == 200
    assert f'value="{patient.pk}"' in body
    assert "LEFÈVRE Anne-Marie" in body and "09/03/1984" in body or "03/09/1984" in body
    assert "Renouvellement d&#x27;ordonnance" in body
    assert 'value="10:00"' in body
    assert not Appointment.objects.exists()


def test_a_last_name_alone_finds_masked_lines_to_book_from(secretary, doctor, consultation, patient):
    data = {**_booking(doctor, consultation), "action": "search", "find-last_name": "lefevre", "find-birth_date": ""}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    body = response.content.decode()
    assert response.status_code == 200
    assert f'value="{patient.pk}"' in body
    assert "LEFÈVRE A." in body
    assert "born in 1984" in body
    assert "Anne-Marie" not in body
    assert "1984-03-09" not in body
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert read.explanation == "masked"
    assert read.fields == ["birth_date", "first_names", "last_name"]


def test_it_books_for_a_patient_picked_from_masked_lines(secretary, doctor, consultation, patient):
    # The search by last name alone is still in the form: its masked lines are no patients to book for.
    data = {
        **_booking(doctor, consultation),
        "action": "book_existing",
        "find-last_name": "lefevre",
        "find-birth_date": "",
        "patient": str(patient.pk),
    }
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    appointment = Appointment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == appointment.get_absolute_url()
    assert appointment.patient_id == patient.pk
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert read.patient_id == patient.pk
    assert read.fields == ["birth_date", "first_names", "last_name"]


def patient_birth_date(patient) -> str:
    with system_context("tests"):
        return patient.birth_date.isoformat()


def test_it_asks_for_a_search_criterion(secretary, doctor, consultation):
    data = {**_booking(doctor, consultation), "action": "search"}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 200
    assert "Enter a last name or a birth date." in response.content.decode()


def test_it_books_an_existing_patient(secretary, doctor, consultation, patient):
    data = {**_booking(doctor, consultation), "action": "book_existing", "patient": str(patient.pk)}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    appointment = Appointment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == appointment.get_absolute_url()
    assert appointment.start == at(DAY, 10)
    assert appointment.end == at(DAY, 10, 20)
    assert appointment.patient_id == patient.pk
    assert appointment.created_by == secretary
    with system_context("tests"):
        assert appointment.reason == "Renouvellement d'ordonnance"
        assert appointment.internal_note == "Appeler la veille"
    event = AuditEvent.objects.get(event_type=EventType.CREATE, model_label="scheduling.Appointment")
    assert event.actor_username == secretary.username


def test_it_asks_to_pick_a_patient(secretary, doctor, consultation):
    data = {**_booking(doctor, consultation), "action": "book_existing"}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 200
    assert "Pick a patient in the list" in response.content.decode()
    assert not Appointment.objects.exists()


def test_it_books_a_new_patient_in_the_same_flow(secretary, doctor, consultation):
    data = {**_booking(doctor, consultation), **_new_patient(), "action": "book_new"}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 302
    appointment = Appointment.objects.get()
    patient = Patient.objects.get()
    assert appointment.patient_id == patient.pk
    with system_context("tests"):
        assert patient.display_name == "DURAND Léa"
        assert patient.phone_mobile == "+33611223344"
    assert AuditEvent.objects.filter(event_type=EventType.CREATE, patient_id=patient.pk).count() == 2


def test_it_offers_the_existing_record_before_creating_a_duplicate(secretary, doctor, consultation, patient):
    new = _new_patient(**{"new-last_name": "Lefevre", "new-first_names": "Anne-Marie", "new-birth_date": "1984-03-09"})
    data = {**_booking(doctor, consultation), **new, "action": "book_new"}
    client = client_for(secretary)
    response = client.post(reverse("scheduling:book"), data)
    body = response.content.decode()
    assert response.status_code == 200
    assert "already exists" in body
    assert f'value="{patient.pk}"' in body
    assert Patient.objects.count() == 1
    response = client.post(reverse("scheduling:book"), {**data, "new-confirm_duplicate": "on"})
    assert response.status_code == 302
    assert Patient.objects.count() == 2


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"date": "2030-02-30"}, "date", "valid date"),
        ({"date": ""}, "date", "required"),
        ({"time": "25:00"}, "time", "valid time"),
        ({"time": "02:30", "date": "2030-03-31"}, "time", "does not exist"),
        ({"practitioner": ""}, "practitioner", "required"),
        ({"practitioner": "999999"}, "practitioner", "valid choice"),
        ({"appointment_type": "abc"}, "appointment_type", "valid choice"),
        ({"date": "0001-01-01"}, "date", "agenda covers"),
    ],
)
def test_it_rerenders_bad_booking_input_with_errors_and_keeps_what_was_typed(
    secretary, doctor, consultation, changes, field, message
):
    data = {**_booking(doctor, consultation), **_new_patient(), **changes, "action": "book_new"}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    body = response.content.decode()
    assert 'value="Durand"' in body
    assert "Appeler la veille" in body
    assert not Patient.objects.exists()
    assert not Appointment.objects.exists()


def test_it_rerenders_a_bad_new_patient(secretary, doctor, consultation):
    data = {**_booking(doctor, consultation), **_new_patient(**{"new-phone_mobile": "12"}), "action": "book_new"}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 200
    assert response.context["new"].errors["phone_mobile"]
    assert not Patient.objects.exists()


def test_it_refuses_a_type_the_practitioner_does_not_offer(secretary, other_doctor, long_visit, patient):
    data = {**_booking(other_doctor, long_visit), "action": "book_existing", "patient": str(patient.pk)}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 200
    assert "does not offer" in response.content.decode()
    assert not Appointment.objects.exists()


def test_it_says_the_slot_is_taken(secretary, doctor, consultation, appointment, others_appointment):
    # Another patient (the same one would first be asked whether this is the same appointment twice).
    someone = str(others_appointment.patient_id)
    data = {**_booking(doctor, consultation, time="09:10"), "action": "book_existing", "patient": someone}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    body = response.content.decode()
    assert response.status_code == 200
    assert "This slot is already taken. Pick another time." in body
    assert "Book anyway" not in body
    assert Appointment.objects.count() == 2


def test_it_creates_no_patient_when_the_slot_is_taken(secretary, doctor, consultation, appointment):
    data = {**_booking(doctor, consultation, time="09:00"), **_new_patient(), "action": "book_new"}
    response = client_for(secretary).post(reverse("scheduling:book"), data)
    assert response.status_code == 200
    assert "already taken" in response.content.decode()
    assert Patient.objects.count() == 1  # the fixture's patient only
    assert 'value="Durand"' in response.content.decode()


def test_it_refuses_outside_hours_then_books_when_forced(secretary, doctor, consultation, patient):
    data = {**_booking(doctor, consultation, time="19:30"), "action": "book_existing", "patient": str(patient.pk)}
    client = client_for(secretary)
    response = client.post(reverse("scheduling:book"), data)
    body = response.content.decode()
    assert response.status_code == 200
    assert "outside the practitioner&#x27;s working hours" in body
    assert 'name="force"' in body
    assert not Appointment.objects.exists()

    response = client.post(reverse("scheduling:book"), {**data, "force": "on"})
    assert response.status_code == 302
    appointment = Appointment.objects.get()
    assert appointment.forced is True
    event = AuditEvent.objects.get(event_type=EventType.CREATE, model_label="scheduling.Appointment")
    assert event.extra["forced"] == ["working_hours"]


def test_it_refuses_a_booking_during_an_absence_unless_forced(secretary, doctor, consultation, patient):
    Absence.objects.create(practitioner=doctor, start=at(DAY, 0), end=at(DAY, 23), kind="holiday")
    data = {**_booking(doctor, consultation), "action": "book_existing", "patient": str(patient.pk)}
    client = client_for(secretary)
    response = client.post(reverse("scheduling:book"), data)
    assert "The practitioner is away at that time." in response.content.decode()
    assert client.post(reverse("scheduling:book"), {**data, "force": "on"}).status_code == 302
    assert Appointment.objects.get().forced


def test_it_lets_a_practice_admin_book_but_not_create_patients(practice_admin, doctor, consultation, patient):
    client = client_for(practice_admin)
    data = {**_booking(doctor, consultation), **_new_patient(), "action": "book_new"}
    assert client.post(reverse("scheduling:book"), data).status_code == 403
    assert "New patient" not in client.get(reverse("scheduling:book")).content.decode()
    data = {**_booking(doctor, consultation), "action": "book_existing", "patient": str(patient.pk)}
    assert client.post(reverse("scheduling:book"), data).status_code == 302


def test_it_ignores_an_unknown_or_archived_patient_id(secretary, doctor, consultation, patient):
    for value in ["not-a-uuid", str(uuid.uuid4())]:
        data = {**_booking(doctor, consultation), "action": "book_existing", "patient": value}
        assert client_for(secretary).post(reverse("scheduling:book"), data).status_code == 200
    with system_context("tests"):
        patient_archive(patient=patient, actor=None)
    data = {**_booking(doctor, consultation), "action": "book_existing", "patient": str(patient.pk)}
    assert client_for(secretary).post(reverse("scheduling:book"), data).status_code == 200
    assert not Appointment.objects.exists()


# ---------------------------------------------------------------------------------------------
# The appointment page and its actions


def test_it_shows_the_appointment_and_audits_what_it_decrypted(secretary, appointment, patient):
    url = appointment.get_absolute_url()
    response = client_for(secretary).get(url)
    body = response.content.decode()
    assert response.status_code == 200
    assert "LEFÈVRE Anne-Marie" in body
    assert patient.get_absolute_url() in body
    assert "Douleur au genou droit" in body
    assert "Préfère le matin" in body
    assert "Dr Claire Martin" in body
    assert "Consultation" in body
    found = {(e.model_label, e.object_pk): set(e.fields) for e in _reads(url)}
    assert found == {
        ("patients.Patient", str(patient.pk)): {"last_name", "first_names"},
        ("scheduling.Appointment", str(appointment.pk)): {"reason", "internal_note"},
    }


def test_it_shows_a_practitioner_their_appointment_without_front_desk_actions(practitioner, appointment):
    body = client_for(practitioner).get(appointment.get_absolute_url()).content.decode()
    assert 'value="arrived"' in body
    assert 'value="no_show"' in body
    assert 'value="booked"' not in body
    assert reverse("scheduling:move", args=[appointment.pk]) not in body
    assert reverse("scheduling:cancel", args=[appointment.pk]) not in body


def test_it_moves_an_appointment(secretary, appointment, other_doctor):
    url = reverse("scheduling:move", args=[appointment.pk])
    response = client_for(secretary).post(url, {"date": "2030-03-05", "time": "15:00", "practitioner": other_doctor.pk})
    assert response.status_code == 302
    appointment.refresh_from_db()
    assert appointment.start == at(DAY + datetime.timedelta(days=1), 15)
    assert appointment.end == at(DAY + datetime.timedelta(days=1), 15, 20)
    assert appointment.practitioner_id == other_doctor.pk


def test_it_refuses_a_move_onto_a_taken_slot(secretary, appointment, doctor, consultation):
    book(doctor, make_patient(last_name="Morel", email="", nir=""), consultation, at(DAY, 11))
    url = reverse("scheduling:move", args=[appointment.pk])
    response = client_for(secretary).post(url, {"date": "2030-03-04", "time": "10:50"})
    assert response.status_code == 200
    assert "already taken" in response.content.decode()
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 9)


def test_it_moves_outside_hours_only_when_forced(secretary, appointment):
    url = reverse("scheduling:move", args=[appointment.pk])
    client = client_for(secretary)
    response = client.post(url, {"date": "2030-03-04", "time": "07:00"})
    assert response.status_code == 200
    assert 'name="force"' in response.content.decode()
    assert client.post(url, {"date": "2030-03-04", "time": "07:00", "force": "on"}).status_code == 302
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 7)
    assert appointment.forced


@pytest.mark.parametrize("data", [{}, {"date": "2030-02-30", "time": "10:00"}, {"date": "2030-03-04", "time": "x"}])
def test_it_rerenders_a_bad_move(secretary, appointment, data):
    response = client_for(secretary).post(reverse("scheduling:move", args=[appointment.pk]), data)
    assert response.status_code == 200
    assert response.context["move_form"].errors
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 9)


def test_it_changes_the_type(secretary, appointment, long_visit):
    url = reverse("scheduling:change_type", args=[appointment.pk])
    response = client_for(secretary).post(url, {"appointment_type": long_visit.pk})
    assert response.status_code == 302
    appointment.refresh_from_db()
    assert appointment.appointment_type_id == long_visit.pk
    assert appointment.end == at(DAY, 9, 40)


def test_it_refuses_a_type_the_practitioner_does_not_offer_on_change(secretary, others_appointment, long_visit):
    url = reverse("scheduling:change_type", args=[others_appointment.pk])
    response = client_for(secretary).post(url, {"appointment_type": long_visit.pk})
    assert response.status_code == 200
    assert response.context["type_form"].errors


def test_it_cancels_with_a_reason_and_requires_one(secretary, appointment):
    url = reverse("scheduling:cancel", args=[appointment.pk])
    client = client_for(secretary)
    for empty in [{}, {"reason": "   "}]:
        response = client.post(url, empty)
        assert response.status_code == 200
        assert "Say why the appointment is cancelled." in response.content.decode()
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED

    response = client.post(url, {"reason": "La patiente a appelé: empêchement"})
    assert response.status_code == 302
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.CANCELLED
    assert appointment.cancelled_by == secretary
    with system_context("tests"):
        assert appointment.cancellation_reason == "La patiente a appelé: empêchement"
    body = client.get(appointment.get_absolute_url()).content.decode()
    assert "La patiente a appelé: empêchement" in body
    assert reverse("scheduling:cancel", args=[appointment.pk]) not in body


def test_it_changes_status_along_the_flow_only(secretary, appointment):
    url = reverse("scheduling:status", args=[appointment.pk])
    client = client_for(secretary)
    response = client.post(url, {"status": "done"}, follow=True)
    assert "cannot become" in response.content.decode()
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED
    for status in ["no_show", "booked", "arrived", "booked"]:
        assert client.post(url, {"status": status}).status_code == 302
        appointment.refresh_from_db()
        assert appointment.status == status


@pytest.mark.parametrize("status", ["cancelled", "bogus", ""])
def test_it_refuses_statuses_that_cannot_be_set_here(secretary, appointment, status):
    response = client_for(secretary).post(reverse("scheduling:status", args=[appointment.pk]), {"status": status})
    assert response.status_code == 302
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED


def test_it_keeps_practitioners_to_their_part_of_the_flow(practitioner, appointment):
    url = reverse("scheduling:status", args=[appointment.pk])
    client = client_for(practitioner)
    assert client.post(url, {"status": "no_show"}).status_code == 302
    assert client.post(url, {"status": "booked"}).status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.NO_SHOW


def test_it_never_redirects_off_site_after_a_status_change(secretary, appointment):
    url = reverse("scheduling:status", args=[appointment.pk])
    response = client_for(secretary).post(url, {"status": "arrived", "next": "https://evil.example/"})
    assert response["Location"] == appointment.get_absolute_url()


def test_it_refuses_get_on_actions(secretary, appointment):
    for action in ["move", "change_type", "cancel", "status"]:
        assert client_for(secretary).get(reverse(f"scheduling:{action}", args=[appointment.pk])).status_code == 405


# ---------------------------------------------------------------------------------------------
# DST change days (Europe/Paris): the grid and the booking form follow the wall clock.


@pytest.mark.parametrize("day", [datetime.date(2030, 3, 31), datetime.date(2030, 10, 27)])
def test_it_renders_and_books_on_dst_change_days(secretary, doctor, consultation, patient, day):
    client = client_for(secretary)
    data = {
        **_booking(doctor, consultation, date=day.isoformat(), time="09:00"),
        "action": "book_existing",
        "patient": str(patient.pk),
    }
    assert client.post(reverse("scheduling:book"), data).status_code == 302
    appointment = Appointment.objects.get()
    assert appointment.start == at(day, 9)
    assert appointment.start.astimezone(datetime.UTC).hour == (7 if day.month == 3 else 8)
    body = client.get(reverse("scheduling:day", args=[day])).content.decode()
    assert re.search(r'class="appt [^"]*rs-25 re-29', body)
    assert ">09:00<" in body


def test_it_never_answers_500_to_out_of_range_ids(secretary, doctor, consultation, appointment):
    client = client_for(secretary)
    big = "9" * 30
    assert (
        client.get(reverse("scheduling:free_slots"), {"practitioner": big, "appointment_type": big}).status_code == 200
    )
    assert client.get(reverse("scheduling:book"), {"practitioner": big, "type": big, "patient": big}).status_code == 200
    data = {"practitioner": big, "appointment_type": big, "date": "2030-03-04", "time": "10:00", "action": "book_new"}
    assert client.post(reverse("scheduling:book"), data).status_code == 200
    move = {"practitioner": big, "date": "2030-03-04", "time": "10:00"}
    assert client.post(reverse("scheduling:move", args=[appointment.pk]), move).status_code == 200
    assert client.get(f"/agenda/practitioner/{big}/week/").status_code == 404
    assert client.get(f"/agenda/2030-03-04/practitioner/{big}/print/").status_code == 404
