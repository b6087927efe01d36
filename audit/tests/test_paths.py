"""Invariant 1, path by path: no plaintext leaves the database without an audit record.

Each test takes one way patient data can be read (a model instance, a join, a prefetch,
values(), a filter, an update, dumpdata, a command, the shell, a task, the admin, a page)
and checks what a reader gets and what the trail says about it.
"""

import datetime
import io
import json

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.context import NoAuditContext, system_context
from audit.fields import EncryptedLookupError, PlaintextRefused, Sealed
from audit.models import AuditEvent
from config.testing import (
    PATIENT_FIELDS,
    audit_inserts,
    book,
    client_for,
    log_in,
    make_appointment,
    make_doctor,
    make_patient,
    make_type,
    patient_key,
    plaintext_in_database,
    raw_patient_column,
    read_map,
    reads,
    valid_nir,
)
from patients.models import Patient
from patients.selectors import CONTACT_FIELDS
from patients.tasks import patient_reindex
from practice.models import Practitioner
from scheduling.models import Appointment

# What a search result or list row shows (patients.selectors.RESULT_FIELDS, encrypted ones).
LIST_FIELDS = {"last_name", "first_names", "birth_name", "birth_date"}
# What the admin change list shows (PatientAdmin.list_display, encrypted ones).
ADMIN_LIST_FIELDS = {"last_name", "first_names", "birth_date"}
# What rebuilding a patient's blind indexes decrypts.
INDEXED_FIELDS = {"last_name", "first_names", "birth_date", "phone_mobile", "phone_other", "email"}


def _paul(**overrides):
    data = {
        "last_name": "Girard",
        "first_names": "Paul",
        "sex": "M",
        "birth_date": datetime.date(1975, 11, 2),
        "phone_mobile": "+33687654321",
        "email": "paul.girard@example.fr",
        "nir": valid_nir("1751169123456"),
    }
    return make_patient(**{**data, **overrides})


def _chloe():
    return make_patient(
        last_name="Moreau",
        first_names="Chloé",
        birth_name="Petit",
        birth_date=datetime.date(2001, 7, 21),
        phone_mobile="+33611223344",
        email="chloe.moreau@example.fr",
        nir="",
    )


# Outside a context ---------------------------------------------------------------------------


def test_it_refuses_to_decrypt_outside_an_audit_context(patient, practitioner):
    appointment = make_appointment(patient, practitioner)
    loaded = Patient.objects.get(pk=patient.pk)

    with pytest.raises(NoAuditContext):
        _ = loaded.last_name
    with pytest.raises(NoAuditContext):
        _ = loaded.display_name
    with pytest.raises(NoAuditContext):
        _ = Appointment.objects.select_related("patient").get(pk=appointment.pk).patient.nir
    with pytest.raises(NoAuditContext):
        _ = Appointment.objects.get(pk=appointment.pk).reason

    # Nothing decrypted stays behind on the instance for a second attempt to pick up.
    assert isinstance(loaded.__dict__["last_name"], Sealed)
    assert reads() == []


# Model instances -----------------------------------------------------------------------------


def test_it_records_one_read_per_decrypted_row_with_the_fields_read(db):
    anne, paul, chloe = make_patient(), _paul(), _chloe()

    with system_context("tests:reader") as ctx:
        names = {}
        for row in Patient.objects.filter(pk__in=[anne.pk, paul.pk, chloe.pk]):
            if row.pk == chloe.pk:
                continue  # loaded, never read: nothing decrypted, nothing recorded
            names[row.pk] = (row.last_name, row.last_name, row.birth_date)
        assert ctx.pending == 2

    assert names == {
        anne.pk: ("Lefèvre", "Lefèvre", datetime.date(1984, 3, 9)),
        paul.pk: ("Girard", "Girard", datetime.date(1975, 11, 2)),
    }
    assert read_map() == {
        patient_key(anne): {"last_name", "birth_date"},
        patient_key(paul): {"last_name", "birth_date"},
    }
    event = reads(object_pk=str(anne.pk))[0]
    assert event.model_label == "patients.Patient"
    assert event.patient_id == anne.pk
    assert event.fields == ["birth_date", "last_name"]
    assert event.actor_username == "system:tests:reader"
    assert event.actor_role == "system"
    assert event.actor_user_id is None
    # The trail names fields, never their values.
    trail = str(list(AuditEvent.objects.values()))
    assert "Lefèvre" not in trail
    assert "1984-03-09" not in trail


