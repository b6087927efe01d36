"""Sending appointment reminders (planned by scheduling.reminders).

Both tasks audit as `system:reminders`: what they decrypt (one phone number or one e-mail
address per message, nothing else) is in the trail under that actor.

Rules enforced here:
- Tasks take a reminder's id, never patient data.
- Never twice: `reminder_send` locks the pending row (other workers skip it), re-checks that
  the appointment is still booked at the time the reminder was planned for and that the
  patient still consents, sends, and records `sent` with the provider's id in the same
  transaction. A row that is not pending any more is left alone, so a task delivered twice
  (acks late, a sweep and a booking both queueing it) sends once.
- Transient failures (provider or SMTP server unreachable, 4xx) are retried with exponential
  back-off (by the sweep when tasks run eagerly); a refusal (invalid number, 5xx) or the
  last allowed attempt marks the reminder failed with the error's class name (never the
  message, the number or the address).
- `reminders_sweep` (beat, every 5 minutes) queues what is due and was never queued, or
  queued long ago and still pending: bookings made while the broker was down, retries whose
  message was lost. It closes reminders that can no longer go out in time.
"""

from __future__ import annotations

import datetime
import smtplib

from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.message import make_msgid
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from practice import sms
from practice.models import Clinic
from scheduling.models import AppointmentStatus, Reminder, ReminderChannel, ReminderStatus
from scheduling.reminders import min_lead, reminder_text, reminders_enqueue

# A pending reminder queued this long ago and still pending is queued again by the sweep:
# longer than the longest back-off below, so a retry on its way is not doubled.
REQUEUE_AFTER = datetime.timedelta(minutes=15)
SWEEP_CHUNK = 500
MAX_RETRIES = 5
RETRY_BACKOFF_SECONDS = 60  # 60, 120, 240, 480, 600 s at most (full jitter)
RETRY_BACKOFF_MAX_SECONDS = 600

# What reminder_send loads: the reminder, its appointment's time and status, the patient's
# consents, language and both sealed addresses (only the channel's one is ever read, hence
# decrypted and audited), and the practitioner's name and specialty (shown only when the
# practice turns it on). Never the reason or the internal note.
SEND_FIELDS = (
    "id",
    "channel",
    "kind",
    "planned_for",
    "status",
    "attempts",
    "appointment",
    "appointment__start",
    "appointment__status",
    "appointment__patient",
    "appointment__practitioner",
    "appointment__patient__is_archived",
    "appointment__patient__consent_sms",
    "appointment__patient__consent_email",
    "appointment__patient__language",
    "appointment__patient__phone_mobile",
    "appointment__patient__email",
    "appointment__practitioner__display_name",
    "appointment__practitioner__specialty",
    "appointment__practitioner__specialty__name",
)


class SendTransient(Exception):
    """Worth retrying later. `args[0]` is the underlying error's class name."""


class SendRejected(Exception):
    """Refused for good. `args[0]` is the underlying error's class name."""


def _send_email(*, to: str, subject: str, body: str, clinic: Clinic) -> str:
    message_id = make_msgid(idstring="reminder")
    message = EmailMessage(
        subject=subject,
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
        reply_to=[clinic.email] if clinic.email else None,
        headers={"Message-ID": message_id},
    )
    try:
        message.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise SendRejected(type(exc).__name__) from exc
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise SendTransient(type(exc).__name__) from exc
        raise SendRejected(type(exc).__name__) from exc
    except OSError as exc:  # connection refused or lost, timeouts (smtplib's errors are OSErrors)
        raise SendTransient(type(exc).__name__) from exc
    return message_id


def _send_sms(*, to: str, body: str) -> str:
    try:
        return sms.send(to=to, body=body)
    except sms.SMSTransientError as exc:
        raise SendTransient(type(exc).__name__) from exc
    except sms.SMSError as exc:
        raise SendRejected(type(exc).__name__) from exc


def _close(reminder: Reminder, status: str, error: str = "") -> str:
    reminder.status, reminder.error = status, error
    reminder.save(update_fields=["status", "error", "attempts", "updated_at"])
    return f"{status}:{error}" if error else status


def _why_not(reminder: Reminder, now: datetime.datetime) -> tuple[str, str] | None:
    """(status, code) when this reminder must not go out any more, else None."""
    appointment = reminder.appointment
    patient = appointment.patient
    if appointment.status in (AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW):
        return ReminderStatus.CANCELLED, "appointment_" + appointment.status
    if appointment.start != reminder.planned_for:
        return ReminderStatus.CANCELLED, "moved"
    if appointment.status != AppointmentStatus.BOOKED:
        return ReminderStatus.SKIPPED, "appointment_started"
    if appointment.start - now < min_lead():
        return ReminderStatus.SKIPPED, "too_late"
    if patient.is_archived:
        return ReminderStatus.SKIPPED, "patient_archived"
    consent = patient.consent_sms if reminder.channel == ReminderChannel.SMS else patient.consent_email
    if not consent:
        return ReminderStatus.SKIPPED, "no_consent"
    return None


