"""Reads the agenda pages need. Each loads only the columns its page shows, in a fixed
number of queries whatever the number of appointments or practitioners; the only fields
decrypted are the patient's last name and first names (plus what a page says it shows)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.utils import timezone

from patients.access import patient_queryset_for
from patients.models import Patient
from practice.models import Practitioner, Specialty
from scheduling import availability
from scheduling.grid import Column, Grid
from scheduling.models import (
    ACTIVE_STATUSES,
    MAX_APPOINTMENT_LENGTH,
    Absence,
    Appointment,
    AppointmentStatus,
    AppointmentType,
    Reminder,
    ReminderStatus,
)

# What a grid cell or a list line shows. The patient's two name fields are the only
# encrypted columns loaded (and so the only ones that can be decrypted).
AGENDA_FIELDS = (
    "id",
    "practitioner_id",
    "patient_id",
    "start",
    "end",
    "status",
    "forced",
    "squeezed",
    "arrived_at",
    "appointment_type__id",
    "appointment_type__name",
    "appointment_type__colour",
    "patient__id",
    "patient__last_name",
    "patient__first_names",
)


def agenda_appointments(
    practitioner_ids: Iterable[int],
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    include_cancelled: bool = False,
) -> QuerySet[Appointment]:
    qs = Appointment.objects.filter(
        practitioner_id__in=practitioner_ids, start__lt=end, start__gt=start - MAX_APPOINTMENT_LENGTH, end__gt=start
    )
    if not include_cancelled:
        qs = qs.exclude(status=AppointmentStatus.CANCELLED)
    return qs.select_related("patient", "appointment_type").only(*AGENDA_FIELDS).order_by("start")


def _columns(practitioners: list[Practitioner], days: list[datetime.date]) -> list[Column]:
    ids = [p.pk for p in practitioners]
    start, _ = availability.local_day_bounds(days[0])
    _, end = availability.local_day_bounds(days[-1])
    hours = availability.hours_for_days(ids, days[0], days[-1])
    absences = list(availability.absences_between(ids, start, end))
    appointments = list(agenda_appointments(ids, start, end))
    columns = []
    for day in days:
        day_start, day_end = availability.local_day_bounds(day)
        for practitioner in practitioners:
            columns.append(
                Column(
                    practitioner=practitioner,
                    day=day,
                    hours=hours.get((practitioner.pk, day), []),
                    absences=[
                        a
                        for a in absences
                        if a.practitioner_id in (None, practitioner.pk) and a.start < day_end and a.end > day_start
                    ],
                    appointments=[
                        a
                        for a in appointments
                        if a.practitioner_id == practitioner.pk and a.start < day_end and a.end > day_start
                    ],
                )
            )
    return columns


def _grid(columns: list[Column]) -> Grid:
    return Grid(day_start=settings.AGENDA_DAY_START, day_end=settings.AGENDA_DAY_END, columns=columns)


def agenda_day(day: datetime.date) -> Grid:
    """The front desk's day: every active practitioner side by side. Four queries."""
    practitioners = list(Practitioner.objects.filter(is_active=True).select_related("specialty"))
    if not practitioners:
        return _grid([])
    return _grid(_columns(practitioners, [day]))


def agenda_week(practitioner: Practitioner, monday: datetime.date) -> Grid:
    days = [monday + datetime.timedelta(days=i) for i in range(7)]
    return _grid(_columns([practitioner], days))


def my_day(practitioner: Practitioner, day: datetime.date) -> list[Appointment]:
    start, end = availability.local_day_bounds(day)
    return list(agenda_appointments([practitioner.pk], start, end))


def waiting_and_expected(*, practitioner: Practitioner | None = None) -> tuple[list[Appointment], list[Appointment]]:
    """Today's patients who arrived and are not yet in consultation, longest wait first, and
    those expected who have not arrived yet (booked), in order of their start: one query."""
    start, end = availability.local_day_bounds(timezone.localdate())
    qs = Appointment.objects.filter(
        start__lt=end,
        start__gt=start - MAX_APPOINTMENT_LENGTH,
        end__gt=start,
        status__in=[AppointmentStatus.ARRIVED, AppointmentStatus.BOOKED],
    )
    if practitioner is not None:
        qs = qs.filter(practitioner=practitioner)
    rows = list(
        qs.select_related("patient", "appointment_type", "practitioner")
        .only(*AGENDA_FIELDS, "practitioner__display_name")
        .order_by("start", "id")
    )
    arrived = [a for a in rows if a.status == AppointmentStatus.ARRIVED]
    arrived.sort(key=lambda a: (a.arrived_at is None, a.arrived_at or a.start))
    expected = [a for a in rows if a.status == AppointmentStatus.BOOKED]
    return arrived, expected


