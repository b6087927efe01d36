"""Explained reads: why each patient may be decrypted for its reader, decided before decrypting
(docs/design.md, invariant 2).

Rules enforced here:

- Before a user's first decryption of a patient's data, the patient is given an explanation
  from plaintext columns only. The registered explainers are asked in their order and the
  first that holds wins: an appointment near now with a practitioner the user works for, a
  care relationship, the user's own recent write, an open emergency-access grant, a reason
  the user stated today. Each app that owns the data registers its explainers here in its
  ``AppConfig.ready()`` (scheduling: appointments and care; patients: grants); this module
  registers the two it owns (own action, stated reason). Nothing here imports a domain app.
- Explaining costs one query per batch of rows: ``EncryptedQuerySet`` hands the patients of
  the rows it loads to ``Admission.prepare``, which asks every explainer at once (one UNION
  ALL of plain SQL, the batch's patients as one array parameter), so a list or a day view pays
  one query for all its patients, never one per patient.
- A patient nothing explains is paid from the user's allowance (``READ_ALLOWANCES``, per role:
  distinct patients per rolling hour and day; masked search lines have their own, larger
  ``READ_MASKED_ALLOWANCES``). A patient already paid for in the last day costs nothing again.
- Past the allowance the page is withheld and the step-up page asks why: a written reason and
  the second factor again (``reason_state``). Each patient asked for counts against
  ``READ_REASONS`` (per hour and day); past that the account is blocked (``ReadBlock``, window
  "reasons") and the practice admins are alerted, exactly as for the read budget.
- A read explained later (the same user books, moves, cancels or edits for the patient within
  ``EXPLAIN_AFTERWARDS_MINUTES``) gets a READ_EXPLAINED event and is given back to the
  allowance (``audit.services.reads_explained_afterwards``).
- The allowance is counted per account in the database (``AllowanceUse``), never in the
  session: a new login or a new session does not reset it. Claims are serialized per account
  (an advisory lock on PostgreSQL, the write lock on SQLite), so parallel requests cannot
  spend one allowance twice.

System jobs (no user behind the actor) are not explained: they have no allowance, like the
budget, and their reads carry no explanation.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audit import current as active
from audit.models import AllowanceKind, AllowanceUse, EventType, Explanation, ReadBlock, ReadReason
from audit.services import audit_event_write

logger = logging.getLogger("audit")

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(hours=24)
# pg_advisory_xact_lock(class, user): "allo" in ASCII; the two-key space never meets the chain's
# single-key lock.
ALLOWANCE_LOCK_CLASS = 0x616C6C6F
# Trail events that are the user's own action on a patient (the "own action" explanation).
OWN_ACTION_EVENTS = (
    EventType.CREATE,
    EventType.CHANGE,
    EventType.ARCHIVE,
    EventType.RESTORE,
    EventType.MERGE,
)


@dataclass(frozen=True)
class Reader:
    """Who is being explained to: the account and its role (``practice.roles`` names)."""

    user_id: int
    role: str


# An explainer: (reader, now) -> (sql, params), or None when it cannot hold for this reader. The
# SQL selects two columns, ``patient`` (the patient's id) and ``ref`` (what explains it, as text:
# ``CAST(x AS TEXT)``), from plaintext columns only, and filters the patient column with the
# ``{patients}`` marker (``WHERE a.patient_id {patients} AND ...``): audit puts the batch's
# patients there as one parameter. Parameters are named (``%(name)s``); ``user`` (the reader's
# id), ``now`` and ``patients`` are given, the explainer's own ones are prefixed with its code.
# Plain SQL, written once per kind of reader: building the same query through the ORM cost 3 ms
# a record page in Python (bench/explain_bench.py), three times the database's work.
Build = Callable[[Reader, datetime.datetime], tuple[str, dict] | None]


@dataclass(frozen=True)
class Explainer:
    code: str
    order: int
    build: Build


_explainers: dict[str, Explainer] = {}


def explainer_register(code: str, build: Build, *, order: int) -> None:
    """Register an explainer (from an ``AppConfig.ready()``). ``code`` is an ``Explanation``
    value; the lowest ``order`` that holds wins. Registering a code again replaces it."""
    if code not in Explanation.values:
        raise ValueError(f"Unknown explanation code {code!r}: add it to audit.models.Explanation.")
    _explainers[code] = Explainer(code=code, order=order, build=build)


def explainers() -> list[Explainer]:
    return sorted(_explainers.values(), key=lambda e: e.order)


def _as_uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def sql_time(moment: datetime.datetime):
    """A moment as the database takes it in raw SQL (SQLite stores text)."""
    return connection.ops.adapt_datetimefield_value(moment)


def _patients_filter() -> str:
    """What replaces ``{patients}``: membership in the batch, one parameter for all of it.

    PostgreSQL: the array is bound once, in a CTE, and each part compares with it through a
    scalar subquery; the parts are then planned for any batch (a generic plan on each part's
    patient index) instead of for the 300 ids written out five times, which cost more to send
    and parse than to run, and led the planner into bitmap plans over a practitioner's whole
    history (bench/explain_bench.py: day view 7.2 -> 4.3 ms, record page 1.1 -> 0.9 ms)."""
    if connection.vendor == "postgresql":
        return "= ANY((SELECT batch.ids FROM batch)::uuid[])"
    return "IN (SELECT value FROM json_each(%(patients)s))"  # SQLite keeps UUIDs as 32 hex digits


def _patients_cte() -> str:
    return "WITH batch AS (SELECT %(patients)s::uuid[] AS ids) " if connection.vendor == "postgresql" else ""


def _patients_param(ids: list[uuid.UUID]):
    if connection.vendor == "postgresql":
        return ids
    return json.dumps([patient.hex for patient in ids])


def explanations_query(reader: Reader, patient_ids: list, now: datetime.datetime) -> tuple[str, dict] | None:
    """Every explainer's rows for these patients as one UNION ALL of (patient, ref, code)."""
    parts, params = [], {"user": reader.user_id, "now": sql_time(now)}
    marker = _patients_filter()
    for explainer in explainers():
        built = explainer.build(reader, now)
        if built is None:
            continue
        sql, own = built
        # The code is an Explanation value (checked at registration): a constant, never input.
        parts.append(
            f"SELECT e.patient, e.ref, '{explainer.code}' AS code "  # noqa: S608
            f"FROM ({sql.replace('{patients}', marker)}) e"
        )
        params.update(own)
    if not parts:
        return None
    params["patients"] = _patients_param([_as_uuid(p) for p in patient_ids])
    return ADMISSION_TAG + _patients_cte() + " UNION ALL ".join(parts), params


