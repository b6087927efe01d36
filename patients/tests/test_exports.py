"""Exports: a CSV of the patients a list page showed, and one patient's own data for a right-of-
access request. Each states a purpose, is audited per patient (READ rows with the purpose and
the export's id) and by one EXPORT event, and is watermarked with who, when and why."""

import csv
import io
import json
import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import client_for, make_appointment, make_patient, patient_key, read_map, reads
from patients.exports import EXPORT_LIST_LIMIT, csv_cell
from patients.selectors import CONTACT_FIELDS

PURPOSE = "Mailing list for the flu vaccination campaign"
ACCESS_PURPOSE = "Right of access request received 12 May"
LIST_FIELDS = {"last_name", "first_names", "birth_name", "birth_date"}


def _exports() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=EventType.EXPORT).order_by("id"))


def _csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))


@pytest.fixture
def people(db):
    return [
        make_patient(),
        make_patient(last_name="Girard", first_names="Paul", sex="M", nir="", email="", phone_mobile="+33687654321"),
    ]


# A patient list, as CSV -----------------------------------------------------------------------


def test_it_offers_the_listed_patients_for_export(secretary, people):
    response = client_for(secretary).post(reverse("patients:list"), {"last_name": "girard", "first_name": "paul"})
    form = response.context["export_form"]
    assert set(form.initial["patient"]) == {people[1].pk}
    assert "Export these patients (CSV)" in response.content.decode()


def test_it_exports_a_list_with_the_chosen_columns_audited_per_patient(secretary, people):
    client = client_for(secretary)
    data = {"patient": [str(p.pk) for p in people], "purpose": PURPOSE, "columns": ["phone"]}
    response = client.post(reverse("patients:export_list"), data)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="patients-\d{8}-\d{4}\.csv"', response["Content-Disposition"])
    assert "no-store" in response["Cache-Control"]
    rows = _csv(response)
    watermark = rows[0][0]
    assert watermark.startswith(f"Exported by {secretary.username} on ")
    assert f"for: {PURPOSE}. Confidential" in watermark
    assert rows[-1] == [watermark]
    assert rows[1] == [
        "last name",
        "first names",
        "birth name",
        "birth date",
        "mobile phone",
        "other phone",
        "archived",
    ]
    assert rows[2][:5] == ["Girard", "Paul", "", "1984-03-09", "+33687654321"]
    assert rows[3][:5] == ["Lefèvre", "Anne-Marie", "", "1984-03-09", "+33612345678"]
    assert "anne-marie.lefevre@example.fr" not in response.content.decode()  # not asked for

    fields = LIST_FIELDS | {"phone_mobile", "phone_other"}
    assert read_map() == {patient_key(p): fields for p in people}
    (event,) = _exports()
    assert (event.actor_user_id, event.actor_username) == (secretary.pk, secretary.username)
    assert event.purpose == f"export: {PURPOSE}"
    assert event.extra["purpose"] == PURPOSE
    assert (event.extra["kind"], event.extra["format"], event.extra["count"]) == ("patient_list", "csv", 2)
    assert set(event.fields) == fields
    for read in reads():
        assert read.purpose == f"export: {PURPOSE}"
        assert read.extra["export_id"] == event.extra["export_id"]


def test_it_exports_every_contact_column_when_asked(secretary, people):
    data = {"patient": [str(people[0].pk)], "purpose": PURPOSE, "columns": ["phone", "email", "address", "nir"]}
    response = client_for(secretary).post(reverse("patients:export_list"), data)
    assert "284037511512331" in response.content.decode()
    assert read_map() == {patient_key(people[0]): LIST_FIELDS | set(CONTACT_FIELDS)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"purpose": ""}, "State the purpose of this export."),
        ({"purpose": "because"}, "Write at least 10 characters"),
        ({"patient": []}, "There is no patient in the list to export."),
        ({"patient": ["not-a-uuid"]}, "The list of patients is not valid"),
        ({"columns": ["notes"]}, "Select a valid choice"),
    ],
)
def test_it_refuses_an_export_without_a_purpose_or_patients_and_decrypts_nothing(secretary, people, data, message):
    posted = {"patient": [str(p.pk) for p in people], "purpose": PURPOSE, **data}
    response = client_for(secretary).post(reverse("patients:export_list"), posted)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert "Content-Disposition" not in response
    assert not reads()
    assert not _exports()


