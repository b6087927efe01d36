import uuid
from collections.abc import Mapping
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet

from audit.models import AuditEvent, EventType


def patient_access_events(*, patient_id: uuid.UUID | str) -> QuerySet[AuditEvent]:
    """Every read and change of one patient's data, newest first (index audit_patient_time)."""
    return (
        AuditEvent.objects.filter(patient_id=patient_id)
        .defer("extra", "mac", "user_agent", "request_id")
        .order_by("-occurred_at", "-id")
    )


def patient_access_summary(*, patient_id: uuid.UUID | str) -> list[Mapping[str, Any]]:
    """Who touched one patient's data: per person (or job) and role, how many reads and how
    many other events (changes, exports...), first and last time. Latest first."""
    return list(
        AuditEvent.objects.filter(patient_id=patient_id)
        .order_by()
        .values("actor_username", "actor_role")
        .annotate(
            # Counting a column of the index (not "id") lets a covering index answer alone.
            reads=Count("event_type", filter=Q(event_type=EventType.READ)),
            others=Count("event_type", filter=~Q(event_type=EventType.READ)),
            first=Min("occurred_at"),
            last=Max("occurred_at"),
        )
        .order_by("-last", "actor_username")
    )
