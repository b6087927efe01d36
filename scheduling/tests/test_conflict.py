"""A taken slot names what holds it (scheduling.conflicts, scheduling.selectors.slot_conflict):
the appointment's time and practitioner, the patient's name only for a user who may open
that record (decrypted, so audited and explained), and the next free time, offered as a link
on the booking page."""

import datetime

import pytest
from django.db import connection
from django.urls import reverse

from audit.context import AuditContext, opened, system_context
from audit.current import Actor
from audit.models import AuditEvent
from config.testing import DAY, at, book, client_for, make_patient, patient_key, read_map, reads
from scheduling import selectors, services
from scheduling.models import Appointment


@pytest.fixture(autouse=True)
def _day_explained(settings):
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10  # DAY lies years ahead, like today's bookings


@pytest.fixture
def caller(db):
    return make_patient(last_name="Caller", first_names="Iris", email="", nir="", phone_mobile="")


def _last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _taken(doctor, patient, kind, start) -> services.SlotTaken:
    with pytest.raises(services.SlotTaken) as refused:
        book(doctor, patient, kind, start)
    return refused.value


def test_it_says_which_appointment_holds_the_slot_and_the_next_free_time(
    secretary, doctor, consultation, appointment, caller
):
    last = _last_id()
    response = client_for(secretary).post(
        reverse("scheduling:book"),
        {
            "action": "book_existing",
            "patient": str(caller.pk),
            "practitioner": doctor.pk,
            "appointment_type": consultation.pk,
            "date": DAY.isoformat(),
            "time": "09:10",
        },
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "This slot is already taken" in body
    assert (
        "Held by the appointment of Monday 4 March 2030, 09:00–09:20, with Dr Claire Martin (LEFÈVRE Anne-Marie)."
        in body
    )
    assert "Next free time: Monday 4 March 2030, 09:20." in body
    url = (
        f"/appointments/new/?practitioner={doctor.pk}&amp;type={consultation.pk}"
        f"&amp;start=2030-03-04T09%3A20&amp;patient={caller.pk}"
    )
    assert f'href="{url}"' in body
    # The conflicting patient's two name fields, read for this message (and audited).
    found = read_map(id__gt=last)
    assert found[patient_key(appointment.patient)] == {"last_name", "first_names"}
    assert {key for key in found if key[0] == "patients.Patient"} == {
        patient_key(appointment.patient),
        patient_key(caller),
    }
    assert Appointment.objects.count() == 1


def test_the_next_free_link_prefills_the_booking(secretary, doctor, consultation, appointment, caller):
    query = f"?practitioner={doctor.pk}&type={consultation.pk}&start=2030-03-04T09:20&patient={caller.pk}"
    response = client_for(secretary).get(reverse("scheduling:book") + query)
    form = response.context["form"]
    assert form.initial["practitioner"] == doctor.pk
    assert form.initial["time"] == datetime.time(9, 20)
    assert response.context["selected_pk"] == caller.pk
    assert read_map()[patient_key(caller)] >= {"last_name", "first_names"}


def test_it_names_the_conflict_on_the_appointment_pages_move(secretary, doctor, appointment, others_appointment):
    """Dr Bernard's 10:00 holds the time Dr Martin's 9:00 is moved to."""
    response = client_for(secretary).post(
        reverse("scheduling:move", args=[appointment.pk]),
        {"date": DAY.isoformat(), "time": "10:10", "practitioner": others_appointment.practitioner_id},
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "Held by the appointment of Monday 4 March 2030, 10:00–10:20, with Dr Paul Bernard (GARNIER Hugo)." in body
    assert "Next free time: Monday 4 March 2030, 10:20." in body
    assert read_map(path=reverse("scheduling:move", args=[appointment.pk]))[
        patient_key(others_appointment.patient)
    ] == {
        "last_name",
        "first_names",
    }


def _described(user, conflict):
    with opened(AuditContext(purpose="tests", actor=Actor.for_user(user))):
        return selectors.slot_conflict(
            conflict, user=user, duration=datetime.timedelta(minutes=20), wanted=at(DAY, 9, 10)
        )


def test_it_names_the_patient_only_to_whoever_may_open_their_record(
    practitioner, other_practitioner, doctor, consultation, appointment, caller
):
    conflict = _taken(doctor, caller, consultation, at(DAY, 9, 10)).conflict
    assert conflict.pk == appointment.pk
    before = _last_id()

    hidden = _described(other_practitioner, conflict)  # Dr Bernard never saw Mrs Lefèvre
    assert hidden.patient is None
    assert (hidden.practitioner, hidden.start, hidden.end) == ("Dr Claire Martin", at(DAY, 9), at(DAY, 9, 20))
    assert hidden.next_free.start == at(DAY, 9, 20)
    assert reads(id__gt=before) == []

    shown = _described(practitioner, conflict)  # her own practitioner
    assert shown.patient == "LEFÈVRE Anne-Marie"
    assert read_map(id__gt=before) == {patient_key(appointment.patient): {"last_name", "first_names"}}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no exclusion constraint: its check refuses")
def test_it_names_the_winner_when_a_concurrent_booking_took_the_slot(doctor, consultation, appointment, caller):
    """The database refused (the check passed before the other booking committed): the refusal
    still names the appointment that won."""
    clash = Appointment(
        practitioner=doctor, patient=caller, appointment_type=consultation, start=at(DAY, 9, 5), end=at(DAY, 9, 25)
    )
    with system_context("tests"), pytest.raises(services.SlotTaken) as refused:
        services._save_guarded(clash)  # what appointment_book calls once its check has passed
    assert refused.value.conflict.pk == appointment.pk
