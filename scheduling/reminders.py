"""Reminders before appointments: planning them, and the text patients receive.

Rules enforced here (the sending itself is scheduling.tasks.reminder_send):

- Planned by the scheduling services inside their transactions (`reminders_plan`): booking,
  moving, changing type, cancelling and status changes. Pending reminders that no longer fit
  (appointment cancelled or no-show, start moved, type changed) are cancelled; missing ones
  are created, one per consented channel and per reminder of the appointment type.
- Planning reads plain columns only (consents; blind indexes say whether a phone or e-mail
  exists): it decrypts nothing, so booking costs no audit row more.
- A reminder due now is enqueued after commit (`transaction.on_commit`). If the broker is
  down, the booking still succeeds: the periodic sweep (scheduling.tasks.reminders_sweep)
  sends what was never enqueued.
- The text carries what the patient needs to come or to cancel: the practice's name, address
  and phone, the date and time. Never the reason or the internal note; the practitioner and
  specialty only when the practice turns it on (Clinic.reminders_show_specialty).
"""

from __future__ import annotations

import datetime
import logging
from functools import partial

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import formats, timezone, translation
from django.utils.translation import gettext as _

from patients.models import Patient
from practice import broker
from scheduling.models import (
    ACTIVE_STATUSES,
    DEFAULT_REMINDER_HOURS,
    Appointment,
    AppointmentStatus,
    Reminder,
    ReminderChannel,
    ReminderKind,
    ReminderStatus,
)

logger = logging.getLogger(__name__)

# A reminder in one of these states for the current start is not planned again (sent, or
# refused by the provider for good); cancelled and skipped ones are, when they fit again.
DONE_FOR_GOOD = (ReminderStatus.SENT, ReminderStatus.FAILED)
IN_FLIGHT = (ReminderStatus.PENDING, ReminderStatus.SENDING)


def min_lead() -> datetime.timedelta:
    """No reminder goes out this close to the start (nor for an appointment booked that late)."""
    return datetime.timedelta(minutes=settings.REMINDER_MIN_LEAD_MINUTES)


def _wanted_kinds(appointment: Appointment) -> list[tuple[str, int]]:
    appointment_type = appointment.appointment_type  # None without a query when it has none
    if appointment_type is None:
        return [(ReminderKind.FIRST, DEFAULT_REMINDER_HOURS)]
    return appointment_type.reminder_plan()


def _consented_channels(patient_id) -> list[str]:
    """Channels the patient agreed to and has an address for. Plain columns only: the blind
    index of a phone or e-mail is set exactly when the value is not empty."""
    row = (
        Patient.objects.filter(pk=patient_id, is_archived=False)
        .values_list("consent_email", "consent_sms", "bidx_email", "bidx_phone_mobile")
        .first()
    )
    if row is None:
        return []
    consent_email, consent_sms, has_email, has_phone = row
    channels: list[str] = []
    if consent_email and has_email is not None:
        channels.append(ReminderChannel.EMAIL)
    if consent_sms and has_phone is not None:
        channels.append(ReminderChannel.SMS)
    return channels


def _due_times(appointment: Appointment, now: datetime.datetime) -> dict[str, datetime.datetime]:
    """Kind -> when to send, for an appointment starting at `appointment.start`.

    A reminder whose time has passed (a late booking, a move to a sooner day) is sent now,
    but only one of them, and none if a later one is still to come: a patient who books
    tonight for tomorrow morning gets one message, not two.
    """
    start = appointment.start
    if start - now < min_lead():
        return {}
    due = {kind: start - datetime.timedelta(hours=hours) for kind, hours in _wanted_kinds(appointment)}
    upcoming = {kind: at for kind, at in due.items() if at > now}
    if upcoming or not due:
        return upcoming
    latest = max(due, key=lambda kind: due[kind])  # the one closest to the start
    return {latest: now}


def _cancel(reminders: list[Reminder], reason: str) -> None:
    """Pending to cancelled. The status is part of the update, so a row a worker has just
    sent (locked, then committed as sent) stays sent: the update waits for its lock and then
    matches nothing."""
    if reminders:
        Reminder.objects.filter(pk__in=[r.pk for r in reminders], status=ReminderStatus.PENDING).update(
            status=ReminderStatus.CANCELLED, error=reason, updated_at=timezone.now()
        )