def _reminder_send_once(reminder_id: int) -> str:
    """One attempt: claim, check, send, record, in one transaction. Raises SendTransient."""
    with transaction.atomic():
        reminder = (
            Reminder.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("appointment__patient", "appointment__practitioner__specialty")
            .only(*SEND_FIELDS)
            .filter(pk=reminder_id)
            .first()
        )
        if reminder is None:
            return "locked_or_missing"  # another worker holds it, or it does not exist
        if reminder.status != ReminderStatus.PENDING:
            return f"already_{reminder.status}"
        refusal = _why_not(reminder, timezone.now())
        if refusal:
            return _close(reminder, *refusal)
        patient = reminder.appointment.patient
        # The one decrypted (and audited) value: where this message goes.
        to = patient.phone_mobile if reminder.channel == ReminderChannel.SMS else patient.email
        if not to:
            return _close(reminder, ReminderStatus.SKIPPED, "no_address")
        clinic = Clinic.current()
        subject, body = reminder_text(
            reminder=reminder, appointment=reminder.appointment, clinic=clinic, language=patient.language
        )
        reminder.attempts += 1
        try:
            if reminder.channel == ReminderChannel.SMS:
                provider_id = _send_sms(to=to, body=body)
            else:
                provider_id = _send_email(to=to, subject=subject, body=body, clinic=clinic)
        except SendRejected as exc:
            return _close(reminder, ReminderStatus.FAILED, str(exc.args[0]))
        reminder.status, reminder.sent_at, reminder.provider_id, reminder.error = (
            ReminderStatus.SENT,
            timezone.now(),
            provider_id[:200],
            "",
        )
        reminder.save(update_fields=["status", "sent_at", "provider_id", "error", "attempts", "updated_at"])
        return ReminderStatus.SENT


def _attempt_failed(reminder_id: int, code: str) -> str | None:
    """Count a transient failure; the last allowed one marks the reminder failed. Returns the
    status, or None if the row is not pending any more. `enqueued_at` moves on, so the sweep
    leaves alone the retry Celery has scheduled."""
    with transaction.atomic():
        reminder = (
            Reminder.objects.select_for_update()
            .filter(pk=reminder_id, status=ReminderStatus.PENDING)
            .only("id", "attempts", "status")
            .first()
        )
        if reminder is None:
            return None
        reminder.attempts += 1
        reminder.error = code
        reminder.enqueued_at = timezone.now()
        if reminder.attempts > MAX_RETRIES:
            reminder.status = ReminderStatus.FAILED
        reminder.save(update_fields=["attempts", "error", "enqueued_at", "status", "updated_at"])
        return reminder.status


@shared_task(bind=True, audit_job="reminders", max_retries=MAX_RETRIES)
def reminder_send(self, reminder_id: int) -> str:
    """Send one reminder if it is still pending and still fits; what happened, as a word."""
    if not settings.REMINDERS_ENABLED:
        return "disabled"
    try:
        return _reminder_send_once(reminder_id)
    except SendTransient as exc:
        code = str(exc.args[0])
        status = _attempt_failed(reminder_id, code)
        if status != ReminderStatus.PENDING or self.request.is_eager:
            # Given up; or run eagerly (no broker, the embedded default) in the caller's
            # process, which must not wait: the sweep tries again after REQUEUE_AFTER.
            return f"{status}:{code}"
        countdown = get_exponential_backoff_interval(
            RETRY_BACKOFF_SECONDS, self.request.retries, RETRY_BACKOFF_MAX_SECONDS, full_jitter=True
        )
        raise self.retry(exc=exc, countdown=countdown) from None


@shared_task(audit_job="reminders")
def reminders_sweep(chunk: int = SWEEP_CHUNK) -> int:
    """Queue every due pending reminder not queued recently, in id order; how many were queued.

    Decrypts nothing. Reminders of appointments starting too soon are closed as skipped.
    """
    if not settings.REMINDERS_ENABLED:
        return 0
    now = timezone.now()
    due = Reminder.objects.filter(status=ReminderStatus.PENDING, due_at__lte=now)
    due.filter(appointment__start__lt=now + min_lead()).update(
        status=ReminderStatus.SKIPPED, error="too_late", updated_at=now
    )
    waiting = due.filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=now - REQUEUE_AFTER))
    queued, last_id = 0, 0
    while True:
        ids = list(waiting.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:chunk])
        if not ids:
            return queued
        sent = reminders_enqueue(ids)
        queued += sent
        if sent < len(ids):  # the broker is down: the next sweep carries on
            return queued
        last_id = ids[-1]
