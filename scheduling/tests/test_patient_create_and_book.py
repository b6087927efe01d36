"""A new patient and their first booking, in one service (scheduling.services
.patient_create_and_book): both commit together, with their audit rows, or neither does."""

import datetime

import pytest
from django.core.exceptions import ValidationError

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import DAY, at, book, make_patient
from patients.models import Patient
from scheduling import services
from scheduling.models import Appointment

NEW = {
    "last_name": "Morel",
    "first_names": "Inès",
    "sex": "F",
    "birth_date": datetime.date(1990, 5, 17),
    "phone_mobile": "+33612345678",
}


def _create_and_book(doctor, kind, hour: int, **patient_data):
    with system_context("tests"):
        return services.patient_create_and_book(
            patient_data={**NEW, **patient_data},
            practitioner=doctor,
            appointment_type=kind,
            start=at(DAY, hour),
            actor=None,
            reason="Premier rendez-vous",
        )


def test_it_creates_the_patient_and_books_together(doctor, consultation):
    appointment = _create_and_book(doctor, consultation, 9)

    patient = Patient.objects.get()
    assert appointment.patient_id == patient.pk
    assert appointment.practitioner_id == doctor.pk
    assert appointment.start == at(DAY, 9)
    creates = AuditEvent.objects.filter(event_type=EventType.CREATE, patient_id=patient.pk)
    assert sorted(creates.values_list("model_label", flat=True)) == ["patients.Patient", "scheduling.Appointment"]


def test_a_refused_booking_creates_no_patient(doctor, consultation):
    book(doctor, make_patient(), consultation, at(DAY, 9))
    before = AuditEvent.objects.filter(event_type=EventType.CREATE).count()

    with pytest.raises(services.SlotTaken):
        _create_and_book(doctor, consultation, 9, last_name="Refusé")

    assert Patient.objects.count() == 1
    assert Appointment.objects.count() == 1
    assert AuditEvent.objects.filter(event_type=EventType.CREATE).count() == before


def test_a_refused_patient_books_nothing(doctor, consultation):
    with pytest.raises(ValidationError) as refused:
        _create_and_book(doctor, consultation, 9, sex="Q")
    assert not isinstance(refused.value, services.BookingError)
    assert not Patient.objects.exists()
    assert not Appointment.objects.exists()