def _ref_text(ref) -> str:
    """A reference as text, UUIDs in their canonical form (SQLite keeps them as 32 hex digits)."""
    text = str(ref)
    if len(text) in (32, 36):
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
    return text


# Starts every statement that explains a batch (with the read budget's load at a request's first).
ADMISSION_TAG = "/* read admission */ "


def explanations_find(reader: Reader, patient_ids: Iterable, now: datetime.datetime, *, counts=None):
    """{patient id: (code, reference)} for the patients some explainer explains: one query.

    ``counts`` is an optional (sql, params) of one row (the read budget's load, audit.budget,
    with named parameters) run in the same statement: then the result is (explanations, that row).
    """
    ids = sorted({_as_uuid(p) for p in patient_ids})
    query = explanations_query(reader, ids, now) if ids else None
    rows, counted = [], None
    if counts is not None:
        counts_sql, counts_params = counts
        if query is None:
            sql, params = f"{ADMISSION_TAG}SELECT c.*, NULL, NULL, NULL FROM ({counts_sql}) c", counts_params  # noqa: S608
        else:
            union_sql, union_params = query
            sql = f"{ADMISSION_TAG}SELECT c.*, e.* FROM ({counts_sql}) c LEFT JOIN ({union_sql}) e ON 1 = 1"  # noqa: S608
            params = {**union_params, **counts_params}
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            fetched = cursor.fetchall()
        counted = fetched[0]
        rows = [row[-3:] for row in fetched if row[-3] is not None]
    elif query is not None:
        with connection.cursor() as cursor:
            cursor.execute(*query)
            rows = cursor.fetchall()
    rank = {e.code: e.order for e in explainers()}
    found: dict[uuid.UUID, tuple[str, str]] = {}
    for patient, raw_ref, code in rows:
        patient, ref = _as_uuid(patient), _ref_text(raw_ref)
        held = found.get(patient)
        if held is None or rank[code] < rank[held[0]] or (rank[code] == rank[held[0]] and ref < held[1]):
            found[patient] = (code, ref)
    return found if counts is None else (found, counted)


