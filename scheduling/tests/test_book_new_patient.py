"""A walk-in created on the booking page: the front desk asks whether they want reminders (by
SMS, by e-mail) with the number or address they go to, as on the patient form, so the booking
plans their reminders."""

import re

import pytest
from django.urls import reverse

from audit.context import system_context
from config.testing import DAY, client_for, patient_key, read_map
from patients.models import Patient
from scheduling.models import Appointment, Reminder, ReminderChannel

BOOK = reverse("scheduling:book")


def _booking(doctor, kind, **new) -> dict:
    """A new patient booked on DAY at 10:00, with what the front desk typed about them."""
    return {
        "practitioner": doctor.pk,
        "appointment_type": kind.pk,
        "date": DAY.isoformat(),
        "time": "10:00",
        "reason": "",
        "internal_note": "",
        "new-last_name": "Durand",
        "new-first_names": "Léa",
        "new-sex": "F",
        "new-birth_date": "1990-05-17",
        "action": "book_new",
        **{f"new-{name}": value for name, value in new.items()},
    }


def test_it_asks_for_consent_to_reminders_and_their_contact_details(secretary):
    body = client_for(secretary).get(BOOK).content.decode()
    for name in ("new-phone_mobile", "new-email", "new-consent_sms", "new-consent_email"):
        assert f'name="{name}"' in body
    assert 'type="checkbox" name="new-consent_sms"' in body
    assert 'type="checkbox" name="new-consent_email"' in body


def test_a_walk_in_who_agrees_gets_reminders_by_sms_and_e_mail(secretary, doctor, consultation):
    data = _booking(
        doctor,
        consultation,
        phone_mobile="06 11 22 33 44",
        email="lea.durand@example.fr",
        consent_sms="on",
        consent_email="on",
    )
    response = client_for(secretary).post(BOOK, data)

    assert response.status_code == 302
    appointment = Appointment.objects.get()
    patient = Patient.objects.get()
    assert (patient.consent_sms, patient.consent_email) == (True, True)
    channels = sorted(Reminder.objects.filter(appointment=appointment).values_list("channel", flat=True))
    assert channels == sorted([ReminderChannel.SMS, ReminderChannel.EMAIL])
    # Creating and booking decrypt nothing: the redirect carries no patient data.
    assert read_map(path=BOOK) == {}
    with system_context("tests:check"):
        assert (patient.phone_mobile, patient.email) == ("+33611223344", "lea.durand@example.fr")
    assert read_map(purpose="tests:check") == {patient_key(patient): {"phone_mobile", "email"}}


def test_a_walk_in_who_does_not_agree_gets_no_reminder(secretary, doctor, consultation):
    data = _booking(doctor, consultation, phone_mobile="06 11 22 33 44", email="lea.durand@example.fr")
    assert client_for(secretary).post(BOOK, data).status_code == 302
    patient = Patient.objects.get()
    assert (patient.consent_sms, patient.consent_email) == (False, False)
    assert not Reminder.objects.exists()
    assert read_map(path=BOOK) == {}


@pytest.mark.parametrize(
    ("typed", "field", "message"),
    [
        ({"consent_sms": "on"}, "consent_sms", "mobile phone number"),
        ({"consent_email": "on", "phone_mobile": "06 11 22 33 44"}, "consent_email", "e-mail address"),
        ({"consent_email": "on", "email": "not an address"}, "email", "valid email"),
    ],
)
def test_it_refuses_a_consent_without_where_to_send_and_keeps_what_was_typed(
    secretary, doctor, consultation, typed, field, message
):
    response = client_for(secretary).post(BOOK, _booking(doctor, consultation, **typed))

    assert response.status_code == 200
    assert message in " ".join(response.context["new"].errors[field])
    body = response.content.decode()
    assert 'value="Durand"' in body
    for name in typed:
        if name.startswith("consent_"):
            assert re.search(rf'<input type="checkbox" name="new-{name}"[^>]* checked>', body)
    assert not Patient.objects.exists()
    assert not Appointment.objects.exists()
    assert read_map(path=BOOK) == {}
