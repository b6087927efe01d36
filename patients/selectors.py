"""Reads of patient records for the views. Each loads only the fields its page shows,
and decrypts only the rows it returns (plus blind-index false candidates, discarded)."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet, Value
from django.urls import reverse
from django.utils import timezone

from audit import blind
from audit.explain import masked_lines
from patients import search
from patients.models import Patient, SearchToken, full_name_index

# What a search result shows: enough to pick the right person, nothing more.
RESULT_FIELDS = ("id", "last_name", "first_names", "birth_name", "birth_date", "is_archived")

# Contact details are masked on the record page until the user asks for them ("minimal
# exposure"): each group is revealed by its own request, which decrypts that group only.
CONTACT_GROUPS: dict[str, tuple[str, ...]] = {
    "phone": ("phone_mobile", "phone_other"),
    "email": ("email",),
    "address": ("address", "postal_code", "city"),
    "nir": ("nir",),
}
CONTACT_FIELDS = tuple(name for group in CONTACT_GROUPS.values() for name in group)
# Plain columns every patient page may show (nothing decrypted).
PLAIN_FIELDS = (
    "id",
    "is_archived",
    "language",
    "consent_sms",
    "consent_email",
    "created_at",
    "updated_at",
)
# The record page: identity and care fields; contact details stay sealed (not even loaded).
DETAIL_FIELDS = (
    *PLAIN_FIELDS,
    "last_name",
    "first_names",
    "birth_name",
    "sex",
    "birth_date",
    "referring_doctor",
    "notes",
)
# Enough to pick the right person; past it the page asks for a first name or a birth date.
# Every extra row is a bystander's name decrypted (and audited) for nothing.
SEARCH_LIMIT = 25
FALSE_CANDIDATE_MARGIN = 10
# A search by last name alone shows masked lines (first names' initial, birth year), at most
# this many: it tells patients of one name apart without serving who they are.
MASKED_LIMIT = 10
MASKED_FIELDS = ("id", "last_name", "first_names", "birth_date", "is_archived")


@dataclass(frozen=True)
class PatientQuery:
    last_name: str = ""
    first_name: str = ""
    birth_date: datetime.date | None = None
    phone: str = ""
    email: str = ""
    include_archived: bool = False

    def is_empty(self) -> bool:
        return not (self.last_name or self.birth_date or self.phone or self.email)

    @property
    def phone_e164(self) -> str:
        """The phone typed, as a whole number ('' if it is not one: maybe its last digits)."""
        return blind.normalize_phone(self.phone) if self.phone else ""

    @property
    def identifying(self) -> bool:
        """A criterion that says who the person is beyond a surname: a first name, a birth
        date, a whole phone number or an e-mail. Without one, results are masked lines."""
        return bool(self.first_name or self.birth_date or self.phone_e164 or self.email)

    @property
    def last_name_only(self) -> bool:
        """Only a last name (or the end of a phone number): masked lines until one is chosen,
        except for the readings of the name box that hold a first name ("Bertin Simone")."""
        return not self.is_empty() and not self.identifying


@dataclass(frozen=True)
class MaskedLine:
    """One result of a search by last name alone: what tells it apart, not who it is. Built
    inside ``audit.explain.masked_lines`` from the three fields decrypted (audited as such)."""

    pk: object
    last_name: str
    initial: str
    birth_year: int | None
    is_archived: bool

    @property
    def display_name(self) -> str:
        return f"{self.last_name.upper()} {self.initial}".strip()

    @property
    def birth_date(self) -> None:
        return None  # masked: the year only

    def get_absolute_url(self) -> str:
        return reverse("patients:detail", args=[self.pk])


_Row = TypeVar("_Row")


class Found(list[_Row]):
    """Search results, at most the page's limit; ``more`` when candidates were left unexamined
    after the limit was reached (the page asks for more criteria). Those are not decrypted: a
    row decrypted and not shown would be a read of a patient the page never served."""

    more: bool = False


# --------------------------------------------------------------------------- exact search
# The duplicate check: same normalized name, first name and birth date, on the blind-index
# columns of the patient row (no forgiveness: a near name is not a duplicate to block on).


def _candidates(query: PatientQuery) -> QuerySet[Patient] | None:
    qs = Patient.objects.all()
    if query.last_name and query.first_name:
        qs = qs.filter(bidx_full_name=full_name_index(query.last_name, query.first_name))
    elif query.last_name:
        qs = qs.filter(bidx_last_name=blind.blind_index("last_name", blind.normalize_name(query.last_name)))
    if query.birth_date:
        qs = qs.filter(bidx_birth_date=blind.blind_index("birth_date", blind.normalize_date(query.birth_date)))
    if query.phone:
        phone = blind.blind_index("phone", blind.normalize_phone(query.phone))
        if phone is None:
            return None
        qs = qs.filter(Q(bidx_phone_mobile=phone) | Q(bidx_phone_other=phone))
    if query.email:
        qs = qs.filter(bidx_email=blind.blind_index("email", blind.normalize_email(query.email)))
    if not query.include_archived:
        qs = qs.filter(is_archived=False)
    return qs


def _matches(patient: Patient, query: PatientQuery) -> bool:
    """Drop blind-index false candidates (truncated HMACs collide by design)."""
    if query.last_name and blind.normalize_name(patient.last_name) != blind.normalize_name(query.last_name):
        return False
    if query.first_name:
        wanted = blind.normalize_name(query.first_name).split(" ")[0]
        if blind.normalize_name(patient.first_names).split(" ")[0] != wanted:
            return False
    return _other_criteria_hold(patient, query)


def _other_criteria_hold(patient: Patient, query: PatientQuery) -> bool:
    """Birth date, phone (whole, or its last digits) and e-mail, on decrypted values."""
    if query.birth_date and patient.birth_date != query.birth_date:
        return False
    if query.phone:
        theirs = (patient.phone_mobile, patient.phone_other)
        wanted = query.phone_e164
        if wanted:
            if wanted not in (blind.normalize_phone(p) for p in theirs):
                return False
        else:
            digits = search.phone_digits(query.phone)
            if not any(p and search.phone_digits(p).endswith(digits) for p in theirs):
                return False
    return not query.email or blind.normalize_email(patient.email) == blind.normalize_email(query.email)


def _first_matches(rows: Iterable[Patient], query: PatientQuery, limit: int) -> Found[Patient]:
    """Decrypt candidates in order until ``limit`` of them match; the rest stay sealed. Blind-
    index false candidates (about rows / 2**bits per lookup: far below one at our sizes) are
    decrypted to be told apart, and dropped."""
    found: Found[Patient] = Found()
    for row in rows:
        if len(found) == limit:
            found.more = True
            break
        if _matches(row, query):
            found.append(row)
    return found


def patient_search_exact(query: PatientQuery, *, limit: int = SEARCH_LIMIT) -> Found[Patient]:
    """Patients whose normalized values equal every given criterion (the blind-index columns)."""
    if query.is_empty():
        return Found()
    candidates = _candidates(query)
    if candidates is None:
        return Found()
    rows = list(candidates.only(*_result_fields(query))[: limit + 1 + FALSE_CANDIDATE_MARGIN])
    found = _first_matches(rows, query, limit)
    found.sort(key=name_order)
    return found


# --------------------------------------------------------------------------- forgiving search
# Search tokens (patients/search.py): exact, then prefix, then one-typo matches of the last
# name (or of last and first name typed together), each tier a query on the token index with
# the other criteria on the patient row, capped; candidates decrypted and checked one by one.


def _result_fields(query: PatientQuery, base: Iterable[str] = RESULT_FIELDS) -> list[str]:
    fields = list(base)
    if query.phone:
        fields += ["phone_mobile", "phone_other"]
    if query.email:
        fields.append("email")
    return fields


def _with_tokens(qs: QuerySet[Patient], lookups: Iterable[tuple[search.Kind, list[int]]]) -> QuerySet[Patient]:
    for kind, tokens in lookups:
        if not tokens:
            return qs.none()
        if len(tokens) == 1:
            # One token: each patient holds it at most once, so a plain join (a nested loop
            # from the token index that a LIMIT stops early, however common the token).
            qs = qs.filter(search_tokens__kind=kind, search_tokens__token=tokens[0])
        else:
            qs = qs.filter(pk__in=SearchToken.objects.filter(kind=kind, token__in=tokens).values("patient_id"))
    return qs


def _tier_candidates(
    query: PatientQuery, terms: search.NameTerms | None, tier: search.Tier
) -> QuerySet[Patient] | None:
    """The patients one tier of one reading may match, from indexes only (None: the tier does
    not apply). Every query starts from a token or a blind-index column: never a table scan."""
    lookups: list[tuple[search.Kind, list[int]]] = []
    if terms is not None:
        lookups = terms.lookups(tier)
        if not lookups:
            return None
    elif tier is not search.Tier.EXACT:
        return None
    qs = Patient.objects.all()
    if query.birth_date:
        qs = qs.filter(bidx_birth_date=blind.blind_index("birth_date", blind.normalize_date(query.birth_date)))
    if query.phone:
        if query.phone_e164:
            phone = blind.blind_index("phone", query.phone_e164)
            qs = qs.filter(Q(bidx_phone_mobile=phone) | Q(bidx_phone_other=phone))
        else:
            suffix = search.phone_suffix_lookup(query.phone)
            if suffix is None:
                return None
            lookups += suffix[1]
    if query.email:
        qs = qs.filter(bidx_email=blind.blind_index("email", blind.normalize_email(query.email)))
    if not query.include_archived:
        qs = qs.filter(is_archived=False)
    return _with_tokens(qs, lookups)


def _readings(query: PatientQuery) -> list[tuple[search.NameTerms | None, bool]]:
    """(reading of the name box, shown in full?) in the order they are searched."""
    if not query.last_name:
        return [(None, query.identifying)]
    readings = [
        (terms, query.identifying or bool(terms.first))
        for terms in search.name_readings(query.last_name, query.first_name)
    ]
    return sorted(readings, key=lambda r: not r[1])  # full lines first (stable)


def _row_rank(patient: Patient, query: PatientQuery, readings: list[search.NameTerms | None]) -> tuple[int, int] | None:
    """(tier, closeness) of the best reading a decrypted candidate matches, or None."""
    if not _other_criteria_hold(patient, query):
        return None
    best = None
    for terms in readings:
        if terms is None:
            return (int(search.Tier.EXACT), 0)
        first = patient.first_names if terms.first else ""
        rank = search.name_tier(terms, patient.last_name, first)
        if rank is not None and (best is None or rank < best):
            best = rank
    return None if best is None else (int(best[0]), best[1])


def _candidate_branches(
    query: PatientQuery, readings: list[search.NameTerms | None], *, cap: int
) -> list[QuerySet[Patient, tuple[UUID, int]]]:
    """(id, branch number) of the candidates of each tier (exact, prefix, typo) of each reading,
    in that order, each branch capped."""
    branches: list[QuerySet[Patient, tuple[UUID, int]]] = []
    for tier in search.Tier:
        for terms in readings:
            qs = _tier_candidates(query, terms, tier)
            if qs is not None:
                branches.append(qs.annotate(branch=Value(len(branches))).values_list("pk", "branch")[:cap])
    return branches


def _candidate_ids(
    query: PatientQuery, readings: list[search.NameTerms | None], *, cap: int
) -> tuple[list[UUID], bool]:
    """The candidates' ids in branch order, and whether a branch reached its cap. On PostgreSQL
    in one round trip (the branches as one UNION ALL, each with its own LIMIT); elsewhere one
    query per branch."""
    branches = _candidate_branches(query, readings, cap=cap)
    if not branches:
        return [], False
    if len(branches) > 1 and connection.features.supports_slicing_ordering_in_compound:
        pairs = list(branches[0].union(*branches[1:], all=True))
    else:
        pairs = [pair for branch in branches for pair in branch]
    counts = Counter(branch for _, branch in pairs)
    ordered = [pk for pk, _ in sorted(pairs, key=lambda pair: pair[1])]
    return list(dict.fromkeys(ordered)), any(n >= cap for n in counts.values())


def _ranked(
    query: PatientQuery, readings: list[search.NameTerms | None], *, limit: int, fields: list[str], exclude: set[object]
) -> Found[tuple[tuple[int, int], Patient]]:
    """Matches of these readings: the candidates of every tier (each capped at the page's limit
    plus a margin for false candidates) loaded at once, nothing decrypted, then decrypted in
    tier order until the page is full; the rest stay sealed."""
    found: Found[tuple[tuple[int, int], Patient]] = Found()
    ids, found.more = _candidate_ids(query, readings, cap=limit + 1 + FALSE_CANDIDATE_MARGIN)
    ids = [pk for pk in ids if pk not in exclude]
    if not ids:
        return found
    rows = {row.pk: row for row in Patient.objects.filter(pk__in=ids).only(*fields)}
    for pk in ids:
        if len(found) == limit:
            found.more = True
            break
        rank = _row_rank(rows[pk], query, readings)
        if rank is not None:
            found.append((rank, rows[pk]))
    return found


def patient_search(query: PatientQuery, *, limit: int = SEARCH_LIMIT) -> Found[Patient]:
    """Patients matching every given criterion, the name forgiven (prefix, one typo, spaces
    and particles, last and first name together), in full lines: exact matches first, then
    prefixes, then typos. By search tokens and blind indexes; never scans the table."""
    if query.is_empty():
        return Found()
    readings = [terms for terms, _ in _readings(query)]
    ranked = _ranked(query, readings, limit=limit, fields=_result_fields(query), exclude=set())
    ranked.sort(key=lambda item: (item[0], name_order(item[1])))
    found: Found[Patient] = Found(row for _, row in ranked)
    found.more = ranked.more
    return found


def _masked(rows: Iterable[tuple[tuple[int, int], Patient]]) -> list[tuple[tuple[int, int], MaskedLine]]:
    return [
        (
            rank,
            MaskedLine(
                pk=p.pk,
                last_name=p.last_name,
                initial=(p.first_names[:1].upper() + ".") if p.first_names else "",
                birth_year=p.birth_date.year if p.birth_date else None,
                is_archived=p.is_archived,
            ),
        )
        for rank, p in rows
    ]


def _masked_order(item: tuple[tuple[int, int], MaskedLine]) -> tuple[tuple[int, int], str, str, int]:
    rank, line = item
    return (rank, blind.normalize_name(line.last_name), line.initial, line.birth_year or 0)


def patient_search_masked(query: PatientQuery, *, limit: int = MASKED_LIMIT) -> Found[MaskedLine]:
    """A search by last name alone: at most ``limit`` masked lines. Each unexplained patient is
    paid from the masked allowance (audit.explain), not the full one; only the last name, the
    first names and the birth date are decrypted, and only their masked form leaves."""
    if query.is_empty():
        return Found()
    readings = [terms for terms, _ in _readings(query)]
    with masked_lines():
        ranked = _ranked(query, readings, limit=limit, fields=_result_fields(query, MASKED_FIELDS), exclude=set())
        lines = _masked(ranked)
    lines.sort(key=_masked_order)
    found: Found[MaskedLine] = Found(line for _, line in lines)
    found.more = ranked.more
    return found


def patient_find(query: PatientQuery) -> Found[Patient | MaskedLine]:
    """What the search pages show: full lines for the readings that identify someone (a first
    name, typed apart or in the name box; a birth date, a whole phone number, an e-mail), then
    masked lines for those that do not (a last name alone, the end of a phone number)."""
    found: Found[Patient | MaskedLine] = Found()
    if query.is_empty():
        return found
    readings = _readings(query)
    full = [terms for terms, shown in readings if shown]
    masked = [terms for terms, shown in readings if not shown]
    if full:
        ranked = _ranked(query, full, limit=SEARCH_LIMIT, fields=_result_fields(query), exclude=set())
        ranked.sort(key=lambda item: (item[0], name_order(item[1])))
        found.extend(row for _, row in ranked)
        found.more = ranked.more
    if masked:
        with masked_lines():
            ranked_masked = _ranked(
                query,
                masked,
                limit=MASKED_LIMIT,
                fields=_result_fields(query, MASKED_FIELDS),
                exclude={p.pk for p in found},
            )
            lines = _masked(ranked_masked)
        lines.sort(key=_masked_order)
        found.extend(line for _, line in lines)
        found.more = found.more or ranked_masked.more
    return found


def name_order(patient: Patient) -> tuple[str, str]:
    """Sort key of a list of patients by name (decrypts the two name fields, which the list shows)."""
    return blind.normalize_name(patient.last_name), blind.normalize_name(patient.first_names)


def patients_today(*, day: datetime.date, limit: int = 100) -> QuerySet[Patient]:
    """The list page's default: the patients with an appointment today that is not cancelled
    (each is explained by it), name columns only. Through the reverse relation of appointments:
    scheduling stands above patients, so no import of it here."""
    tz = timezone.get_current_timezone()
    start = timezone.make_aware(datetime.datetime.combine(day, datetime.time.min), tz)
    end = timezone.make_aware(datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time.min), tz)
    appointments = Patient._meta.get_field("appointments").related_model._default_manager
    booked = appointments.filter(patient=OuterRef("pk"), start__gte=start, start__lt=end).exclude(status="cancelled")
    return Patient.objects.filter(Exists(booked), is_archived=False).only(*RESULT_FIELDS).order_by("pk")[:limit]


def patient_duplicates(
    *, last_name: str, first_names: str, birth_date: datetime.date | None, exclude_pk: object = None
) -> list[Patient]:
    """Existing patients with the same normalized name and birth date."""
    if not (last_name and first_names and birth_date):
        return []
    return [
        p
        for p in patient_search_exact(
            PatientQuery(last_name=last_name, first_name=first_names, birth_date=birth_date, include_archived=True)
        )
        if p.pk != exclude_pk
    ]


# Admin pages that name the patients of their rows (emergency accesses, appointments during an
# absence): the two name fields, nothing else encrypted.
NAME_FIELDS = ("id", "last_name", "first_names")


def patient_names(ids: Iterable[UUID], *, limit: int = 50) -> dict[UUID, Patient]:
    """The patients of these ids (at most ``limit``), with their two name fields, in one query:
    their reads are explained (or paid from the reader's allowance) in one batch before the first
    name is decrypted (audit/explain.py). Nothing is decrypted here: showing a name is the read."""
    wanted = list(dict.fromkeys(ids))[:limit]
    if not wanted:
        return {}
    return {patient.pk: patient for patient in Patient.objects.filter(pk__in=wanted).only(*NAME_FIELDS)}


def patient_recent(*, limit: int = 50) -> QuerySet[Patient]:
    """The list page: recently changed active patients, name columns only."""
    return Patient.objects.filter(is_archived=False).only(*RESULT_FIELDS).order_by("-updated_at")[:limit]


def patients_for_export(
    queryset: QuerySet[Patient], ids: Iterable[UUID | str], *, fields: Iterable[str]
) -> list[Patient]:
    """The patients of a list export, among those ``queryset`` allows, in name order.

    Loads ``fields`` only: the export decrypts nothing else.
    """
    rows = list(queryset.filter(pk__in=ids).only("id", "is_archived", *fields))
    return sorted(rows, key=lambda p: (blind.normalize_name(p.last_name), blind.normalize_name(p.first_names)))
