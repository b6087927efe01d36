"""Read budgets: how many patients one account may decrypt (DESIGN.md, Invariant 2).

Rules enforced here:

- Per role (``settings.READ_BUDGETS``, "per hour/per day"), an account may decrypt at most
  ``day`` distinct patients in any rolling 24 hours, and reach at most ``hour`` patients new
  to it (not decrypted by it in the 24 hours before) in any rolling hour. Re-opening a patient
  the account decrypted in the last 24 hours costs nothing and is never refused, so the front
  desk's day view, opened again and again, counts its patients once.
- The check runs before every decryption (``audit.fields.EncryptedMixin.decrypt_for`` calls
  ``AuditContext.admit``): no path that decrypts for a user skips it, admin and exports
  included. System jobs (``system:<job>`` actors: Celery tasks, management commands, the
  shell, ``dumpdata``) have no budget: no person is behind them to be scraped from.
- Past the budget the decryption raises ``ReadBudgetExceeded`` before anything is decrypted;
  the audit middleware withholds the page and answers 429 from a fixed template; a
  ``ReadBlock`` is opened and a ``BUDGET_BLOCK`` event written (mailed to the practice admins).
  While a block is open, nothing decrypts for that account, until a practice admin lifts it
  with a written reason (``read_block_lift``, audited as ``BUDGET_LIFTED``); the counts then
  start again from the lift.

Cost: a request that decrypts pays one query at its first decryption: its account's open
or recently lifted blocks, and its reads of the last 24 hours grouped by patient (on the
trail's (actor_user_id, occurred_at) index), in one UNION ALL; every later decryption is a
set lookup. A request that reached patients new to the account pays one more, small query
after its trail write: the re-check below.

Concurrency: parallel requests of one account each check against what was written before
they started, so together they could pass the budget. The re-check closes that without a
lock: after a request has written its own reads (the response has not left yet), it reads
the account's reads written since it started and counts again; over budget, its page is
withheld (429) and the account blocked. Of any set of parallel requests, the last to
re-check sees the reads of all those that re-checked before it, so the patients whose pages
actually leave never exceed one budget. The patients of withheld pages stay in the trail:
they were decrypted in the server, though never sent. (The re-check looks back
``RECHECK_MARGIN`` before the request's start for reads stamped before it but committed
after: a trail insert stalled longer than that could escape it.)
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import CharField, DateTimeField, Exists, IntegerField, Min, Q, UUIDField, Value
from django.utils import timezone

from audit.models import AuditEvent, EventType, ReadBlock

logger = logging.getLogger("audit")

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(hours=24)
# How far before a request's first decryption its re-check looks for reads of parallel
# requests: a row is stamped just before its INSERT, which commits a few ms later.
RECHECK_MARGIN = datetime.timedelta(seconds=60)


def _now() -> datetime.datetime:
    # The budget's clock (tests move it; the trail they read stays as written).
    return timezone.now()


class ReadBudgetExceeded(Exception):
    """A decryption refused: the account is past its read budget, or already blocked.

    Deliberately a plain Exception: Django's template engine swallows the exceptions it
    expects from a lookup (AttributeError, KeyError, ...) and any exception marked
    ``silent_variable_failure``; this one must reach the audit middleware. The middleware
    also checks the context, so a refusal caught by code on its way out still withholds
    the page.
    """

    silent_variable_failure = False

    def __init__(self, *, window: str, patients_read: int, budget: int, already_blocked: bool = False):
        self.window = window
        self.patients_read = patients_read
        self.budget = budget
        self.already_blocked = already_blocked
        super().__init__(f"Read budget exceeded ({window}: {patients_read} patients, budget {budget}).")


def budget_for_role(role: str) -> tuple[int, int]:
    """(per hour, per day) for a role name of ``practice.roles.role_of``."""
    budgets = settings.READ_BUDGETS
    return budgets.get(role) or budgets["default"]


def _as_uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass
class ReadBudget:
    """One account's budget, as seen by one audit context (a request).

    ``_first``: patient -> first decryption by this account in the last 24 hours, loaded at
    the context's first decryption and kept up to date as this context admits patients.
    """

    user_id: int
    username: str
    role: str
    hour_limit: int
    day_limit: int
    refused: ReadBudgetExceeded | None = None
    _loaded_at: datetime.datetime | None = None
    _since: datetime.datetime | None = None
    _first: dict[uuid.UUID, datetime.datetime] = field(default_factory=dict)
    _hour_count: int = 0
    _passed: set[uuid.UUID] = field(default_factory=set)
    _new: set[uuid.UUID] = field(default_factory=set)

    @classmethod
    def for_actor(cls, actor) -> ReadBudget:
        hour, day = budget_for_role(actor.role)
        return cls(user_id=actor.user_id, username=actor.username, role=actor.role, hour_limit=hour, day_limit=day)

    @property
    def new_patients(self) -> int:
        """Patients this context reached that the account had not decrypted in the last 24 h."""
        return len(self._new)

    def admit(self, patient_id) -> None:
        """Let one decryption of this patient's data happen, or raise ReadBudgetExceeded."""
        if patient_id in self._passed:  # the common case: another field or row of a patient already let through
            return
        if self.refused is not None:
            raise self.refused
        patient = _as_uuid(patient_id)
        if patient in self._passed:
            self._passed.add(patient_id)
            return
        if self._loaded_at is None:
            self._load()
        if patient not in self._first:
            day_count = len(self._first)
            if day_count >= self.day_limit:
                self._refuse("day", day_count, self.day_limit)
            if self._hour_count >= self.hour_limit:
                self._refuse("hour", self._hour_count, self.hour_limit)
            self._first[patient] = _now()
            self._hour_count += 1
            self._new.add(patient)
        self._passed.update((patient, patient_id))

    def _refuse(self, window: str, count: int, budget: int, *, already_blocked: bool = False):
        self.refused = ReadBudgetExceeded(
            window=window, patients_read=count, budget=budget, already_blocked=already_blocked
        )
        logger.warning(
            "Read budget: decryption refused for %s (%s, %s window: %d patients, budget %d)%s",
            self.username,
            self.role,
            window,
            count,
            budget,
            " (account blocked)" if already_blocked else "",
        )
        raise self.refused

    def _load(self) -> None:
        """The account's open block, its blocks lifted in the last 24 h, and its first read of
        each patient in the last 24 h: one query (a UNION ALL of two indexed ones)."""
        now = _now()
        since = now - DAY
        blocks = (
            ReadBlock.objects.filter(Q(lifted_at__isnull=True) | Q(lifted_at__gte=since), user_id=self.user_id)
            .values_list(
                Value(None, output_field=UUIDField()), "blocked_at", "lifted_at", "window", "patients_read", "budget"
            )
            .order_by()
        )
        first: dict[uuid.UUID, datetime.datetime] = {}
        lifted_last = None
        # A blocked account's reads are not needed: the NOT EXISTS (evaluated once) skips them.
        open_block = ReadBlock.objects.filter(user_id=self.user_id, lifted_at__isnull=True)
        reads = self._reads_since(since).exclude(Exists(open_block))
        for patient, at, lifted_at, window, patients_read, budget in reads.union(blocks, all=True):
            if patient is not None:
                first[_as_uuid(patient)] = at
            elif lifted_at is None:  # the open block: nothing decrypts
                self._loaded_at = now
                self._refuse(window, patients_read, budget, already_blocked=True)
            elif lifted_last is None or lifted_at > lifted_last:
                lifted_last = lifted_at
        if lifted_last is not None:
            # Lifted less than a day ago: the count starts again from the lift (else the next
            # new patient would block again at once). One more query, in the day after a lift.
            first = self._first_reads(since=lifted_last)
        self._first = first
        self._since = lifted_last or since
        self._hour_count = sum(1 for at in first.values() if at >= now - HOUR)
        self._loaded_at = now

    def _reads_since(self, since: datetime.datetime):
        """(patient, first READ by this account since ``since``, and four empty columns that
        line up with the blocks' in ``_load``'s UNION), on the (actor_user_id, occurred_at) index."""
        return (
            AuditEvent.objects.filter(
                actor_user_id=self.user_id, occurred_at__gte=since, event_type=EventType.READ, patient_id__isnull=False
            )
            .values("patient_id")
            .annotate(first=Min("occurred_at"))
            .values_list(
                "patient_id",
                "first",
                Value(None, output_field=DateTimeField()),
                Value("", output_field=CharField()),
                Value(0, output_field=IntegerField()),
                Value(0, output_field=IntegerField()),
            )
            .order_by()
        )

    def _first_reads(self, *, since: datetime.datetime) -> dict[uuid.UUID, datetime.datetime]:
        return {_as_uuid(row[0]): row[1] for row in self._reads_since(since)}

    def recheck(self) -> ReadBudgetExceeded | None:
        """After this context's reads are written: count again with the reads of parallel
        requests written since it started. Over budget: the refusal (the page is withheld)."""
        if self.refused is not None or not self._new or self._loaded_at is None:
            return self.refused
        recent = self._first_reads(since=max(self._since, self._loaded_at - RECHECK_MARGIN))
        for patient, first in recent.items():
            if patient not in self._first:
                self._first[patient] = first
                if first >= self._loaded_at - HOUR:
                    self._hour_count += 1
        day_count = len(self._first)
        try:
            if day_count > self.day_limit:
                self._refuse("day", day_count, self.day_limit)
            if self._hour_count > self.hour_limit:
                self._refuse("hour", self._hour_count, self.hour_limit)
        except ReadBudgetExceeded as refusal:
            return refusal
        return None