# --------------------------------------------------------------------------- the two audit owns

_OWN_ACTION_SQL = (
    "SELECT w.patient_id AS patient, CAST(w.id AS TEXT) AS ref FROM audit_auditevent w "
    "WHERE w.actor_user_id = %(user)s AND w.occurred_at >= %(own_since)s "
    # The same list as the partial index audit_actor_writes (its condition must be implied).
    "AND w.event_type IN (10, 11, 12, 13, 14) AND w.patient_id {patients}"
)
assert {10, 11, 12, 13, 14} == {int(t) for t in OWN_ACTION_EVENTS}


def _own_action(reader: Reader, now: datetime.datetime):
    """The user created or changed the patient, or booked, moved, cancelled or changed one of
    the patient's appointments, in the last ``EXPLAIN_OWN_ACTION_HOURS`` (their own trail rows,
    on the partial index of writes: the user's writes of the last day, however old the trail)."""
    since = now - datetime.timedelta(hours=settings.EXPLAIN_OWN_ACTION_HOURS)
    return _OWN_ACTION_SQL, {"own_since": sql_time(since)}


def _stated_reason(reader: Reader, now: datetime.datetime):
    sql = (
        "SELECT r.patient_id AS patient, CAST(r.id AS TEXT) AS ref FROM audit_readreason r "
        "WHERE r.user_id = %(user)s AND r.patient_id {patients} AND r.valid_until > %(now)s"
    )
    return sql, {}


explainer_register(Explanation.OWN_ACTION, _own_action, order=30)
explainer_register(Explanation.REASON, _stated_reason, order=50)


# --------------------------------------------------------------------------- refusals


class ExplanationRequired(Exception):
    """A decryption refused: nothing explains this patient and the allowance is used up. The
    audit middleware withholds the page and shows the step-up page (a reason, the second factor).

    A plain Exception that templates do not swallow (see ``audit.budget.ReadBudgetExceeded``).
    """

    silent_variable_failure = False

    def __init__(self, *, patient_id, masked: bool, window: str, used: int, allowance: int):
        self.patient_id = patient_id
        self.masked = masked
        self.window = window
        self.used = used
        self.allowance = allowance
        super().__init__(f"No explanation for this patient; allowance used ({window}: {used} of {allowance}).")


def limits_for(setting: dict, role: str) -> tuple[int, int]:
    return setting.get(role) or setting["default"]


@dataclass
class Claim:
    """The outcome of spending one patient from an allowance."""

    admitted: bool
    new: bool = False  # counted now (not already counted in the last day)
    window: str = ""
    used: int = 0
    limit: int = 0


def _user_lock(user_id: int) -> None:
    if connection.vendor == "postgresql":  # SQLite: BEGIN IMMEDIATE already serializes writers
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ALLOWANCE_LOCK_CLASS, user_id])


