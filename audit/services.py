"""Writing to the audit trail. Reads are buffered by the context; everything else is written
at once, inside the caller's transaction, so a write and its audit row commit together.

Every row is chained (audit/chain.py): the writer takes the chain lock, draws the ids and
computes the MACs, then inserts. The lock is held until the transaction ends, so a long
transaction that writes an audit row early makes the other writers wait for its commit."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit import current as active
from audit.chain import CONTEXT_COLUMNS, Row, chain_rows, chain_write_alone
from audit.models import (
    TALLY_DAY,
    TALLY_STEP,
    AllowanceKind,
    AllowanceUse,
    AuditEvent,
    EventType,
    Explanation,
    ReadBlock,
    ReadTally,
)

if TYPE_CHECKING:
    from audit.context import AuditContext, _Read

# What other apps run after an event of a given type is written: the investigations app
# registers its alert mails here (investigations/apps.py). The core imports none of them.
_EVENT_HOOKS: dict[int, list[Callable[[], None]]] = {}


def event_hook_register(event_types: Iterable[EventType], hook: Callable[[], None]) -> None:
    """Run ``hook()`` (in the writer's transaction) each time an event of these types is
    written. Registering the same hook twice runs it once."""
    for event_type in event_types:
        hooks = _EVENT_HOOKS.setdefault(int(event_type), [])
        if hook not in hooks:
            hooks.append(hook)


def _context_columns(ctx: AuditContext | None) -> dict[str, Any]:
    if ctx is None:
        actor = active.Actor.system("unknown")
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


@dataclass
class ReadsWritten:
    """What a trail write of reads tells the reader's budget (audit/budget.py): how many of
    the patients were new to the account, and, if asked to count, the account's patients in
    the budget's day and hour windows before the write (under the chain lock)."""

    new_patients: int = 0
    before: tuple[int, int] | None = None


def audit_reads_write(*, context: AuditContext, reads: Iterable[_Read]) -> ReadsWritten:
    """Write buffered reads in one INSERT, chained (audit/chain.py), and count them in the
    reader's ``ReadTally`` (the read budget's counter) in the same statement; when some
    patient was new to the account and its budget gave its windows, count the account's
    patients there too (the budget's re-check). Any database error propagates (fail closed).
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
            "explanation": read.explanation,
            "explained_by": read.explained_by,
            **columns,
        }
        for read in reads
    ]
    if not rows:
        return ReadsWritten()
    user_id = columns["actor_user_id"]
    # System jobs have no budget, hence no tally. Sorted: parallel writers lock rows in one order.
    patients = sorted({_as_uuid(r["patient_id"]) for r in rows if r["patient_id"] is not None}) if user_id else []
    budget = context.budget
    windows = budget.windows() if budget is not None and budget.user_id == user_id else None
    tally = _Tally(user_id, patients, now, windows)
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":

        def statement(chained: list[Row]) -> tuple[str, list[Any]]:
            return _reads_insert_postgresql(now, columns, chained[0]["extra"], chained, tally)

        if not connection.in_atomic_block:  # a request's reads, after its view: two round trips
            return tally.result(chain_write_alone(rows, statement, connection))
        # The chain lock is held until the transaction ends; inside the caller's transaction, a
        # savepoint keeps a failed insert from poisoning it (the caller still sees the error).
        with transaction.atomic():
            chain_rows(rows, connection)
            sql, params = statement(rows)
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return tally.result(cursor.fetchall() if patients else [])
    with transaction.atomic():
        chain_rows(rows, connection)
        AuditEvent.objects.bulk_create([AuditEvent(**row) for row in rows])
        return tally.upsert_orm()


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass
class _Tally:
    """One trail write's part of the read budget's tally (audit.ReadTally)."""

    user_id: int | None
    patients: list[uuid.UUID]
    now: datetime.datetime
    windows: tuple[datetime.datetime, datetime.datetime] | None

    def params(self) -> list[Any]:
        """The tally part of ``_INSERT_READS_AND_TALLY``'s parameters."""
        day_since, hour_since = self.windows or (self.now, self.now)
        counting = self.windows is not None
        return [
            *(self.user_id, self.now, self.now, self.patients),
            *(self.now - TALLY_DAY, self.now - TALLY_STEP, self.now),
            *(counting, self.user_id, day_since),
            *(counting, self.user_id, hour_since, hour_since),
        ]

    def result(self, returned: list[tuple[Any, ...]]) -> ReadsWritten:
        if not self.patients or not returned:
            return ReadsWritten()
        new, day, hour = returned[0]
        return ReadsWritten(new_patients=new, before=(day, hour) if new and day is not None else None)

    def upsert_orm(self) -> ReadsWritten:
        """The tally's upsert through the ORM (SQLite: the write lock is already held, so what
        the first statement sees does not change before the others run)."""
        user_id, now = self.user_id, self.now
        if not self.patients or user_id is None:  # system jobs have no tally (no patients here)
            return ReadsWritten()
        mine = ReadTally.objects.filter(user_id=user_id)
        recent = mine.filter(patient_id__in=self.patients, last_read_at__gte=now - TALLY_DAY)
        known = dict(recent.values_list("patient_id", "last_read_at"))
        stale = [patient for patient, last in known.items() if last < now - TALLY_STEP]
        if stale:
            mine.filter(patient_id__in=stale).update(last_read_at=now)
        new = [p for p in self.patients if p not in known]
        # A patient last read more than a day ago starts a new episode: both times move.
        ReadTally.objects.bulk_create(
            [ReadTally(user_id=user_id, patient_id=p, first_read_at=now, last_read_at=now) for p in new],
            update_conflicts=True,
            unique_fields=["user_id", "patient_id"],
            update_fields=["first_read_at", "last_read_at"],
            batch_size=500,
        )
        if not new or self.windows is None:
            return ReadsWritten(new_patients=len(new))
        day_since, hour_since = self.windows
        day = mine.filter(last_read_at__gte=day_since).count()
        hour = mine.filter(last_read_at__gte=hour_since, first_read_at__gte=hour_since).count()
        # Counted after the upsert here: "before" is without this write's new patients.
        return ReadsWritten(new_patients=len(new), before=(day - len(new), hour - len(new)))


# The context's columns, as the chain lists them: every row of one INSERT shares them.
_COMMON = CONTEXT_COLUMNS

_INSERT_READS = (
    'INSERT INTO "audit_auditevent" (occurred_at, event_type, extra, '
    + ", ".join(_COMMON)
    + ", id, model_label, object_pk, patient_id, fields, explanation, explained_by, mac) "
    "SELECT %s, %s, %s::jsonb, "
    # One parameter per context column, in _COMMON's order (the address is cast to inet).
    + ", ".join("%s::inet" if name == "ip" else "%s" for name in _COMMON)
    + ", t.i, t.m, t.o, t.p, t.f::jsonb, t.e, t.b, t.c "
    "FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::uuid[], %s::text[], %s::varchar[], "
    "%s::varchar[], %s::varchar[]) AS t(i, m, o, p, f, e, b, c)"
)
# The same INSERT as a data-modifying CTE, then the tally's upsert (audit.ReadTally): one round
# trip for both. A patient whose last read is more than a day old starts a new episode. The
# statement returns how many patients were new to the account and, if some were and the
# budget asked (the boolean parameters), the account's patients in the budget's day and hour
# windows as the statement's snapshot sees them: taken after the chain lock, so after every
# earlier writer's commit, and without this statement's own rows (a CTE's changes are not
# visible to the rest of its statement). Subqueries under a false CASE are not run.
_INSERT_READS_AND_TALLY = (
    "WITH trail AS ("  # noqa: S608 (constants only)
    + _INSERT_READS
    + "), tally AS (INSERT INTO audit_readtally AS r (user_id, patient_id, first_read_at, last_read_at) "
    "SELECT %s, p, %s, %s FROM unnest(%s::uuid[]) AS p "
    "ON CONFLICT (user_id, patient_id) DO UPDATE SET "
    "first_read_at = CASE WHEN r.last_read_at < %s THEN EXCLUDED.first_read_at ELSE r.first_read_at END, "
    "last_read_at = GREATEST(r.last_read_at, EXCLUDED.last_read_at) "
    # A row read within TALLY_STEP is left as it is (audit/budget.py), and not returned.
    "WHERE r.last_read_at < %s "
    "RETURNING r.first_read_at = %s AS new), "
    "n AS (SELECT COUNT(*) FILTER (WHERE new) AS new FROM tally) "
    "SELECT n.new, "
    "CASE WHEN n.new > 0 AND %s THEN (SELECT COUNT(*) FROM audit_readtally t "
    "WHERE t.user_id = %s AND t.last_read_at >= %s) END, "
    "CASE WHEN n.new > 0 AND %s THEN (SELECT COUNT(*) FROM audit_readtally t "
    "WHERE t.user_id = %s AND t.last_read_at >= %s AND t.first_read_at >= %s) END "
    "FROM n"
)


def _reads_insert_postgresql(
    now: datetime.datetime, columns: dict[str, Any], extra: dict[str, Any], rows: list[Row], tally: _Tally
) -> tuple[str, list[Any]]:
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
        [r["explanation"] for r in rows],
        [r["explained_by"] for r in rows],
        [r["mac"] for r in rows],
    ]
    if not tally.patients:
        return _INSERT_READS, params
    return _INSERT_READS_AND_TALLY, [*params, *tally.params()]


