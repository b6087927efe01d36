"""Patient search through blind indexes (docs/security-model.md, "Blind indexes").

Finds by normalized name, birth date, phone and e-mail; drops blind-index false candidates;
uses the indexed column instead of scanning; refuses to filter encrypted columns.
"""

import datetime
import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from audit import blind
from audit.context import system_context
from audit.fields import EncryptedLookupError
from audit.models import AuditEvent, EventType
from config.testing import client_for, make_patient
from patients import selectors
from patients.models import Patient
from patients.selectors import RESULT_FIELDS, PatientQuery, patient_search
from patients.services import patient_archive

BORN = datetime.date(1984, 3, 9)


@pytest.fixture
def people(db):
    archived = make_patient(first_names="Paul", birth_date=datetime.date(1950, 5, 5), nir="")
    patient_archive(patient=archived, actor=None)
    return {
        # Lefèvre Anne-Marie, born 1984-03-09, mobile +33 6 12 34 56 78 (conftest defaults).
        "lefevre": make_patient(),
        "martin": make_patient(
            last_name="Martin",
            first_names="Anne Sophie",
            birth_date=BORN,
            phone_mobile="+33700000001",
            phone_other="+33698765432",
            email="Anne.Martin@Exemple.FR",
            nir="",
        ),
        "lefebvre": make_patient(
            last_name="Lefebvre",
            first_names="Anne",
            birth_date=datetime.date(1984, 3, 10),
            phone_mobile="+33612345679",
            email="anne.lefebvre@example.fr",
            nir="",
        ),
        "saint_ex": make_patient(
            last_name="Saint-Exupéry",
            first_names="Antoine Marie",
            birth_date=datetime.date(1900, 6, 29),
            phone_mobile="",
            email="",
            nir="",
        ),
        "archived": archived,
    }


def search(**criteria) -> list:
    with system_context("tests:search"):
        return [p.pk for p in patient_search(PatientQuery(**criteria))]


@pytest.mark.parametrize(
    "criteria",
    [
        pytest.param({"last_name": "Lefèvre"}, id="as-stored"),
        pytest.param({"last_name": "LEFEVRE"}, id="upper-no-accent"),
        pytest.param({"last_name": "  lefÈvre "}, id="mixed-case-padded"),
        pytest.param({"last_name": "lefevre", "first_name": "anne marie"}, id="first-name-space-for-hyphen"),
        pytest.param({"last_name": "LEFÈVRE", "first_name": "ANNE-MARIE"}, id="full-name-upper"),
        pytest.param({"last_name": "Lefevre", "first_name": "Anne"}, id="first-of-first-names"),
        pytest.param({"last_name": "lefevre", "birth_date": BORN}, id="name-and-birth-date"),
        pytest.param({"email": "ANNE-MARIE.Lefevre@EXAMPLE.fr"}, id="email-any-case"),
        pytest.param({"email": " anne-marie.lefevre@example.fr "}, id="email-padded"),
    ],
)
def test_it_finds_by_normalized_name_birth_date_and_email(people, criteria):
    assert search(**criteria) == [people["lefevre"].pk]


def test_it_folds_hyphens_and_spaces_in_last_names(people):
    for typed in ("saint exupery", "SAINT-EXUPERY", "Saint - Exupéry", "saint\u2011exupery"):
        assert search(last_name=typed) == [people["saint_ex"].pk], typed
    assert search(last_name="saint exupery", first_name="antoine-marie") == [people["saint_ex"].pk]


def test_it_finds_by_birth_date_alone_and_narrows_with_the_last_name(people):
    assert set(search(birth_date=BORN)) == {people["lefevre"].pk, people["martin"].pk}
    assert search(birth_date=BORN, last_name="martin") == [people["martin"].pk]
    assert search(birth_date=datetime.date(1984, 3, 10)) == [people["lefebvre"].pk]


@pytest.mark.parametrize(
    "typed", ["06 12 34 56 78", "+33 6 12 34 56 78", "0612345678", "06.12.34.56.78", "+33612345678"]
)
def test_it_finds_a_mobile_phone_typed_in_any_format(people, typed):
    assert search(phone=typed) == [people["lefevre"].pk]


@pytest.mark.parametrize("typed", ["06 98 76 54 32", "+33 6 98 76 54 32", "0698765432"])
def test_it_finds_the_other_phone_too(people, typed):
    assert search(phone=typed) == [people["martin"].pk]


def test_it_combines_criteria(people):
    martin = people["martin"].pk
    assert search(last_name="MARTIN", phone="0698765432") == [martin]
    assert search(email="anne.martin@exemple.fr", birth_date=BORN) == [martin]
    assert search(last_name="Lefevre", phone="0698765432") == []  # each criterion must hold


@pytest.mark.parametrize(
    "criteria",
    [
        {"last_name": "Nobody"},
        {"last_name": "Lefevr"},  # no prefix search: the index is exact
        {"last_name": "Lefevre", "first_name": "Jean"},
        {"birth_date": datetime.date(1999, 1, 1)},
        {"phone": "07 77 77 77 77"},
        {"phone": "not a phone"},
        {"email": "nobody@example.fr"},
        {"last_name": "Lefevre", "birth_date": datetime.date(1999, 1, 1)},
        {},
    ],
)
def test_it_returns_nothing_for_a_non_matching_search(people, criteria):
    assert search(**criteria) == []


def test_it_excludes_archived_patients_unless_asked(people):
    archived = people["archived"].pk
    assert archived not in search(last_name="Lefevre")
    assert search(last_name="Lefevre", first_name="Paul") == []
    assert search(last_name="Lefevre", first_name="Paul", include_archived=True) == [archived]
    assert set(search(last_name="LEFEVRE", include_archived=True)) == {people["lefevre"].pk, archived}


