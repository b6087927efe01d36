"""Sending appointment reminders (planned by scheduling.reminders).

Both tasks audit as `system:reminders`: what they decrypt (one phone number or one e-mail
address per message, nothing else) is in the trail under that actor.

Rules enforced here:
- Tasks take a reminder's id, never patient data.
- Audited before it leaves (invariant 1, as in pages): `reminder_send` locks the pending row
  (other workers skip it), re-checks that the appointment is still booked at the time the
  reminder was planned for and that the patient still consents, decrypts the address and
  claims the row (pending to sending) in ONE transaction that also writes the decryption to
  the trail. If the trail cannot be written, nothing is claimed and nothing is sent.
- Then it sends, outside any transaction, with the row's idempotency key (`send_key`, the
  same on every attempt), and records `sent` with the provider's id. A row that is not
  pending is left alone, so a task delivered twice sends once.
- A worker killed between the claim and the record leaves the row in `sending`. The sweep
  that follows the worker's restart (or any sweep once SEND_LEASE has passed) sends it again
  with the same key when the channel's backend drops repeated keys (Brevo's e-mail API, the
  file and locmem backends); otherwise it closes it as failed, `interrupted`: at most once.
- Transient failures (provider or SMTP server unreachable, 4xx) are retried with exponential
  back-off (by the sweep when tasks run eagerly); a refusal (invalid number, 5xx) or the
  last allowed attempt marks the reminder failed with the error's class name (never the
  message, the number or the address).
- `reminders_sweep` (beat, every 5 minutes, and once when a worker starts) queues what is
  due and was never queued, or queued long ago (or before the worker restart) and still
  pending: bookings made while the broker was down, messages lost with a killed worker. It
  closes reminders that can no longer go out in time.
"""

from __future__ import annotations

import datetime
import logging
import smtplib
import uuid
from dataclasses import dataclass

from celery import shared_task
from celery.signals import worker_ready
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.utils import DNS_NAME
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from audit import context as audit_context
from practice import mail, sms
from practice.models import Clinic
from scheduling.models import AppointmentStatus, Reminder, ReminderChannel, ReminderStatus
from scheduling.reminders import min_lead, reminder_text, reminders_enqueue

logger = logging.getLogger(__name__)

# A pending reminder queued this long ago and still pending is queued again by the sweep:
# longer than the longest back-off below, so a retry on its way is not doubled.
REQUEUE_AFTER = datetime.timedelta(minutes=15)
SWEEP_CHUNK = 500
# A claim older than this was left by a dead worker: a send is bounded by the SMS and SMTP
# time-outs (10 s each by default), so no live worker takes this long.
SEND_LEASE = datetime.timedelta(minutes=3)
# A stranded claim is sent again only while the provider still remembers its key (Brevo
# keeps an e-mail idempotency key 15 to 30 minutes): later, a repeat could be a duplicate.
IDEMPOTENCY_FRESH = datetime.timedelta(minutes=10)
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


@dataclass(frozen=True)
class Claim:
    """A reminder claimed for sending: what leaves, and the key that makes a repeat harmless."""

    reminder_id: int
    send_key: uuid.UUID
    channel: str
    to: str
    subject: str
    body: str
    reply_to: str


def channel_is_idempotent(channel: str) -> bool:
    """Does this channel's backend drop a repeated idempotency key (so a resend is harmless)?"""
    return sms.supports_idempotency() if channel == ReminderChannel.SMS else mail.supports_idempotency()


def _message_id(key: uuid.UUID) -> str:
    # The same Message-ID on every attempt: mailboxes that see it twice show it once.
    return f"<reminder.{key}@{DNS_NAME}>"


def _send_email(claim: Claim) -> str:
    message = EmailMessage(
        subject=claim.subject,
        body=claim.body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[claim.to],
        reply_to=[claim.reply_to] if claim.reply_to else None,
        headers={"Message-ID": _message_id(claim.send_key)},
    )
    # The key rides on the message as an attribute, never a header (practice/mail.py).
    message.idempotency_key = str(claim.send_key)  # type: ignore[attr-defined]
    try:
        message.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        raise SendRejected(type(exc).__name__) from exc
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise SendTransient(type(exc).__name__) from exc
        raise SendRejected(type(exc).__name__) from exc
    except mail.EmailRejected as exc:
        raise SendRejected(type(exc).__name__) from exc
    except OSError as exc:  # connection refused or lost, timeouts (smtplib's errors are OSErrors)
        raise SendTransient(type(exc).__name__) from exc
    return getattr(message, "provider_id", "") or _message_id(claim.send_key)


