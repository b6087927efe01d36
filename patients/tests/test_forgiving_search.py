"""The forgiving search (patients/search.py): a last-name prefix, one typo, particles, hyphens
and spaces, last and first name together in either order, accents and case, the end of a
phone number. Over keyed search tokens; only candidates are decrypted, each read audited;
results ranked exact, then prefix, then typo; a last name alone gives masked lines.
"""

import datetime
import io
import logging
import random
import re

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from audit import blind
from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import client_for, make_patient, reads
from patients import search, selectors
from patients.models import Patient, SearchToken, search_tokens_write
from patients.selectors import (
    MASKED_FIELDS,
    RESULT_FIELDS,
    MaskedLine,
    PatientQuery,
    patient_find,
    patient_search,
)
from patients.services import patient_archive, patient_update

# --- The pieces, without a database --------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("Le Goff", "legoff"),
        ("LEGOFF", "legoff"),
        ("le-goff", "legoff"),
        ("L'Hôpital", "lhopital"),
        ("Saint\u2011Exupéry", "saintexupery"),
        ("  ÉLODIE  ", "elodie"),
    ],
)
def test_compact_folds_case_accents_spaces_hyphens_and_apostrophes(typed, expected):
    assert search.compact(typed) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Le Goff", "goff"),
        ("de la Fontaine", "fontaine"),
        ("Van der Berg", "berg"),
        ("d'Artagnan", "artagnan"),
        ("Martin", ""),
        ("Le", ""),  # nothing but a particle: kept whole
        ("Dupont-Le Goff", ""),  # a particle inside the name is part of it
    ],
)
def test_without_particles(name, expected):
    assert search.without_particles(name) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("kowalczyk", "kowalczyk", True),
        ("kowalczyk", "kowalczik", True),  # substitution
        ("kowalczyk", "kowalczk", True),  # deletion
        ("kowalczyk", "kowalczyky", True),  # insertion
        ("kowalczyk", "kowlaczyk", True),  # transposition
        ("kowalczyk", "kowalcizk", False),  # two substitutions
        ("kowalczyk", "kowalc", False),
        ("martin", "marin", True),
        ("martin", "mratni", False),
        ("ab", "ba", True),
    ],
)
def test_within_one_edit(a, b, expected):
    assert search.within_one_edit(a, b) is expected
    assert search.within_one_edit(b, a) is expected