def _latest_done(appointment: Appointment) -> dict[tuple[str, str], Reminder]:
    """Per channel and kind, the latest reminder no longer in flight (sent, failed, cancelled)."""
    latest = {}
    for row in (
        Reminder.objects.filter(appointment=appointment)
        .exclude(status__in=IN_FLIGHT)
        .only("id", "channel", "kind", "planned_for", "status")
        .order_by("id")
    ):
        latest[(row.channel, row.kind)] = row
    return latest


def _keep_current(current: dict, due: dict, channels: list[str], now: datetime.datetime) -> list[Reminder]:
    """The pending reminders still wanted, with their due time brought up to date; the others
    are cancelled."""
    kept, dropped = [], []
    for (channel, kind), reminder in current.items():
        at = due.get(kind)
        if channel not in channels or at is None:
            dropped.append(reminder)
            continue
        if reminder.due_at != at and reminder.due_at > now:
            Reminder.objects.filter(pk=reminder.pk, status=ReminderStatus.PENDING).update(due_at=at, updated_at=now)
            reminder.due_at = at
        kept.append(reminder)
    _cancel(dropped, "no_longer_wanted")
    return kept


def _missing(appointment: Appointment, current: dict, due: dict, channels: list[str], latest: dict) -> list[Reminder]:
    """The reminders wanted and not planned yet (unsaved), except those already sent or given up
    for this very start."""
    created = []
    for channel in channels:
        for kind, at in due.items():
            if (channel, kind) in current:
                continue
            last = latest.get((channel, kind))
            if last and last.status in DONE_FOR_GOOD and last.planned_for == appointment.start:
                continue
            created.append(
                Reminder(appointment=appointment, channel=channel, kind=kind, planned_for=appointment.start, due_at=at)
            )
    return created


@transaction.atomic
def reminders_plan(*, appointment: Appointment) -> list[Reminder]:
    """Bring the appointment's reminders in line with it; returns the pending ones.

    Call it inside the transaction that changed the appointment. Idempotent.
    """
    now = timezone.now()
    # Pending, and claimed by a worker (sending): either is the reminder of its start, so
    # none is planned beside it. Only pending ones can be cancelled (a claimed one is leaving).
    pending = list(
        Reminder.objects.filter(appointment=appointment, status__in=IN_FLIGHT).only(
            "id", "channel", "kind", "planned_for", "due_at"
        )
    )
    if appointment.status not in ACTIVE_STATUSES:
        _cancel(pending, f"appointment_{appointment.status}")
        return []
    if appointment.status != AppointmentStatus.BOOKED:
        # Arrived, in consultation, done: the patient is here; nothing new is planned, and what
        # is pending is left for reminder_send, which skips appointments that have started.
        return pending

    moved = [r for r in pending if r.planned_for != appointment.start]
    _cancel(moved, "moved")
    current = {(r.channel, r.kind): r for r in pending if r.planned_for == appointment.start}

    if not settings.REMINDERS_ENABLED:
        return list(current.values())
    due = _due_times(appointment, now)
    channels = _consented_channels(appointment.patient_id)
    # Already sent for this very start (e.g. the type changed after the reminder went out):
    # the latest row of each channel and kind decides, so a move there and back plans anew.
    latest = _latest_done(appointment)
    kept = _keep_current(current, due, channels, now)
    created = _missing(appointment, current, due, channels, latest)
    if created:
        Reminder.objects.bulk_create(created)
    planned = kept + created
    due_now = [r.pk for r in planned if r.due_at <= now]
    if due_now:
        # Robust: the booking is committed; a failure here (the database gone at that very
        # moment) must not turn it into an error page. The sweep queues what is left.
        transaction.on_commit(partial(reminders_enqueue, due_now), robust=True)
    return planned


