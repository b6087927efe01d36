"""Writes to patient records. Each runs in one transaction with its audit row."""

from django.db import transaction
from django.utils import timezone

from audit.models import EventType
from audit.services import audit_event_write
from patients.models import Patient

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


def _audit(patient: Patient, event_type: EventType, fields=()) -> None:
    audit_event_write(
        event_type=event_type,
        patient_id=patient.pk,
        model_label=Patient._meta.label,
        object_pk=patient.pk,
        fields=fields,
    )


@transaction.atomic
def patient_create(*, data: dict, actor, patient: Patient | None = None) -> Patient:
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


@transaction.atomic
def patient_update(*, patient: Patient, data: dict, actor) -> list[str]:
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
    return changed


@transaction.atomic
def patient_archive(*, patient: Patient, actor) -> None:
    """Archive instead of delete: the record and its history stay."""
    if patient.is_archived:
        return
    patient.is_archived = True
    patient.archived_at = timezone.now()
    patient.updated_by = actor
    patient.save(update_fields=["is_archived", "archived_at", "updated_by", "updated_at"])
    _audit(patient, EventType.ARCHIVE)


@transaction.atomic
def patient_restore(*, patient: Patient, actor) -> None:
    if not patient.is_archived:
        return
    patient.is_archived = False
    patient.archived_at = None
    patient.updated_by = actor
    patient.save(update_fields=["is_archived", "archived_at", "updated_by", "updated_at"])
    _audit(patient, EventType.RESTORE)
