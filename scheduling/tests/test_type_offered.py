"""Whether a practitioner offers an appointment type, written once
(AppointmentType.is_offered_by, and AppointmentType.objects.offered_by for queries), and the
forms and services that refuse a type its practitioner does not offer."""

import pytest

from audit.context import system_context
from config.testing import DAY, at, book, make_patient, make_type
from scheduling import services
from scheduling.forms import BookingForm, ChangeTypeForm, FreeSlotsForm
from scheduling.models import AppointmentType

NOT_OFFERED = "This practitioner does not offer this appointment type."


@pytest.fixture
def offered_by_one(doctor, other_doctor):
    """A type only Dr Martin offers."""
    return make_type(doctor, name="Suture", minutes=30)


def test_it_tells_who_offers_a_type(doctor, other_doctor, offered_by_one):
    assert offered_by_one.is_offered_by(doctor) is True
    assert offered_by_one.is_offered_by(other_doctor) is False
    # A practitioner's id answers the same (the services know some only by id).
    assert offered_by_one.is_offered_by(doctor.pk) is True
    assert offered_by_one.is_offered_by(other_doctor.pk) is False


def test_a_type_nobody_offers_is_offered_by_nobody(doctor):
    nobody = AppointmentType.objects.create(name="Orphan", duration_minutes=20)
    assert nobody.is_offered_by(doctor) is False


def test_the_query_lists_the_types_a_practitioner_offers(doctor, other_doctor, consultation, offered_by_one):
    assert set(AppointmentType.objects.offered_by(doctor)) == {consultation, offered_by_one}
    assert set(AppointmentType.objects.offered_by(other_doctor.pk)) == {consultation}
    # It chains with other filters, and lists each type once.
    assert list(AppointmentType.objects.filter(is_active=True).offered_by(doctor).order_by("name")) == [
        consultation,
        offered_by_one,
    ]


def _slot(practitioner, kind, **extra) -> dict:
    return {"practitioner": practitioner.pk, "appointment_type": kind.pk, **extra}


def test_the_forms_refuse_a_type_the_practitioner_does_not_offer(db, doctor, other_doctor, offered_by_one):
    booking = BookingForm(_slot(other_doctor, offered_by_one, date=DAY.isoformat(), time="09:00"))
    assert not booking.is_valid()
    assert booking.errors["appointment_type"] == [NOT_OFFERED]
    assert BookingForm(_slot(doctor, offered_by_one, date=DAY.isoformat(), time="09:00")).is_valid()
    slots = FreeSlotsForm(_slot(other_doctor, offered_by_one))
    assert not slots.is_valid()
    assert slots.errors["appointment_type"] == [NOT_OFFERED]
    assert FreeSlotsForm(_slot(doctor, offered_by_one)).is_valid()
    # Changing type: only the types of the appointment's practitioner are offered.
    choices = ChangeTypeForm(practitioner_id=other_doctor.pk).fields["appointment_type"].queryset
    assert offered_by_one not in choices


def test_the_services_refuse_a_type_the_practitioner_does_not_offer(doctor, other_doctor, consultation, offered_by_one):
    patient = make_patient()
    with system_context("tests"), pytest.raises(services.BookingError) as refused:
        services.appointment_book(
            practitioner=other_doctor, patient=patient, appointment_type=offered_by_one, start=at(DAY, 9), actor=None
        )
    assert refused.value.code == "type_not_offered"
    assert refused.value.messages == [NOT_OFFERED]

    sutured = book(doctor, patient, offered_by_one, at(DAY, 9))
    with system_context("tests"), pytest.raises(services.BookingError) as refused:
        services.appointment_move(appointment=sutured, start=at(DAY, 10), practitioner=other_doctor, actor=None)
    assert refused.value.code == "type_not_offered"

    seen = book(other_doctor, patient, consultation, at(DAY, 11))
    with system_context("tests"), pytest.raises(services.BookingError) as refused:
        services.appointment_change_type(appointment=seen, appointment_type=offered_by_one, actor=None)
    assert refused.value.code == "type_not_offered"
