"""Read budgets: how many patients one account may decrypt (docs/design.md, invariant 2).

Rules enforced here:

- Per role (``settings.READ_BUDGETS``, "per hour/per day"), an account may decrypt at most
  ``day`` distinct patients in any rolling 24 hours, and reach at most ``hour`` patients new
  to it (not decrypted by it in the 24 hours before) in any rolling hour. Re-opening a patient
  the account decrypted in the last 24 hours costs nothing and is never refused, so the front
  desk's day view, opened again and again, counts its patients once. (A patient stays
  counted up to ``TALLY_STEP`` longer than 24 hours after its last read: see below.)
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

Cost (the counts come from ``audit.ReadTally``, one row per account and patient, upserted
in the trail's own INSERT statement): a request that decrypts pays one query at its first
decryption, which reads the account's open block, its last lift, and two counts on the
tally's (user, last read) index: patients in the day window and patients new in the hour.
While those counts plus the patients this request has reached stay within both budgets,
every decryption is admitted without knowing whether its patient is new (it is counted as
if it were); only near a budget does the request load the account's patients of the day
(at most one budget of ids, once) to tell new patients from known ones exactly. So the
check costs the same whether the account read ten patients today or a thousand.

Concurrency: parallel requests of one account each check against what was written before
they started, so together they could pass the budget. The re-check closes that without a
lock of its own: the trail write that records a request's reads also counts the account's
patients (in the same statement as the INSERT, only when some patient was new), under the
chain's advisory lock, which every trail writer holds until its commit. So each write sees
every earlier writer's reads, and of any set of parallel requests the last to write sees
all the others'. Over budget, its page is withheld (429) and the account blocked: the
patients whose pages actually leave never exceed one budget. The patients of withheld
pages stay in the trail: they were decrypted in the server, though never sent.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from audit.models import TALLY_DAY, EventType, ReadBlock, ReadTally
from audit.services import audit_event_write

if TYPE_CHECKING:
    from audit.context import Actor, AuditContext

logger = logging.getLogger("audit")

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(hours=24)
UNCAPPED = 2**31 - 1


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


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass
class _Counts:
    """What the tally and the blocks say of one account at one moment (``_counts_load``)."""

    lifted_at: datetime.datetime | None
    day: int  # patients read in the day window
    hour: int  # patients new to the account in the hour window
    open_block: tuple[str, int, int] | None  # (window, patients read, budget) of the block in force


@dataclass
class ReadBudget:
    """One account's budget, as seen by one audit context (a request).

    Two modes. Counting (the usual): ``_day`` and ``_hour`` are the tally's counts at the
    context's first decryption, and ``_unsure`` the patients admitted since, each counted as
    new. Exact (near a budget): ``_known`` maps every patient of the day window to its first
    read, so a known patient costs nothing and a new one is counted once.
    """

    user_id: int
    username: str
    role: str
    hour_limit: int
    day_limit: int
    refused: ReadBudgetExceeded | None = None
    _loaded_at: datetime.datetime | None = None
    _day_since: datetime.datetime | None = None
    _hour_since: datetime.datetime | None = None
    _lifted_at: datetime.datetime | None = None
    _day: int = 0
    _hour: int = 0
    _unsure: set[uuid.UUID] = field(default_factory=set)
    _known: dict[uuid.UUID, datetime.datetime] | None = None
    _new: set[uuid.UUID] = field(default_factory=set)
    _passed: set[object] = field(default_factory=set)
    # The trail write said some patients of this context were new to the account, without
    # counting (the re-check counts), or counted: the day and hour counts after it.
    _wrote_new: bool = False
    _after: tuple[int, int] | None = None

    @classmethod
    def for_actor(cls, actor: Actor) -> ReadBudget:
        if actor.user_id is None:
            raise ValueError("Read budgets are an account's: a system job has none.")
        hour, day = budget_for_role(actor.role)
        return cls(user_id=actor.user_id, username=actor.username, role=actor.role, hour_limit=hour, day_limit=day)

    def admit(self, patient_id: object) -> None:
        """Let one decryption of this patient's data happen, or raise ReadBudgetExceeded."""
        if patient_id in self._passed:  # the common case: another field or row of a patient already let through
            return
        if self.refused is not None:
            raise self.refused
        patient = _as_uuid(patient_id)
        if patient not in self._passed:
            if self._loaded_at is None:
                self._load()
            if not self._admit_counting(patient):
                self._admit_exact(patient)
        self._passed.update((patient, patient_id))

    def _admit_counting(self, patient: uuid.UUID) -> bool:
        """Admit the patient as if new, if that stays within both budgets; False otherwise."""
        if self._known is not None:
            return False
        reached = len(self._unsure) + 1
        if self._day + reached > self.day_limit or self._hour + reached > self.hour_limit:
            self._exact_load()
            return False
        self._unsure.add(patient)
        return True

    def _admit_exact(self, patient: uuid.UUID) -> None:
        # _admit_counting made the exact load (after the load) before it returned False.
        assert self._known is not None
        assert self._loaded_at is not None
        if patient in self._known:
            return
        if len(self._known) >= self.day_limit:
            self._refuse("day", len(self._known), self.day_limit)
        if self._hour >= self.hour_limit:
            self._refuse("hour", self._hour, self.hour_limit)
        self._known[patient] = self._loaded_at
        self._hour += 1
        self._new.add(patient)

    def block_for_reasons(self, window: str, count: int, limit: int) -> None:
        """Too many step-ups (audit.explain): refuse like a budget past its limit, so the block
        opens and the admins are alerted once this context's reads are written."""
        self._refuse(window, count, limit)

    def _refuse(self, window: str, count: int, budget: int, *, already_blocked: bool = False) -> NoReturn:
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
        """At the context's first decryption: the block in force, the last lift, the counts."""
        now = timezone.now()
        self.loaded(_counts_load(self.user_id, now, day_cap=self.day_limit + 1, hour_cap=self.hour_limit + 1), now)

    @property
    def is_loaded(self) -> bool:
        return self._loaded_at is not None

    def counts_query(self) -> tuple[str, dict[str, Any], datetime.datetime]:
        """The load's statement, for a caller that runs it with its own (audit.explain runs it
        in the explanation query of the context's first batch of rows: one round trip for both)."""
        now = timezone.now()
        sql, params = counts_statement(self.user_id, now, day_cap=self.day_limit + 1, hour_cap=self.hour_limit + 1)
        return sql, params, now

    def loaded(self, counts: _Counts, now: datetime.datetime) -> None:
        """Take the counts of ``_counts_load`` (or of ``counts_query`` run elsewhere)."""
        self._loaded_at = now
        if counts.open_block is not None:  # nothing decrypts until a practice admin lifts it
            window, patients_read, budget = counts.open_block
            self._refuse(window, patients_read, budget, already_blocked=True)
        self._lifted_at = counts.lifted_at
        # Lifted less than a day ago: the count starts again from the lift (else the next new
        # patient would block again at once).
        self._day_since = max(now - TALLY_DAY, counts.lifted_at or now - TALLY_DAY)
        self._hour_since = max(now - HOUR, counts.lifted_at or now - HOUR)
        self._day, self._hour = counts.day, counts.hour

    def _exact_load(self) -> None:
        """Near a budget: every patient of the day window, then the ones admitted while counting."""
        # Only after the load, which set the windows.
        assert self._loaded_at is not None
        assert self._hour_since is not None
        rows = (
            ReadTally.objects.filter(user_id=self.user_id, last_read_at__gte=self._day_since)
            .values_list("patient_id", "first_read_at")
            .order_by()
        )
        self._known = {_as_uuid(patient): first for patient, first in rows}
        self._hour = sum(1 for first in self._known.values() if first >= self._hour_since)
        for patient in self._unsure:
            if patient not in self._known:
                self._known[patient] = self._loaded_at
                self._hour += 1
                self._new.add(patient)
        self._unsure.clear()

    def windows(self) -> tuple[datetime.datetime, datetime.datetime] | None:
        """Where the day and hour windows start, for the trail write to count in; None if this
        context decrypted nothing for the account, was refused, or the account's block was
        lifted in the last day (then the re-check counts on its own: see ``recheck``)."""
        if self._loaded_at is None or self.refused is not None or self._lifted_at is not None:
            return None
        assert self._day_since is not None  # both set with _loaded_at
        assert self._hour_since is not None
        return self._day_since, self._hour_since

    def written(self, new_patients: int, before: tuple[int, int] | None = None) -> None:
        """The trail write of this context's reads: ``new_patients`` were new to the account,
        and ``before`` (if the write counted) the account's patients in the day and hour windows
        as the write saw them, under the chain lock, without its own rows."""
        if new_patients <= 0:
            return
        if before is None:
            self._wrote_new = True  # the re-check counts after the commit
            return
        day, hour = before[0] + new_patients, before[1] + new_patients
        self._after = (max(day, self._after[0]), max(hour, self._after[1])) if self._after else (day, hour)

    def recheck(self) -> ReadBudgetExceeded | None:
        """Once this context's reads are committed: is the account over budget with the reads of
        parallel requests? Then the refusal (the page is withheld).

        Usually the trail write already counted (``written``): under the chain's lock, after
        every earlier writer's commit, so of parallel requests the last to write sees all the
        others' patients, and the patients whose pages leave never exceed one budget. When it
        could not (after a lift, or a user who logged in mid-request), this counts again, after
        the commit, which is as sound: each request commits before it counts.
        """
        if self.refused is not None or self._loaded_at is None:
            return self.refused
        after = self._after
        # After a lift, a patient read before it is new to the budget but not to the tally.
        if self._wrote_new or (self._lifted_at is not None and (self._unsure or self._new)):
            # Uncapped: the block, if any, records how many patients the account really reached.
            counts = _counts_load(self.user_id, self._loaded_at, day_cap=UNCAPPED, hour_cap=UNCAPPED)
            after = (counts.day, counts.hour)
        if after is None:
            return None
        try:
            if after[0] > self.day_limit:
                self._refuse("day", after[0], self.day_limit)
            if after[1] > self.hour_limit:
                self._refuse("hour", after[1], self.hour_limit)
        except ReadBudgetExceeded as refusal:
            return refusal
        return None


