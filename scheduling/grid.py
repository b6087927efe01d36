"""The agenda grid's maths: rows of AGENDA_SLOT_MINUTES between the day's first and last hour
shown, where each working range, absence and appointment falls, and the appointment blocks
as HTML. The selectors fill the columns (scheduling/selectors.py); the views hand this
module's layout to the templates.

What makes the grid clickable is plain HTML, built here like the blocks (one template include
per piece would cost the day view most of its time: bench/agenda_bench.py), so every action
works without the script (static/js/agenda.js only refines them):

- the free time of a practitioner (working hours less absences and appointments, from now on)
  is cut into links of FREE_LINK_MINUTES to the booking page, prefilled with the practitioner
  and the time: a link per free quarter of an hour, not per grid row, and none in the past;
- today's appointments carry a one-click button to the next step of the day (arrived, for
  those due within ARRIVAL_AHEAD; in consultation; done): a `formaction` to the status
  endpoint, all buttons sharing one small form of the page (its CSRF token and submission
  key), not a form each;
- an emergency squeezed in over another appointment shows beside it, both half width.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from practice.models import Practitioner
from scheduling import availability
from scheduling.availability import Interval
from scheduling.models import ACTIVE_STATUSES, Absence, Appointment, AppointmentStatus
from scheduling.submission_keys import submission_key_new

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Free time is offered as links of this length at least (a multiple of the grid's rows).
FREE_LINK_MINUTES = 15

# The day's flow one click at a time from the grid: the next status, and the button's words.
ONE_CLICK: dict[str, tuple[AppointmentStatus, StrOrPromise]] = {
    AppointmentStatus.BOOKED: (AppointmentStatus.ARRIVED, gettext_lazy("Mark arrived")),
    AppointmentStatus.ARRIVED: (AppointmentStatus.IN_CONSULTATION, gettext_lazy("Start consultation")),
    AppointmentStatus.IN_CONSULTATION: (AppointmentStatus.DONE, gettext_lazy("Mark done")),
}
# The one form of the page that every one-click button submits (templates/scheduling/_grid.html).
STATUS_FORM_ID = "grid-status"
# "Arrived" is offered on the grid for appointments starting before now plus this: the
# patients who may walk in now (the waiting room lists every one expected, each one click away).
ARRIVAL_AHEAD = datetime.timedelta(hours=2)


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


def block_html(
    appointment: Appointment, *, first: int, last: int, compact: bool, labels: dict, double: bool = False
) -> str:
    """One appointment block of the grid, as escaped HTML.

    Built here rather than with a template include: the front-desk day draws a few hundred
    blocks and an include per block cost most of the page's time (bench/agenda_bench.py).
    Only the two data parts (patient name, type name) need escaping; `labels` holds the
    request's translated, pre-escaped words. `double`: an emergency is squeezed in over it.
    """
    status = appointment.status
    type_id = appointment.appointment_type_id
    classes = f"appt type-{type_id or 'none'} st-{status} rs-{first} re-{last}" + (" compact" if compact else "")
    if appointment.squeezed:
        classes += " squeezed"
    elif double:
        classes += " dbl"
    appointment_type = appointment.appointment_type  # loaded with the row (select_related), or None
    line2 = escape(appointment_type.name) if appointment_type is not None else labels["no_type"]
    if status != AppointmentStatus.BOOKED:
        line2 += f' · <span class="st">{labels[status]}</span>'
    if appointment.forced:
        line2 += f" · {labels['forced']}"
    if appointment.squeezed:
        line2 += f" · {labels['squeezed']}"
    start = appointment.start.astimezone(labels["tz"])
    return mark_safe(  # noqa: S308 - every interpolated value is escaped or built from our own ids
        f'<a class="{classes}" href="{labels["url_prefix"]}{appointment.pk}/"><span class="l1">'
        f'<span class="when">{start:%H:%M}</span> <span class="who">{escape(appointment.patient.display_name)}</span>'
        f'</span><span class="l2">{line2}</span></a>'
    )


def button_html(
    appointment: Appointment, *, first: int, labels: dict, arrivals_until: datetime.datetime, double: bool = False
) -> str:
    """The one-click button to the appointment's next step of the day, or "" (none from here;
    no "arrived" for an appointment starting at `arrivals_until` or later). It submits the
    page's status form (STATUS_FORM_ID) to the appointment's status endpoint."""
    step = ONE_CLICK.get(appointment.status)
    if step is None or (appointment.status == AppointmentStatus.BOOKED and appointment.start >= arrivals_until):
        return ""
    status, _label = step
    side = " dbl" if double and not appointment.squeezed else ""
    return mark_safe(  # noqa: S308 - our own ids and pre-escaped, translated words only
        f'<button class="go to-{status} rs-{first}{side}" form="{STATUS_FORM_ID}" '
        f'formaction="{labels["url_prefix"]}{appointment.pk}/status/" name="status" value="{status}" '
        f'title="{labels["go"][status]}"></button>'
    )


def block_labels() -> dict:
    # str() first: escape() keeps a lazy translation lazy, and each use would translate again.
    labels: dict[str, Any] = {status.value: escape(str(status.label)) for status in AppointmentStatus}
    labels.update(
        no_type=escape(_("No type")),
        forced=escape(_("forced")),
        squeezed=escape(_("squeezed in")),
        book=escape(_("Book")),
        go={status: escape(str(label)) for status, label in ONE_CLICK.values()},
        tz=availability.practice_tz(),
        url_prefix=reverse("scheduling:appointment", args=[uuid.UUID(int=0)]).rsplit("/", 2)[0] + "/",
        book_url=reverse("scheduling:book"),
    )
    return labels


def _grid_minutes(grid: Grid, moment: datetime.datetime, day: datetime.date, *, up: bool) -> int:
    """Minutes from the grid's first line to `moment` on `day` (wall clock), to a whole row:
    rounded up or down, and clamped to the grid."""
    local = timezone.localtime(moment, availability.practice_tz())
    minutes = (local.date() - day).days * 1440 + local.hour * 60 + local.minute
    if up and (local.second or local.microsecond):
        minutes += 1
    minutes -= grid.day_start.hour * 60 + grid.day_start.minute
    slot = grid.slot_minutes
    rows = -(-minutes // slot) if up else minutes // slot
    return min(max(rows, 0), grid.rows) * slot


def free_html(grid: Grid, column: Column, *, labels: dict, not_before: datetime.datetime | None) -> str:
    """Links to book the column's free time (working hours less absences and active
    appointments, from `not_before` on), one per FREE_LINK_MINUTES piece on the clock."""
    busy = [(a.start, a.end) for a in column.appointments if a.status in ACTIVE_STATUSES]
    busy += [(a.start, a.end) for a in column.absences]
    slot = grid.slot_minutes
    step = -(-FREE_LINK_MINUTES // slot) * slot  # whole rows
    first_minute = grid.day_start.hour * 60 + grid.day_start.minute
    prefix = f"{labels['book_url']}?practitioner={column.practitioner.pk}&amp;start={column.day.isoformat()}T"
    links = []
    for start, end in availability.subtract(column.hours, sorted(busy)):
        if not_before is not None:
            if end <= not_before:
                continue
            start = max(start, not_before)
        low = _grid_minutes(grid, start, column.day, up=True)
        high = _grid_minutes(grid, end, column.day, up=False)
        while low < high:
            cut = min((low // step + 1) * step, high)
            at = first_minute + low
            clock = f"{at // 60:02d}:{at % 60:02d}"
            links.append(
                f'<a class="free rs-{low // slot + 1} re-{cut // slot + 1}" href="{prefix}{clock}">'
                f'<span class="sr-only">{labels["book"]} </span>{clock}</a>'
            )
            low = cut
    return mark_safe("".join(links))  # noqa: S308 - our own ids, times and pre-escaped words only


def _doubles(appointments: list[Appointment]) -> set[uuid.UUID]:
    """The ordinary appointments an emergency is squeezed in over (they show side by side)."""
    squeezed = [a for a in appointments if a.squeezed and a.status in ACTIVE_STATUSES]
    return {
        a.pk
        for a in appointments
        if not a.squeezed and a.status in ACTIVE_STATUSES and any(s.start < a.end and a.start < s.end for s in squeezed)
    }


@dataclass(frozen=True)
class Actions:
    """What the grid offers besides reading it: booking free time (the front desk), one-click
    status buttons on today's appointments (`status_next`: where they come back to)."""

    book: bool = False
    status_next: str = ""