def test_it_records_only_the_fields_loaded_and_read_with_only(patient):
    with system_context("tests"):
        row = Patient.objects.only("id", "last_name", "first_names", "nir").get(pk=patient.pk)
        assert row.last_name == "Lefèvre"
        assert row.first_names == "Anne-Marie"

    assert read_map() == {patient_key(patient): {"last_name", "first_names"}}


def test_it_records_a_deferred_field_read_later(patient):
    with system_context("tests"):
        row = Patient.objects.only("id", "last_name").get(pk=patient.pk)
        assert row.email == "anne-marie.lefevre@example.fr"

    assert read_map() == {patient_key(patient): {"email"}}


# Joins and prefetches ------------------------------------------------------------------------


def test_it_records_both_rows_of_a_select_related(patient, practitioner):
    appointment = make_appointment(patient, practitioner, reason="Douleur au genou droit")

    with system_context("tests"):
        loaded = Appointment.objects.select_related("patient").get(pk=appointment.pk)
        with CaptureQueriesContext(connection) as queries:
            assert loaded.reason == "Douleur au genou droit"
            assert loaded.patient.last_name == "Lefèvre"
        assert len(queries) == 0  # the patient came with the join, decrypted from it

    assert read_map() == {
        ("scheduling.Appointment", str(appointment.pk)): {"reason"},
        patient_key(patient): {"last_name"},
    }
    assert {e.patient_id for e in reads()} == {patient.pk}


def test_it_records_each_prefetched_row(patient, practitioner):
    first = make_appointment(patient, practitioner, reason="Vaccin", day=5)
    second = make_appointment(patient, practitioner, reason="Contrôle tension", day=12)
    make_appointment(_paul(), practitioner, reason="Entorse", day=6)  # not loaded

    with system_context("tests"):
        loaded = Patient.objects.prefetch_related("appointments").get(pk=patient.pk)
        with CaptureQueriesContext(connection) as queries:
            reasons = sorted(a.reason for a in loaded.appointments.all())
        assert len(queries) == 0

    assert reasons == ["Contrôle tension", "Vaccin"]
    assert read_map() == {
        ("scheduling.Appointment", str(first.pk)): {"reason"},
        ("scheduling.Appointment", str(second.pk)): {"reason"},
    }
    assert {e.patient_id for e in reads()} == {patient.pk}


# values() and values_list() ------------------------------------------------------------------

REFUSED_VALUES = {
    "values(last_name)": lambda: Patient.objects.values("last_name"),
    "values()": lambda: Patient.objects.values(),
    "values(id, email)": lambda: Patient.objects.filter(is_archived=False).values("id", "email"),
    "values_list(nir, flat)": lambda: Patient.objects.values_list("nir", flat=True),
    "values_list()": lambda: Patient.objects.values_list(),
    "values_list(birth_date, named)": lambda: Patient.objects.values_list("id", "birth_date", named=True),
    "appointment values(patient__last_name)": lambda: Appointment.objects.values("patient__last_name"),
    "appointment values_list(reason)": lambda: Appointment.objects.values_list("reason", flat=True),
    "patient values(appointments__reason)": lambda: Patient.objects.values("appointments__reason"),
}


