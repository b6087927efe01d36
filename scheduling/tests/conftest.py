"""The clinic's agenda for the page tests: the conftest personas as practitioners with hours,
an appointment type they both offer, and bookings made through the service."""

import datetime

import pytest

from audit.context import system_context
from practice.models import Practitioner
from scheduling import services
from scheduling.models import AppointmentType, Weekday, WorkingHours
from scheduling.tests.factories import PARIS

# A Monday far enough ahead that "now" never gets in the way of booking it.
DAY = datetime.date(2030, 3, 4)


def at(day: datetime.date, hour: int, minute: int = 0) -> datetime.datetime:
    """An aware moment in the practice's time zone."""
    return datetime.datetime.combine(day, datetime.time(hour, minute), tzinfo=PARIS)


def today() -> datetime.date:
    return datetime.datetime.now(PARIS).date()


def make_doctor(user, name: str, *, colour: str = "#0b6bcb") -> Practitioner:
    """A practitioner working every day, 8:00-12:00 and 13:00-19:00 (so tests on "today" work
    whatever the weekday)."""
    from practice.models import Specialty

    specialty, _ = Specialty.objects.get_or_create(name="Médecine générale")
    doctor = Practitioner.objects.create(user=user, display_name=name, specialty=specialty, colour=colour)
    for weekday in Weekday.values:
        for start, end in ((8, 12), (13, 19)):
            WorkingHours.objects.create(
                practitioner=doctor, weekday=weekday, start_time=datetime.time(start), end_time=datetime.time(end)
            )
    return doctor


def make_type(*doctors, name: str = "Consultation", minutes: int = 20, colour: str = "#3366cc") -> AppointmentType:
    kind = AppointmentType.objects.create(name=name, duration_minutes=minutes, colour=colour)
    kind.practitioners.set(doctors)
    return kind


def book(doctor, patient, kind, start, **kwargs):
    with system_context("tests"):
        return services.appointment_book(
            practitioner=doctor, patient=patient, appointment_type=kind, start=start, actor=None, **kwargs
        )


@pytest.fixture
def doctor(practitioner):
    return make_doctor(practitioner, "Dr Claire Martin", colour="#0b6bcb")


@pytest.fixture
def other_doctor(other_practitioner):
    return make_doctor(other_practitioner, "Dr Paul Bernard", colour="#b54708")


@pytest.fixture
def consultation(doctor, other_doctor):
    return make_type(doctor, other_doctor, name="Consultation", minutes=20, colour="#3366cc")


@pytest.fixture
def long_visit(doctor):
    return make_type(doctor, name="Première consultation", minutes=40, colour="#12b76a")


@pytest.fixture
def appointment(doctor, patient, consultation):
    """Dr Martin sees Anne-Marie Lefèvre on DAY at 9:00, with a reason and an internal note."""
    return book(
        doctor, patient, consultation, at(DAY, 9), reason="Douleur au genou droit", internal_note="Préfère le matin"
    )


@pytest.fixture
def others_appointment(other_doctor, consultation):
    from conftest import make_patient

    someone = make_patient(last_name="Garnier", first_names="Hugo", email="", nir="", phone_mobile="")
    return book(other_doctor, someone, consultation, at(DAY, 10), reason="Vaccin")