def test_it_caps_the_number_of_patients_per_export(secretary, people):
    ids = [str(uuid.uuid4()) for _ in range(EXPORT_LIST_LIMIT)] + [str(people[0].pk)]
    response = client_for(secretary).post(reverse("patients:export_list"), {"patient": ids, "purpose": PURPOSE})
    assert response.status_code == 400
    assert not reads()
    assert not _exports()


def test_it_lets_practice_admins_export_a_list(practice_admin, people):
    data = {"patient": [str(people[0].pk)], "purpose": PURPOSE}
    assert client_for(practice_admin).post(reverse("patients:export_list"), data).status_code == 200
    assert _exports()[0].actor_username == practice_admin.username


@pytest.mark.parametrize("persona", ["practitioner", "outsider"])
def test_it_keeps_list_exports_from_practitioners_and_outsiders(request, persona, people):
    user = request.getfixturevalue(persona)
    make_appointment(people[0], request.getfixturevalue("practitioner"))
    data = {"patient": [str(people[0].pk)], "purpose": PURPOSE}
    assert client_for(user).post(reverse("patients:export_list"), data).status_code == 403
    assert not reads()
    assert not _exports()


def test_it_sends_anonymous_users_to_login_and_refuses_a_get(secretary, people):
    response = Client().post(reverse("patients:export_list"), {"patient": [str(people[0].pk)], "purpose": PURPOSE})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert client_for(secretary).get(reverse("patients:export_list")).status_code == 405
    assert not reads()


def test_it_neutralizes_spreadsheet_formulas(secretary):
    patient = make_patient(last_name='=HYPERLINK("http://x")', first_names="@SUM(A1)", nir="", email="")
    data = {"patient": [str(patient.pk)], "purpose": PURPOSE, "columns": ["phone"]}
    rows = _csv(client_for(secretary).post(reverse("patients:export_list"), data))
    assert rows[2][:2] == ['\'=HYPERLINK("http://x")', "'@SUM(A1)"]
    assert rows[2][4] == "+33612345678"  # a phone number stays as it is


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+33612345678", "+33612345678"),
        ("-12", "-12"),
        ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"),
    ],
)
def test_it_writes_cells_no_spreadsheet_runs(value, cell):
    assert csv_cell(value) == cell


# One patient's own data (right of access) --------------------------------------------------


@pytest.fixture
def seen(practitioner, patient):
    """The patient with one appointment (a reason and an internal note)."""
    appointment = make_appointment(patient, practitioner, reason="Douleur au genou droit")
    with system_context("tests"):
        appointment.internal_note = "Prefers mornings; came with her neighbour"
        appointment.save()
    return appointment


def _export_url(patient) -> str:
    return reverse("patients:export", args=[patient.pk])


def test_it_shows_the_export_form_without_decrypting(secretary, patient):
    response = client_for(secretary).get(_export_url(patient))
    assert response.status_code == 200
    assert "Purpose of this export" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert not reads()
    assert not _exports()


