"""Minimal exposure: the record page masks contact details (phones, e-mail, address, NIR) and
does not even decrypt them; "Show" is a POST whose page decrypts the asked group alone, and
its audit rows name exactly those fields."""

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from config.testing import client_for, make_appointment, make_patient, patient_key, read_map, reads
from patients.selectors import CONTACT_FIELDS, CONTACT_GROUPS

IDENTITY_SHOWN = {"last_name", "first_names", "birth_name", "sex", "birth_date", "referring_doctor", "notes"}
# What make_patient() stores in the contact fields, as the page would show them.
CONTACT_VALUES = {
    "phone": ["+33612345678"],
    "email": ["anne-marie.lefevre@example.fr"],
    "address": ["12 rue des Lilas", "75011", "Paris"],
    "nir": ["284037511512331"],
}


def _reveal_url(patient) -> str:
    return reverse("patients:reveal", args=[patient.pk])


def test_it_masks_contact_details_on_the_record_page_without_decrypting_them(secretary, patient):
    response = client_for(secretary).get(patient.get_absolute_url())
    body = response.content.decode()

    assert response.status_code == 200
    assert "LEFÈVRE Anne-Marie" in body
    for values in CONTACT_VALUES.values():
        for value in values:
            assert value not in body
    assert body.count('name="show"') == len(CONTACT_GROUPS) + 1  # one per group, and "all"
    assert read_map() == {patient_key(patient): IDENTITY_SHOWN}


def test_it_shows_every_contact_detail_on_request_and_audits_exactly_those(secretary, patient):
    response = client_for(secretary).post(_reveal_url(patient), {"show": "all"})
    body = response.content.decode()

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    for values in CONTACT_VALUES.values():
        for value in values:
            assert value in body
    assert "Lefèvre" not in body
    assert "LEFÈVRE" not in body
    assert read_map() == {patient_key(patient): set(CONTACT_FIELDS)}
    (event,) = reads()
    assert (event.actor_user_id, event.purpose, event.path) == (secretary.pk, "patients:reveal", _reveal_url(patient))
    assert event.patient_id == patient.pk


def test_it_shows_all_when_no_group_is_named(secretary, patient):
    response = client_for(secretary).post(_reveal_url(patient))
    assert response.status_code == 200
    assert read_map() == {patient_key(patient): set(CONTACT_FIELDS)}


@pytest.mark.parametrize("group", list(CONTACT_GROUPS))
def test_it_shows_one_group_and_keeps_the_others_masked(secretary, patient, group):
    body = client_for(secretary).post(_reveal_url(patient), {"show": group}).content.decode()

    for shown, values in CONTACT_VALUES.items():
        for value in values:
            assert (value in body) == (shown == group), (shown, value)
    assert read_map() == {patient_key(patient): set(CONTACT_GROUPS[group])}


def test_it_refuses_a_get_and_an_unknown_group_without_decrypting(secretary, patient):
    client = client_for(secretary)
    assert client.get(_reveal_url(patient)).status_code == 405
    assert client.post(_reveal_url(patient), {"show": "notes"}).status_code == 400
    assert not reads()


def test_it_needs_the_csrf_token(secretary, patient):
    client = client_for(secretary)
    client.handler.enforce_csrf_checks = True
    assert client.post(_reveal_url(patient), {"show": "phone"}).status_code == 403
    assert not reads()


def test_it_lets_a_practitioner_see_their_own_patient_s_phone(practitioner, patient):
    make_appointment(patient, practitioner)
    response = client_for(practitioner).post(_reveal_url(patient), {"show": "phone"})
    assert response.status_code == 200
    assert "+33612345678" in response.content.decode()
    assert read_map() == {patient_key(patient): {"phone_mobile", "phone_other"}}


@pytest.mark.parametrize("persona", ["other_practitioner", "outsider"])
def test_it_answers_404_to_users_without_access_and_decrypts_nothing(request, persona, practitioner, patient):
    make_appointment(patient, practitioner)
    user = request.getfixturevalue(persona)
    client = client_for(user)
    assert client.post(_reveal_url(patient), {"show": "all"}).status_code == 404
    assert client.post(reverse("patients:reveal", args=[uuid.uuid4()]), {"show": "all"}).status_code == 404
    assert not reads(actor_user_id=user.pk)


def test_it_sends_anonymous_users_to_login(patient):
    response = Client().post(_reveal_url(patient), {"show": "all"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not reads()


def test_it_escapes_contact_details(secretary):
    payload = "<script>alert(1)</script>"
    patient = make_patient(address=payload, city="<b>Lyon</b>")
    body = client_for(secretary).post(_reveal_url(patient), {"show": "address"}).content.decode()
    assert payload not in body
    assert "<b>Lyon</b>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_it_still_decrypts_the_whole_record_to_edit_it(secretary, patient):
    """Editing is an explicit action on every field: the form needs them, audited as an edit."""
    response = client_for(secretary).get(reverse("patients:edit", args=[patient.pk]))
    assert response.status_code == 200
    assert "anne-marie.lefevre@example.fr" in response.content.decode()
    assert set(CONTACT_FIELDS) <= read_map()[patient_key(patient)]
    assert {e.purpose for e in reads()} == {"patients:edit"}


def test_it_masks_the_phone_on_the_appointment_page_and_offers_the_reveal(secretary, practitioner, patient):
    appointment = make_appointment(patient, practitioner)
    response = client_for(secretary).get(appointment.get_absolute_url())
    body = response.content.decode()

    assert response.status_code == 200
    assert "+33612345678" not in body
    assert f'action="{_reveal_url(patient)}"' in body
    assert not read_map().get(patient_key(patient), set()) & set(CONTACT_FIELDS)


def test_it_counts_a_reveal_against_the_read_budget(secretary, patient, settings):
    settings.READ_BUDGETS = {**settings.READ_BUDGETS, "Secretary": (1, 1)}
    other = make_patient(last_name="Girard", first_names="Paul", phone_mobile="+33687654321")
    client = client_for(secretary)
    assert client.post(_reveal_url(patient), {"show": "phone"}).status_code == 200
    assert client.post(_reveal_url(patient), {"show": "email"}).status_code == 200  # the same patient: free
    response = client.post(_reveal_url(other), {"show": "phone"})
    assert response.status_code == 429
    assert "+33687654321" not in response.content.decode()
