"""Writing to the audit trail. Reads are buffered by the context; everything else is written
at once, inside the caller's transaction, so a write and its audit row commit together.

Every row is chained (audit/chain.py): the writer takes the chain lock, draws the ids and
computes the MACs, then inserts. The lock is held until the transaction ends, so a long
transaction that writes an audit row early makes the other writers wait for its commit."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from audit import context
from audit.alerts import ALERT_EVENT_TYPES, security_alert_schedule
from audit.budget import TALLY_DAY, TALLY_STEP
from audit.chain import chain_rows, chain_write_alone
from audit.models import AuditEvent, EventType, ReadTally


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


def audit_reads_write(*, context: context.AuditContext, reads: Iterable) -> int:
    """Write buffered reads in one INSERT, chained (audit/chain.py), and count them in the
    reader's ``ReadTally`` (the read budget's counter) in the same statement.

    Returns how many of the reads' patients were new to the reading account (not read by it
    in the 24 hours before). Any database error propagates (fail closed).
    """
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
        return 0
    user_id = columns["actor_user_id"]
    # System jobs have no budget, hence no tally. Sorted: parallel writers lock rows in one order.
    patients = sorted({_as_uuid(r["patient_id"]) for r in rows if r["patient_id"] is not None}) if user_id else []
    connection = transaction.get_connection()
    # The chain lock is held until the transaction ends: outside one, this block is the
    # transaction (short); inside one, a savepoint keeps a failed insert from poisoning the
    # caller's transaction (the caller still sees the error).
    if connection.vendor == "postgresql":

        def statement(chained: list[dict]) -> tuple[str, list]:
            return _reads_insert_postgresql(now, columns, chained[0]["extra"], chained, patients)

        if not connection.in_atomic_block:  # a request's reads, after its view: two round trips
            return _new_count(chain_write_alone(rows, statement, connection), patients)
        with transaction.atomic():
            chain_rows(rows, connection)
            sql, params = statement(rows)
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return _new_count(cursor.fetchall() if patients else [], patients)
    with transaction.atomic():
        chain_rows(rows, connection)
        AuditEvent.objects.bulk_create([AuditEvent(**row) for row in rows])
        return _tally_count(user_id, patients, now)


def _as_uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _tally_count(user_id: int | None, patients: list[uuid.UUID], now) -> int:
    """The tally's upsert in three ORM statements (SQLite: the write lock is already held, so
    what the first one sees does not change before the others run); the new patients' count."""
    if not patients:
        return 0
    recent = ReadTally.objects.filter(user_id=user_id, patient_id__in=patients, last_read_at__gte=now - TALLY_DAY)
    known = dict(recent.values_list("patient_id", "last_read_at"))
    stale = [patient for patient, last in known.items() if last < now - TALLY_STEP]
    if stale:
        ReadTally.objects.filter(user_id=user_id, patient_id__in=stale).update(last_read_at=now)
    new = [p for p in patients if p not in known]
    # A patient last read more than a day ago starts a new episode: both times move.
    ReadTally.objects.bulk_create(
        [ReadTally(user_id=user_id, patient_id=p, first_read_at=now, last_read_at=now) for p in new],
        update_conflicts=True,
        unique_fields=["user_id", "patient_id"],
        update_fields=["first_read_at", "last_read_at"],
        batch_size=500,
    )
    return len(new)


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

_INSERT_READS = (
    'INSERT INTO "audit_auditevent" (occurred_at, event_type, extra, '
    + ", ".join(_COMMON)
    + ", id, model_label, object_pk, patient_id, fields, mac) "
    "SELECT %s, %s, %s::jsonb, %s, %s, %s, %s::inet, %s, %s, %s, %s, %s, t.i, t.m, t.o, t.p, t.f::jsonb, t.c "
    "FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::uuid[], %s::text[], %s::varchar[]) "
    "AS t(i, m, o, p, f, c)"
)
# The same INSERT as a data-modifying CTE, then the tally's upsert (audit.ReadTally): one round
# trip for both. A patient whose last read is more than a day old starts a new episode; the
# returned flags say which patients were new to the account.
_INSERT_READS_AND_TALLY = (
    "WITH trail AS ("  # noqa: S608 (constants only)
    + _INSERT_READS
    + ") INSERT INTO audit_readtally AS r (user_id, patient_id, first_read_at, last_read_at) "
    "SELECT %s, p, %s, %s FROM unnest(%s::uuid[]) AS p "
    "ON CONFLICT (user_id, patient_id) DO UPDATE SET "
    "first_read_at = CASE WHEN r.last_read_at < %s THEN EXCLUDED.first_read_at ELSE r.first_read_at END, "
    "last_read_at = GREATEST(r.last_read_at, EXCLUDED.last_read_at) "
    # A row read within TALLY_STEP is left as it is (audit/budget.py), and not returned.
    "WHERE r.last_read_at < %s "
    "RETURNING r.first_read_at = %s"
)


def _reads_insert_postgresql(now, columns: dict, extra: dict, rows: list[dict], patients: list) -> tuple[str, list]:
    """One INSERT ... SELECT FROM unnest(arrays): a third of bulk_create's cost per row, which
    matters because every page that shows patients pays it before its response leaves; the
    tally's upsert rides in the same statement and returns, per patient, whether it was new
    to the account. Ids and MACs come from the chain (drawn and computed under its lock)."""
    common = {name: columns.get(name) for name in _COMMON}
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
    if not patients:
        return _INSERT_READS, params
    user_id, day_ago, step_ago = columns["actor_user_id"], now - TALLY_DAY, now - TALLY_STEP
    return _INSERT_READS_AND_TALLY, [*params, user_id, now, now, patients, day_ago, step_ago, now]


def _new_count(returned: list, patients: list) -> int:
    return sum(1 for (new,) in returned if new) if patients else 0


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
