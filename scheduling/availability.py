"""When a practitioner can be booked: working hours, absences, appointments, free slots.

All inputs and outputs are aware datetimes. Working hours are wall-clock times in the
practice's time zone and are turned into aware datetimes per local day, so DST change days
get their real length (23 or 25 hours) and a 9:00 start stays 9:00.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, QuerySet

from scheduling.models import ACTIVE_STATUSES, MAX_APPOINTMENT_LENGTH, Absence, Appointment, WorkingHours

Interval = tuple[datetime.datetime, datetime.datetime]


def practice_tz() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def local_day_bounds(day: datetime.date) -> Interval:
    """Start of `day` and of the next day in the practice's zone (23 or 25 hours on DST days)."""
    tz = practice_tz()
    start = datetime.datetime.combine(day, datetime.time.min, tzinfo=tz)
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time.min, tzinfo=tz)
    return start, end


def hours_for_days(
    practitioner_ids: Iterable[int], first: datetime.date, last: datetime.date
) -> dict[tuple[int, datetime.date], list[Interval]]:
    """{(practitioner_id, date): [(start, end), ...]} for every day from first to last."""
    rows = WorkingHours.objects.filter(practitioner_id__in=list(practitioner_ids)).filter(
        Q(valid_from__isnull=True) | Q(valid_from__lte=last), Q(valid_until__isnull=True) | Q(valid_until__gte=first)
    )
    tz = practice_tz()
    ranges: dict[tuple[int, datetime.date], list[Interval]] = {}
    day = first
    while day <= last:
        for row in rows:
            if row.weekday != day.weekday():
                continue
            if (row.valid_from and day < row.valid_from) or (row.valid_until and day > row.valid_until):
                continue
            ranges.setdefault((row.practitioner_id, day), []).append(
                (
                    datetime.datetime.combine(day, row.start_time, tzinfo=tz),
                    datetime.datetime.combine(day, row.end_time, tzinfo=tz),
                )
            )
        day += datetime.timedelta(days=1)
    for key in ranges:
        ranges[key].sort()
    return ranges


def absences_between(
    practitioner_ids: Iterable[int], start: datetime.datetime, end: datetime.datetime
) -> QuerySet[Absence]:
    """Absences of these practitioners, and practice closures, overlapping [start, end)."""
    return Absence.objects.filter(
        Q(practitioner_id__in=list(practitioner_ids)) | Q(practitioner__isnull=True), start__lt=end, end__gt=start
    ).order_by("start")


def active_appointments_between(
    practitioner_ids: Iterable[int], start: datetime.datetime, end: datetime.datetime
) -> QuerySet[Appointment]:
    return Appointment.objects.filter(
        practitioner_id__in=list(practitioner_ids),
        status__in=ACTIVE_STATUSES,
        start__lt=end,
        start__gt=start - MAX_APPOINTMENT_LENGTH,
        end__gt=start,
    )


def within_working_hours(practitioner_id: int, start: datetime.datetime, end: datetime.datetime) -> bool:
    local_start = start.astimezone(practice_tz())
    local_end = end.astimezone(practice_tz())
    days = hours_for_days([practitioner_id], local_start.date(), local_end.date())
    ranges = [r for (pid, _), rs in days.items() if pid == practitioner_id for r in rs]
    return any(r_start <= start and end <= r_end for r_start, r_end in ranges)


def subtract(free: list[Interval], busy: list[Interval]) -> list[Interval]:
    """The parts of `free` not covered by any `busy` interval (all half-open)."""
    result = []
    for f_start, f_end in free:
        pieces = [(f_start, f_end)]
        for b_start, b_end in busy:
            next_pieces = []
            for p_start, p_end in pieces:
                if b_end <= p_start or b_start >= p_end:
                    next_pieces.append((p_start, p_end))
                    continue
                if p_start < b_start:
                    next_pieces.append((p_start, b_start))
                if b_end < p_end:
                    next_pieces.append((b_end, p_end))
            pieces = next_pieces
        result.extend(pieces)
    return result


@dataclass(frozen=True)
class Slot:
    start: datetime.datetime
    end: datetime.datetime


