"""Reads of patient records for the views. Each loads only the fields its page shows,
and decrypts only the rows it returns (plus blind-index false candidates, discarded)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from audit import blind
from audit.explain import masked_lines
from patients.models import Patient, full_name_index

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
    def last_name_only(self) -> bool:
        """Only a last name: the results are masked lines until one is chosen."""
        return bool(self.last_name) and not (self.first_name or self.birth_date or self.phone or self.email)


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
    if query.birth_date and patient.birth_date != query.birth_date:
        return False
    if query.phone:
        wanted = blind.normalize_phone(query.phone)
        if wanted not in (blind.normalize_phone(patient.phone_mobile), blind.normalize_phone(patient.phone_other)):
            return False
    return not query.email or blind.normalize_email(patient.email) == blind.normalize_email(query.email)


_Row = TypeVar("_Row")


class Found(list[_Row]):
    """Search results, at most the page's limit; ``more`` when candidates were left unexamined
    after the limit was reached (the page asks for more criteria). Those are not decrypted: a
    row decrypted and not shown would be a read of a patient the page never served."""

    more: bool = False


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


def patient_search(query: PatientQuery, *, limit: int = SEARCH_LIMIT) -> Found[Patient]:
    """Patients matching every given criterion, by blind index; never scans the table."""
    if query.is_empty():
        return Found()
    candidates = _candidates(query)
    if candidates is None:
        return Found()
    fields = list(RESULT_FIELDS)
    if query.phone:
        fields += ["phone_mobile", "phone_other"]
    if query.email:
        fields.append("email")
    # A small margin of candidates keeps false ones from hiding a true match; they are loaded
    # (and explained, in one query) but decrypted only as far as the page needs.
    rows = list(candidates.only(*fields)[: limit + 1 + FALSE_CANDIDATE_MARGIN])
    found = _first_matches(rows, query, limit)
    found.sort(key=name_order)
    return found


def patient_search_masked(query: PatientQuery, *, limit: int = MASKED_LIMIT) -> Found[MaskedLine]:
    """A search by last name alone: at most ``limit`` masked lines. Each unexplained patient is
    paid from the masked allowance (audit.explain), not the full one; only the last name, the
    first names and the birth date are decrypted, and only their masked form leaves."""
    candidates = _candidates(query)
    if candidates is None:
        return Found()
    with masked_lines():
        rows = list(candidates.only(*MASKED_FIELDS)[: limit + 1 + FALSE_CANDIDATE_MARGIN])
        matches = _first_matches(rows, query, limit)
        lines = Found(
            MaskedLine(
                pk=p.pk,
                last_name=p.last_name,
                initial=(p.first_names[:1].upper() + ".") if p.first_names else "",
                birth_year=p.birth_date.year if p.birth_date else None,
                is_archived=p.is_archived,
            )
            for p in matches
        )
    lines.more = matches.more
    lines.sort(key=lambda line: (blind.normalize_name(line.last_name), line.initial, line.birth_year or 0))
    return lines


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
        for p in patient_search(
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
