"""The free-slot finder: answers "a follow-up with Dr Martin next Tuesday afternoon".

Rules enforced here:

- A search covers at most ``SEARCH_DAYS`` (8 weeks) from its first day, never the past: the
  first day is today at the earliest, and today's slots start after now.
- Its work is bounded whatever the agenda holds: working hours in one query for the whole
  window, then busy times (absences, active appointments: two queries) ``CHUNK_DAYS`` working
  days at a time, only until ``DAYS_SHOWN`` days with a free slot are found. So at most
  1 + 2 x ceil(SEARCH_DAYS / CHUNK_DAYS) queries, and none loads an encrypted column: the
  finder decrypts nothing and writes nothing to the audit trail.
- Time filters (morning, afternoon, "between ... and ...") constrain a slot's start, in the
  practice's zone; slots are stepped in real time (scheduling.availability), so on a DST
  change day a slot lasts its duration and is shown at its wall-clock time.
- A day's result holds, for each practitioner, every slot found; the page shows the first of
  the morning and of the afternoon and links to the rest of that day.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse

from practice.models import Practitioner
from scheduling.availability import (
    Slot,
    busy_by_day,
    hours_for_days,
    interval_slots,
    practice_tz,
    subtract,
)
from scheduling.models import AppointmentType

SEARCH_DAYS = 56  # 8 weeks from the first day searched
CHUNK_DAYS = 14  # working days whose busy times are loaded together
DAYS_SHOWN = 10  # days with a free slot on one page; "later days" goes on from there
NOON = datetime.time(12, 0)  # a slot starting at noon or later is an afternoon slot

MORNING = "morning"
AFTERNOON = "afternoon"


@dataclass(frozen=True)
class SlotQuery:
    """What the front desk asked for, checked (scheduling.forms.FreeSlotsForm)."""

    appointment_type: AppointmentType
    practitioners: list[Practitioner]  # the candidates, in the order the page lists them
    first: datetime.date
    weekdays: frozenset[int] = frozenset()  # 0 is Monday; empty: every day
    part: str = ""  # "", MORNING or AFTERNOON
    time_from: datetime.time | None = None
    time_to: datetime.time | None = None
    day: datetime.date | None = None  # every slot of this one day (the "more" view)


@dataclass
class PractitionerDay:
    """One practitioner's free slots on one day (as many as the filters let through)."""

    practitioner: Practitioner
    slots: list[Slot]

    def _first(self, afternoon: bool) -> Slot | None:
        tz = practice_tz()
        return next((s for s in self.slots if (s.start.astimezone(tz).time() >= NOON) == afternoon), None)

    @property
    def first_morning(self) -> Slot | None:
        return self._first(afternoon=False)

    @property
    def first_afternoon(self) -> Slot | None:
        return self._first(afternoon=True)


@dataclass
class DayResult:
    day: datetime.date
    rows: list[PractitionerDay]


@dataclass
class SlotResults:
    """The days found, and the span searched: from ``first`` to ``searched_until``.

    ``later``: the first day of the next page (the page was full) or of the next window (the
    window was searched to its end); None when the agenda ends there."""

    first: datetime.date
    searched_until: datetime.date
    days: list[DayResult] = field(default_factory=list)
    full: bool = False
    later: datetime.date | None = None


def _dates(first: datetime.date, last: datetime.date) -> Iterator[datetime.date]:
    day = first
    while day <= last:
        yield day
        day += datetime.timedelta(days=1)


def _window(query: SlotQuery, day: datetime.date) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """The earliest and the latest (excluded) start the time filters allow on `day`."""
    tz = practice_tz()
    starts = [t for t in (query.time_from, NOON if query.part == AFTERNOON else None) if t is not None]
    ends = [t for t in (query.time_to, NOON if query.part == MORNING else None) if t is not None]
    earliest = datetime.datetime.combine(day, max(starts), tzinfo=tz) if starts else None
    latest = datetime.datetime.combine(day, min(ends), tzinfo=tz) if ends else None
    return earliest, latest


def _day_result(
    query: SlotQuery,
    day: datetime.date,
    hours: dict,
    busy: dict,
    now: datetime.datetime,
) -> DayResult:
    step = datetime.timedelta(minutes=query.appointment_type.duration_minutes)
    earliest, latest = _window(query, day)
    earliest = now if earliest is None else max(earliest, now)
    rows = []
    for practitioner in query.practitioners:
        free = subtract(hours.get((practitioner.pk, day), []), busy.get((practitioner.pk, day), []))
        slots = [
            slot
            for start, end in free
            for slot in interval_slots(start, end, step=step, earliest=earliest, latest_start=latest)
        ]
        if slots:
            rows.append(PractitionerDay(practitioner=practitioner, slots=slots))
    return DayResult(day=day, rows=rows)