def reminders_replan_for_patient(patient_id) -> int:
    """After a patient's consent, contact details or archive state changed: bring the reminders
    of their upcoming booked appointments in line (planned where they now fit, cancelled where
    they no longer do). Call it inside the transaction of the change. The appointments are
    locked first, so a move or a booking running beside it plans after it, not alongside.
    Returns how many appointments were looked at."""
    upcoming = list(
        Appointment.objects.select_for_update(of=("self",))
        .select_related("appointment_type")
        .filter(patient_id=patient_id, status=AppointmentStatus.BOOKED, start__gt=timezone.now())
        .order_by("start")
    )
    for appointment in upcoming:
        reminders_plan(appointment=appointment)
    return len(upcoming)


REMINDER_SEND_TASK = "scheduling.tasks.reminder_send"


def reminders_enqueue(reminder_ids: list[int]) -> int:
    """Queue reminder_send for each id; how many were queued.

    A broker that is down or hung does not fail nor hold the caller (a booking has just been
    committed): publishing is bounded in time (practice.broker), and the sweep sends what
    was not queued. The warning names ids only, never patient data.
    """
    # By name: the task module imports this one (tasks are published by name in Celery).
    reminder_send = current_app.tasks[REMINDER_SEND_TASK]
    queued: list[int] = []

    def publish() -> None:
        for reminder_id in reminder_ids:
            reminder_send.delay(reminder_id)
            queued.append(reminder_id)

    outcome = broker.publish_bounded(publish)
    if outcome:
        logger.warning("Reminders %s not queued (%s): the sweep will send them.", reminder_ids[len(queued) :], outcome)
    done = list(queued)  # a late publish may still append: those are queued again by the sweep, harmlessly
    if done:
        Reminder.objects.filter(pk__in=done, status=ReminderStatus.PENDING).update(enqueued_at=timezone.now())
    return len(done)


# --------------------------------------------------------------------------- the text


def _when(start: datetime.datetime, language: str) -> tuple[str, str]:
    """Date and time in the practice's time zone, in the active language."""
    local = timezone.localtime(start, timezone.get_default_timezone())
    date = formats.date_format(local, "l j F Y")
    if language == "fr":
        # French writes day and month names in lower case; our catalogue capitalizes
        # "Monday" for column headings, and the date sits mid-sentence here.
        date = date.lower()
    return date, formats.time_format(local, "H:i")


def reminder_text(*, reminder: Reminder, appointment: Appointment, clinic, language: str) -> tuple[str, str]:
    """(subject, body) of a reminder in the patient's language.

    What the patient needs and nothing else: never the reason or the internal note (they are
    not even loaded by reminder_send), and the practitioner with their specialty only when
    the practice shows them (a specialty can say why someone sees a doctor).
    """
    with translation.override(language):
        date, time = _when(appointment.start, language)
        values = {"practice": clinic.name, "date": date, "time": time}
        subject = _("Your appointment at %(practice)s on %(date)s at %(time)s") % values
        with_whom = ""
        if clinic.reminders_show_specialty:
            practitioner = appointment.practitioner
            with_whom = _("with %(practitioner)s (%(specialty)s)") % {
                "practitioner": practitioner.display_name,
                "specialty": practitioner.specialty.name,
            }
        if reminder.channel == ReminderChannel.SMS:
            parts = [_("Reminder: appointment at %(practice)s on %(date)s at %(time)s") % values]
            if with_whom:
                parts.append(with_whom)
            text = " ".join(parts) + "."
            if clinic.address:
                text += " " + clinic.address + "."
            if clinic.phone:
                text += " " + _("To cancel, call %(phone)s.") % {"phone": clinic.phone}
            return subject, text
        lines = [_("Hello,"), "", _("This is a reminder of your appointment at %(practice)s:") % values, ""]
        lines.append(_("%(date)s at %(time)s") % values + (f", {with_whom}" if with_whom else ""))
        if clinic.address:
            lines.append(clinic.address)
        lines.append("")
        if clinic.phone:
            lines.append(_("If you cannot come, please cancel by calling %(phone)s.") % {"phone": clinic.phone})
        else:
            lines.append(_("If you cannot come, please let us know."))
        lines += ["", clinic.name]
        return subject, "\n".join(lines) + "\n"


def reminders_replan_on_change(sender, *, patient, **kwargs) -> None:
    """Receiver of patients.signals.reminder_details_changed (connected in scheduling/apps.py)."""
    reminders_replan_for_patient(patient.pk)
