"""The patient pages as the front desk, the practitioners and outsiders see them."""

import datetime
import uuid

import pytest
from django.urls import reverse

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import client_for, make_appointment, make_patient
from patients.models import Patient
from patients.selectors import MASKED_LIMIT, SEARCH_LIMIT

VALID = {
    "last_name": "Durand",
    "first_names": "Léa",
    "sex": "F",
    "birth_date": "1990-05-17",
    "phone_mobile": "06 11 22 33 44",
    "email": "lea.durand@example.fr",
    "nir": "",
    "language": "fr",
}


def _post_new(client, **changes):
    return client.post(reverse("patients:create"), {**VALID, **changes})


def test_it_shows_the_record_to_a_secretary_without_caching(secretary, patient):
    client = client_for(secretary)
    response = client.get(patient.get_absolute_url())
    body = response.content.decode()
    assert response.status_code == 200
    assert "LEFÈVRE Anne-Marie" in body
    assert "anne-marie.lefevre@example.fr" not in body  # masked until asked (test_reveal.py)
    assert "no-store" in response["Cache-Control"]
    shown = client.post(reverse("patients:reveal", args=[patient.pk]), {"show": "email"})
    assert "anne-marie.lefevre@example.fr" in shown.content.decode()
    assert "no-store" in shown["Cache-Control"]


@pytest.mark.parametrize("persona", ["practitioner", "outsider"])
def test_it_hides_a_record_from_users_without_access(request, persona, patient):
    user = request.getfixturevalue(persona)
    response = client_for(user).get(patient.get_absolute_url())
    assert response.status_code == 404
    assert not AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk).exists()


def test_it_answers_404_for_an_unknown_id_like_a_forbidden_one(secretary, practitioner, patient):
    assert client_for(secretary).get(f"/patients/{uuid.uuid4()}/").status_code == 404
    assert client_for(secretary).get("/patients/1/").status_code == 404


def test_it_shows_a_practitioner_the_patients_they_saw(practitioner, patient):
    make_appointment(patient, practitioner, reason="")
    response = client_for(practitioner).get(patient.get_absolute_url())
    assert response.status_code == 200
    assert "Edit" not in response.content.decode()
    assert client_for(practitioner).get(reverse("patients:edit", args=[patient.pk])).status_code == 403


def test_it_sends_anonymous_users_to_login(client, patient):
    response = client.get(patient.get_absolute_url())
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_creates_a_patient_and_audits_the_write(secretary):
    response = _post_new(client_for(secretary))
    patient = Patient.objects.get()
    assert response.status_code == 302
    assert response["Location"] == patient.get_absolute_url()
    with system_context("tests"):
        assert patient.phone_mobile == "+33611223344"
        assert patient.created_by == secretary
    event = AuditEvent.objects.get(event_type=EventType.CREATE, patient_id=patient.pk)
    assert event.actor_username == secretary.username
    assert "last_name" in event.fields
    assert "Durand" not in str(event.extra)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"phone_mobile": "12"}, "phone_mobile", "valid phone number"),
        ({"nir": "1234"}, "nir", "15 characters"),
        ({"nir": "290057511512300"}, "nir", "key does not match"),
        ({"birth_date": "2999-01-01"}, "birth_date", "future"),
        ({"email": "not-an-email"}, "email", "valid email"),
        ({"last_name": ""}, "last_name", "required"),
    ],
)
def test_it_rerenders_bad_input_with_errors_and_keeps_what_was_typed(secretary, changes, field, message):
    response = _post_new(client_for(secretary), **changes)
    assert response.status_code == 200
    errors = " ".join(str(e) for e in response.context["form"].errors[field])
    assert message in errors
    assert 'value="Léa"' in response.content.decode()
    assert not Patient.objects.exists()


def test_it_checks_the_nir_against_sex_and_birth_year(secretary):
    response = _post_new(client_for(secretary), nir="184037511512331"[:-2] + "00")
    assert response.status_code == 200
    assert Patient.objects.count() == 0


def test_it_accepts_a_valid_nir(secretary):
    # 2 90 05 75 115 123 + key
    body = "2900575115123"
    nir = body + f"{97 - int(body) % 97:02d}"
    response = _post_new(client_for(secretary), nir=nir)
    assert response.status_code == 302


def test_it_warns_about_a_duplicate_until_confirmed(secretary):
    make_patient(last_name="Durand", first_names="Léa", birth_date=datetime.date(1990, 5, 17))
    client = client_for(secretary)
    response = _post_new(client, last_name="DURAND", first_names="lea")
    assert response.status_code == 200
    assert "same name and birth date" in response.content.decode()
    assert Patient.objects.count() == 1
    response = _post_new(client, last_name="DURAND", first_names="lea", confirm_duplicate="on")
    assert response.status_code == 302
    assert Patient.objects.count() == 2


