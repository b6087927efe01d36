"""The patient's appointments on their record: a panel of the record page (patients.panels),
registered in SchedulingConfig.ready(), so that patients imports nothing of scheduling.

Rules enforced here:

- Who sees what follows scheduling.access: the front desk every appointment of the patient;
  a practitioner their own only (the appointments they may open), whichever way they opened
  the record (their patient, or emergency access); anyone else nothing.
- Plain columns only (start, end, practitioner, type, status, reminders' status): the
  reason, the internal note and the cancellation reason are encrypted and stay on the
  appointment page, so this panel decrypts nothing and adds no row to the audit trail.
- Bounded: at most UPCOMING_LIMIT upcoming and PAST_LIMIT past appointments (PAST_ALL_LIMIT
  when the user asks for all), in three queries whatever their number.
- Moving and cancelling are the appointment page's own endpoints (scheduling:move,
  scheduling:cancel) with their rules: the front desk only, a submission key per form (a
  form sent twice acts once), and they come back to the record (``next``). Offered for
  upcoming appointments; every appointment links to its page, which has them all.
- "Book" and "Find a slot" start a booking with the patient already picked (front desk, and
  not for an archived record: booking refuses those).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from patients.models import Patient
from patients.panels import RecordPanel
from practice.roles import is_front_desk
from scheduling import selectors
from scheduling.access import own_practitioner
from scheduling.availability import practice_tz
from scheduling.forms import CancelForm, MoveForm
from scheduling.models import Appointment, AppointmentStatus

UPCOMING_LIMIT = 20
PAST_LIMIT = 10
PAST_ALL_LIMIT = 200
EVERY_PAST = "all"  # ?appointments=all: the past ones up to PAST_ALL_LIMIT


def _row(appointment: Appointment, reminders: dict, *, actions: bool) -> dict[str, Any]:
    """One line of the panel; with ``actions``, the move and cancel forms its status allows,
    each with its own submission key and ids (several forms share the page)."""
    row: dict[str, Any] = {"appt": appointment, "reminders": reminders.get(appointment.pk, [])}
    if not actions:
        return row
    if appointment.status == AppointmentStatus.BOOKED:
        local = timezone.localtime(appointment.start, practice_tz())
        row["move"] = MoveForm(
            initial={"date": local.date(), "time": local.time().replace(second=0, microsecond=0)},
            auto_id=f"move-{appointment.pk}-%s",
        )
    if appointment.can_become(AppointmentStatus.CANCELLED):
        row["cancel"] = CancelForm(auto_id=f"cancel-{appointment.pk}-%s")
    return row


def appointments_panel(request: HttpRequest, patient: Patient) -> dict[str, Any] | None:
    front_desk = is_front_desk(request.user)
    practitioner = None if front_desk else own_practitioner(request.user)
    if not front_desk and practitioner is None:
        return None
    every_past = request.GET.get("appointments") == EVERY_PAST
    found = selectors.patient_appointments(
        patient.pk,
        practitioner=practitioner,
        now=timezone.now(),
        upcoming_limit=UPCOMING_LIMIT,
        past_limit=PAST_ALL_LIMIT if every_past else PAST_LIMIT,
    )
    return {
        "patient_id": patient.pk,
        "front_desk": front_desk,
        "can_book": front_desk and not patient.is_archived,
        "upcoming": [_row(a, found.reminders, actions=front_desk) for a in found.upcoming],
        "past": [_row(a, found.reminders, actions=False) for a in found.past],
        "more_upcoming": found.more_upcoming,
        "more_past": found.more_past,
        "every_past": every_past,
        "next": found.next,
        "next_reminders": found.reminders.get(found.next.pk, []) if found.next is not None else [],
        "back": request.get_full_path(),
    }


APPOINTMENTS_PANEL = RecordPanel(
    name="appointments",
    template="scheduling/_record_appointments.html",
    context=appointments_panel,
    stylesheets=("css/agenda.css", "css/slots.css"),
)
