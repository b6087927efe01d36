"""Writing to the audit trail. Reads are buffered by the context; everything else is written
at once, inside the caller's transaction, so a write and its audit row commit together."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from audit import context
from audit.models import AuditEvent, EventType


def _context_columns(ctx: context.AuditContext | None) -> dict:
    if ctx is None:
        actor = context.Actor.system("unknown")
        return {
            "actor_user_id": None,
            "actor_username": actor.username,
            "actor_role": actor.role,
        }
    actor = ctx.current_actor()
    return {
        "actor_user_id": actor.user_id,
        "actor_username": actor.username[:150],
        "actor_role": actor.role[:40],
        "ip": ctx.ip,
        "user_agent": ctx.user_agent[:300],
        "request_id": ctx.request_id,
        "path": ctx.path[:300],
        "purpose": ctx.purpose[:120],
    }


def audit_reads_write(*, context: context.AuditContext, reads: Iterable) -> None:
    """Write buffered reads in one INSERT. Any database error propagates (fail closed)."""
    now = timezone.now()
    columns = _context_columns(context)
    extra = context.extra or {}
    rows = [
        AuditEvent(
            occurred_at=now,
            event_type=EventType.READ,
            model_label=read.model_label,
            object_pk=read.object_pk,
            patient_id=read.patient_id,
            fields=sorted(read.fields),
            extra=extra,
            **columns,
        )
        for read in reads
    ]
    # A savepoint: a failed insert must not poison the caller's transaction, and the
    # caller must still see the error. batch_size=None lets Django use one statement
    # where the backend allows it.
    with transaction.atomic():
        AuditEvent.objects.bulk_create(rows)


def audit_event_write(
    *,
    event_type: EventType,
    patient_id=None,
    model_label: str = "",
    object_pk="",
    fields: Iterable[str] = (),
    extra: dict | None = None,
    actor: context.Actor | None = None,
) -> AuditEvent:
    """Record a write or a security event now, in the caller's transaction."""
    ctx = context.current()
    columns = _context_columns(ctx)
    if actor is not None:
        columns.update(actor_user_id=actor.user_id, actor_username=actor.username, actor_role=actor.role)
    return AuditEvent.objects.create(
        occurred_at=timezone.now(),
        event_type=event_type,
        patient_id=patient_id,
        model_label=model_label,
        object_pk=str(object_pk),
        fields=sorted(fields),
        extra={**(ctx.extra if ctx else {}), **(extra or {})},
        **columns,
    )
