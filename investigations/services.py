"""The investigations' writes: each changes state in one transaction, with its audit row."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from audit import context
from audit.models import Anomaly, EventType
from audit.services import audit_event_write


@transaction.atomic
def anomaly_review(*, anomaly: Anomaly, actor: context.Actor, note: str) -> Anomaly:
    """Mark a finding of investigations.anomalies as handled, with what the admin found; audited
    (CHANGE, with the note)."""
    anomaly.reviewed_at = timezone.now()
    anomaly.reviewed_by = actor.username[:150]
    anomaly.review_note = note
    anomaly.save(update_fields=["reviewed_at", "reviewed_by", "review_note"])
    audit_event_write(
        event_type=EventType.CHANGE,
        model_label=Anomaly._meta.label,
        object_pk=anomaly.pk,
        fields=["reviewed_at", "reviewed_by", "review_note"],
        extra={"review_note": note, "kind": anomaly.kind},
        actor=actor,
    )
    return anomaly