def allowance_spend(*, user_id: int, patient_id, kind: str, limits: tuple[int, int], now) -> Claim:
    """Spend one patient of ``kind`` from the account's allowance, if it fits in both windows.

    In a transaction of its own, under a per-account lock: the count and the new row are one
    step, so parallel requests of one account see each other's spending. Windows start at the
    account's last block lift if that is more recent (else the next patient would block again).
    """
    hour_limit, day_limit = limits
    patient_id = _as_uuid(patient_id)
    with transaction.atomic():
        _user_lock(user_id)
        day_since, hour_since = now - DAY, now - HOUR
        lifted = ReadBlock.objects.filter(user_id=user_id, lifted_at__gte=day_since).aggregate(at=Max("lifted_at"))
        if lifted["at"] is not None:
            day_since, hour_since = max(day_since, lifted["at"]), max(hour_since, lifted["at"])
        mine = AllowanceUse.objects.filter(user_id=user_id, kind=kind)
        row = mine.filter(patient_id=patient_id).first()
        if row is not None and row.used_at >= day_since:
            return Claim(admitted=True)  # already paid for (or explained afterwards) today
        live = mine.filter(used_at__gte=day_since, given_back_at__isnull=True)
        day = live.count()
        if day >= day_limit:
            return Claim(admitted=False, window="day", used=day, limit=day_limit)
        hour = live.filter(used_at__gte=hour_since).count()
        if hour >= hour_limit:
            return Claim(admitted=False, window="hour", used=hour, limit=hour_limit)
        if row is None:
            AllowanceUse.objects.create(user_id=user_id, patient_id=patient_id, kind=kind, used_at=now)
        else:  # a new episode for a patient last paid for more than a day ago
            row.used_at, row.given_back_at = now, None
            row.save(update_fields=["used_at", "given_back_at"])
        return Claim(admitted=True, new=True, used=day + 1, limit=day_limit)


def allowance_purge(*, now: datetime.datetime | None = None) -> int:
    """Delete allowance uses older than a day (nightly, with the tally): the number deleted."""
    cutoff = (now or timezone.now()) - DAY
    deleted, _ = AllowanceUse.objects.filter(used_at__lt=cutoff).delete()
    return deleted


# --------------------------------------------------------------------------- one context's admission


@dataclass
class Admission:
    """One audit context's explanations and allowance spending for one account.

    ``why`` maps each explained patient to (code, reference); ``paid`` each unexplained patient
    admitted in this context to the allowance it was paid from. ``looked`` holds the patients
    already put to the explainers (explained or not), so each is asked about once.
    """

    reader: Reader
    why: dict = field(default_factory=dict)
    paid: dict = field(default_factory=dict)
    looked: set = field(default_factory=set)
    refused: ExplanationRequired | None = None

    def prepare(self, patient_ids: Iterable, *, counts=None):
        """Explain a batch of patients before any of them is decrypted: one query. With
        ``counts`` (the read budget's load), that row rides in the same query and is returned."""
        wanted = {_as_uuid(p) for p in patient_ids if p is not None} - self.looked
        if not wanted and counts is None:
            return None
        found = explanations_find(self.reader, wanted, timezone.now(), counts=counts)
        counted = None
        if counts is not None:
            found, counted = found
        self.why.update(found)
        self.looked |= wanted
        return counted

    def admit(self, patient_id, *, masked: bool, on_block: Callable[[str, int, int], None]) -> None:
        """Let one decryption of this patient happen, or raise ``ExplanationRequired``.

        ``on_block(window, count, limit)`` blocks the account (raises) when a step-up would pass
        the reason limit.
        """
        patient = _as_uuid(patient_id)
        if patient in self.why:
            return
        if patient not in self.looked:
            self.prepare([patient])
            if patient in self.why:
                return
        kind = AllowanceKind.MASKED if masked else AllowanceKind.UNEXPLAINED
        if kind in self.paid.get(patient, ()):
            return
        role = self.reader.role
        limits = limits_for(settings.READ_MASKED_ALLOWANCES if masked else settings.READ_ALLOWANCES, role)
        now = timezone.now()
        claim = allowance_spend(user_id=self.reader.user_id, patient_id=patient, kind=kind, limits=limits, now=now)
        if claim.admitted:
            self.paid.setdefault(patient, set()).add(kind)
            return
        self._step_up(patient, masked=masked, claim=claim, now=now, on_block=on_block)

    def _step_up(self, patient, *, masked: bool, claim: Claim, now, on_block) -> None:
        asked = allowance_spend(
            user_id=self.reader.user_id,
            patient_id=patient,
            kind=AllowanceKind.ASKED,
            limits=settings.READ_REASONS,
            now=now,
        )
        if not asked.admitted:
            on_block("reasons", asked.used, asked.limit)
        if asked.new:
            audit_event_write(
                event_type=EventType.REASON_ASKED,
                patient_id=patient,
                extra={"allowance": "masked" if masked else "unexplained", "window": claim.window},
            )
        self.refused = ExplanationRequired(
            patient_id=patient, masked=masked, window=claim.window, used=claim.used, allowance=claim.limit
        )
        logger.info(
            "Explained reads: step-up asked of user %s (%s allowance, %s window: %d of %d)",
            self.reader.user_id,
            "masked" if masked else "unexplained",
            claim.window,
            claim.used,
            claim.limit,
        )
        raise self.refused

    def explanation_of(self, patient_id) -> tuple[str, str]:
        """What a READ row of this patient records: (code, reference)."""
        patient = _as_uuid(patient_id)
        held = self.why.get(patient)
        if held is not None:
            return held
        kinds = self.paid.get(patient, ())
        if AllowanceKind.UNEXPLAINED in kinds:
            return Explanation.UNEXPLAINED, ""
        if AllowanceKind.MASKED in kinds:
            return Explanation.MASKED, ""
        return Explanation.UNEXPLAINED, ""