@pytest.mark.parametrize("query", REFUSED_VALUES.values(), ids=REFUSED_VALUES.keys())
def test_it_refuses_values_over_an_encrypted_field(patient, practitioner, query):
    make_appointment(patient, practitioner)

    # Refused even inside a context: these rows could not be audited per patient.
    with system_context("tests"), pytest.raises(PlaintextRefused):
        list(query())
    assert reads() == []


def test_it_still_serves_values_over_plaintext_columns(patient, practitioner):
    appointment = make_appointment(patient, practitioner)

    assert list(Patient.objects.values("id")) == [{"id": patient.pk}]
    assert list(Patient.objects.values_list("id", "is_archived")) == [(patient.pk, False)]
    assert list(Appointment.objects.values("id", "patient_id", "status")) == [
        {"id": appointment.pk, "patient_id": patient.pk, "status": "booked"}
    ]
    assert reads() == []


ROUNDABOUT_VALUES = {
    "base manager values_list(last_name)": lambda: Patient._base_manager.values_list("last_name", flat=True),
    "practitioner values(appointments__patient__nir)": lambda: Practitioner.objects.values_list(
        "appointments__patient__nir", flat=True
    ),
    "practitioner values(appointments__reason)": lambda: Practitioner.objects.values_list(
        "appointments__reason", flat=True
    ),
}


@pytest.mark.parametrize("query", ROUNDABOUT_VALUES.values(), ids=ROUNDABOUT_VALUES.keys())
def test_it_never_yields_plaintext_through_a_queryset_that_cannot_refuse(patient, practitioner, query):
    """Querysets of other models (or the base manager) can't refuse up front: what they get
    must still be sealed, never text."""
    make_appointment(patient, practitioner, reason="Douleur au genou droit")

    with system_context("tests"):
        try:
            values = list(query())
        except PlaintextRefused:
            values = []
    for value in values:
        assert value not in ("Lefèvre", "284037511512331", "Douleur au genou droit")
        with pytest.raises(PlaintextRefused):
            str(value)
    assert reads() == []


# Filters and bulk writes ---------------------------------------------------------------------

REFUSED_LOOKUPS = {
    "exact": lambda: Patient.objects.filter(last_name="Lefèvre"),
    "icontains": lambda: Patient.objects.filter(last_name__icontains="lef"),
    "in": lambda: Patient.objects.filter(last_name__in=["Lefèvre", "Girard"]),
    "startswith": lambda: Patient.objects.filter(nir__startswith="284"),
    "year transform": lambda: Patient.objects.filter(birth_date__year=1984),
    "exclude": lambda: Patient.objects.exclude(email="anne-marie.lefevre@example.fr"),
    "get": lambda: [Patient.objects.get(last_name="Lefèvre")],
    "across a relation": lambda: Appointment.objects.filter(patient__last_name="Lefèvre"),
    "appointment reason": lambda: Appointment.objects.filter(reason__contains="genou"),
}


@pytest.mark.parametrize("query", REFUSED_LOOKUPS.values(), ids=REFUSED_LOOKUPS.keys())
def test_it_refuses_to_filter_on_an_encrypted_field(patient, query):
    with pytest.raises(EncryptedLookupError):
        list(query())


def test_it_allows_isnull_on_an_encrypted_field(patient):
    assert list(Patient.objects.filter(last_name__isnull=False)) == [patient]
    assert not Patient.objects.filter(last_name__isnull=True).exists()


def _still_reads(patient, field, expected):
    with system_context("tests"):
        assert getattr(Patient.objects.get(pk=patient.pk), field) == expected


def test_it_refuses_update_with_plaintext(patient):
    before = raw_patient_column(patient.pk, "last_name")

    # A savepoint: a refused update marks the enclosing transaction for rollback, like any error.
    with pytest.raises(PlaintextRefused), transaction.atomic():
        Patient.objects.filter(pk=patient.pk).update(last_name="Pirate")

    assert raw_patient_column(patient.pk, "last_name") == before
    _still_reads(patient, "last_name", "Lefèvre")


