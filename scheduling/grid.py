"""The agenda grid's maths: rows of AGENDA_SLOT_MINUTES between the day's first and last hour
shown, where each working range, absence and appointment falls, and the appointment blocks
as HTML. The selectors fill the columns (scheduling/selectors.py); the views hand this
module's layout to the templates."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _

from practice.models import Practitioner
from scheduling import availability
from scheduling.availability import Interval
from scheduling.models import Absence, Appointment, AppointmentStatus


@dataclass
class Column:
    """One practitioner on one day: working ranges, absences, appointments."""

    practitioner: Practitioner
    day: datetime.date
    hours: list[Interval] = field(default_factory=list)
    absences: list[Absence] = field(default_factory=list)
    appointments: list[Appointment] = field(default_factory=list)


@dataclass
class Grid:
    """A time grid: rows of AGENDA_SLOT_MINUTES from the first to the last hour shown."""

    day_start: datetime.time
    day_end: datetime.time
    columns: list[Column]

    @property
    def slot_minutes(self) -> int:
        minutes: int = settings.AGENDA_SLOT_MINUTES
        return minutes

    def row(self, moment: datetime.datetime, day: datetime.date) -> int:
        """1-based grid row of a moment on `day`, clamped to the grid."""
        local = timezone.localtime(moment, availability.practice_tz())
        minutes = (local.date() - day).days * 1440 + local.hour * 60 + local.minute
        first = self.day_start.hour * 60 + self.day_start.minute
        last = self.day_end.hour * 60 + self.day_end.minute
        minutes = min(max(minutes, first), last)
        return (minutes - first) // self.slot_minutes + 1

    @property
    def rows(self) -> int:
        first = self.day_start.hour * 60 + self.day_start.minute
        last = self.day_end.hour * 60 + self.day_end.minute
        return (last - first) // self.slot_minutes

    def hour_marks(self) -> list[tuple[int, str]]:
        marks = []
        for hour in range(self.day_start.hour, self.day_end.hour):
            row = (hour * 60 - (self.day_start.hour * 60 + self.day_start.minute)) // self.slot_minutes + 1
            marks.append((row, f"{hour:02d}:00"))
        return marks


def span(grid: Grid, day: datetime.date, start, end) -> tuple[int, int]:
    """Grid lines (start, end) of [start, end) on `day`: at least one row, inside the grid."""
    last_line = grid.rows + 1
    first = grid.row(start, day)
    # The end line rounds up: a block ending at 9:07 covers the 9:05 row.
    last = min(grid.row(end - datetime.timedelta(microseconds=1), day) + 1, last_line)
    if first >= last_line:
        first = last_line - 1
    return first, max(last, first + 1)


def block_html(appointment: Appointment, *, first: int, last: int, compact: bool, labels: dict) -> str:
    """One appointment block of the grid, as escaped HTML.

    Built here rather than with a template include: the front-desk day draws a few hundred
    blocks and an include per block cost most of the page's time (bench/agenda_bench.py).
    Only the two data parts (patient name, type name) need escaping; `labels` holds the
    request's translated, pre-escaped words.
    """
    status = appointment.status
    type_id = appointment.appointment_type_id
    classes = f"appt type-{type_id or 'none'} st-{status} rs-{first} re-{last}" + (" compact" if compact else "")
    appointment_type = appointment.appointment_type  # loaded with the row (select_related), or None
    line2 = escape(appointment_type.name) if appointment_type is not None else labels["no_type"]
    if status != AppointmentStatus.BOOKED:
        line2 += f' · <span class="st">{labels[status]}</span>'
    if appointment.forced:
        line2 += f" · {labels['forced']}"
    start = appointment.start.astimezone(labels["tz"])
    return mark_safe(  # noqa: S308 - every interpolated value is escaped or built from our own ids
        f'<a class="{classes}" href="{labels["url_prefix"]}{appointment.pk}/"><span class="l1">'
        f'<span class="when">{start:%H:%M}</span> <span class="who">{escape(appointment.patient.display_name)}</span>'
        f'</span><span class="l2">{line2}</span></a>'
    )


def block_labels() -> dict:
    labels: dict[str, Any] = {status.value: escape(status.label) for status in AppointmentStatus}
    labels.update(
        no_type=escape(_("No type")),
        forced=escape(_("forced")),
        tz=availability.practice_tz(),
        url_prefix=reverse("scheduling:appointment", args=[uuid.UUID(int=0)]).rsplit("/", 2)[0] + "/",
    )
    return labels


def layout(grid: Grid, *, today: datetime.date) -> list[dict]:
    """What the grid template draws, column by column, with grid lines computed here."""
    now = timezone.now()
    labels = block_labels()
    columns = []
    for column in grid.columns:
        appointments = []
        for appointment in column.appointments:
            first, last = span(grid, column.day, appointment.start, appointment.end)
            compact = (last - first) * grid.slot_minutes < 20
            appointments.append(block_html(appointment, first=first, last=last, compact=compact, labels=labels))
        now_row = None
        if column.day == today:
            row = grid.row(now, column.day)
            if 1 < row <= grid.rows:
                now_row = row
        columns.append(
            {
                "practitioner": column.practitioner,
                "day": column.day,
                "hours": [span(grid, column.day, start, end) for start, end in column.hours],
                "absences": [{"span": span(grid, column.day, a.start, a.end), "absence": a} for a in column.absences],
                "appointments": appointments,
                "now_row": now_row,
                "is_today": column.day == today,
            }
        )
    return columns


def grid_context(grid: Grid, *, today: datetime.date) -> dict:
    return {
        "grid": grid,
        "columns": layout(grid, today=today),
        "marks": grid.hour_marks(),
        "last_line": grid.rows + 1,
    }