def budget_settle(ctx) -> ReadBudgetExceeded | None:
    """Once a context's reads are written: re-check its budget, and open the block if refused.

    Returns the refusal (the caller withholds what was decrypted), or None. A database error
    in the re-check propagates (the caller fails closed); one in writing the block is logged,
    and the refusal still stands.
    """
    budget = getattr(ctx, "budget", None)
    if budget is None:
        return None
    refusal = budget.recheck()
    if refusal is not None and not refusal.already_blocked:
        try:
            read_block_open(budget=budget, refusal=refusal)
        except DatabaseError:
            logger.exception("Read budget: could not record the block of %s", budget.username)
    return refusal


def read_block_open(*, budget: ReadBudget, refusal: ReadBudgetExceeded):
    """Block the account and write BUDGET_BLOCK (mailed to the practice admins), together.

    None if a block is already open (a parallel request opened it: one block, one alert).
    """
    from audit.services import audit_event_write

    try:
        with transaction.atomic():
            block = ReadBlock.objects.create(
                user_id=budget.user_id,
                username=budget.username[:150],
                role=budget.role[:40],
                blocked_at=_now(),
                window=refusal.window,
                patients_read=refusal.patients_read,
                budget=refusal.budget,
            )
            audit_event_write(
                event_type=EventType.BUDGET_BLOCK,
                extra={
                    "block": block.pk,
                    "window": refusal.window,
                    "patients_read": refusal.patients_read,
                    "budget": refusal.budget,
                },
            )
    except IntegrityError:
        return None
    return block


def read_block_lift(*, block, actor, reason: str):
    """Lift a block: the account decrypts again. A written reason is required; audited.

    ``actor`` is an ``audit.context.Actor``: a practice admin, never the blocked account
    itself (the admin refuses that too: a stolen session must not unblock itself).
    """
    from audit.services import audit_event_write

    reason = reason.strip()
    if not reason:
        raise ValueError("A reason is required to lift a read budget block.")
    if actor.user_id is not None and actor.user_id == block.user_id:
        raise PermissionError("An account cannot lift its own read budget block.")
    with transaction.atomic():
        locked = ReadBlock.objects.select_for_update().get(pk=block.pk)
        if locked.lifted_at is not None:
            return locked
        locked.lifted_at = _now()
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