def _column_layout(grid: Grid, column: Column, *, today: datetime.date, now, labels: dict, actions: Actions) -> dict:
    doubles = _doubles(column.appointments) if any(a.squeezed for a in column.appointments) else set()
    buttons = bool(actions.status_next) and column.day == today
    blocks = []
    for appointment in column.appointments:
        first, last = span(grid, column.day, appointment.start, appointment.end)
        compact = (last - first) * grid.slot_minutes < 20
        double = appointment.pk in doubles
        blocks.append(block_html(appointment, first=first, last=last, compact=compact, labels=labels, double=double))
        if buttons:
            blocks.append(
                button_html(appointment, first=first, labels=labels, arrivals_until=now + ARRIVAL_AHEAD, double=double)
            )
    free = ""
    if actions.book and column.day >= today:
        free = free_html(grid, column, labels=labels, not_before=now if column.day == today else None)
    now_row = None
    if column.day == today:
        row = grid.row(now, column.day)
        if 1 < row <= grid.rows:
            now_row = row
    return {
        "practitioner": column.practitioner,
        "day": column.day,
        "hours": [span(grid, column.day, start, end) for start, end in column.hours],
        "absences": [{"span": span(grid, column.day, a.start, a.end), "absence": a} for a in column.absences],
        "appointments": blocks,
        "free": free,
        "now_row": now_row,
        "is_today": column.day == today,
    }