def audit_event_write(
    *,
    event_type: EventType,
    patient_id: uuid.UUID | None = None,
    model_label: str = "",
    object_pk: object = "",
    fields: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
    actor: active.Actor | None = None,
) -> AuditEvent:
    """Record a write or a security event now, in the caller's transaction.

    Then runs the hooks registered for its type (``event_hook_register``): security events
    are mailed to the practice admins that way (investigations/alerts.py).
    """
    ctx = active.current()
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
    if event_type in AFTERWARDS_EVENT_TYPES and patient_id is not None and columns["actor_user_id"] is not None:
        reads_explained_afterwards(event)
    for hook in _EVENT_HOOKS.get(int(event_type), ()):
        hook()
    return event


# A user's write for a patient that explains their unexplained reads of the patient just before
# (the phone call that ends in a booking): creating or changing the record, booking, moving,
# cancelling or changing one of the patient's appointments.
AFTERWARDS_EVENT_TYPES = frozenset(
    {EventType.CREATE, EventType.CHANGE, EventType.ARCHIVE, EventType.RESTORE, EventType.MERGE}
)


def reads_explained_afterwards(event: AuditEvent) -> AuditEvent | None:
    """Give the patient of ``event`` (a write) back to its author's allowance if they read it
    unexplained within ``EXPLAIN_AFTERWARDS_MINUTES`` before, and write a READ_EXPLAINED event
    naming those reads and the write that explains them. In the caller's transaction, like the
    write itself: a rolled-back booking explains nothing. None if there was nothing to explain."""
    if event.actor_user_id is None or event.patient_id is None:  # nobody's reads, or no patient's
        return None
    since = event.occurred_at - datetime.timedelta(minutes=settings.EXPLAIN_AFTERWARDS_MINUTES)
    uses = AllowanceUse.objects.filter(
        user_id=event.actor_user_id,
        patient_id=event.patient_id,
        kind__in=[AllowanceKind.UNEXPLAINED, AllowanceKind.MASKED],
        used_at__gte=since,
        given_back_at__isnull=True,
    )
    if not uses.update(given_back_at=event.occurred_at):
        return None
    reads = list(
        AuditEvent.objects.filter(
            actor_user_id=event.actor_user_id,
            occurred_at__gte=since,
            patient_id=event.patient_id,
            event_type=EventType.READ,
            explanation__in=[Explanation.UNEXPLAINED, Explanation.MASKED],
        )
        .order_by("id")
        .values_list("id", flat=True)[:100]
    )
    return audit_event_write(
        event_type=EventType.READ_EXPLAINED,
        patient_id=event.patient_id,
        model_label=event.model_label,
        object_pk=event.object_pk,
        extra={"reads": reads, "explained_by": event.pk, "event_type": event.event_type},
    )


