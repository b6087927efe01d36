"""Writing to the audit trail. Reads are buffered by the context; everything else is written
at once, inside the caller's transaction, so a write and its audit row commit together.

Every row is chained (audit/chain.py): the writer takes the chain lock, draws the ids and
computes the MACs, then inserts. The lock is held until the transaction ends, so a long
transaction that writes an audit row early makes the other writers wait for its commit."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from audit import context
from audit.alerts import ALERT_EVENT_TYPES, security_alert_schedule
from audit.chain import chain_rows
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
    """Write buffered reads in one INSERT, chained (audit/chain.py). Any database error
    propagates (fail closed)."""
    now = timezone.now()
    columns = _context_columns(context)
    extra = context.extra or {}
    rows = [
        {
            "occurred_at": now,
            "event_type": int(EventType.READ),
            "model_label": read.model_label,
            "object_pk": read.object_pk,
            "patient_id": read.patient_id,
            "fields": sorted(read.fields),
            "extra": extra,
            **columns,
        }
        for read in reads
    ]
    if not rows:
        return
    connection = transaction.get_connection()
    # The chain lock is held until the transaction ends: outside one, this block is the
    # transaction (short); inside one, a savepoint keeps a failed insert from poisoning the
    # caller's transaction (the caller still sees the error).
    with transaction.atomic():
        chain_rows(rows, connection)
        if connection.vendor == "postgresql":
            _insert_reads_postgresql(connection, now, columns, rows[0]["extra"], rows)
        else:
            AuditEvent.objects.bulk_create([AuditEvent(**row) for row in rows])


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


def _insert_reads_postgresql(connection, now, columns: dict, extra: dict, rows: list[dict]) -> None:
    """One INSERT ... SELECT FROM unnest(arrays): a third of bulk_create's cost per row, which
    matters because every page that shows patients pays it before its response leaves.
    Ids and MACs come from ``chain_rows`` (drawn and computed under the chain lock)."""
    common = {name: columns.get(name) for name in _COMMON}
    sql = (
        'INSERT INTO "audit_auditevent" (occurred_at, event_type, extra, '
        + ", ".join(_COMMON)
        + ", id, model_label, object_pk, patient_id, fields, mac) "
        "SELECT %s, %s, %s::jsonb, %s, %s, %s, %s::inet, %s, %s, %s, %s, %s, t.i, t.m, t.o, t.p, t.f::jsonb, t.c "
        "FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::uuid[], %s::text[], %s::varchar[]) "
        "AS t(i, m, o, p, f, c)"
    )
    params = [
        now,
        int(EventType.READ),
        json.dumps(extra),
        *(common[name] for name in _COMMON),
        [r["id"] for r in rows],
        [r["model_label"] for r in rows],
        [r["object_pk"] for r in rows],
        [r["patient_id"] for r in rows],
        [json.dumps(r["fields"]) for r in rows],
        [r["mac"] for r in rows],
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
    row = {
        "occurred_at": timezone.now(),
        "event_type": int(event_type),
        "patient_id": patient_id,
        "model_label": model_label,
        "object_pk": str(object_pk),
        "fields": sorted(fields),
        "extra": {**(ctx.extra if ctx else {}), **(extra or {})},
        **columns,
    }
    with transaction.atomic():  # the chain lock, then the insert (audit/chain.py)
        chain_rows([row])
        event = AuditEvent.objects.create(**row)
    if event_type in ALERT_EVENT_TYPES:
        # Mailed to the practice admins once the caller's transaction commits (audit/alerts.py).
        security_alert_schedule()
    return event