@dataclass(frozen=True)
class SlotConflict:
    """A taken slot in a refusal's words: the appointment that holds it (when, with whom, and
    the patient's name when the user may open their record), and the next free time."""

    start: datetime.datetime
    end: datetime.datetime
    practitioner_id: int
    practitioner: str
    patient: str | None
    squeezed: bool
    squeezable: bool
    next_free: availability.Slot | None


def slot_conflict(
    conflict: Appointment,
    *,
    user: User | AnonymousUser,
    duration: datetime.timedelta,
    wanted: datetime.datetime,
    squeezable: bool = False,
) -> SlotConflict:
    """Describe `conflict` (loaded by scheduling.services with its practitioner, nothing of the
    patient) for `user`. The patient's two name fields are decrypted (and so audited and
    explained like any read) only when the user may open that patient's record
    (patients.access); the next free time of `duration` is searched from the time wanted (or
    now, if that is past). `squeezable`: no squeezed appointment holds the time (the service
    said). A few queries, on a refusal only."""
    patient = patient_queryset_for(user).filter(pk=conflict.patient_id).only("id", "last_name", "first_names").first()
    minutes = max(1, round(duration.total_seconds() / 60))
    free = availability.free_slots(
        practitioner_id=conflict.practitioner_id,
        duration_minutes=minutes,
        after=max(wanted, timezone.now()),
        count=1,
    )
    return SlotConflict(
        start=conflict.start,
        end=conflict.end,
        practitioner_id=conflict.practitioner_id,
        practitioner=conflict.practitioner.display_name,
        patient=patient.display_name if patient is not None else None,
        squeezed=conflict.squeezed,
        squeezable=squeezable,
        next_free=free[0] if free else None,
    )


# What the appointment page's "Reminders" section shows: plain columns only.
REMINDER_FIELDS = ("id", "channel", "kind", "planned_for", "due_at", "status", "attempts", "sent_at", "error")


def appointment_reminders(appointment: Appointment) -> list[Reminder]:
    """Every reminder of the appointment, planned, sent, failed or cancelled, in due order."""
    return list(Reminder.objects.filter(appointment=appointment).only(*REMINDER_FIELDS).order_by("due_at", "id"))


# An absence over booked time (Django admin): the appointments it leaves to move, at most this
# many listed, with how many there are in all.
ABSENCE_CONFLICTS_SHOWN = 20
CONFLICT_FIELDS = ("id", "start", "end", "status", "practitioner_id", "patient_id", "practitioner__display_name")
CONFLICT_NAMES = ("patient__id", "patient__last_name", "patient__first_names")


def absence_conflicts(
    absence: Absence, *, names: bool = False, limit: int = ABSENCE_CONFLICTS_SHOWN
) -> tuple[list[Appointment], int]:
    """The appointments still booked (not cancelled, not a no-show) during ``absence``: its
    practitioner's, or everyone's when the whole practice closes. The first ``limit`` by time,
    with their practitioner, and how many there are in all. Plain columns, unless ``names``:
    then the patients' two name fields too, loaded in the same query so that their reads are
    explained in one batch (audit/explain.py); nothing is decrypted here."""
    if absence.practitioner_id:
        booked = availability.active_appointments_between([absence.practitioner_id], absence.start, absence.end)
    else:
        booked = Appointment.objects.filter(status__in=ACTIVE_STATUSES, start__lt=absence.end, end__gt=absence.start)
    related = ("practitioner", "patient") if names else ("practitioner",)
    fields = (*CONFLICT_FIELDS, *CONFLICT_NAMES) if names else CONFLICT_FIELDS
    shown = list(booked.select_related(*related).only(*fields).order_by("start", "id")[:limit])
    total = booked.count() if len(shown) == limit else len(shown)
    return shown, total


def patient_export_appointments(
    patient: Patient, *, include_notes: bool
) -> tuple[list[Appointment], dict[uuid.UUID, list[Reminder]]]:
    """A patient's appointments (cancelled ones too) and the reminders sent for them, for
    their right-of-access export. Two queries; decrypts the reason and cancellation reason
    (and the internal note when asked) as the export reads them."""
    fields = [
        "id",
        "patient_id",
        "start",
        "end",
        "status",
        "reason",
        "arrived_at",
        "done_at",
        "cancelled_at",
        "cancellation_reason",
        "practitioner__id",
        "practitioner__display_name",
        "appointment_type__id",
        "appointment_type__name",
    ]
    if include_notes:
        fields.append("internal_note")
    appointments = list(
        Appointment.objects.filter(patient=patient)
        .select_related("practitioner", "appointment_type")
        .only(*fields)
        .order_by("start")
    )
    reminders: dict[uuid.UUID, list[Reminder]] = {}
    sent = Reminder.objects.filter(appointment__patient=patient, status=ReminderStatus.SENT)
    for reminder in sent.only("id", "appointment_id", "channel", "kind", "status", "sent_at").order_by("sent_at"):
        reminders.setdefault(reminder.appointment_id, []).append(reminder)
    return appointments, reminders