def _send_sms(claim: Claim) -> str:
    try:
        return sms.send(to=claim.to, body=claim.body, idempotency_key=str(claim.send_key))
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


def _claim(reminder_id: int, worker: str) -> Claim | str:
    """Lock a pending reminder, check it still fits, decrypt its address and claim it (pending
    to sending) in one transaction that also writes the decryption to the trail.

    Invariant 1 holds here as in pages: the audit row is committed before anything leaves.
    If the trail cannot be written, the transaction rolls back, the reminder stays pending
    and nothing is sent. Returns the claim, or a word saying why there is nothing to send.
    """
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
        audit_context.require().flush()  # in this transaction: the claim and its audit row commit together
        reminder.status = ReminderStatus.SENDING
        reminder.claimed_at, reminder.claimed_by = timezone.now(), worker[:200]
        reminder.send_key = reminder.send_key or uuid.uuid4()  # kept across attempts: the provider's key
        reminder.attempts += 1
        reminder.save(update_fields=["status", "claimed_at", "claimed_by", "send_key", "attempts", "updated_at"])
        return Claim(reminder.pk, reminder.send_key, reminder.channel, to, subject, body, clinic.email)


def _claimed(claim: Claim):
    """The claimed row, still ours (a sweep may have released a claim it thought stranded)."""
    return Reminder.objects.filter(pk=claim.reminder_id, status=ReminderStatus.SENDING, send_key=claim.send_key)


def _sent(claim: Claim, provider_id: str) -> str:
    now = timezone.now()
    _claimed(claim).update(
        status=ReminderStatus.SENT, sent_at=now, provider_id=provider_id[:200], error="", updated_at=now
    )
    return ReminderStatus.SENT


def _failed(claim: Claim, code: str) -> str:
    _claimed(claim).update(status=ReminderStatus.FAILED, error=code, updated_at=timezone.now())
    return f"{ReminderStatus.FAILED}:{code}"


def claims_release(reminders, code: str, *, retry_scheduled: bool = True) -> int:
    """Sending to pending again (a transient failure, a claim stranded by a dead worker), or
    failed after the last allowed attempt. A row whose appointment got a newer pending reminder
    meanwhile (it was moved while this one was out) is cancelled instead. Returns how many rows
    went back to pending. With `retry_scheduled` (Celery retries it), `enqueued_at` moves on so
    the sweep leaves it alone; without, it is cleared so the sweep queues it."""
    now = timezone.now()
    enqueued_at = now if retry_scheduled else None
    released = 0
    for reminder in reminders:
        rows = Reminder.objects.filter(pk=reminder.pk, status=ReminderStatus.SENDING, send_key=reminder.send_key)
        if reminder.attempts > MAX_RETRIES:
            rows.update(status=ReminderStatus.FAILED, error=code, updated_at=now)
            continue
        try:
            with transaction.atomic():
                released += rows.update(
                    status=ReminderStatus.PENDING, error=code, enqueued_at=enqueued_at, updated_at=now
                )
        except IntegrityError:  # a pending row exists for this appointment, channel and kind
            rows.update(status=ReminderStatus.CANCELLED, error="moved", updated_at=now)
    return released


def _reminder_send_once(reminder_id: int, worker: str) -> str:
    """Claim (committed with its audit row), then send, then record. Raises SendTransient after
    releasing the claim."""
    claim = _claim(reminder_id, worker)
    if isinstance(claim, str):
        return claim
    try:
        provider_id = _send_sms(claim) if claim.channel == ReminderChannel.SMS else _send_email(claim)
    except SendRejected as exc:
        return _failed(claim, str(exc.args[0]))
    except SendTransient as exc:
        claims_release(_claimed(claim).only("id", "attempts", "send_key"), str(exc.args[0]))
        raise
    return _sent(claim, provider_id)