# The trail's own records, changed by a practice admin ----------------------------------------


def read_block_lift(*, block: ReadBlock, actor: active.Actor, reason: str) -> ReadBlock:
    """Lift a read budget block (audit.budget): the account decrypts again. A written reason
    is required; audited (BUDGET_LIFTED, with the reason).

    ``actor`` is a practice admin, never the blocked account itself (the admin refuses that
    too: a stolen session must not unblock itself). A block already lifted stays as it was.
    """
    reason = reason.strip()
    if not reason:
        raise ValueError("A reason is required to lift a read budget block.")
    if actor.user_id is not None and actor.user_id == block.user_id:
        raise PermissionError("An account cannot lift its own read budget block.")
    with transaction.atomic():
        locked = ReadBlock.objects.select_for_update().get(pk=block.pk)
        if locked.lifted_at is not None:
            return locked
        # The account's counts start again from the lift.
        locked.lifted_at = timezone.now()
        locked.lifted_by = actor.username[:150]
        locked.lift_reason = reason
        locked.save(update_fields=["lifted_at", "lifted_by", "lift_reason"])
        audit_event_write(
            event_type=EventType.BUDGET_LIFTED,
            actor=actor,
            extra={
                "block": locked.pk,
                "user_id": locked.user_id,
                "username": locked.username,
                "reason": reason,
            },
        )
    return locked
