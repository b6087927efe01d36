"""Invariant 1 when something is wrong: the trail cannot be written, or a stored value is not
what it should be. Either way, no plaintext leaves and nothing is silently repaired."""

import contextlib
import datetime
import io
import logging

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from audit.context import system_context
from audit.fields import CiphertextError, crypter
from audit.models import ReadTally
from config.testing import (
    client_for,
    make_patient,
    patient_key,
    raw_patient_column,
    raw_patient_set,
    read_map,
    reads,
)
from patients.models import Patient

# Anne-Marie Lefèvre (config.testing.make_patient) in every form a page could show her.
ANNE = [
    "Lefèvre",
    "LEFÈVRE",
    "Anne-Marie",
    "+33612345678",
    "06 12 34 56 78",
    "0612345678",
    "anne-marie.lefevre@example.fr",
    "284037511512331",
    "12 rue des Lilas",
]


@contextlib.contextmanager
def audit_trail_down():
    """Make every INSERT into the trail fail, in the database itself, until the block ends."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION test_audit_down() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'audit down'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER test_audit_down BEFORE INSERT ON audit_auditevent "
                "FOR EACH ROW EXECUTE FUNCTION test_audit_down()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER test_audit_down BEFORE INSERT ON audit_auditevent "
                "BEGIN SELECT RAISE(ABORT, 'audit down'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_audit_down" + (" ON audit_auditevent" if _pg() else ""))
            if _pg():
                cursor.execute("DROP FUNCTION IF EXISTS test_audit_down()")


def _pg() -> bool:
    return connection.vendor == "postgresql"


def _assert_nothing_of(text: str, values) -> None:
    folded = text.casefold()
    for value in values:
        assert value.casefold() not in folded, f"{value!r} leaked"


# The trail cannot be written -----------------------------------------------------------------

PAGES = {
    "record": ("secretary", "get", lambda p: reverse("patients:detail", args=[p.pk]), None),
    "edit form": ("secretary", "get", lambda p: reverse("patients:edit", args=[p.pk]), None),
    "full-name search": (
        "secretary",
        "post",
        lambda p: reverse("patients:list"),
        {"last_name": "lefevre", "first_name": "anne-marie"},
    ),
    "search": ("secretary", "post", lambda p: reverse("patients:list"), {"last_name": "lefevre"}),
    "admin change list": ("superuser", "get", lambda p: "/admin/patients/patient/?q=lefevre,anne-marie", None),
    "admin change page": ("superuser", "get", lambda p: f"/admin/patients/patient/{p.pk}/change/", None),
}


@pytest.mark.parametrize(("persona", "method", "url", "data"), PAGES.values(), ids=PAGES.keys())
def test_it_withholds_a_decrypted_page_when_the_trail_cannot_be_written(
    request, caplog, persona, method, url, data, patient
):
    client = client_for(request.getfixturevalue(persona))  # logging in writes to the trail: before
    caplog.set_level(logging.INFO)

    with audit_trail_down():
        response = getattr(client, method)(url(patient), data)

    assert response.status_code == 503
    assert "no-store" in response["Cache-Control"]
    _assert_nothing_of(response.content.decode(), ANNE)
    _assert_nothing_of(caplog.text, ANNE)
    assert "response withheld" in caplog.text
    assert reads() == []

    # It was the trail: once it can be written again, the same page is served and audited.
    again = getattr(client, method)(url(patient), data)
    assert again.status_code == 200
    assert patient_key(patient) in read_map()


@pytest.mark.django_db(transaction=True)
def test_a_failed_trail_write_outside_any_transaction_leaves_nothing_behind(secretary, caplog):
    """As in production, the request's reads are written in autocommit (on PostgreSQL in two
    round trips, audit.chain.chain_write_alone): a failure withholds the page, rolls the whole
    write back (no trail row, no tally), and leaves the connection ready for the next request."""
    patient = make_patient()
    client = client_for(secretary)
    caplog.set_level(logging.INFO)

    with audit_trail_down():
        response = client.get(patient.get_absolute_url())
        assert response.status_code == 503
        _assert_nothing_of(response.content.decode(), ANNE)
        assert not connection.in_atomic_block
        if _pg():
            assert connection.connection.info.transaction_status == 0  # idle: rolled back
    assert reads() == []
    assert not ReadTally.objects.filter(user_id=secretary.pk).exists()

    again = client.get(patient.get_absolute_url())
    assert again.status_code == 200
    assert patient_key(patient) in read_map()
    assert ReadTally.objects.filter(user_id=secretary.pk, patient_id=patient.pk).count() == 1
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "chain is intact" in out.getvalue()


def test_it_still_serves_pages_that_decrypt_nothing_while_the_trail_is_down(db):
    with audit_trail_down():
        response = Client().get(reverse("login"))

    assert response.status_code == 200


def test_it_writes_no_plaintext_out_of_dumpdata_when_the_trail_cannot_be_written(patient):
    out = io.StringIO()

    with audit_trail_down(), pytest.raises(Exception, match="audit down"):
        call_command("dumpdata", "patients", stdout=out)

    _assert_nothing_of(out.getvalue(), ANNE)
    assert reads() == []


@pytest.mark.django_db(transaction=True)
def test_it_prints_nothing_in_the_shell_when_the_trail_cannot_be_written(capsys):
    # transaction=True: the shell runs in autocommit, as it does for an operator, so each read
    # is written to the trail before the value is handed back.
    anne = make_patient()
    capsys.readouterr()

    code = f"from patients.models import Patient; print(Patient.objects.get(pk='{anne.pk}').nir)"

    with audit_trail_down(), pytest.raises(Exception, match="audit down"):
        call_command("shell", command=code)

    _assert_nothing_of(capsys.readouterr().out, ANNE)
    assert reads() == []


# A stored value is not what it should be -------------------------------------------------------


def _garbage(victim, other):
    return "gAAAAABm-this-is-no-fernet-token-at-all-0123456789abcdef=="


def _plaintext(victim, other):
    return "Dupont"


def _unbound_token(victim, other):
    # A valid token under the right key, but sealed without this row's binding.
    return crypter().encrypt(b"Dupont").decode()


def _other_patients_token(victim, other):
    return raw_patient_column(other.pk, "last_name")


def _other_columns_token(victim, other):
    return raw_patient_column(victim.pk, "first_names")


BAD_VALUES = {
    "garbage": _garbage,
    "plaintext": _plaintext,
    "token without binding": _unbound_token,
    "another patient's token": _other_patients_token,
    "another column's token": _other_columns_token,
}


@pytest.mark.parametrize("bad_value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_it_refuses_a_stored_value_that_is_not_this_fields_ciphertext(secretary, caplog, bad_value):
    anne = make_patient()
    paul = make_patient(
        last_name="Girard",
        first_names="Paul",
        sex="M",
        birth_date=datetime.date(1975, 11, 2),
        phone_mobile="+33687654321",
        email="paul.girard@example.fr",
        nir="",
    )
    stored = bad_value(paul, anne)
    raw_patient_set(paul.pk, "last_name", stored)
    caplog.set_level(logging.INFO)
    url = reverse("patients:detail", args=[paul.pk])

    with pytest.raises(CiphertextError):
        client_for(secretary).get(url)

    quiet = client_for(secretary)
    quiet.raise_request_exception = False
    response = quiet.get(url)
    assert response.status_code == 500
    shown = [stored, "Dupont", "Girard", "Paul", "paul.girard@example.fr", *ANNE]
    _assert_nothing_of(response.content.decode(), shown)
    _assert_nothing_of(caplog.text, [stored, "Dupont", "Lefèvre", "Anne-Marie", "Girard"])
    refusals = [r for r in caplog.records if r.name == "audit.crypto" and r.levelno == logging.ERROR]
    assert refusals
    assert all(f"patients.Patient.last_name pk={paul.pk}" in r.getMessage() for r in refusals)

    with system_context("tests"):
        loaded = Patient.objects.get(pk=paul.pk)
        with pytest.raises(CiphertextError):
            _ = loaded.last_name
        # Saving the row for another reason keeps the bad value as it is: never re-encrypted
        # as if it were plaintext (which would turn garbage, or a copy, into a valid value).
        loaded = Patient.objects.get(pk=paul.pk)
        loaded.city = "Lyon"
        loaded.save()
    assert raw_patient_column(paul.pk, "last_name") == stored
    with system_context("tests"), pytest.raises(CiphertextError):
        _ = Patient.objects.get(pk=paul.pk).last_name
    # The patient whose token was copied still reads as before.
    with system_context("tests"):
        assert Patient.objects.get(pk=anne.pk).last_name == "Lefèvre"


def test_it_refuses_a_token_copied_with_sql_from_another_patients_row(secretary):
    anne = make_patient()
    paul = make_patient(last_name="Girard", first_names="Paul", sex="M", nir="", email="paul.girard@example.fr")
    pk = Patient._meta.pk
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE patients_patient SET last_name = "
            "(SELECT last_name FROM patients_patient WHERE id = %s) WHERE id = %s",
            [pk.get_db_prep_value(anne.pk, connection), pk.get_db_prep_value(paul.pk, connection)],
        )
    assert raw_patient_column(paul.pk, "last_name") == raw_patient_column(anne.pk, "last_name")

    with system_context("tests"), pytest.raises(CiphertextError, match="another row or column"):
        _ = Patient.objects.get(pk=paul.pk).last_name
    client = client_for(secretary)
    client.raise_request_exception = False
    response = client.get(reverse("patients:detail", args=[paul.pk]))
    assert response.status_code == 500
    _assert_nothing_of(response.content.decode(), ANNE)


@pytest.mark.parametrize("column", ["last_name", "notes"])
def test_it_shows_nothing_of_a_record_whose_later_field_is_refused(secretary, column):
    """The page fails as a whole: fields decrypted before the bad one are not sent either,
    and the trail still names what was decrypted."""
    anne = make_patient()
    raw_patient_set(anne.pk, column, "not a token")
    client = client_for(secretary)
    client.raise_request_exception = False

    response = client.get(reverse("patients:detail", args=[anne.pk]))

    assert response.status_code == 500
    _assert_nothing_of(response.content.decode(), ANNE)
    recorded = read_map().get(patient_key(anne), set())
    assert column not in recorded
    if column == "notes":  # the name is rendered, so decrypted, before the notes
        assert {"last_name", "first_names"} <= recorded


def test_it_shows_nothing_of_contact_details_when_one_is_refused(secretary):
    """The record page masks the NIR (not decrypted); showing it fails as a whole."""
    anne = make_patient()
    raw_patient_set(anne.pk, "nir", "not a token")
    client = client_for(secretary)
    client.raise_request_exception = False

    assert client.get(reverse("patients:detail", args=[anne.pk])).status_code == 200
    response = client.post(reverse("patients:reveal", args=[anne.pk]), {"show": "all"})

    assert response.status_code == 500
    _assert_nothing_of(response.content.decode(), ANNE)
    assert "nir" not in read_map().get(patient_key(anne), set())
