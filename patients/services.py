"""Writes to patient records. Each runs in one transaction with its audit row."""

import datetime
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.context import Actor
from audit.models import EventType
from audit.services import audit_event_write
from patients.access import may_break_glass
from patients.models import BreakGlassGrant, Patient
from patients.signals import reminder_details_changed

# A written reason, not a click-through: shorter than this is refused (form and service).
BREAK_GLASS_REASON_MIN_LENGTH = 20

EDITABLE_FIELDS = [
    "last_name",
    "birth_name",
    "first_names",
    "sex",
    "birth_date",
    "phone_mobile",
    "phone_other",
    "email",
    "address",
    "postal_code",
    "city",
    "nir",
    "referring_doctor",
    "notes",
    "language",
    "consent_sms",
    "consent_email",
]


def _audit(patient: Patient, event_type: EventType, fields: Iterable[str] = ()) -> None:
    audit_event_write(
        event_type=event_type,
        patient_id=patient.pk,
        model_label=Patient._meta.label,
        object_pk=patient.pk,
        fields=fields,
    )


@transaction.atomic
def patient_create(*, data: dict[str, Any], actor: User, patient: Patient | None = None) -> Patient:
    """Create a patient from validated data (into ``patient`` when the admin hands one)."""
    patient = patient or Patient()
    for name in EDITABLE_FIELDS:
        if name in data:
            setattr(patient, name, data[name])
    patient.created_by = actor
    patient.updated_by = actor
    patient.full_clean()
    patient.save()
    _audit(patient, EventType.CREATE, fields=[n for n in EDITABLE_FIELDS if n in data])
    return patient


# What decides whether a patient gets reminders, and where (scheduling/reminders.py re-plans
# them on patients.signals.reminder_details_changed).
REMINDER_FIELDS = frozenset({"consent_sms", "consent_email", "phone_mobile", "email"})


def _reminders_replan(patient: Patient) -> None:
    reminder_details_changed.send(sender=Patient, patient=patient)


@transaction.atomic
def patient_update(*, patient: Patient, data: dict[str, Any], actor: User) -> list[str]:
    """Apply changed values; returns the names of the fields that changed (audited, not values)."""
    changed = [name for name in EDITABLE_FIELDS if name in data and getattr(patient, name) != data[name]]
    if not changed:
        return []
    for name in changed:
        setattr(patient, name, data[name])
    patient.updated_by = actor
    patient.full_clean()
    patient.save()
    _audit(patient, EventType.CHANGE, fields=changed)
    if REMINDER_FIELDS.intersection(changed):
        _reminders_replan(patient)
    return changed


@transaction.atomic
def patient_archive(*, patient: Patient, actor: User) -> None:
    """Archive instead of delete: the record and its history stay."""
    if patient.is_archived:
        return
    patient.is_archived = True
    patient.archived_at = timezone.now()
    patient.updated_by = actor
    patient.save(update_fields=["is_archived", "archived_at", "updated_by", "updated_at"])
    _audit(patient, EventType.ARCHIVE)
    _reminders_replan(patient)  # an archived patient is reminded of nothing


@transaction.atomic
def patient_restore(*, patient: Patient, actor: User) -> None:
    if not patient.is_archived:
        return
    patient.is_archived = False
    patient.archived_at = None
    patient.updated_by = actor
    patient.save(update_fields=["is_archived", "archived_at", "updated_by", "updated_at"])
    _audit(patient, EventType.RESTORE)
    _reminders_replan(patient)


@transaction.atomic
def break_glass_open(*, user: User | AnonymousUser, patient: Patient, reason: str) -> BreakGlassGrant:
    """Give ``user`` access to this one patient record for BREAK_GLASS_MINUTES.

    The grant and its audit row (actor, patient, reason, expiry) commit together: there is
    no emergency access that the trail does not show. Only practitioners may ask (the front
    desk already opens every record), and only with a written reason.
    """
    if not may_break_glass(user):
        raise PermissionDenied
    reason = reason.strip()
    if len(reason) < BREAK_GLASS_REASON_MIN_LENGTH:
        raise ValidationError(
            _("Write at least %(min)d characters.") % {"min": BREAK_GLASS_REASON_MIN_LENGTH}, code="min_length"
        )
    now = timezone.now()
    grant = BreakGlassGrant.objects.create(
        user=user,
        username=user.get_username(),
        patient=patient,
        reason=reason,
        granted_at=now,
        expires_at=now + datetime.timedelta(minutes=settings.BREAK_GLASS_MINUTES),
    )
    audit_event_write(
        event_type=EventType.BREAK_GLASS,
        patient_id=patient.pk,
        model_label=Patient._meta.label,
        object_pk=patient.pk,
        extra={"reason": reason, "expires_at": grant.expires_at.isoformat(), "grant": str(grant.pk)},
        actor=Actor.for_user(user),
    )
    return grant


@transaction.atomic
def break_glass_review(*, grant: BreakGlassGrant, reviewer: User, note: str = "") -> BreakGlassGrant:
    """Record that a practice admin looked at an emergency access (audited each time)."""
    grant.reviewed_at = timezone.now()
    grant.reviewed_by = reviewer
    grant.review_note = note.strip()
    grant.save(update_fields=["reviewed_at", "reviewed_by", "review_note"])
    audit_event_write(
        event_type=EventType.BREAK_GLASS_REVIEWED,
        patient_id=grant.patient_id,
        model_label=BreakGlassGrant._meta.label,
        object_pk=grant.pk,
        extra={"grant": str(grant.pk), "grantee": grant.username, "note": grant.review_note},
        actor=Actor.for_user(reviewer),
    )
    return grant
