"""The clinic's agenda for the page tests: the personas as practitioners with hours, an
appointment type they both offer, and bookings made through the service (config/testing.py)."""

import pytest

from config.testing import (
    DAY,
    at,
    book,
    make_doctor,
    make_patient,
    make_type,
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
    someone = make_patient(last_name="Garnier", first_names="Hugo", email="", nir="", phone_mobile="")
    return book(other_doctor, someone, consultation, at(DAY, 10), reason="Vaccin")