def layout(grid: Grid, *, today: datetime.date, actions: Actions | None = None) -> list[dict]:
    """What the grid template draws, column by column, with grid lines computed here."""
    now = timezone.now()
    labels = block_labels()
    actions = actions or Actions()
    return [
        _column_layout(grid, column, today=today, now=now, labels=labels, actions=actions) for column in grid.columns
    ]


# The day opens this long before now (the anchor #now): the last hour, then what comes.
NOW_ANCHOR_BEFORE = datetime.timedelta(hours=1)


def now_anchor(grid: Grid, *, today: datetime.date) -> int | None:
    """The grid row the #now anchor sits on when the grid shows today, else None."""
    if not any(column.day == today for column in grid.columns):
        return None
    now = timezone.now()
    if not 1 < grid.row(now, today) <= grid.rows:
        return None
    return grid.row(now - NOW_ANCHOR_BEFORE, today)


def type_legend(grid: Grid) -> list[tuple[int, str]]:
    """(id, name) of the appointment types on the grid, by name: what its colours mean."""
    kinds: dict[int, str] = {}
    for column in grid.columns:
        for appointment in column.appointments:
            if appointment.appointment_type is not None:
                kinds[appointment.appointment_type.pk] = appointment.appointment_type.name
    return sorted(kinds.items(), key=lambda item: (item[1].casefold(), item[0]))


def grid_context(grid: Grid, *, today: datetime.date, actions: Actions | None = None) -> dict:
    actions = actions or Actions()
    squeezed = any(a.squeezed for column in grid.columns for a in column.appointments)
    return {
        "grid": grid,
        "columns": layout(grid, today=today, actions=actions),
        "marks": grid.hour_marks(),
        "last_line": grid.rows + 1,
        "now_anchor": now_anchor(grid, today=today),
        "type_legend": type_legend(grid),
        "has_squeezed": squeezed,
        "grid_actions": actions,
        "grid_first_minute": grid.day_start.hour * 60 + grid.day_start.minute,
        "status_form_id": STATUS_FORM_ID,
        "status_key": submission_key_new() if actions.status_next else "",
        "move_url": reverse("scheduling:drag_move", args=[uuid.UUID(int=0)]) if actions.book else "",
    }