# ---------------------------------------------------------------------------------------------
# The free-slot finder (scheduling.finder)


def practitioners_offering(kind: AppointmentType, *, specialty: Specialty | None = None) -> list[Practitioner]:
    """The active practitioners who offer ``kind`` (the relation ``AppointmentType.is_offered_by``
    asks about), of ``specialty`` when given, by name. One query."""
    practitioners = Practitioner.objects.filter(is_active=True, appointment_types=kind)
    if specialty is not None:
        practitioners = practitioners.filter(specialty=specialty)
    return list(practitioners.select_related("specialty").order_by("display_name", "pk"))


def default_appointment_type(practitioner_id: int | None) -> AppointmentType | None:
    """The finder's type when none is asked for: the first (by name) of the active types the
    practitioner offers, or that any active practitioner offers. One or two queries."""
    types = AppointmentType.objects.filter(is_active=True).order_by("name", "pk")
    if practitioner_id is not None:
        offered: AppointmentType | None = types.offered_by(practitioner_id).first()
        if offered is not None:
            return offered
    return types.filter(practitioners__is_active=True).first()


# ---------------------------------------------------------------------------------------------
# A patient's appointments on their record (scheduling.record)

# What the record's appointments panel shows: plain columns only. The reason, the internal
# note and the cancellation reason (encrypted) stay on the appointment page.
RECORD_FIELDS = (
    "id",
    "patient_id",
    "practitioner_id",
    "appointment_type_id",
    "start",
    "end",
    "status",
    "practitioner__id",
    "practitioner__display_name",
    "appointment_type__id",
    "appointment_type__name",
)


@dataclass(frozen=True)
class PatientAppointments:
    """Upcoming appointments (not yet over), soonest first; past ones, latest first; each list
    cut at its limit (``more_*``: there are others). ``reminders``: each shown appointment's
    latest reminder per channel and kind. ``next``: the first upcoming one that still holds the
    practitioner's time."""

    upcoming: list[Appointment]
    past: list[Appointment]
    more_upcoming: bool
    more_past: bool
    next: Appointment | None
    reminders: dict[uuid.UUID, list[Reminder]]


def latest_reminders(appointment_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Reminder]]:
    """Each appointment's latest reminder per channel and kind (a move cancels one and plans
    another: the page shows the one that counts), in due order. One query; plain columns."""
    latest: dict[tuple[uuid.UUID, str, str], Reminder] = {}
    rows = Reminder.objects.filter(appointment_id__in=appointment_ids).only("appointment_id", *REMINDER_FIELDS)
    for reminder in rows.order_by("id"):
        latest[(reminder.appointment_id, reminder.channel, reminder.kind)] = reminder
    found: dict[uuid.UUID, list[Reminder]] = {}
    for reminder in sorted(latest.values(), key=lambda r: (r.due_at, r.pk)):
        found.setdefault(reminder.appointment_id, []).append(reminder)
    return found


def patient_appointments(
    patient_id: uuid.UUID,
    *,
    practitioner: Practitioner | None,
    now: datetime.datetime,
    upcoming_limit: int,
    past_limit: int,
) -> PatientAppointments:
    """The patient's appointments, cancelled ones and no-shows included; a practitioner's own
    only when ``practitioner`` is given. Three queries whatever their number; plain columns
    only, so nothing is decrypted (and no read is explained or audited)."""
    appointments = Appointment.objects.filter(patient_id=patient_id)
    if practitioner is not None:
        appointments = appointments.filter(practitioner=practitioner)
    appointments = appointments.select_related("practitioner", "appointment_type").only(*RECORD_FIELDS)
    upcoming = list(appointments.filter(end__gt=now).order_by("start", "id")[: upcoming_limit + 1])
    past = list(appointments.filter(end__lte=now).order_by("-start", "-id")[: past_limit + 1])
    shown = upcoming[:upcoming_limit] + past[:past_limit]
    return PatientAppointments(
        upcoming=upcoming[:upcoming_limit],
        past=past[:past_limit],
        more_upcoming=len(upcoming) > upcoming_limit,
        more_past=len(past) > past_limit,
        next=next((a for a in upcoming[:upcoming_limit] if a.is_active), None),
        reminders=latest_reminders([a.pk for a in shown]) if shown else {},
    )