def _one_edit(word: str, rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = rng.randrange(len(word))
    edit = rng.choice(["insert", "delete", "substitute", "transpose"] if len(word) > 1 else ["insert", "substitute"])
    if edit == "insert":
        return word[:i] + rng.choice(letters) + word[i:]
    if edit == "delete":
        return word[:i] + word[i + 1 :]
    if edit == "substitute":
        return word[:i] + rng.choice(letters.replace(word[i], "")) + word[i + 1 :]
    i = min(i, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def test_deletion_neighbourhoods_meet_for_every_single_edit():
    """The property the DELETION tokens rest on: one edit apart => the neighbourhoods meet."""
    rng = random.Random(7)
    for _ in range(2000):
        word = "".join(rng.choice("aeioubcdlmnrst") for _ in range(rng.randrange(4, 12)))
        typo = _one_edit(word, rng)
        if len(typo) < search.PREFIX_MIN:
            continue
        assert search.neighbourhood(word) & search.neighbourhood(typo), (word, typo)
        assert search.within_one_edit(word, typo), (word, typo)


def test_name_readings_split_the_name_box_in_either_order():
    readings = search.name_readings("Bertin Simone")
    assert readings == [
        search.NameTerms(last="bertinsimone"),
        search.NameTerms(last="bertin", first="simone"),
        search.NameTerms(last="simone", first="bertin"),
    ]
    # With a first name typed apart, the name box is the last name.
    assert search.name_readings("Le Goff", "Yves") == [search.NameTerms(last="legoff", first="yves")]


def test_patient_tokens_are_keyed_truncated_and_per_kind():
    tokens = search.patient_tokens(last_name="Le Goff", first_names="Anne-Marie", phones=["+33612345678", ""])
    kinds = {kind for kind, _ in tokens}
    assert kinds == {int(k) for k in search.Kind}
    for kind, value in tokens:
        assert 0 <= value < 2 ** blind.INDEX_BITS[search.Kind(kind).index_name]
    # A phone number's last 4, 5 and 6 digits, nothing longer: the whole number is bidx_phone_*.
    assert len([1 for kind, _ in tokens if kind == search.Kind.PHONE_SUFFIX]) == 3
    # Another key gives other tokens: nothing here is the name itself or a plain hash of it.
    with override_settings(BLIND_INDEX_KEY=b"\x01" * 32):
        assert not tokens & search.patient_tokens(
            last_name="Le Goff", first_names="Anne-Marie", phones=["+33612345678"]
        )


# --- Searching --------------------------------------------------------------------------------


@pytest.fixture
def practice(db):
    """A few patients whose names the front desk mistypes."""
    born = datetime.date(1971, 4, 2)
    return {
        "kowalczyk": make_patient(last_name="Kowalczyk", first_names="Anna", phone_mobile="+33611223344", nir=""),
        "kowalski": make_patient(last_name="Kowalski", first_names="Piotr", phone_mobile="+33622334455", nir=""),
        "legoff": make_patient(last_name="Le Goff", first_names="Yves", phone_mobile="+33633445566", nir=""),
        "bertin": make_patient(
            last_name="Bertin", first_names="Simone", birth_date=born, phone_mobile="+33644556677", nir=""
        ),
        "simon": make_patient(last_name="Simon", first_names="Bertrand", phone_mobile="+33655667788", nir=""),
        "lefevre": make_patient(last_name="Lefèvre", first_names="Élise", phone_mobile="+33666778899", nir=""),
        "martin": make_patient(last_name="Martin", first_names="Paul", phone_mobile="+33677889900", nir=""),
        "martineau": make_patient(last_name="Martineau", first_names="Lise", phone_mobile="+33688990011", nir=""),
        "marti": make_patient(last_name="Marti", first_names="Jordi", phone_mobile="+33699001122", nir=""),
        "dupont_moreau": make_patient(
            last_name="Dupont-Moreau", first_names="Jean-Marie", phone_mobile="+33610101010", nir=""
        ),
    }


def find(**criteria) -> list:
    with system_context("tests:search"):
        return [line.pk for line in patient_find(PatientQuery(**criteria))]


@pytest.mark.parametrize(
    ("typed", "who"),
    [
        pytest.param("Kowalczik", "kowalczyk", id="typo-substitution"),
        pytest.param("Kowalcyk", "kowalczyk", id="typo-deletion"),
        pytest.param("Kowalczyyk", "kowalczyk", id="typo-insertion"),
        pytest.param("Kowlaczyk", "kowalczyk", id="typo-transposition"),
        pytest.param("Kowal", "kowalczyk", id="prefix"),
        pytest.param("kow", "kowalczyk", id="prefix-3-letters"),
        pytest.param("LEGOFF", "legoff", id="no-space"),
        pytest.param("Le Goff", "legoff", id="as-stored"),
        pytest.param("le-goff", "legoff", id="hyphen"),
        pytest.param("Goff", "legoff", id="no-particle"),
        pytest.param("LEFEVRE", "lefevre", id="case-accents"),
        pytest.param("dupont moreau", "dupont_moreau", id="compound-space"),
        pytest.param("DUPONTMOREAU", "dupont_moreau", id="compound-joined"),
        pytest.param("Dupont-Moreaux", "dupont_moreau", id="compound-typo"),
    ],
)
def test_the_name_box_forgives(practice, typed, who):
    assert practice[who].pk in find(last_name=typed), typed


@pytest.mark.parametrize("typed", ["Bertin Simone", "Simone Bertin", "BERTIN simone", "simone  bertin"])
def test_last_and_first_name_together_in_either_order(practice, typed):
    found = find(last_name=typed)
    assert found[0] == practice["bertin"].pk  # SIMON Bertrand is another person
    assert practice["simon"].pk not in found


def test_a_first_name_typed_apart_narrows_a_forgiven_last_name(practice):
    assert find(last_name="Kowalczik", first_name="Anna") == [practice["kowalczyk"].pk]
    assert find(last_name="Kowal", first_name="Piotr") == [practice["kowalski"].pk]
    assert find(last_name="LEGOFF", first_name="yves") == [practice["legoff"].pk]
    assert find(last_name="Kowalczik", first_name="Piotr") == []


@pytest.mark.parametrize(
    ("typed", "who"),
    [
        ("3344", "kowalczyk"),
        ("23344", "kowalczyk"),
        ("11 22 33 44", "kowalczyk"),
        ("6677", "bertin"),
        ("0101 0", "dupont_moreau"),
    ],
)
def test_the_last_digits_of_a_phone_number(practice, typed, who):
    assert find(phone=typed) == [practice[who].pk]


def test_phone_digits_must_end_the_number(practice):
    assert find(phone="2233") == []  # inside Kowalczyk's number, not at its end
    assert find(phone="344") == []  # fewer than 4 digits: nothing
    assert find(last_name="Kowalczik", phone="3344") == [practice["kowalczyk"].pk]
    assert find(last_name="Kowalski", phone="3344") == []


def test_it_ranks_exact_then_prefix_then_typo(practice):
    found = find(last_name="Martin", first_name="")
    # MARTIN (exact), MARTINEAU (prefix), MARTI (one deletion: a typo of Martin).
    assert found == [practice["martin"].pk, practice["martineau"].pk, practice["marti"].pk]
    found = find(last_name="Marti")
    assert found == [practice["marti"].pk, practice["martin"].pk, practice["martineau"].pk]


def test_prefixes_rank_the_closest_length_first(db):
    long = make_patient(last_name="Kowalczykowska", first_names="Ewa", nir="")
    short = make_patient(last_name="Kowalczyk", first_names="Anna", nir="")
    assert find(last_name="Kowalc") == [short.pk, long.pk]


def test_an_unrelated_name_finds_nothing(practice):
    for typed in ("Zebulon", "Kwlczk", "Mx", "Lgff"):
        assert find(last_name=typed) == [], typed


def test_archived_patients_only_when_asked(practice):
    archived = make_patient(last_name="Kowalczyk", first_names="Jan", nir="")
    patient_archive(patient=archived, actor=None)
    assert archived.pk not in find(last_name="Kowalczik")
    assert archived.pk in find(last_name="Kowalczik", include_archived=True)


# --- What the page shows, and what it records -----------------------------------------------


def test_a_last_name_alone_gives_masked_lines_even_forgiven(practice, secretary):
    client = client_for(secretary)
    page = client.post(reverse("patients:list"), {"last_name": "Kowalczik"}).content.decode()
    assert "KOWALCZYK A." in page
    assert "Anna" not in page
    with system_context("tests:search"):
        lines = patient_find(PatientQuery(last_name="Kowalczik"))
    assert [type(line) for line in lines] == [MaskedLine]
    # Decrypted: the masked fields of the one candidate, audited as the secretary's reads.
    events = reads(actor_username=secretary.username)
    assert {e.patient_id for e in events} == {practice["kowalczyk"].pk}
    assert all(set(e.fields) <= set(MASKED_FIELDS) for e in events)


def test_a_phone_suffix_alone_gives_masked_lines(practice, secretary):
    page = client_for(secretary).post(reverse("patients:list"), {"phone": "3344"}).content.decode()
    assert "KOWALCZYK A." in page
    assert "Anna" not in page


def test_last_and_first_name_in_the_name_box_give_full_lines(practice, secretary):
    client = client_for(secretary)
    page = client.post(reverse("patients:list"), {"last_name": "Simone Bertin"}).content.decode()
    assert "BERTIN Simone" in page
    assert "SIMON" not in page.replace("SIMONE", "")
    events = reads(actor_username=secretary.username)
    assert {e.patient_id for e in events} == {practice["bertin"].pk}
    assert all(set(e.fields) <= set(RESULT_FIELDS) for e in events)


def test_the_name_box_read_both_ways_shows_full_lines_then_masked_ones(practice, secretary):
    compound = make_patient(last_name="Bertin-Simone", first_names="Odile", phone_mobile="+33620202020", nir="")
    with system_context("tests:search"):
        found = patient_find(PatientQuery(last_name="Bertin Simone"))
    assert [(type(line), line.pk) for line in found] == [(Patient, practice["bertin"].pk), (MaskedLine, compound.pk)]
    page = client_for(secretary).post(reverse("patients:list"), {"last_name": "Bertin Simone"}).content.decode()
    assert "BERTIN Simone" in page  # read as last and first name: a full line
    assert "BERTIN-SIMONE O." in page  # read as a last name alone: a masked line
    assert "Odile" not in page


def test_the_booking_page_forgives_too(practice, secretary):
    client = client_for(secretary)
    response = client.post(
        reverse("scheduling:book"), {"action": "search", "find-last_name": "Kowalczik", "find-birth_date": ""}
    )
    page = response.content.decode()
    assert "KOWALCZYK A." in page
    page = client.post(
        reverse("scheduling:book"), {"action": "search", "find-last_name": "bertin simone", "find-birth_date": ""}
    ).content.decode()
    assert "BERTIN Simone" in page


@pytest.fixture
def one_bit_deletion_tokens():
    """Typo tokens cut to 1 bit: half of all patients are candidates of any typo search."""
    saved = blind.INDEX_BITS["search_deletion"]
    blind.INDEX_BITS["search_deletion"] = 1
    try:
        yield
    finally:
        blind.INDEX_BITS["search_deletion"] = saved


def test_every_decrypted_candidate_is_audited_and_false_ones_are_dropped(practice, one_bit_deletion_tokens):
    call_command("rotate_keys", "--blind-index", "--restart", "--no-progress", stdout=io.StringIO())
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    with system_context("tests:search") as ctx:
        found = patient_search(PatientQuery(last_name="Kowalczik", first_name=""))
        decrypted = ctx.pending
    assert [p.pk for p in found] == [practice["kowalczyk"].pk]
    events = AuditEvent.objects.filter(id__gt=before, event_type=EventType.READ)
    read = {e.patient_id for e in events}
    # Candidates holding a colliding token were decrypted (and recorded) to be ruled out.
    assert practice["kowalczyk"].pk in read
    assert len(read) > 1, "one bit and ten patients: every other one a candidate"
    assert all(set(e.fields) <= set(RESULT_FIELDS) for e in events)
    assert decrypted == len(events) == len(read)  # one row per decrypted patient, none unrecorded


def test_no_name_token_or_digits_reach_the_logs_or_the_url(practice, secretary, caplog):
    client = client_for(secretary)
    typed = {"last_name": "Kowalczik", "phone": "3344"}
    tokens = search.patient_tokens(last_name="Kowalczyk", phones=["+33611223344"])
    tokens |= {(0, t) for kind, ts in search.NameTerms(last="kowalczik").lookups(search.Tier.FUZZY) for t in ts}
    with caplog.at_level(logging.DEBUG):
        response = client.post(reverse("patients:list"), typed)
    assert response.status_code == 200
    assert response.request["QUERY_STRING"] == ""
    assert response.request["PATH_INFO"] == reverse("patients:list")
    logged = caplog.text.lower()
    for value in ("kowalczik", "kowalczyk", "3344", "anna"):
        assert value not in logged
    numbers = set(re.findall(r"\d+", logged))
    assert not {str(t) for _, t in tokens} & numbers
    # The form posts: the page's search form never puts a name in a URL.
    assert 'method="post"' in client.get(reverse("patients:list")).content.decode()


# --- Kept up to date ----------------------------------------------------------------------------


def _tokens_in_table(patient) -> set[tuple[int, int]]:
    return set(SearchToken.objects.filter(patient=patient).values_list("kind", "token"))


def _tokens_of(last_name: str, first_names: str, phones: list[str]) -> set[tuple[int, int]]:
    return search.patient_tokens(last_name=last_name, first_names=first_names, phones=phones)


def test_saving_a_patient_rewrites_the_tokens_of_what_changed(practice, secretary):
    patient = Patient.objects.get(pk=practice["kowalczyk"].pk)
    with system_context("tests:edit"):
        patient_update(patient=patient, data={"last_name": "Nowak", "phone_mobile": "+33699998888"}, actor=secretary)
    assert _tokens_in_table(patient) == _tokens_of("Nowak", "Anna", ["+33699998888"])
    assert find(last_name="Kowalczik") == []
    assert find(last_name="Nowk") == [patient.pk]
    assert find(phone="8888") == [patient.pk]


def test_a_saved_row_whose_names_did_not_change_keeps_its_tokens_without_decrypting(practice):
    before = _tokens_in_table(practice["legoff"])
    patient = Patient.objects.only("id", "is_archived", "updated_at").get(pk=practice["legoff"].pk)
    with system_context("tests:archive") as ctx:
        patient.is_archived = True
        patient.save(update_fields=["is_archived", "updated_at"])
        ctx.discard()
    assert not reads(patient_id=patient.pk)
    assert _tokens_in_table(practice["legoff"]) == before


def test_deleting_a_patient_deletes_its_tokens(practice):
    gone = practice["marti"]
    assert SearchToken.objects.filter(patient=gone).exists()
    Patient.objects.filter(pk=gone.pk).delete()
    assert not SearchToken.objects.filter(patient_id=gone.pk).exists()
    assert SearchToken.objects.filter(patient=practice["martin"]).exists()


def test_bulk_created_patients_get_their_tokens_from_search_tokens_write(db):
    rows = [
        Patient(last_name=f"Durand{i}", first_names="Léa", sex="F", birth_date=datetime.date(1990, 1, 1))
        for i in range(3)
    ]
    for row in rows:
        row.blind_indexes_update()
    with system_context("tests:bulk"):
        Patient.objects.bulk_create(rows)
        assert search_tokens_write(rows, replace=False) > 0
    assert _tokens_in_table(rows[1]) == _tokens_of("Durand1", "Léa", [])


def test_rotate_keys_rebuilds_the_tokens_under_the_new_key(practice, settings):
    with system_context("tests:before"):
        expected_before = {p.pk: _tokens_of(p.last_name, p.first_names, [p.phone_mobile]) for p in practice.values()}
    assert all(_tokens_in_table(p) == expected_before[p.pk] for p in practice.values())
    settings.BLIND_INDEX_KEY = b"\x07" * 32
    blind._index_key.cache_clear()
    # Under the new key, nothing is found until the rebuild.
    assert find(last_name="Kowalczik") == []
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    call_command("rotate_keys", "--blind-index", "--no-progress", "--batch-size", "3", stdout=io.StringIO())
    with system_context("tests:after"):
        for p in Patient.objects.all():
            assert _tokens_in_table(p) == _tokens_of(p.last_name, p.first_names, [p.phone_mobile, p.phone_other])
    assert practice["kowalczyk"].pk in find(last_name="Kowalczik")
    # Audited as now: batch events, and the reads the rebuild made, by the system job.
    events = AuditEvent.objects.filter(id__gt=before)
    batches = events.filter(event_type=EventType.BLIND_INDEX_REBUILD, extra__stage="batch")
    assert sum(e.extra["rows"] for e in batches) == Patient.objects.count()
    rebuild_reads = events.filter(event_type=EventType.READ, actor_username="system:command:rotate_keys")
    assert {e.patient_id for e in rebuild_reads} == set(Patient.objects.values_list("pk", flat=True))


def test_an_interrupted_rebuild_resumes_and_leaves_every_token_right(practice, settings, monkeypatch):
    settings.BLIND_INDEX_KEY = b"\x09" * 32
    blind._index_key.cache_clear()
    calls = {"n": 0}
    original = Patient.blind_tokens_write

    def fail_on_third_batch(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return original(batch)

    monkeypatch.setattr(Patient, "blind_tokens_write", staticmethod(fail_on_third_batch))
    with pytest.raises(RuntimeError):
        call_command("rotate_keys", "--blind-index", "--no-progress", "--batch-size", "2", stdout=io.StringIO())
    monkeypatch.setattr(Patient, "blind_tokens_write", staticmethod(original))
    out = io.StringIO()
    call_command("rotate_keys", "--blind-index", "--no-progress", "--batch-size", "2", stdout=out)
    assert "in all over 2 runs" in out.getvalue()
    with system_context("tests:after"):
        for p in Patient.objects.all():
            assert _tokens_in_table(p) == _tokens_of(p.last_name, p.first_names, [p.phone_mobile, p.phone_other])


# --- Cost: indexes only ---------------------------------------------------------------------------


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_every_tier_reads_indexes_never_the_whole_table(db):
    rows = []
    for i in range(2000):
        row = Patient(last_name=f"Nom{i:04d}", first_names="Jean", sex="M", birth_date=datetime.date(1950, 1, 1))
        row.blind_indexes_update()
        rows.append(row)
    Patient.objects.bulk_create(rows, batch_size=500)
    search_tokens_write(rows, replace=False)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE patients_patient")
        cursor.execute("ANALYZE patients_searchtoken")
    queries = (PatientQuery(last_name="Nom0734"), PatientQuery(last_name="Nom0734 Jean"), PatientQuery(phone="1234"))
    for query in queries:
        for terms, _ in selectors._readings(query):
            for tier in search.Tier:
                qs = selectors._tier_candidates(query, terms, tier)
                if qs is None:
                    continue
                plan = qs.only(*RESULT_FIELDS)[:36].explain()
                assert "Seq Scan" not in plan, (query, terms, tier, plan)
        # What runs: every branch in one UNION ALL, each capped.
        readings = [terms for terms, _ in selectors._readings(query)]
        branches = selectors._candidate_branches(query, readings, cap=36)
        plan = branches[0].union(*branches[1:], all=True).explain()
        assert "Seq Scan" not in plan, (query, plan)
