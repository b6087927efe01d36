"""Appointment types, working hours, absences and appointments.

Times are stored aware, in UTC; working hours are wall-clock times in the practice's time
zone (settings.TIME_ZONE), so a 9:00 start stays 9:00 across the DST change.
"""

import datetime
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from audit.fields import EncryptedModel, EncryptedTextField
from practice.models import colour_validator

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Said by the forms and the services when a practitioner is given a type they do not offer.
TYPE_NOT_OFFERED = _("This practitioner does not offer this appointment type.")


class AppointmentTypeQuerySet(models.QuerySet):
    def offered_by(self, practitioner) -> models.QuerySet:
        """The types ``practitioner`` (a Practitioner or its id) offers: ``is_offered_by`` as a filter."""
        return self.filter(practitioners=practitioner)


class AppointmentType(models.Model):
    name = models.CharField(_("name"), max_length=100)
    duration_minutes = models.PositiveSmallIntegerField(
        _("duration (minutes)"), default=20, validators=[MinValueValidator(5), MaxValueValidator(480)]
    )
    colour = models.CharField(_("colour"), max_length=7, default="#5b8def", validators=[colour_validator])
    practitioners = models.ManyToManyField(
        "practice.Practitioner", verbose_name=_("offered by"), related_name="appointment_types", blank=True
    )
    is_active = models.BooleanField(_("active"), default=True)
    reminder_hours = models.PositiveSmallIntegerField(
        _("reminder (hours before)"),
        default=24,
        validators=[MaxValueValidator(24 * 14)],
        help_text=_("Send the patient a reminder this many hours before the appointment. 0: no reminder."),
    )
    second_reminder_hours = models.PositiveSmallIntegerField(
        _("second reminder (hours before)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 14)],
        help_text=_("Optional: a second reminder, closer to the appointment than the first."),
    )

    objects = AppointmentTypeQuerySet.as_manager()

    class Meta:
        verbose_name = _("appointment type")
        verbose_name_plural = _("appointment types")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.duration_minutes} min)"

    def clean(self) -> None:
        super().clean()
        errors: dict[str, StrOrPromise] = {}
        lead = settings.REMINDER_MIN_LEAD_MINUTES
        for name in ("reminder_hours", "second_reminder_hours"):
            hours = getattr(self, name)
            if hours and hours * 60 < lead:
                # It would never be sent: reminders_send skips what is due that close to the start.
                errors[name] = _("Reminders are not sent less than %(minutes)d minutes before an appointment.") % {
                    "minutes": lead
                }
        if self.second_reminder_hours is not None and "second_reminder_hours" not in errors:
            if not self.reminder_hours:
                errors["second_reminder_hours"] = _("A second reminder needs a first one.")
            elif self.second_reminder_hours >= self.reminder_hours:
                errors["second_reminder_hours"] = _("The second reminder must come after the first one.")
        if errors:
            raise ValidationError(errors)

    def is_offered_by(self, practitioner) -> bool:
        """Rule enforced here, and only here: a practitioner books, moves into or changes to
        only the types they offer (``practitioners``). ``practitioner``: a Practitioner or its id.
        One query, prefetched or not: the services ask inside their transaction."""
        return self.practitioners.filter(pk=getattr(practitioner, "pk", practitioner)).exists()

    def reminder_plan(self) -> list[tuple[str, int]]:
        """(kind, hours before the start) of each reminder this type asks for."""
        plan: list[tuple[str, int]] = []
        if self.reminder_hours:
            plan.append((ReminderKind.FIRST, self.reminder_hours))
            if self.second_reminder_hours:
                plan.append((ReminderKind.SECOND, self.second_reminder_hours))
        return plan


class Weekday(models.IntegerChoices):
    MONDAY = 0, _("Monday")
    TUESDAY = 1, _("Tuesday")
    WEDNESDAY = 2, _("Wednesday")
    THURSDAY = 3, _("Thursday")
    FRIDAY = 4, _("Friday")
    SATURDAY = 5, _("Saturday")
    SUNDAY = 6, _("Sunday")