# One statement (audit_readtally is ReadTally, audit_readblock is ReadBlock): the last lift of
# the day decides where both windows start.
COUNTS_SQL = (
    "WITH lift AS (SELECT MAX(lifted_at) AS at FROM audit_readblock "
    "WHERE user_id = %(user)s AND lifted_at >= %(day)s), "
    "w AS (SELECT lift.at AS lifted, "
    "CASE WHEN lift.at > %(day)s THEN lift.at ELSE %(day)s END AS day_since, "
    "CASE WHEN lift.at > %(hour)s THEN lift.at ELSE %(hour)s END AS hour_since FROM lift) "
    "SELECT w.lifted, "
    "(SELECT COUNT(*) FROM (SELECT 1 FROM audit_readtally t WHERE t.user_id = %(user)s "
    "AND t.last_read_at >= w.day_since LIMIT %(day_cap)s) d), "
    "(SELECT COUNT(*) FROM (SELECT 1 FROM audit_readtally t WHERE t.user_id = %(user)s "
    "AND t.last_read_at >= w.hour_since AND t.first_read_at >= w.hour_since LIMIT %(hour_cap)s) h), "
    'b."window", b.patients_read, b.budget FROM w LEFT JOIN audit_readblock b '
    "ON b.user_id = %(user)s AND b.lifted_at IS NULL"
)