def test_it_refuses_bulk_update_with_plaintext(patient):
    second = _paul()
    before = raw_patient_column(patient.pk, "nir")

    with system_context("tests"):
        rows = list(Patient.objects.only("id", "nir"))
        for row in rows:
            row.nir = "199999999999999"
        with pytest.raises(PlaintextRefused), transaction.atomic():
            Patient.objects.bulk_update(rows, ["nir"])

    assert raw_patient_column(patient.pk, "nir") == before
    _still_reads(patient, "nir", "284037511512331")
    _still_reads(second, "last_name", "Girard")


# Commands, the shell and tasks ---------------------------------------------------------------


def test_it_audits_dumpdata_for_every_patient_it_writes_out(db):
    anne, paul = make_patient(), _paul()
    out = io.StringIO()

    call_command("dumpdata", "patients", stdout=out)

    dumped = {row["pk"]: row["fields"] for row in json.loads(out.getvalue())}
    assert dumped[str(anne.pk)]["last_name"] == "Lefèvre"
    assert dumped[str(anne.pk)]["nir"] == "284037511512331"
    assert dumped[str(anne.pk)]["birth_date"] == "1984-03-09"
    assert dumped[str(paul.pk)]["email"] == "paul.girard@example.fr"
    assert read_map() == {patient_key(anne): set(PATIENT_FIELDS), patient_key(paul): set(PATIENT_FIELDS)}
    for event in reads():
        assert event.actor_username == "system:command:dumpdata"
        assert event.actor_role == "system"
        assert event.path == "job:command:dumpdata"


def test_it_audits_a_management_command_that_decrypts(db):
    anne, paul = make_patient(), _paul()
    indexes_before = {p.pk: (p.bidx_last_name, p.bidx_full_name, p.bidx_phone_mobile) for p in (anne, paul)}

    call_command("rotate_keys", "--blind-index", "--no-progress", stdout=io.StringIO(), stderr=io.StringIO())

    assert read_map() == {patient_key(anne): INDEXED_FIELDS, patient_key(paul): INDEXED_FIELDS}
    assert {e.actor_username for e in reads()} == {"system:command:rotate_keys"}
    # Same key: the rebuilt indexes are the ones the records had (search still finds them).
    rebuilt = {p.pk: (p.bidx_last_name, p.bidx_full_name, p.bidx_phone_mobile) for p in Patient.objects.all()}
    assert rebuilt == indexes_before


def test_it_audits_reads_in_the_shell(patient, capsys):
    call_command(
        "shell",
        command=f"from patients.models import Patient; print(Patient.objects.get(pk='{patient.pk}').nir)",
    )

    assert "284037511512331" in capsys.readouterr().out
    assert read_map() == {patient_key(patient): {"nir"}}
    assert reads()[0].actor_username == "system:command:shell"


def test_it_audits_a_task_under_its_job_name(patient, eager):
    result = patient_reindex.delay(str(patient.pk))

    assert result.get() is True
    assert read_map() == {patient_key(patient): INDEXED_FIELDS}
    event = reads()[0]
    assert event.actor_username == "system:patient_reindex"
    assert event.actor_role == "system"
    assert event.extra["task_id"] == result.id


# Django admin --------------------------------------------------------------------------------

ADMIN_ROLES = {"superuser": "superuser", "practice_admin": "Practice admin"}


@pytest.mark.parametrize("persona", ADMIN_ROLES)
def test_the_admin_change_list_shows_and_decrypts_nobody_until_a_full_name_is_searched(request, persona):
    user = request.getfixturevalue(persona)
    make_patient(), _paul(), _chloe()
    client = client_for(user)

    for query in ({}, {"q": "girard"}):  # the landing, and a last name alone
        response = client.get("/admin/patients/patient/", query)
        assert response.status_code == 200
        body = response.content.decode()
        assert "Lefèvre" not in body
        assert "Girard" not in body
        assert "Moreau" not in body
    assert read_map() == {}

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/patients/patient/", {"q": "Moreau, Chloé"})
    assert "Moreau" in response.content.decode()
    assert "Girard" not in response.content.decode()
    for event in reads():
        assert (event.actor_user_id, event.actor_username) == (user.pk, user.username)
        assert event.actor_role == ADMIN_ROLES[persona]
        assert event.path == "/admin/patients/patient/"
    assert audit_inserts(queries) == 1