class WorkingHours(models.Model):
    """One range of a practitioner's week (several per day allowed), valid between two dates."""

    practitioner = models.ForeignKey(
        "practice.Practitioner", verbose_name=_("practitioner"), on_delete=models.CASCADE, related_name="working_hours"
    )
    weekday = models.PositiveSmallIntegerField(_("day"), choices=Weekday.choices)
    start_time = models.TimeField(_("from"))
    end_time = models.TimeField(_("to"))
    valid_from = models.DateField(_("valid from"), null=True, blank=True)
    valid_until = models.DateField(_("valid until"), null=True, blank=True)

    class Meta:
        verbose_name = _("working hours range")
        verbose_name_plural = _("working hours")
        ordering = ["practitioner", "weekday", "start_time"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(end_time__gt=models.F("start_time")), name="hours_end_after_start"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.start_time:%H:%M}–{self.end_time:%H:%M}"


class AbsenceKind(models.TextChoices):
    HOLIDAY = "holiday", _("Holiday")
    TRAINING = "training", _("Training")
    SICK = "sick", _("Sick leave")
    CLOSURE = "closure", _("Practice closed")
    OTHER = "other", _("Other")


class Absence(models.Model):
    """A practitioner away, or (no practitioner) the whole practice closed."""

    practitioner = models.ForeignKey(
        "practice.Practitioner",
        verbose_name=_("practitioner"),
        on_delete=models.CASCADE,
        related_name="absences",
        null=True,
        blank=True,
        help_text=_("Leave empty when the whole practice is closed."),
    )
    start = models.DateTimeField(_("from"))
    end = models.DateTimeField(_("until"))
    kind = models.CharField(_("kind"), max_length=20, choices=AbsenceKind.choices, default=AbsenceKind.HOLIDAY)
    label = models.CharField(_("label"), max_length=100, blank=True)

    class Meta:
        verbose_name = _("absence")
        verbose_name_plural = _("absences")
        ordering = ["start"]
        indexes = [models.Index(fields=["practitioner", "start"], name="absence_practitioner_start")]
        constraints = [
            models.CheckConstraint(condition=models.Q(end__gt=models.F("start")), name="absence_ends_after_start")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.start:%Y-%m-%d}"


class AppointmentStatus(models.TextChoices):
    BOOKED = "booked", _("Booked")
    ARRIVED = "arrived", _("Arrived")
    IN_CONSULTATION = "in_consultation", _("In consultation")
    DONE = "done", _("Done")
    NO_SHOW = "no_show", _("No-show")
    CANCELLED = "cancelled", _("Cancelled")


# No appointment is longer (types go up to 8 hours); queries rely on it (see Meta.constraints).
MAX_APPOINTMENT_LENGTH = datetime.timedelta(hours=12)

# Statuses that hold the practitioner's time. A cancelled appointment or a no-show frees it.
ACTIVE_STATUSES = [
    AppointmentStatus.BOOKED,
    AppointmentStatus.ARRIVED,
    AppointmentStatus.IN_CONSULTATION,
    AppointmentStatus.DONE,
]

# The status flow: what each status may become.
TRANSITIONS: dict[str, set[AppointmentStatus]] = {
    AppointmentStatus.BOOKED: {AppointmentStatus.ARRIVED, AppointmentStatus.NO_SHOW, AppointmentStatus.CANCELLED},
    AppointmentStatus.ARRIVED: {
        AppointmentStatus.IN_CONSULTATION,
        AppointmentStatus.BOOKED,
        AppointmentStatus.CANCELLED,
    },
    AppointmentStatus.IN_CONSULTATION: {AppointmentStatus.DONE, AppointmentStatus.ARRIVED},
    AppointmentStatus.DONE: {AppointmentStatus.IN_CONSULTATION},
    AppointmentStatus.NO_SHOW: {AppointmentStatus.BOOKED},
    AppointmentStatus.CANCELLED: set(),
}