def test_it_edits_and_audits_only_the_changed_field_names(secretary, patient):
    client = client_for(secretary)
    form = client.get(reverse("patients:edit", args=[patient.pk])).context["form"]
    data = {name: value for name, value in form.initial.items() if value is not None and name in form.fields}
    data.update(birth_date="1984-03-09", city="Lyon", consent_sms="on" if data.get("consent_sms") else "")
    data = {k: v for k, v in data.items() if v not in (False, "")}
    response = client.post(reverse("patients:edit", args=[patient.pk]), data)
    assert response.status_code == 302
    event = AuditEvent.objects.get(event_type=EventType.CHANGE, patient_id=patient.pk)
    assert event.fields == ["city"]
    with system_context("tests"):
        assert Patient.objects.get(pk=patient.pk).city == "Lyon"


def test_it_archives_instead_of_deleting(secretary, patient):
    client = client_for(secretary)
    assert client.get(reverse("patients:archive", args=[patient.pk])).status_code == 405
    response = client.post(reverse("patients:archive", args=[patient.pk]))
    assert response.status_code == 302
    patient.refresh_from_db()
    assert patient.is_archived
    assert AuditEvent.objects.filter(event_type=EventType.ARCHIVE, patient_id=patient.pk).exists()
    client.post(reverse("patients:restore", args=[patient.pk]))
    patient.refresh_from_db()
    assert not patient.is_archived


def test_it_escapes_script_and_sql_payloads(secretary):
    payload = "<script>alert(1)</script>'; DROP TABLE patients_patient; --"
    client = client_for(secretary)
    response = _post_new(client, last_name=payload[:100], notes=payload, city=payload[:100])
    assert response.status_code == 302
    body = client.get(response["Location"]).content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert Patient.objects.count() == 1


def test_it_keeps_search_terms_out_of_urls(secretary, patient):
    client = client_for(secretary)
    response = client.post(reverse("patients:list"), {"last_name": "lefevre", "first_name": "anne-marie"})
    assert response.status_code == 200
    assert "LEFÈVRE Anne-Marie" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert read.path == "/patients/"
    assert read.purpose == "patients:list"


def test_it_explains_an_empty_search(secretary):
    response = client_for(secretary).post(reverse("patients:list"), {"first_name": "Anne"})
    assert response.status_code == 200
    assert "Enter a last name" in response.content.decode()


def test_it_keeps_the_list_from_practitioners_and_outsiders(practitioner, outsider):
    assert client_for(practitioner).get(reverse("patients:list")).status_code == 403
    assert client_for(outsider).get(reverse("patients:list")).status_code == 403
    assert client_for(outsider).get(reverse("patients:create")).status_code == 403


def test_a_common_last_name_alone_shows_masked_lines_and_asks_to_refine(secretary):
    for i in range(MASKED_LIMIT + 2):
        make_patient(
            last_name="Martin",
            first_names=f"Prénom{i}",
            birth_date=datetime.date(1950 + i, 1, 1),
            email="",
            nir="",
            phone_mobile="",
        )
    response = client_for(secretary).post(reverse("patients:list"), {"last_name": "martin"})
    body = response.content.decode()
    assert len(response.context["masked"]) == MASKED_LIMIT
    assert "More patients match than are shown" in body
    # Each line: the last name, the first names' initial and the birth year; no first name, no date.
    assert "MARTIN P." in body
    assert "Prénom" not in body
    assert "1950" in body
    assert "01/01/1950" not in body
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert reads.count() <= MASKED_LIMIT + 1 + 10  # the shown rows, the one that proves "more", the margin
    assert set(reads.values_list("explanation", flat=True)) == {"masked"}


def test_it_caps_full_lines_and_asks_to_refine(secretary, settings):
    settings.READ_ALLOWANCES = {**settings.READ_ALLOWANCES, "Secretary": (100, 100)}
    for i in range(SEARCH_LIMIT + 2):
        make_patient(
            last_name="Martin",
            first_names=f"Prénom{i}",
            birth_date=datetime.date(1980, 5, 17),
            email="",
            nir="",
            phone_mobile="",
        )
    response = client_for(secretary).post(reverse("patients:list"), {"last_name": "martin", "birth_date": "1980-05-17"})
    assert len(response.context["results"]) == SEARCH_LIMIT
    assert "More patients match than are shown" in response.content.decode()
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert reads.count() <= SEARCH_LIMIT + 1 + 10
