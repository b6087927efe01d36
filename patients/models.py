import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from audit import blind
from audit.fields import (
    EncryptedCharField,
    EncryptedDateField,
    EncryptedEmailField,
    EncryptedModel,
    EncryptedTextField,
    Sealed,
)


class Sex(models.TextChoices):
    FEMALE = "F", _("Female")
    MALE = "M", _("Male")
    OTHER = "X", _("Other / not stated")


class Language(models.TextChoices):
    FRENCH = "fr", "Français"
    ENGLISH = "en", "English"


class Patient(EncryptedModel):
    """A patient record. Every identifying field is encrypted; plaintext columns are ids,
    flags, timestamps and blind indexes (truncated HMACs, see docs/security-model.md)."""

    last_name = EncryptedCharField(_("last name"), max_length=100)
    birth_name = EncryptedCharField(_("birth name"), max_length=100, blank=True)
    first_names = EncryptedCharField(_("first names"), max_length=150)
    sex = EncryptedCharField(_("sex"), max_length=1, choices=Sex.choices)
    birth_date = EncryptedDateField(_("birth date"))
    phone_mobile = EncryptedCharField(_("mobile phone"), max_length=20, blank=True)
    phone_other = EncryptedCharField(_("other phone"), max_length=20, blank=True)
    email = EncryptedEmailField(_("e-mail"), max_length=254, blank=True)
    address = EncryptedTextField(_("street address"), blank=True)
    postal_code = EncryptedCharField(_("postal code"), max_length=10, blank=True)
    city = EncryptedCharField(_("city"), max_length=100, blank=True)
    nir = EncryptedCharField(_("social security number (NIR)"), max_length=15, blank=True)
    referring_doctor = EncryptedCharField(_("GP / referring doctor"), max_length=150, blank=True)
    notes = EncryptedTextField(_("notes"), blank=True)

    language = models.CharField(_("language"), max_length=2, choices=Language.choices, default=Language.FRENCH)
    consent_sms = models.BooleanField(_("reminders by SMS"), default=False)
    consent_email = models.BooleanField(_("reminders by e-mail"), default=False)
    is_archived = models.BooleanField(_("archived"), default=False, db_index=True)
    archived_at = models.DateTimeField(_("archived at"), null=True, blank=True)

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

    # Blind indexes (audit.blind): equality of normalized values, nothing more.
    bidx_last_name = models.IntegerField(null=True, editable=False, db_index=True)
    bidx_full_name = models.IntegerField(null=True, editable=False, db_index=True)
    bidx_birth_date = models.IntegerField(null=True, editable=False, db_index=True)
    bidx_phone_mobile = models.IntegerField(null=True, editable=False, db_index=True)
    bidx_phone_other = models.IntegerField(null=True, editable=False, db_index=True)
    bidx_email = models.IntegerField(null=True, editable=False, db_index=True)

    class Meta:
        verbose_name = _("patient")
        verbose_name_plural = _("patients")
        permissions = [("search_patient", "Can search patients")]
        indexes = [
            models.Index(fields=["bidx_full_name", "bidx_birth_date"], name="patient_name_birth"),
            # The "recently updated" list: without it, PostgreSQL reads every row's ciphertext.
            models.Index(models.F("updated_at").desc(), name="patient_recent", condition=models.Q(is_archived=False)),
        ]

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.blind_indexes_update()
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("patients:detail", args=[self.pk])

    def audit_patient_id(self) -> uuid.UUID:
        return self.pk

    @property
    def display_name(self) -> str:
        """LAST NAME First names: decrypts two fields (audited)."""
        return f"{self.last_name.upper()} {self.first_names}"

    def blind_indexes_update(self, *, force: bool = False) -> None:
        """Recompute the indexes of fields set in plaintext since load (no decryption).

        With ``force`` every field is read (decrypted, audited): key rotation uses it.
        """

        def fresh(attname: str) -> bool:
            return force or not isinstance(self.__dict__.get(attname, Sealed("")), Sealed)

        if fresh("last_name"):
            self.bidx_last_name = blind.blind_index("last_name", blind.normalize_name(self.last_name))
        if fresh("last_name") or fresh("first_names"):
            self.bidx_full_name = full_name_index(self.last_name, self.first_names)
        if fresh("birth_date"):
            self.bidx_birth_date = blind.blind_index("birth_date", blind.normalize_date(self.birth_date))
        if fresh("phone_mobile"):
            self.bidx_phone_mobile = blind.blind_index("phone", blind.normalize_phone(self.phone_mobile))
        if fresh("phone_other"):
            self.bidx_phone_other = blind.blind_index("phone", blind.normalize_phone(self.phone_other))
        if fresh("email"):
            self.bidx_email = blind.blind_index("email", blind.normalize_email(self.email))


def full_name_index(last_name: str, first_names: str) -> int | None:
    """Index of last name plus the first of the first names (what people type)."""
    first = blind.normalize_name(first_names).split(" ")[0] if first_names else ""
    last = blind.normalize_name(last_name)
    if not last or not first:
        return None
    return blind.blind_index("full_name", f"{last}\x1f{first}")


class BreakGlassGrant(models.Model):
    """Emergency access for one practitioner to one patient record they have no appointment
    with ("break the glass"), for BREAK_GLASS_MINUTES from the moment it was asked.

    Rule: the practitioner writes why, the grant and its audit row (with the reason) commit
    together (patients.services.break_glass_open), and practice admins review every grant.
    The user's name is copied so that the grant still says who after the account changes.
    No encrypted field: the reason is what the practitioner typed, shown to the reviewers.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        on_delete=models.PROTECT,
        related_name="break_glass_grants",
    )
    username = models.CharField(_("username"), max_length=150)
    patient = models.ForeignKey(
        Patient, verbose_name=_("patient"), on_delete=models.PROTECT, related_name="break_glass_grants"
    )
    reason = models.TextField(_("reason"))
    granted_at = models.DateTimeField(_("granted at"), db_index=True)
    expires_at = models.DateTimeField(_("expires at"))
    reviewed_at = models.DateTimeField(_("reviewed at"), null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("reviewed by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    review_note = models.TextField(_("review note"), blank=True)

    class Meta:
        verbose_name = _("emergency access")
        verbose_name_plural = _("emergency accesses")
        ordering = ["-granted_at"]
        indexes = [
            # The access check: "does this user hold an unexpired grant for this patient?"
            models.Index(fields=["user", "patient", "expires_at"], name="break_glass_user_patient"),
        ]

    def __str__(self) -> str:
        # Ids only: Django writes str(obj) into admin logs and messages.
        return f"{self.username} → {_('patient')} {str(self.patient_id)[:8]}"
