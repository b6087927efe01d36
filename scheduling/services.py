"""Booking and changing appointments. One transaction per write, with its audit row.

No double booking: the overlap is checked inside the transaction (a clear message, naming the
appointment in the way), and the database has the last word: an exclusion constraint on
PostgreSQL (two concurrent bookings cannot both commit), immediate transactions on SQLite
(writers are serialized, so the check and the insert cannot interleave).

Squeezing in: when the clinic allows it (practice.Clinic.squeeze_in_allowed), the front desk
may book an emergency over an existing appointment, with a written reason that goes to the
audit trail with the booking. Such an appointment is `squeezed`: it may overlap one ordinary
appointment, never another squeezed one, and ordinary bookings never overlap it. A second
exclusion constraint keeps squeezed appointments apart on PostgreSQL (migration 0009), so a
practitioner holds at most two appointments at any moment; the first one is unchanged for
every ordinary booking.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.models import EventType
from audit.services import audit_event_write
from patients.models import Patient
from patients.services import patient_create
from practice.models import Clinic, Practitioner
from practice.roles import is_front_desk
from scheduling import availability
from scheduling.models import TYPE_NOT_OFFERED, Appointment, AppointmentStatus, AppointmentType
from scheduling.reminders import reminders_plan


class BookingError(ValidationError):
    """A booking or a change that cannot be made as asked. `forceable` ones can be forced."""

    forceable = False


class SlotTaken(BookingError):
    """The time is held by another appointment: ``conflict`` is that appointment when known
    (plain columns and its practitioner's name: nothing of the patient is decrypted), and
    ``squeezable`` says whether an emergency could be squeezed in over it (no squeezed
    appointment holds any of the time already)."""

    def __init__(
        self,
        message: str,
        code: str = "slot_taken",
        *,
        conflict: Appointment | None = None,
        squeezable: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.conflict = conflict
        self.squeezable = squeezable


class SqueezeRefused(BookingError):
    """Squeezing in asked for, and not allowed (the clinic's setting, the role, the reason)."""


# A squeeze's reason is written to the audit trail in clear, like a break-the-glass reason.
SQUEEZE_REASON_MIN_LENGTH = 10


class OutsideWorkingHours(BookingError):
    forceable = True


class PractitionerAbsent(BookingError):
    forceable = True


def _audit(appointment: Appointment, event_type: EventType, *, fields: Iterable[str] = (), **extra: Any) -> None:
    audit_event_write(
        event_type=event_type,
        patient_id=appointment.patient_id,
        model_label=Appointment._meta.label,
        object_pk=appointment.pk,
        fields=fields,
        extra=extra,
    )


def elapsed_end(start: datetime.datetime, duration: datetime.timedelta) -> datetime.datetime:
    """When something that starts at ``start`` and lasts ``duration`` of real time ends.

    Python adds a timedelta to an aware datetime on its wall clock (same tzinfo, naive sum): in
    the practice's zone, 02:45 plus 15 minutes on the autumn DST night would end at 03:00 of the
    second pass, 75 real minutes later. The sum is taken in UTC, where wall and real time agree.
    """
    if timezone.is_naive(start):
        raise ValueError("Appointment times must be aware datetimes.")
    return start.astimezone(datetime.UTC) + duration


# What a refusal names: the appointment in the way, and its practitioner (no patient data).
CLASH_FIELDS = (
    "id",
    "practitioner_id",
    "patient_id",
    "start",
    "end",
    "status",
    "squeezed",
    "practitioner__id",
    "practitioner__display_name",
)


def _clashes(
    *, practitioner_id: int, start: datetime.datetime, end: datetime.datetime, exclude_pk: uuid.UUID | None
) -> list[Appointment]:
    """The active appointments that hold part of [start, end), earliest first. One query."""
    clashes = availability.active_appointments_between([practitioner_id], start, end)
    if exclude_pk is not None:
        clashes = clashes.exclude(pk=exclude_pk)
    return list(clashes.select_related("practitioner").only(*CLASH_FIELDS).order_by("start", "id"))


@dataclass(frozen=True)
class SlotCheck:
    """What a booking overrode: working hours or an absence (by `force`), and the ordinary
    appointment it was squeezed in over (by `squeeze`)."""

    forced: list[str]
    squeezed_over: Appointment | None = None


def _check_slot(
    *,
    practitioner_id: int,
    start: datetime.datetime,
    end: datetime.datetime,
    exclude_pk: uuid.UUID | None = None,
    force: bool,
    squeeze: bool = False,
) -> SlotCheck:
    """Raise if the slot cannot be booked; say what `force` and `squeeze` overrode."""
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise ValueError("Appointment times must be aware datetimes.")
    clashes = _clashes(practitioner_id=practitioner_id, start=start, end=end, exclude_pk=exclude_pk)
    squeezed = next((c for c in clashes if c.squeezed), None)
    if clashes and not squeeze:
        raise SlotTaken(
            _("This slot is already taken. Pick another time."), conflict=clashes[0], squeezable=squeezed is None
        )
    if squeezed is not None:
        raise SlotTaken(_("An emergency is already squeezed in at this time. Pick another time."), conflict=squeezed)
    overridden = []
    if availability.absences_between([practitioner_id], start, end).exists():
        if not force:
            raise PractitionerAbsent(_("The practitioner is away at that time."), code="absent")
        overridden.append("absence")
    if not availability.within_working_hours(practitioner_id, start, end):
        if not force:
            raise OutsideWorkingHours(_("This time is outside the practitioner's working hours."), code="outside_hours")
        overridden.append("working_hours")
    return SlotCheck(forced=overridden, squeezed_over=clashes[0] if clashes else None)


def _squeeze_reason(*, actor: User | None, reason: str) -> str:
    """The rules of squeezing in, checked before anything else: the clinic allows it, the
    actor is the front desk (secretaries, practice admins; never a practitioner alone), and
    says why. Returns the reason, spaces collapsed."""
    if not Clinic.current().squeeze_in_allowed:
        raise SqueezeRefused(_("This practice does not allow squeezing appointments in."), code="squeeze_off")
    if actor is None or not is_front_desk(actor):
        raise SqueezeRefused(_("Only the front desk may squeeze an appointment in."), code="squeeze_role")
    reason = " ".join(reason.split())
    if len(reason) < SQUEEZE_REASON_MIN_LENGTH:
        raise SqueezeRefused(
            _("Say why this cannot wait (at least %(min)d characters).") % {"min": SQUEEZE_REASON_MIN_LENGTH},
            code="squeeze_reason",
        )
    return reason


def _save_guarded(appointment: Appointment, **save_kwargs: Any) -> None:
    """Save; an exclusion-constraint violation (a concurrent booking won: either constraint,
    ordinary or squeezed) becomes SlotTaken, naming the winner (committed, so visible now)."""
    try:
        with transaction.atomic():
            appointment.save(**save_kwargs)
    except IntegrityError as exc:
        if "appointment_no_overlap" in str(exc):
            winners = _clashes(
                practitioner_id=appointment.practitioner_id,
                start=appointment.start,
                end=appointment.end,
                exclude_pk=appointment.pk,
            )
            raise SlotTaken(
                _("This slot was just taken by another booking. Pick another time."),
                conflict=winners[0] if winners else None,
                squeezable=not any(w.squeezed for w in winners),
            ) from None
        raise


@transaction.atomic
def appointment_book(
    *,
    practitioner: Practitioner,
    patient: Patient,
    appointment_type: AppointmentType,
    start: datetime.datetime,
    actor: User,
    reason: str = "",
    internal_note: str = "",
    force: bool = False,
    squeeze: bool = False,
    squeeze_reason: str = "",
) -> Appointment:
    """Book. With `squeeze`, an emergency may go over an existing appointment (the rules in
    `_squeeze_reason`); it is `squeezed` only when it does, and its CREATE event then names
    the appointment it went over and the reason."""
    if squeeze:
        squeeze_reason = _squeeze_reason(actor=actor, reason=squeeze_reason)
    if not appointment_type.is_offered_by(practitioner):
        raise BookingError(TYPE_NOT_OFFERED, code="type_not_offered")
    end = elapsed_end(start, datetime.timedelta(minutes=appointment_type.duration_minutes))
    checked = _check_slot(practitioner_id=practitioner.pk, start=start, end=end, force=force, squeeze=squeeze)
    appointment = Appointment(
        practitioner=practitioner,
        patient=patient,
        appointment_type=appointment_type,
        start=start,
        end=end,
        reason=reason,
        internal_note=internal_note,
        forced=bool(checked.forced),
        squeezed=checked.squeezed_over is not None,
        created_by=actor,
        updated_by=actor,
    )
    _save_guarded(appointment)
    fields = ["start", "practitioner", "appointment_type"] + [
        n for n, v in (("reason", reason), ("internal_note", internal_note)) if v
    ]
    extra: dict[str, Any] = {"forced": checked.forced}
    if checked.squeezed_over is not None:
        extra.update(squeezed_over=str(checked.squeezed_over.pk), squeeze_reason=squeeze_reason)
    _audit(appointment, EventType.CREATE, fields=fields, **extra)
    reminders_plan(appointment=appointment)
    return appointment


@transaction.atomic
def patient_create_and_book(
    *,
    patient_data: dict[str, Any],
    practitioner: Practitioner,
    appointment_type: AppointmentType,
    start: datetime.datetime,
    actor: User,
    reason: str = "",
    internal_note: str = "",
    force: bool = False,
    squeeze: bool = False,
    squeeze_reason: str = "",
) -> Appointment:
    """A new patient and their booking, committed together: a refused booking (BookingError)
    creates no patient, and a refused patient (ValidationError) books nothing."""
    if squeeze:  # refused before the patient is created (the booking would refuse it anyway)
        _squeeze_reason(actor=actor, reason=squeeze_reason)
    patient = patient_create(data=patient_data, actor=actor)
    return appointment_book(
        practitioner=practitioner,
        patient=patient,
        appointment_type=appointment_type,
        start=start,
        actor=actor,
        reason=reason,
        internal_note=internal_note,
        force=force,
        squeeze=squeeze,
        squeeze_reason=squeeze_reason,
    )


@transaction.atomic
def appointment_move(
    *,
    appointment: Appointment,
    start: datetime.datetime,
    actor: User,
    practitioner: Practitioner | None = None,
    force: bool = False,
) -> Appointment:
    """Move to a new start (and optionally another practitioner), keeping the duration. Never
    over another appointment: a squeezed one moved to a free time becomes an ordinary one."""
    if not appointment.is_active or appointment.status != AppointmentStatus.BOOKED:
        raise BookingError(_("Only a booked appointment can be moved."), code="not_movable")
    practitioner = practitioner or appointment.practitioner
    if (
        practitioner.pk != appointment.practitioner_id
        and appointment.appointment_type is not None  # no query when it has none
        and not appointment.appointment_type.is_offered_by(practitioner)
    ):
        raise BookingError(TYPE_NOT_OFFERED, code="type_not_offered")
    duration = appointment.end - appointment.start
    end = elapsed_end(start, duration)
    checked = _check_slot(practitioner_id=practitioner.pk, start=start, end=end, exclude_pk=appointment.pk, force=force)
    previous = {"start": appointment.start.isoformat(), "practitioner": appointment.practitioner_id}
    appointment.practitioner = practitioner
    appointment.start, appointment.end = start, end
    appointment.forced = bool(checked.forced)
    appointment.squeezed = False
    appointment.updated_by = actor
    _save_guarded(
        appointment,
        update_fields=["practitioner", "start", "end", "forced", "squeezed", "updated_by", "updated_at"],
    )
    _audit(appointment, EventType.CHANGE, fields=["start", "practitioner"], moved_from=previous, forced=checked.forced)
    reminders_plan(appointment=appointment)  # the old time's reminders are cancelled, fresh ones planned
    return appointment


@transaction.atomic
def appointment_change_type(
    *, appointment: Appointment, appointment_type: AppointmentType, actor: User, force: bool = False
) -> Appointment:
    """A new type changes the duration: the new end must fit like a new booking."""
    if appointment.status != AppointmentStatus.BOOKED:
        raise BookingError(_("Only a booked appointment can change type."), code="not_changeable")
    if not appointment_type.is_offered_by(appointment.practitioner_id):
        raise BookingError(TYPE_NOT_OFFERED, code="type_not_offered")
    end = elapsed_end(appointment.start, datetime.timedelta(minutes=appointment_type.duration_minutes))
    checked = _check_slot(
        practitioner_id=appointment.practitioner_id,
        start=appointment.start,
        end=end,
        exclude_pk=appointment.pk,
        force=force,
        squeeze=appointment.squeezed,  # a squeezed one stays over the appointment it was squeezed over
    )
    appointment.appointment_type, appointment.end = appointment_type, end
    appointment.forced = bool(checked.forced)
    appointment.updated_by = actor
    _save_guarded(appointment, update_fields=["appointment_type", "end", "forced", "updated_by", "updated_at"])
    _audit(appointment, EventType.CHANGE, fields=["appointment_type", "end"], forced=checked.forced)
    reminders_plan(appointment=appointment)  # the new type may remind at other times
    return appointment


@transaction.atomic
def appointment_cancel(*, appointment: Appointment, reason: str, actor: User) -> Appointment:
    """Cancel with who, when and why. The slot is free again; the record stays."""
    if not appointment.can_become(AppointmentStatus.CANCELLED):
        raise BookingError(_("This appointment can no longer be cancelled."), code="not_cancellable")
    if not reason.strip():
        raise BookingError(_("Say why the appointment is cancelled."), code="reason_required")
    previous = appointment.status
    appointment.status = AppointmentStatus.CANCELLED
    appointment.cancelled_at = timezone.now()
    appointment.cancelled_by = actor
    appointment.cancellation_reason = reason.strip()
    appointment.updated_by = actor
    appointment.save(
        update_fields=["status", "cancelled_at", "cancelled_by", "cancellation_reason", "updated_by", "updated_at"]
    )
    _audit(
        appointment,
        EventType.CHANGE,
        fields=["status", "cancellation_reason"],
        status_from=previous,
        status_to="cancelled",
    )
    reminders_plan(appointment=appointment)
    return appointment


_STATUS_TIMESTAMPS: dict[str, str] = {
    AppointmentStatus.ARRIVED: "arrived_at",
    AppointmentStatus.IN_CONSULTATION: "consultation_started_at",
    AppointmentStatus.DONE: "done_at",
}


@transaction.atomic
def appointment_set_status(*, appointment: Appointment, status: str, actor: User) -> Appointment:
    """Follow the status flow (booked, arrived, in consultation, done; no-show).
    Cancelling has its own service: it needs a reason."""
    if status == AppointmentStatus.CANCELLED:
        raise BookingError(_("Cancel with a reason."), code="reason_required")
    if not appointment.can_become(status):
        raise BookingError(
            _("An appointment that is “%(current)s” cannot become “%(wanted)s”.")
            % {"current": appointment.get_status_display(), "wanted": AppointmentStatus(status).label},
            code="bad_transition",
        )
    if status == AppointmentStatus.BOOKED and appointment.status == AppointmentStatus.NO_SHOW:
        # Back from no-show: the slot must still be free.
        _check_slot(
            practitioner_id=appointment.practitioner_id,
            start=appointment.start,
            end=appointment.end,
            exclude_pk=appointment.pk,
            force=True,
            squeeze=appointment.squeezed,
        )
    previous = appointment.status
    appointment.status = status
    fields = ["status", "updated_by", "updated_at"]
    stamp = _STATUS_TIMESTAMPS.get(status)
    if stamp and getattr(appointment, stamp) is None:
        setattr(appointment, stamp, timezone.now())
        fields.append(stamp)
    appointment.updated_by = actor
    _save_guarded(appointment, update_fields=fields)
    _audit(appointment, EventType.CHANGE, fields=["status"], status_from=previous, status_to=status)
    reminders_plan(appointment=appointment)  # a no-show cancels them; back to booked plans again
    return appointment