@pytest.mark.parametrize("persona", ADMIN_ROLES)
def test_it_audits_the_admin_change_page(request, persona):
    user = request.getfixturevalue(persona)
    opened, _other = make_patient(), _paul()
    url = f"/admin/patients/patient/{opened.pk}/change/"
    client = client_for(user)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)

    assert response.status_code == 200
    assert "284037511512331" in response.content.decode()
    assert read_map() == {patient_key(opened): set(PATIENT_FIELDS)}
    event = reads()[0]
    assert (event.actor_user_id, event.actor_username, event.actor_role) == (
        user.pk,
        user.username,
        ADMIN_ROLES[persona],
    )
    assert event.path == url
    assert audit_inserts(queries) == 1


def test_it_audits_only_the_matches_of_an_admin_search_without_the_search_terms(superuser):
    make_patient(), _chloe()
    paul = _paul()

    response = client_for(superuser).get("/admin/patients/patient/", {"q": "girard, paul"})

    assert response.status_code == 200
    assert "Girard" in response.content.decode()
    assert read_map() == {patient_key(paul): ADMIN_LIST_FIELDS}
    assert reads()[0].path == "/admin/patients/patient/"
    assert "girard" not in str(list(AuditEvent.objects.values())).casefold()


# The app's pages -----------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["patients:detail", "patients:edit"])
def test_it_writes_a_record_page_reads_in_one_insert(secretary, view):
    opened, _other = make_patient(), _paul()
    url = reverse(view, args=[opened.pk])
    client = client_for(secretary)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, REMOTE_ADDR="192.0.2.7", HTTP_USER_AGENT="FrontDesk/2")

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    # The record page masks contact details (not decrypted); the edit form needs every field.
    shown = set(PATIENT_FIELDS) - set(CONTACT_FIELDS) if view == "patients:detail" else set(PATIENT_FIELDS)
    assert read_map() == {patient_key(opened): shown}
    event = reads()[0]
    assert event.patient_id == opened.pk
    assert (event.actor_user_id, event.actor_username) == (secretary.pk, secretary.username)
    assert event.actor_role == "Secretary"
    assert (event.ip, event.user_agent, event.path, event.purpose) == ("192.0.2.7", "FrontDesk/2", url, view)
    assert event.request_id == response["X-Request-ID"]
    assert audit_inserts(queries) == 1


def test_it_writes_the_patient_list_reads_in_one_insert(secretary, practitioner):
    listed = [make_patient(), _paul(), _chloe()]
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    kind = make_type(doctor)
    late = timezone.localtime().replace(hour=23, minute=0, second=0, microsecond=0)
    for n, patient in enumerate(listed):  # the list shows today's patients
        book(doctor, patient, kind, late - datetime.timedelta(minutes=20 * n), force=True)
    client = client_for(secretary)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("patients:list"))

    assert response.status_code == 200
    assert read_map() == {patient_key(p): LIST_FIELDS for p in listed}
    assert {e.request_id for e in reads()} == {response["X-Request-ID"]}
    assert audit_inserts(queries) == 1