# --------------------------------------------------------------------------- masked lines


@contextlib.contextmanager
def masked_lines():
    """Decryptions inside this block serve masked lines only (a search by last name alone: the
    first names' initial and the birth year): an unexplained patient is paid from the masked
    allowance instead of the full one."""
    ctx = active.current()
    if ctx is None:
        yield
        return
    saved, ctx.masked = ctx.masked, True
    try:
        yield
    finally:
        ctx.masked = saved


# --------------------------------------------------------------------------- stated reasons


def reason_valid_until(now: datetime.datetime) -> datetime.datetime:
    """The end of the practice's day (its time zone), DST-safe."""
    local = timezone.localtime(now)
    tomorrow = local.date() + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(tomorrow, datetime.time.min)
    return timezone.make_aware(midnight, local.tzinfo)


def reason_asked(*, user_id: int, patient_id, now: datetime.datetime | None = None) -> bool:
    """Was this user asked (the step-up page) for a reason to open this patient today?"""
    now = now or timezone.now()
    return AllowanceUse.objects.filter(
        user_id=user_id, patient_id=patient_id, kind=AllowanceKind.ASKED, used_at__gte=now - DAY
    ).exists()


def reason_state(*, actor, patient_id, reason: str) -> ReadReason:
    """Record the reason a user gave for opening one patient: it explains that patient for that
    user until the end of the day. The reason and its REASON_STATED event commit together.
    ``actor`` is an ``audit.context.Actor`` of a user. The caller has checked the second factor."""
    reason = reason.strip()
    if len(reason) < settings.READ_REASON_MIN_LENGTH:
        raise ValueError("The reason is too short.")
    now = timezone.now()
    with transaction.atomic():
        stated = ReadReason.objects.create(
            user_id=actor.user_id,
            username=actor.username[:150],
            patient_id=_as_uuid(patient_id),
            reason=reason,
            stated_at=now,
            valid_until=reason_valid_until(now),
        )
        audit_event_write(
            event_type=EventType.REASON_STATED,
            patient_id=stated.patient_id,
            extra={"reason": reason, "reason_id": str(stated.pk)},
        )
    return stated