class Appointment(EncryptedModel):
    """An appointment. Nothing is hard-deleted: cancelling records who, when and why.

    The reason, the internal note and the cancellation reason are patient data: encrypted.
    No two active appointments of a practitioner overlap, except an emergency squeezed in over
    one (``squeezed``): exclusion constraints on PostgreSQL (migrations 0004 and 0009),
    immediate transactions on SQLite (scheduling.services).
    """

    practitioner = models.ForeignKey(
        "practice.Practitioner", verbose_name=_("practitioner"), on_delete=models.PROTECT, related_name="appointments"
    )
    patient = models.ForeignKey(
        "patients.Patient", verbose_name=_("patient"), on_delete=models.PROTECT, related_name="appointments"
    )
    appointment_type = models.ForeignKey(
        AppointmentType,
        verbose_name=_("appointment type"),
        on_delete=models.PROTECT,
        related_name="appointments",
        null=True,
        blank=True,
    )
    start = models.DateTimeField(_("start"), db_index=True)
    end = models.DateTimeField(_("end"))
    status = models.CharField(
        _("status"), max_length=20, choices=AppointmentStatus.choices, default=AppointmentStatus.BOOKED
    )
    reason = EncryptedTextField(_("reason"), blank=True)
    internal_note = EncryptedTextField(_("internal note"), blank=True)
    forced = models.BooleanField(
        _("booked outside opening hours"), default=False, help_text=_("Set when a secretary overrode the hours check.")
    )
    # An emergency booked over another appointment (scheduling.services.appointment_book with a
    # squeeze reason, when the clinic allows it). The exclusion constraints keep ordinary
    # appointments apart from each other and squeezed ones apart from each other (migration
    # 0009): at any moment a practitioner has at most one of each.
    squeezed = models.BooleanField(
        _("squeezed in"),
        default=False,
        help_text=_("Booked over another appointment as an emergency; the reason is in the audit trail."),
    )
    arrived_at = models.DateTimeField(_("arrived at"), null=True, blank=True)
    consultation_started_at = models.DateTimeField(_("consultation started at"), null=True, blank=True)
    done_at = models.DateTimeField(_("done at"), null=True, blank=True)
    cancelled_at = models.DateTimeField(_("cancelled at"), null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("cancelled by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Nullable: encrypted columns added to a table with rows cannot take a (plaintext) default.
    cancellation_reason = EncryptedTextField(_("cancellation reason"), blank=True, null=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("updated by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        verbose_name = _("appointment")
        verbose_name_plural = _("appointments")
        ordering = ["start"]
        indexes = [
            models.Index(fields=["practitioner", "start"], name="appointment_practitioner_start"),
            models.Index(fields=["patient", "start"], name="appointment_patient_start"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(end__gt=models.F("start")), name="appointment_ends_after_start"),
            # A bounded length lets range queries bound `start` from both sides, so the
            # (practitioner, start) index reads one day, not every earlier appointment.
            models.CheckConstraint(
                condition=models.Q(end__lte=models.F("start") + MAX_APPOINTMENT_LENGTH),
                name="appointment_length_bounded",
            ),
        ]

    def get_absolute_url(self) -> str:
        return reverse("scheduling:appointment", args=[self.pk])

    def audit_patient_id(self) -> uuid.UUID:
        return self.patient_id

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def can_become(self, status: str) -> bool:
        return status in TRANSITIONS.get(self.status, set())


class ReminderChannel(models.TextChoices):
    EMAIL = "email", _("E-mail")
    SMS = "sms", _("SMS")


class ReminderKind(models.TextChoices):
    FIRST = "first", _("First reminder")
    SECOND = "second", _("Second reminder")


class ReminderStatus(models.TextChoices):
    PENDING = "pending", _("Planned")
    # Claimed by a worker, its decryption in the trail: the message is on its way.
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    SKIPPED = "skipped", _("Not sent")


# Hours before the start for an appointment without a type (types default to the same).
DEFAULT_REMINDER_HOURS = 24


class Reminder(models.Model):
    """One message to send (or sent) before an appointment, by one channel.

    Rules (scheduling.reminders, scheduling.tasks):
    - A reminder is planned for one start time (`planned_for`). Moving the appointment
      cancels it and plans a fresh one; a cancelled appointment or a no-show cancels it.
    - Audited before it leaves: a worker claims the row (pending to sending) in a transaction
      that also writes the decryption of the address to the trail; only then does it send,
      and it records `sent` with the provider's id in a second transaction.
    - Never twice: a row that is not pending is left alone, and at most one row is pending or
      sending per appointment, channel and kind (partial unique constraints). `send_key` is
      the provider's idempotency key, the same on every attempt: a claim stranded by a dead
      worker is sent again only to a provider that drops a repeated key, otherwise it is
      closed as `interrupted` (at most once).
    - Nothing here is patient data: no text, no address or number. `error` holds a short code
      or an exception class name, never a message body, phone number or e-mail address.
    """

    appointment = models.ForeignKey(
        Appointment, verbose_name=_("appointment"), on_delete=models.PROTECT, related_name="reminders"
    )
    channel = models.CharField(_("channel"), max_length=5, choices=ReminderChannel.choices)
    kind = models.CharField(_("kind"), max_length=6, choices=ReminderKind.choices, default=ReminderKind.FIRST)
    planned_for = models.DateTimeField(_("for the appointment at"))
    due_at = models.DateTimeField(_("due at"), db_index=True)
    status = models.CharField(
        _("status"), max_length=10, choices=ReminderStatus.choices, default=ReminderStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    enqueued_at = models.DateTimeField(_("last queued at"), null=True, blank=True)
    claimed_at = models.DateTimeField(_("claimed for sending at"), null=True, blank=True)
    # The worker node that claimed it (celery@host), to tell its claims apart after a restart.
    claimed_by = models.CharField(_("claimed by"), max_length=200, blank=True)
    send_key = models.UUIDField(_("idempotency key"), null=True, blank=True, editable=False)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    provider_id = models.CharField(_("provider's message id"), max_length=200, blank=True)
    error = models.CharField(_("error"), max_length=100, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("reminder")
        verbose_name_plural = _("reminders")
        ordering = ["due_at", "id"]
        indexes = [
            # The sweep reads due pending rows only: a small index whatever the history.
            models.Index(fields=["due_at", "id"], name="reminder_pending_due", condition=models.Q(status="pending")),
            # The sweep looks for claims stranded by a dead worker: a handful of rows at most.
            models.Index(fields=["claimed_at"], name="reminder_sending", condition=models.Q(status="sending")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["appointment", "channel", "kind"],
                condition=models.Q(status="pending"),
                name="reminder_one_pending",
            ),
            # A claimed row and a pending one for the same start would be two messages.
            models.UniqueConstraint(
                fields=["appointment", "channel", "kind", "planned_for"],
                condition=models.Q(status__in=["pending", "sending"]),
                name="reminder_one_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} {self.get_kind_display()} ({self.get_status_display()})"

    def error_display(self) -> str:
        """The front desk's words for `error` (a code, or an error class name as a fallback)."""
        return str(REMINDER_ERRORS.get(self.error, self.error))


# Words for Reminder.error, shown to the front desk on the appointment page.
REMINDER_ERRORS = {
    "moved": _("the appointment was moved"),
    "appointment_cancelled": _("the appointment was cancelled"),
    "appointment_no_show": _("no-show"),
    "no_longer_wanted": _("no longer asked for (type or consent changed)"),
    "appointment_started": _("the patient had already arrived"),
    "too_late": _("too close to the appointment"),
    "patient_archived": _("the patient record is archived"),
    "no_consent": _("the patient withdrew consent"),
    "no_address": _("no phone number or e-mail address"),
    "SMSRejected": _("refused by the SMS provider"),
    "SMSTransientError": _("SMS provider unreachable"),
    "SMTPRecipientsRefused": _("e-mail address refused"),
    "interrupted": _("interrupted while sending: it may not have reached the patient"),
    "EmailRejected": _("refused by the e-mail provider"),
    "EmailTransientError": _("e-mail provider unreachable"),
}
