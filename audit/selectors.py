from django.db.models import QuerySet

from audit.models import AuditEvent


def patient_access_events(*, patient_id) -> QuerySet[AuditEvent]:
    """Every read and change of one patient's data, newest first (index audit_patient_time)."""
    return AuditEvent.objects.filter(patient_id=patient_id).order_by("-occurred_at", "-id")