def test_it_audits_only_the_patients_a_search_finds(secretary):
    make_patient(), _chloe()
    paul = _paul()
    client = client_for(secretary)

    with CaptureQueriesContext(connection) as queries:
        response = client.post("/patients/?last_name=girard", {"last_name": "GIRARD", "first_name": "paul"})

    assert response.status_code == 200
    body = response.content.decode()
    assert "GIRARD Paul" in body
    assert "Lefèvre".upper() not in body
    assert "Moreau".upper() not in body
    assert read_map() == {patient_key(paul): LIST_FIELDS}
    event = reads()[0]
    assert event.path == "/patients/"  # never the query string: it may hold search terms
    assert "girard" not in str(list(AuditEvent.objects.values())).casefold()
    assert audit_inserts(queries) == 1


# What sits in the database ------------------------------------------------------------------


def test_it_keeps_no_patient_plaintext_in_any_column_of_any_table(superuser):
    """Scan every cell of every table, after a login and an admin change, for a patient's
    identity in any of the forms it could be written in."""
    seeded = make_patient(
        last_name="Quintavalle-Désiré",
        first_names="Léopoldine Aurore",
        birth_name="Vasseur-Ubaldi",
        birth_date=datetime.date(1992, 6, 14),
        phone_mobile="+33698765432",
        phone_other="+33142867531",
        email="leopoldine.quintavalle@exemple-unique.fr",
        nir=valid_nir("2920675114087"),
        address="47 impasse des Glycines",
        referring_doctor="Dr Hippolyte Sandoval",
        notes="Allergie pénicilline",
    )
    client = Client()
    log_in(client, superuser)
    change = client.post(
        f"/admin/patients/patient/{seeded.pk}/change/",
        {
            "last_name": "Quintavalle-Désiré",
            "birth_name": "Vasseur-Ubaldi",
            "first_names": "Léopoldine Aurore",
            "sex": "F",
            "birth_date": "1992-06-14",
            "phone_mobile": "06 98 76 54 32",
            "phone_other": "06 55 43 21 09",  # changed
            "email": "leopoldine.quintavalle@exemple-unique.fr",
            "address": "47 impasse des Glycines",
            "postal_code": "75020",
            "city": "Paris",
            "nir": valid_nir("2920675114087"),
            "referring_doctor": "Dr Hippolyte Sandoval",
            "notes": "Allergie pénicilline et latex",  # changed
            "language": "fr",
            "_save": "Save",
        },
    )
    assert change.status_code == 302, change.content.decode()[:2000]
    assert client.get(f"/admin/patients/patient/{seeded.pk}/history/").status_code == 200
    assert client.get(seeded.get_absolute_url()).status_code == 200

    nir = valid_nir("2920675114087")
    needles = [
        "Quintavalle",
        "Quintavalle-Désiré",
        "quintavalle desire",
        "Désiré",
        "Léopoldine",
        "Leopoldine",
        "Vasseur",
        "Ubaldi",
        # phones: E.164, national, spaced, digits only
        "+33698765432",
        "0698765432",
        "06 98 76 54 32",
        "06.98.76.54.32",
        "33698765432",
        "698765432",
        "+33655432109",
        "0655432109",
        "655432109",
        "+33142867531",
        "0142867531",
        "142867531",
        # e-mail, whole and local part
        "leopoldine.quintavalle@exemple-unique.fr",
        "leopoldine.quintavalle",
        "exemple-unique",
        # NIR compact and spaced, and the body without its key
        nir,
        nir[:13],
        f"{nir[0]} {nir[1:3]} {nir[3:5]} {nir[5:7]} {nir[7:10]} {nir[10:13]} {nir[13:]}",
        "Glycines",
        "Sandoval",
        "pénicilline",
        "penicilline",
    ]
    assert plaintext_in_database(needles) == []
    # The scan does see what is stored in clear, sessions included.
    in_clear = ["root@cabinet.test", "_auth_user_id", str(seeded.pk)]
    controls = {(table, needle) for table, _, needle in plaintext_in_database(in_clear)}
    assert {
        ("auth_user", "root@cabinet.test"),
        ("practice_usersession", "_auth_user_id"),
        ("django_admin_log", str(seeded.pk)),
    } <= controls