COUNTS_COLUMNS = 6


def counts_statement(
    user_id: int, now: datetime.datetime, *, day_cap: int, hour_cap: int
) -> tuple[str, dict[str, Any]]:
    """``COUNTS_SQL`` and its named parameters (it can be joined to another query: audit.explain)."""
    adapt = connection.ops.adapt_datetimefield_value
    params = {
        "user": user_id,
        "day": adapt(now - TALLY_DAY),
        "hour": adapt(now - HOUR),
        "day_cap": day_cap,
        "hour_cap": hour_cap,
    }
    return COUNTS_SQL, params


def counts_from_row(row: tuple[Any, ...]) -> _Counts:
    """The ``_Counts`` of one result row of ``COUNTS_SQL`` (its first ``COUNTS_COLUMNS`` values)."""
    lifted, day, hour, window, patients_read, budget = row[:COUNTS_COLUMNS]
    if isinstance(lifted, str):  # SQLite gives the raw text back
        lifted = ReadBlock._meta.get_field("lifted_at").to_python(lifted)
        lifted = lifted if timezone.is_aware(lifted) else timezone.make_aware(lifted, datetime.UTC)
    return _Counts(
        lifted_at=lifted,
        day=day,
        hour=hour,
        open_block=(window, patients_read, budget) if window is not None else None,
    )


def _counts_load(user_id: int, now: datetime.datetime, *, day_cap: int, hour_cap: int) -> _Counts:
    """The account's block in force, last lift and tally counts at ``now``: one query, on the
    tally's (user_id, last_read_at) index and the blocks' user_id index. Each count stops at
    its cap (a budget plus one: more tells nothing more), so its cost is bounded by the budget,
    not by what an unbudgeted account may have read."""
    sql, params = counts_statement(user_id, now, day_cap=day_cap, hour_cap=hour_cap)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return counts_from_row(cursor.fetchone())


def read_tally_purge(*, now: datetime.datetime | None = None) -> int:
    """Delete the tallies whose last read is older than the budget's day: the number deleted."""
    cutoff = (now or timezone.now()) - TALLY_DAY
    deleted, _ = ReadTally.objects.filter(last_read_at__lt=cutoff).delete()
    return deleted


def budget_settle(ctx: AuditContext) -> ReadBudgetExceeded | None:
    """Once a context's reads are written: re-check its budget, and open the block if refused.

    Returns the refusal (the caller withholds what was decrypted), or None. A database error
    in the re-check propagates (the caller fails closed); one in writing the block is logged,
    and the refusal still stands.
    """
    budget = ctx.budget
    if budget is None:
        return None
    refusal = budget.recheck()
    if refusal is not None and not refusal.already_blocked:
        try:
            read_block_open(budget=budget, refusal=refusal)
        except DatabaseError:
            logger.exception("Read budget: could not record the block of %s", budget.username)
    return refusal


def read_block_open(*, budget: ReadBudget, refusal: ReadBudgetExceeded) -> ReadBlock | None:
    """Block the account and write BUDGET_BLOCK (mailed to the practice admins), together.

    None if a block is already open (a parallel request opened it: one block, one alert).
    """
    try:
        with transaction.atomic():
            block = ReadBlock.objects.create(
                user_id=budget.user_id,
                username=budget.username[:150],
                role=budget.role[:40],
                blocked_at=timezone.now(),
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
