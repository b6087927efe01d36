"""Writing to the audit trail. Reads are buffered by the context; everything else is written
at once, inside the caller's transaction, so a write and its audit row commit together."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from audit import context
from audit.alerts import ALERT_EVENT_TYPES, security_alert_schedule
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
        "session": ctx.session,
        "path": ctx.path[:300],
        "purpose": ctx.purpose[:120],
    }


def audit_reads_write(*, context: context.AuditContext, reads: Iterable) -> None:
    """Write buffered reads in one INSERT. Any database error propagates (fail closed)."""
    reads = list(reads)
    now = timezone.now()
    columns = _context_columns(context)
    extra = context.extra or {}
    connection = transaction.get_connection()
    # Inside a transaction, a savepoint keeps a failed insert from poisoning the caller's
    # transaction (the caller still sees the error). Outside, one statement is atomic.
    guard = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    with guard:
        if connection.vendor == "postgresql":
            _insert_reads_postgresql(connection, now, columns, extra, reads)
        else:
            AuditEvent.objects.bulk_create(
                [
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
            )


_COMMON = (
    "actor_user_id",
    "actor_username",
    "actor_role",
    "ip",
    "user_agent",
    "request_id",
    "session",
    "path",
    "purpose",
)


def _insert_reads_postgresql(connection, now, columns: dict, extra: dict, reads: list) -> None:
    """One INSERT ... SELECT FROM unnest(arrays): a third of bulk_create's cost per row, which
    matters because every page that shows patients pays it before its response leaves."""
    common = {name: columns.get(name) for name in _COMMON}
    sql = (
        'INSERT INTO "audit_auditevent" (occurred_at, event_type, extra, '
        + ", ".join(_COMMON)
        + ", model_label, object_pk, patient_id, fields, mac) "
        "SELECT %s, %s, %s::jsonb, %s, %s, %s, %s::inet, %s, %s, %s, %s, %s, t.m, t.o, t.p, t.f::jsonb, '' "
        "FROM unnest(%s::varchar[], %s::varchar[], %s::uuid[], %s::text[]) AS t(m, o, p, f)"
    )
    params = [
        now,
        int(EventType.READ),
        json.dumps(extra),
        *(common[name] for name in _COMMON),
        [r.model_label for r in reads],
        [r.object_pk for r in reads],
        [r.patient_id for r in reads],
        [json.dumps(sorted(r.fields)) for r in reads],
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


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
    """Record a write or a security event now, in the caller's transaction.

    Security events of ``audit.alerts.ALERT_EVENT_TYPES`` are also mailed to the practice
    admins, in batches, after the commit.
    """
    ctx = context.current()
    columns = _context_columns(ctx)
    if actor is not None:
        columns.update(actor_user_id=actor.user_id, actor_username=actor.username, actor_role=actor.role)
    event = AuditEvent.objects.create(
        occurred_at=timezone.now(),
        event_type=event_type,
        patient_id=patient_id,
        model_label=model_label,
        object_pk=str(object_pk),
        fields=sorted(fields),
        extra={**(ctx.extra if ctx else {}), **(extra or {})},
        **columns,
    )
    if event_type in ALERT_EVENT_TYPES:
        # Mailed to the practice admins once the caller's transaction commits (audit/alerts.py).
        security_alert_schedule()
    return event