@shared_task(bind=True, audit_job="reminders", max_retries=MAX_RETRIES)
def reminder_send(self, reminder_id: int) -> str:
    """Send one reminder if it is still pending and still fits; what happened, as a word."""
    if not settings.REMINDERS_ENABLED:
        return "disabled"
    try:
        return _reminder_send_once(reminder_id, self.request.hostname or "eager")
    except SendTransient as exc:
        code = str(exc.args[0])
        status = Reminder.objects.filter(pk=reminder_id).values_list("status", flat=True).first()
        if status != ReminderStatus.PENDING or self.request.is_eager:
            # Given up; or run eagerly (no broker, the embedded default) in the caller's
            # process, which must not wait: the sweep tries again after REQUEUE_AFTER.
            return f"{status}:{code}"
        countdown = get_exponential_backoff_interval(
            RETRY_BACKOFF_SECONDS, self.request.retries, RETRY_BACKOFF_MAX_SECONDS, full_jitter=True
        )
        raise self.retry(exc=exc, countdown=countdown) from None


def claims_recover(now: datetime.datetime, *, node: str = "", started: datetime.datetime | None = None) -> int:
    """Take up claims a dead worker left in `sending`: those of `node` made before it
    (re)started at `started`, and any older than SEND_LEASE (no send lasts that long). Each is
    sent again (released to pending, same key) when its channel drops a repeated key and the
    key is still fresh; otherwise it is closed as failed, `interrupted`: it may or may not
    have left, and a second message is worse than a missing one. Returns how many go again."""
    stranded = Q(claimed_at__lt=now - SEND_LEASE)
    if node and started is not None:
        stranded |= Q(claimed_by=node, claimed_at__lt=started)
    rows = list(
        Reminder.objects.filter(status=ReminderStatus.SENDING)
        .filter(stranded)
        .only("id", "channel", "attempts", "send_key", "claimed_at")
    )
    again = [
        r
        for r in rows
        if channel_is_idempotent(r.channel) and r.claimed_at is not None and r.claimed_at > now - IDEMPOTENCY_FRESH
    ]
    dropped = [r.pk for r in rows if r not in again]
    if dropped:
        Reminder.objects.filter(pk__in=dropped, status=ReminderStatus.SENDING).update(
            status=ReminderStatus.FAILED, error="interrupted", updated_at=now
        )
    if rows:
        logger.warning("Reminders stranded in sending by a worker: %s sent again, %s closed", len(again), len(dropped))
    return claims_release(again, "interrupted", retry_scheduled=False)


@shared_task(audit_job="reminders")
def reminders_sweep(chunk: int = SWEEP_CHUNK, restarted_node: str = "", restarted_at: str = "") -> int:
    """Queue every due pending reminder not queued recently, in id order; how many were queued.

    Decrypts nothing. Reminders of appointments starting too soon are closed as skipped;
    claims stranded by a dead worker are taken up first (claims_recover). After a worker
    (re)start (`restarted_node`, `restarted_at`), what was queued before it is queued again:
    a killed worker's messages may be lost, and a duplicate message sends nothing.
    """
    if not settings.REMINDERS_ENABLED:
        return 0
    now = timezone.now()
    started = datetime.datetime.fromisoformat(restarted_at) if restarted_at else None
    claims_recover(now, node=restarted_node, started=started)
    due = Reminder.objects.filter(status=ReminderStatus.PENDING, due_at__lte=now)
    due.filter(appointment__start__lt=now + min_lead()).update(
        status=ReminderStatus.SKIPPED, error="too_late", updated_at=now
    )
    queued_before = max(now - REQUEUE_AFTER, started) if started else now - REQUEUE_AFTER
    waiting = due.filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=queued_before))
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


@worker_ready.connect
def _sweep_after_worker_start(sender=None, **kwargs) -> None:
    """A worker (re)started: what a killed one left half done is taken up now, not after
    REQUEUE_AFTER or SEND_LEASE."""
    node = getattr(sender, "hostname", "") or ""
    try:
        reminders_sweep.apply_async(kwargs={"restarted_node": node, "restarted_at": timezone.now().isoformat()})
    except (KombuOperationalError, OSError):
        logger.warning("Could not queue the reminders sweep at worker start; beat will run it")