def _span(query: SlotQuery, today: datetime.date, last_day: datetime.date) -> tuple[datetime.date, datetime.date]:
    if query.day is not None:
        return query.day, query.day
    first = max(query.first, today)
    return first, min(first + datetime.timedelta(days=SEARCH_DAYS - 1), last_day)


def slot_search(query: SlotQuery, *, now: datetime.datetime, last_day: datetime.date) -> SlotResults:
    """The days from the query's first day with a free slot for one of its practitioners, at
    most DAYS_SHOWN of them (every slot of one day with ``query.day``). Bounded: see the module."""
    today = now.astimezone(practice_tz()).date()
    first, last = _span(query, today, last_day)
    results = SlotResults(first=first, searched_until=last)
    if not query.practitioners or first < today or first > last:
        return results
    ids = [p.pk for p in query.practitioners]
    hours = hours_for_days(ids, first, last)
    days = [
        day
        for day in _dates(first, last)
        if (query.day is not None or not query.weekdays or day.weekday() in query.weekdays)
        and any((pk, day) in hours for pk in ids)
    ]
    for start in range(0, len(days), CHUNK_DAYS):
        chunk = days[start : start + CHUNK_DAYS]
        busy = busy_by_day(ids, chunk[0], chunk[-1])
        for day in chunk:
            found = _day_result(query, day, hours, busy, now)
            if found.rows:
                results.days.append(found)
            if len(results.days) == DAYS_SHOWN and query.day is None:
                results.full, results.searched_until = True, day
                results.later = day + datetime.timedelta(days=1) if day < last_day else None
                return results
    if query.day is None and last < last_day:
        results.later = last + datetime.timedelta(days=1)
    return results


# ---------------------------------------------------------------------------------------------
# Links: every slot opens the booking page filled in; "more" and "later" re-run the search


@dataclass(frozen=True)
class Links:
    """Builds the page's links from the query's filters as GET parameters (``params``, the
    form's own names) and the patient the finder was opened for, if any."""

    params: dict[str, list[str]]
    appointment_type_id: int
    patient: str = ""

    def finder(self, **changes: str) -> str:
        params = {**self.params, **{name: [value] for name, value in changes.items()}}
        pairs = [(name, value) for name, values in params.items() for value in values if value]
        return f"{reverse('scheduling:free_slots')}?{urlencode(pairs)}"

    def book(self, practitioner: Practitioner, slot: Slot) -> str:
        query = {
            "practitioner": practitioner.pk,
            "type": self.appointment_type_id,
            "start": slot.start.astimezone(practice_tz()).isoformat(),
        }
        if self.patient:
            query["patient"] = self.patient
        return f"{reverse('scheduling:book')}?{urlencode(query)}"


def _entry(links: Links, practitioner: Practitioner, slot: Slot | None) -> dict | None:
    return None if slot is None else {"slot": slot, "url": links.book(practitioner, slot)}


def _row(links: Links, row: PractitionerDay, day: datetime.date, every_slot: bool) -> dict:
    shown = [s for s in (row.first_morning, row.first_afternoon) if s is not None]
    return {
        "practitioner": row.practitioner,
        "morning": _entry(links, row.practitioner, row.first_morning),
        "afternoon": _entry(links, row.practitioner, row.first_afternoon),
        "slots": [_entry(links, row.practitioner, s) for s in row.slots] if every_slot else [],
        "more": len(row.slots) - len(shown),
        "more_url": links.finder(day=day.isoformat(), practitioner=str(row.practitioner.pk)),
    }


def page_days(results: SlotResults, links: Links, *, every_slot: bool) -> list[dict]:
    """What the template lays out: per day, per practitioner, the first slot of the morning and
    of the afternoon (every slot with ``every_slot``), each with its booking link."""
    return [
        {
            "day": found.day,
            "all_url": links.finder(day=found.day.isoformat()),
            "rows": [_row(links, row, found.day, every_slot) for row in found.rows],
        }
        for found in results.days
    ]


def page(
    query: SlotQuery,
    *,
    params: dict[str, list[str]],
    patient: uuid.UUID | None,
    now: datetime.datetime,
    last_day: datetime.date,
) -> dict[str, Any]:
    """The finder page's context for a valid query: the search and every link it shows."""
    results = slot_search(query, now=now, last_day=last_day)
    links = Links(params=params, appointment_type_id=query.appointment_type.pk, patient=str(patient or ""))
    return {
        "query": query,
        "results": results,
        "patient_id": patient,
        "days": page_days(results, links, every_slot=query.day is not None),
        "later_url": links.finder(from_date=results.later.isoformat()) if results.later else "",
        "days_url": links.finder(day="", from_date=query.day.isoformat()) if query.day else "",
    }