def test_it_searches_from_the_patient_list_as_a_secretary(people, secretary):
    client = client_for(secretary)
    response = client.post(reverse("patients:list"), {"last_name": "LEFEVRE", "first_name": "anne marie"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "LEFÈVRE Anne-Marie" in page
    assert "MARTIN" not in page
    assert "LEFEBVRE" not in page
    assert "Paul" not in page
    assert "no-store" in response["Cache-Control"]

    # Only the shown row was decrypted, and only the columns a result line needs.
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_username=secretary.username)
    assert {e.patient_id for e in reads} == {people["lefevre"].pk}
    for event in reads:
        assert set(event.fields) <= set(RESULT_FIELDS)

    for form, expected, absent in [
        ({"phone": "06 98 76 54 32"}, "MARTIN Anne Sophie", "LEFÈVRE"),
        ({"email": "ANNE.MARTIN@exemple.fr"}, "MARTIN Anne Sophie", "LEFÈVRE"),
        ({"birth_date": "1984-03-09"}, "LEFÈVRE Anne-Marie", "LEFEBVRE"),
        ({"last_name": "Lefevre", "first_name": "Paul", "include_archived": "on"}, "LEFÈVRE Paul", "Anne-Marie"),
    ]:
        page = client.post(reverse("patients:list"), form).content.decode()
        assert expected in page, form
        assert absent not in page, form

    page = client.post(reverse("patients:list"), {"last_name": "Lefevre", "first_name": "Paul"}).content.decode()
    assert "LEFÈVRE Paul" not in page


# --- False candidates -------------------------------------------------------------------


@pytest.fixture
def one_bit_last_name_index():
    """Blind indexes of last names cut to 1 bit: every other name collides with probability 1/2."""
    saved = blind.INDEX_BITS["last_name"]
    blind.INDEX_BITS["last_name"] = 1
    try:
        yield
    finally:
        blind.INDEX_BITS["last_name"] = saved


def test_it_discards_blind_index_false_candidates(people, one_bit_last_name_index):
    target = blind.blind_index("last_name", blind.normalize_name("Lefèvre"))
    others = ["Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau", "Simon"]
    colliding = [n for n in others if blind.blind_index("last_name", blind.normalize_name(n)) == target][:2]
    assert colliding, "ten names and not one collision on one bit: astronomically unlikely"
    decoys = [make_patient(last_name=name, first_names="Anne-Marie", nir="") for name in colliding]

    call_command("rotate_keys", "--blind-index", "--restart", "--no-progress", stdout=io.StringIO())
    candidates = Patient.objects.filter(bidx_last_name=target, is_archived=False)
    assert {d.pk for d in decoys} <= set(candidates.values_list("pk", flat=True))

    last_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert search(last_name="LEFEVRE") == [people["lefevre"].pk]
    # The false candidates were decrypted to be ruled out: that is audited like any read.
    reads = AuditEvent.objects.filter(id__gt=last_event, event_type=EventType.READ)
    assert {e.patient_id for e in reads} >= {people["lefevre"].pk, *(d.pk for d in decoys)}

    assert search(last_name="lefevre", birth_date=BORN) == [people["lefevre"].pk]
    for decoy, name in zip(decoys, colliding, strict=True):
        assert search(last_name=name) == [decoy.pk]


# --- Query plan and refused lookups ---------------------------------------------------------


def _index_names(column: str) -> set[str]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Patient._meta.db_table)
    return {name for name, c in constraints.items() if c["index"] and c["columns"] == [column]}


def test_it_uses_the_blind_index_column_in_the_query_plan(db):
    """1,000 patients as raw rows in bulk on purpose (blind-indexed as the service does): the
    planner needs a table of some size, and the service would write them one by one."""
    patients = []
    for i in range(1000):
        patient = Patient(
            last_name=f"Nom{i:04d}",
            first_names="Jean",
            sex="M",
            birth_date=datetime.date(1940, 1, 1) + datetime.timedelta(days=i * 7),
        )
        patient.blind_indexes_update()
        patients.append(patient)
    Patient.objects.bulk_create(patients, batch_size=500)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(Patient._meta.db_table)}")

    candidates = selectors._candidates(PatientQuery(last_name="NOM0734")).only(*RESULT_FIELDS)
    plan = candidates[: selectors.SEARCH_LIMIT + 1].explain()
    indexes = _index_names("bidx_last_name")
    assert indexes, "bidx_last_name has no index"
    assert any(name in plan for name in indexes), plan
    if connection.vendor == "postgresql":
        assert "Seq Scan" not in plan, plan
    else:
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
        assert "SCAN patients_patient" not in plan, plan

    with system_context("tests:search"):
        found = patient_search(PatientQuery(last_name="NOM0734"))
    assert [p.pk for p in found] == [patients[734].pk]


@pytest.mark.parametrize(
    "lookup",
    [
        {"last_name": "x"},
        {"last_name__iexact": "x"},
        {"last_name__icontains": "x"},
        {"birth_date": BORN},
        {"birth_date__year": 1984},
        {"email__in": ["a@example.fr"]},
        {"phone_mobile__startswith": "+33"},
    ],
)
def test_it_refuses_to_filter_an_encrypted_column(db, lookup):
    with pytest.raises(EncryptedLookupError):
        Patient.objects.filter(**lookup)
    with pytest.raises(EncryptedLookupError):
        Patient.objects.exclude(**lookup)