def _round_up(moment: datetime.datetime, minutes: int) -> datetime.datetime:
    moment = moment.replace(second=0, microsecond=0) + (
        datetime.timedelta(minutes=1) if moment.second or moment.microsecond else datetime.timedelta()
    )
    overshoot = moment.minute % minutes
    return moment + datetime.timedelta(minutes=(minutes - overshoot) % minutes)


def free_slots(
    *, practitioner_id: int, duration_minutes: int, after: datetime.datetime, count: int = 10, horizon_days: int = 62
) -> list[Slot]:
    """The next `count` free slots of `duration_minutes`: inside working hours, outside
    absences and active appointments. Three queries whatever the horizon."""
    tz = practice_tz()
    first = after.astimezone(tz).date()
    last = first + datetime.timedelta(days=horizon_days)
    window_start, _ = local_day_bounds(first)
    _, window_end = local_day_bounds(last)
    hours = hours_for_days([practitioner_id], first, last)
    busy = [(a.start, a.end) for a in absences_between([practitioner_id], window_start, window_end)]
    busy += [
        (a.start, a.end)
        for a in active_appointments_between([practitioner_id], window_start, window_end).only("start", "end")
    ]
    busy.sort()
    step = datetime.timedelta(minutes=duration_minutes)
    earliest = _round_up(after, settings.AGENDA_SLOT_MINUTES)
    slots: list[Slot] = []
    day = first
    while day <= last and len(slots) < count:
        for free_start, free_end in subtract(hours.get((practitioner_id, day), []), busy):
            for slot in interval_slots(free_start, free_end, step=step, earliest=earliest):
                if len(slots) == count:
                    break
                slots.append(slot)
        day += datetime.timedelta(days=1)
    return slots


def interval_slots(
    free_start: datetime.datetime,
    free_end: datetime.datetime,
    *,
    step: datetime.timedelta,
    earliest: datetime.datetime,
    latest_start: datetime.datetime | None = None,
) -> Iterator[Slot]:
    """Back-to-back slots of `step` in one free interval, from its start (or from `earliest`,
    rounded up to the agenda's grid), each starting before `latest_start` when given."""
    moment = max(free_start, earliest)
    if moment != free_start:
        moment = _round_up(moment, settings.AGENDA_SLOT_MINUTES)
    # Stepped in UTC: a local aware datetime plus a timedelta moves on the wall clock,
    # which on a DST night gives slots of the wrong real length.
    moment, free_end = moment.astimezone(datetime.UTC), free_end.astimezone(datetime.UTC)
    while moment + step <= free_end and (latest_start is None or moment < latest_start):
        yield Slot(moment, moment + step)
        moment += step


def busy_by_day(
    practitioner_ids: Iterable[int], first: datetime.date, last: datetime.date
) -> dict[tuple[int, datetime.date], list[Interval]]:
    """{(practitioner_id, local date): the busy intervals overlapping that day}, from `first`
    to `last`: absences (a practice closure counts for everyone) and active appointments.
    Two queries whatever the span; plain columns only (nothing is loaded that could be
    decrypted, so nothing is explained or audited)."""
    ids = list(practitioner_ids)
    window_start, _ = local_day_bounds(first)
    _, window_end = local_day_bounds(last)
    tz = practice_tz()
    busy: dict[tuple[int, datetime.date], list[Interval]] = {}

    def add(practitioner_id: int, start: datetime.datetime, end: datetime.datetime) -> None:
        day = max(start.astimezone(tz).date(), first)
        # An interval ending at midnight does not reach into the next day.
        final = min((end - datetime.timedelta(microseconds=1)).astimezone(tz).date(), last)
        while day <= final:
            busy.setdefault((practitioner_id, day), []).append((start, end))
            day += datetime.timedelta(days=1)

    for absence in absences_between(ids, window_start, window_end).only("practitioner_id", "start", "end"):
        for practitioner_id in [absence.practitioner_id] if absence.practitioner_id else ids:
            add(practitioner_id, absence.start, absence.end)
    appointments = active_appointments_between(ids, window_start, window_end)
    for practitioner_id, start, end in appointments.values_list("practitioner_id", "start", "end"):
        add(practitioner_id, start, end)
    for intervals in busy.values():
        intervals.sort()
    return busy