def test_it_exports_a_patient_s_own_data_as_json(secretary, patient, seen):
    response = client_for(secretary).post(_export_url(patient), {"purpose": ACCESS_PURPOSE, "file_format": "json"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    filename = f"patient-{str(patient.pk)[:8]}-"
    assert response["Content-Disposition"].startswith(f'attachment; filename="{filename}')
    assert "no-store" in response["Cache-Control"]
    document = json.loads(response.content)
    assert document["export"]["exported_by"] == secretary.username
    assert document["export"]["purpose"] == ACCESS_PURPOSE
    assert document["end"] == document["export"]["notice"]
    assert f"Exported by {secretary.username} on " in document["end"]
    record = document["patient"]
    assert record["last_name"] == "Lefèvre"
    assert record["nir"] == "284037511512331"
    assert record["birth_date"] == "1984-03-09"
    assert record["sex"] == "Female"
    assert "notes" not in record  # staff notes: on request only
    (appointment,) = document["appointments"]
    assert appointment["reason"] == "Douleur au genou droit"
    assert appointment["practitioner"] == "Dr Martin"
    assert appointment["status"] == "Booked"
    assert "internal_note" not in appointment
    assert "neighbour" not in response.content.decode()

    recorded = read_map()
    assert recorded[patient_key(patient)] == set(CONTACT_FIELDS) | {
        "last_name",
        "birth_name",
        "first_names",
        "sex",
        "birth_date",
        "referring_doctor",
    }
    assert "reason" in recorded[("scheduling.Appointment", str(seen.pk))]
    assert "internal_note" not in recorded[("scheduling.Appointment", str(seen.pk))]
    assert {r.purpose for r in reads()} == {f"export: {ACCESS_PURPOSE}"}
    assert {r.patient_id for r in reads()} == {patient.pk}
    (event,) = _exports()
    assert event.patient_id == patient.pk
    assert (event.extra["kind"], event.extra["format"], event.extra["appointments"]) == ("patient_data", "json", 1)
    assert event.extra["include_notes"] is False
    assert {r.extra["export_id"] for r in reads()} == {event.extra["export_id"]}


def test_it_includes_the_staff_notes_when_asked(secretary, patient, seen):
    data = {"purpose": ACCESS_PURPOSE, "file_format": "json", "include_notes": "on"}
    document = json.loads(client_for(secretary).post(_export_url(patient), data).content)
    assert document["appointments"][0]["internal_note"] == "Prefers mornings; came with her neighbour"
    assert "notes" in document["patient"]
    assert "internal_note" in read_map()[("scheduling.Appointment", str(seen.pk))]
    assert _exports()[0].extra["include_notes"] is True


def test_it_exports_a_patient_s_own_data_as_csv(practice_admin, patient, seen):
    response = client_for(practice_admin).post(_export_url(patient), {"purpose": ACCESS_PURPOSE, "file_format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].endswith('.csv"')
    rows = _csv(response)
    assert rows[0][0].startswith(f"Exported by {practice_admin.username} on ")
    assert rows[-1] == rows[0]
    assert ["social security number (NIR)", "284037511512331"] in rows
    assert any(row[:1] and "Douleur au genou droit" in row for row in rows)
    assert _exports()[0].extra["format"] == "csv"


def test_it_asks_again_for_a_missing_purpose(secretary, patient):
    response = client_for(secretary).post(_export_url(patient), {"purpose": "", "file_format": "json"})
    assert response.status_code == 200
    assert "State the purpose of this export." in response.content.decode()
    assert not reads()
    assert not _exports()


def test_it_keeps_the_export_from_practitioners_even_for_their_own_patients(practitioner, patient, seen):
    client = client_for(practitioner)
    assert client.get(_export_url(patient)).status_code == 403
    assert client.post(_export_url(patient), {"purpose": ACCESS_PURPOSE}).status_code == 403
    assert client.get(reverse("patients:export", args=[uuid.uuid4()])).status_code == 403
    assert not reads()
    assert not _exports()


def test_it_answers_404_for_an_unknown_patient(secretary):
    url = reverse("patients:export", args=[uuid.uuid4()])
    assert client_for(secretary).post(url, {"purpose": ACCESS_PURPOSE}).status_code == 404
    assert not _exports()


def test_it_links_the_export_from_the_record_for_the_front_desk_only(secretary, practitioner, patient, seen):
    assert _export_url(patient) in client_for(secretary).get(patient.get_absolute_url()).content.decode()
    assert _export_url(patient) not in client_for(practitioner).get(patient.get_absolute_url()).content.decode()


# Read budgets (audit.budget): an export decrypts through the audited fields, so it counts ----


def test_it_counts_a_list_export_against_the_read_budget(secretary, people, settings):
    settings.READ_BUDGETS = {**settings.READ_BUDGETS, "Secretary": (1, 1)}
    data = {"patient": [str(p.pk) for p in people], "purpose": PURPOSE}
    response = client_for(secretary).post(reverse("patients:export_list"), data)

    assert response.status_code == 429
    assert "Content-Disposition" not in response
    body = response.content.decode()
    assert "Lefèvre" not in body
    assert "Girard" not in body
    assert not _exports()  # no file left: no export to record
    assert len({r.patient_id for r in reads()}) == 1  # what was decrypted before the refusal


def test_it_counts_a_patient_export_against_the_read_budget(secretary, people, settings):
    settings.READ_BUDGETS = {**settings.READ_BUDGETS, "Secretary": (1, 1)}
    client = client_for(secretary)
    assert client.get(people[0].get_absolute_url()).status_code == 200
    response = client.post(_export_url(people[1]), {"purpose": ACCESS_PURPOSE, "file_format": "json"})
    assert response.status_code == 429
    assert "Content-Disposition" not in response
    assert not _exports()
