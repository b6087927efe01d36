"""Appointments, kept small until the agenda work (issue 3) builds on them."""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from audit.fields import EncryptedTextField
from audit.models import EncryptedModel


class AppointmentStatus(models.TextChoices):
    BOOKED = "booked", _("Booked")
    ARRIVED = "arrived", _("Arrived")
    IN_CONSULTATION = "in_consultation", _("In consultation")
    DONE = "done", _("Done")
    NO_SHOW = "no_show", _("No-show")
    CANCELLED = "cancelled", _("Cancelled")


class Appointment(EncryptedModel):
    """An appointment. The reason and the internal note are patient data: encrypted."""

    practitioner = models.ForeignKey(
        "practice.Practitioner", verbose_name=_("practitioner"), on_delete=models.PROTECT, related_name="appointments"
    )
    patient = models.ForeignKey(
        "patients.Patient", verbose_name=_("patient"), on_delete=models.PROTECT, related_name="appointments"
    )
    start = models.DateTimeField(_("start"), db_index=True)
    end = models.DateTimeField(_("end"))
    status = models.CharField(_("status"), max_length=20, choices=AppointmentStatus.choices, default="booked")
    reason = EncryptedTextField(_("reason"), blank=True)
    internal_note = EncryptedTextField(_("internal note"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        verbose_name = _("appointment")
        verbose_name_plural = _("appointments")
        ordering = ["start"]
        indexes = [models.Index(fields=["practitioner", "start"], name="appointment_practitioner_start")]
        constraints = [
            models.CheckConstraint(condition=models.Q(end__gt=models.F("start")), name="appointment_ends_after_start")
        ]

    def audit_patient_id(self):
        return self.patient_id
