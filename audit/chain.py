"""The audit trail's HMAC chain: tamper evidence for every row.

Rule enforced here: each row's ``mac`` is HMAC-SHA256, keyed by ``AUDIT_CHAIN_KEY`` (kept
outside the database), over the previous row's ``mac`` and this row's canonical content,
its id included. Without the key nobody can change, insert, reorder or renumber a row
without breaking the chain at that row; a deleted row breaks the next row's MAC. The chain
follows the id order: a row's predecessor is the row with the next smaller id that exists.

Rule enforced here too: the ids have no gaps, so a gap means rows were removed. The chain
draws the ids itself, under its lock, from its tip (``audit_chaintip``, one row: the
largest id drawn), in the writer's transaction: a rolled-back write gives its ids back
(a database sequence would not). Cutting rows from the tail leaves a valid chain, and rows
written afterwards chain onto what is left; but their ids go on from the tip, so the cut
shows as a gap, and a tail cut with nothing written after it shows against the tip. An
owner who also rewinds the tip is caught by the heads exported every five minutes
(``head_export``) when ``audit_verify --head-file`` compares the trail with each of them.

Writers serialize (``chain_tail_lock``): on PostgreSQL a transaction-level advisory lock,
taken before the ids are drawn and held until commit, so ids and chain order agree and two
writers never chain onto the same row (a fork); on SQLite the write transaction itself
(``BEGIN IMMEDIATE``, config/settings.py) already does that.

Verification (``trail_verify``: the chain, the gaps in the ids and the exported heads)
streams the rows in id order in constant memory and names the first bad row;
``manage.py audit_verify`` and the nightly task use it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection as default_connection
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.models import AuditEvent

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

# The PostgreSQL advisory lock every chain writer takes ("audit" in ASCII, a constant that no
# other part of the app uses).
ADVISORY_LOCK_ID = 0x6175646974
# Where the trail's heads are exported (``head_export``): route it off the machine.
heads_logger = logging.getLogger("audit.heads")
# The "previous MAC" of the first row.
GENESIS = "0" * 64
# Bumped if the canonical form ever changes (old rows then keep verifying under their version).
VERSION = "cabinet-audit-chain-v1"

# Who acted, from where, for what: the columns an audit context fills in (the writers of
# audit/services.py take them from here).
CONTEXT_COLUMNS = (
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
# Every column of the trail but the MAC, in the order the canonical form lists them: the one
# list of the trail's columns (audit/tests/test_trail_columns.py fails if the model or a
# writer drifts from it). The id is part of the content: a forged row cannot take a free id,
# nor a real row be renumbered.
COLUMNS = (
    "id",
    "occurred_at",
    "event_type",
    *CONTEXT_COLUMNS,
    "model_label",
    "object_pk",
    "patient_id",
    "fields",
    "extra",
    "explanation",
    "explained_by",
)
# A trail row as the chain sees it: column name -> value.
Row = dict[str, Any]


def _ip(value: object) -> str | None:
    # PostgreSQL's inet type rewrites addresses (case, zero compression): compare addresses.
    if value is None or value == "":
        return value
    try:
        return str(ipaddress.ip_address(str(value).split("/")[0]))
    except ValueError:
        return str(value)


def canonical(values: Row) -> bytes:
    """The row's content as bytes: one JSON array in ``COLUMNS`` order.

    Stable across databases and drivers: the time in UTC with microseconds, UUIDs and
    addresses as canonical strings, JSON with sorted keys and no spaces; ``None`` and ``""``
    stay distinct (``null`` and ``""``).
    """
    occurred_at = values["occurred_at"]
    if isinstance(occurred_at, str):
        occurred_at = datetime.datetime.fromisoformat(occurred_at)
    patient_id = values.get("patient_id")
    row = [
        VERSION,
        int(values["id"]),
        occurred_at.astimezone(datetime.UTC).isoformat(timespec="microseconds"),
        int(values["event_type"]),
        values.get("actor_user_id"),
        values.get("actor_username", ""),
        values.get("actor_role", ""),
        _ip(values.get("ip")),
        values.get("user_agent", ""),
        values.get("request_id", ""),
        values.get("session", ""),
        values.get("path", ""),
        values.get("purpose", ""),
        values.get("model_label", ""),
        values.get("object_pk", ""),
        None if patient_id is None else str(patient_id),
        values.get("fields", []),
        values.get("extra", {}),
    ]
    # A read's explanation (audit/explain.py) joins the content only when there is one, so rows
    # written before explanations existed keep their MACs; a row whose explanation is removed
    # or added afterwards no longer matches its own.
    explanation = values.get("explanation") or ""
    if explanation:
        row.append(["why", explanation, values.get("explained_by") or ""])
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def mac_for(prev_mac: str, values: Row, *, key: bytes | None = None) -> str:
    """HMAC-SHA256 (hex) of the previous row's MAC and this row's canonical content."""
    key = settings.AUDIT_CHAIN_KEY if key is None else key
    message = prev_mac.encode("ascii") + b"\n" + canonical(values)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- writing


# Every statement of the chain's bookkeeping starts with this comment (written out in each,
# for the linter's sake), so that query counts can tell it from the page's own queries: it
# belongs to the trail write.
SQL_TAG = "/* audit chain */ "


# PostgreSQL: the lock is its own statement, before the read, because under READ COMMITTED each
# statement sees what was committed when it started: the read must start after the previous
# holder committed. The ids are drawn under the lock from the tip (migration audit.0012), in
# the same statement: the tip moves to the largest of itself and the last row's id, plus the
# count (the upsert carries the last row's id in EXCLUDED.gap_free_after; a missing tip row
# is made again). The tip is a row, so a rollback gives the ids back: no gaps. The trail's
# sequence is no longer used by the chain; it is moved past the tip (setval: outside the
# transaction, harmless) only so that an insert that relies on the column's default, outside
# the chain, cannot take an id the chain gave.
_PG_LOCK = "/* audit chain */ SELECT pg_advisory_xact_lock(%s)"
_PG_TAIL = (
    '/* audit chain */ WITH last AS (SELECT id, mac FROM "audit_auditevent" ORDER BY id DESC LIMIT 1), '
    "tip AS (INSERT INTO audit_chaintip AS t (id, last_id, gap_free_after) "
    "VALUES (1, COALESCE((SELECT id FROM last), 0) + %s, COALESCE((SELECT id FROM last), 0)) "
    "ON CONFLICT (id) DO UPDATE SET last_id = GREATEST(t.last_id, EXCLUDED.gap_free_after) + %s "
    "RETURNING t.last_id) "
    "SELECT (SELECT mac FROM last), tip.last_id, "
    "setval(pg_get_serial_sequence('audit_auditevent', 'id'), GREATEST(tip.last_id, "
    "COALESCE(pg_sequence_last_value(pg_get_serial_sequence('audit_auditevent', 'id')::regclass), 0))) "
    "FROM tip"
)
_SQLITE_TAIL = '/* audit chain */ SELECT id, mac FROM "audit_auditevent" ORDER BY id DESC LIMIT 1'
_SQLITE_TIP = (
    "/* audit chain */ INSERT INTO audit_chaintip (id, last_id, gap_free_after) VALUES (1, %s + %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET last_id = MAX(last_id, excluded.gap_free_after) + %s RETURNING last_id"
)


def chain_tail_lock(count: int, connection: BaseDatabaseWrapper | None = None) -> tuple[str, list[int]]:
    """Take the chain's writer lock; return the last row's MAC and ``count`` fresh ids.

    Must run inside ``transaction.atomic`` and be followed, in the same transaction, by the
    insert of the rows chained onto the returned MAC, with the returned ids (increasing). The
    ids follow the largest id ever drawn (the tip), never a removed row's, and come back if
    the transaction rolls back. SQLite: the transaction already holds the database's write
    lock (BEGIN IMMEDIATE), so the read and the insert see and extend the same tail.
    """
    connection = connection or default_connection
    if not connection.in_atomic_block:
        raise RuntimeError("The audit chain is extended inside a transaction only.")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_PG_LOCK, [ADVISORY_LOCK_ID])
            cursor.execute(_PG_TAIL, [count, count])
            mac, last, _sequence = cursor.fetchone()
            return mac or GENESIS, list(range(last - count + 1, last + 1))
        cursor.execute(_SQLITE_TAIL)
        last_id, mac = cursor.fetchone() or (0, None)
        cursor.execute(_SQLITE_TIP, [last_id, count, last_id, count])
        (last,) = cursor.fetchone()
        return mac or GENESIS, list(range(last - count + 1, last + 1))


def _rows_normalize(rows: list[Row]) -> None:
    for row in rows:
        # The values as the database gives them back (tuples as lists, keys as strings), so
        # that the MAC computed now is the MAC recomputed from the stored row.
        row["fields"] = json.loads(json.dumps(row.get("fields", [])))
        row["extra"] = json.loads(json.dumps(row.get("extra", {})))


def _rows_seal(rows: list[Row], prev: str, ids: list[int]) -> None:
    for row, row_id in zip(rows, ids, strict=True):
        row["id"] = row_id
        row["mac"] = prev = mac_for(prev, row)


def chain_rows(rows: list[Row], connection: BaseDatabaseWrapper | None = None) -> None:
    """Give each row (a dict of column values, without id or mac) its id and MAC, in order.

    Takes the chain lock: call it inside the transaction that inserts the rows, right
    before the insert.
    """
    connection = connection or default_connection
    _rows_normalize(rows)
    prev, ids = chain_tail_lock(len(rows), connection)
    _rows_seal(rows, prev, ids)


def chain_write_alone(
    rows: list[Row],
    statement: Callable[[list[Row]], tuple[str, list[Any]]],
    connection: BaseDatabaseWrapper | None = None,
) -> list[tuple[Any, ...]]:
    """Chain and insert ``rows`` in a transaction of their own, in two round trips (PostgreSQL,
    outside any transaction: a request's reads, written after its view has returned).

    The same steps as ``chain_rows`` followed by the insert inside ``transaction.atomic``, which
    costs five round trips (BEGIN, lock, tail, insert, COMMIT): here ``BEGIN; lock; tail`` go
    as one message and ``insert; COMMIT`` as another (client-side binding, Django's default
    with psycopg 3, sends several statements at once). The lock is still taken and the tail
    still read in statements of their own, in that order. ``statement(rows)`` gives the
    insert's SQL and parameters once the rows have their ids and MACs; the insert's rows (its
    RETURNING) are returned. On any error the transaction is rolled back and the error raised.
    """
    connection = connection or default_connection
    if connection.vendor != "postgresql" or connection.in_atomic_block or not connection.get_autocommit():
        raise RuntimeError("chain_write_alone is for PostgreSQL outside a transaction; use chain_rows.")
    _rows_normalize(rows)
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"BEGIN; {_PG_LOCK}; {_PG_TAIL}", [ADVISORY_LOCK_ID, len(rows), len(rows)])
            cursor.nextset()  # past BEGIN's and the lock's results, to the tail's
            cursor.nextset()
            mac, last, _sequence = cursor.fetchone()
            _rows_seal(rows, mac or GENESIS, list(range(last - len(rows) + 1, last + 1)))
            sql, params = statement(rows)
            cursor.execute(f"{sql}; COMMIT", params)
            return cursor.fetchall() if cursor.description else []
        except BaseException:
            _rollback_quietly(cursor)
            raise


def _rollback_quietly(cursor: CursorWrapper) -> None:
    # The original error is what matters; a connection too broken to roll back is closed by
    # Django at the end of the request (its transaction dies with it).
    with contextlib.suppress(Exception):
        cursor.execute("ROLLBACK")


# --------------------------------------------------------------------------- verifying


@dataclass
class ChainProblem:
    """The first bad row found, and what is wrong with it (in words, for people)."""

    row_id: int | None
    occurred_at: datetime.datetime | None
    actor: str
    event_type: int | None
    reason: str

    def describe(self) -> str:
        if self.row_id is None:
            return self.reason
        when = self.occurred_at.isoformat() if self.occurred_at else "?"
        return _("row %(id)s (%(when)s, %(actor)s, event type %(type)s): %(reason)s") % {
            "id": self.row_id,
            "when": when,
            "actor": self.actor,
            "type": self.event_type,
            "reason": self.reason,
        }


@dataclass
class ChainReport:
    rows: int = 0  # rows verified
    first_id: int | None = None
    last_id: int | None = None  # the head: the last row read
    last_mac: str = ""
    problem: ChainProblem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def rows_stream(*, after_id: int = 0, chunk: int = 5000) -> Iterator[Row]:
    """Every trail row with id > ``after_id``, in id order, ``chunk`` rows per query.

    Keyset pagination on the primary key: constant memory, no long transaction. PostgreSQL
    reads through a plain cursor (twice the ORM's rate: psycopg already gives aware times,
    UUIDs and text; only the two JSON columns are parsed here); SQLite through the ORM, whose
    converters turn its stored text into the same Python values.
    """
    names = (*COLUMNS, "mac")
    if default_connection.vendor == "postgresql":
        select = ", ".join(f'"{name}"' for name in names)
        fields, extra = names.index("fields"), names.index("extra")
        sql = f'SELECT {select} FROM "audit_auditevent" WHERE id > %s ORDER BY id LIMIT %s'  # noqa: S608 (constants)
        while True:
            with default_connection.cursor() as cursor:
                cursor.execute(sql, [after_id, chunk])
                batch = cursor.fetchall()
            for values in batch:
                row = dict(zip(names, values, strict=True))
                row["fields"], row["extra"] = json.loads(values[fields]), json.loads(values[extra])
                yield row
            if len(batch) < chunk:
                return
            after_id = batch[-1][0]
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=after_id).order_by("id").values_list(*names)[:chunk])
        for values in batch:
            yield dict(zip(names, values, strict=True))
        if len(batch) < chunk:
            return
        after_id = batch[-1][0]


def _problem(row: Row, reason: str) -> ChainProblem:
    return ChainProblem(
        row_id=row["id"],
        occurred_at=row["occurred_at"],
        actor=row["actor_username"],
        event_type=row["event_type"],
        reason=reason,
    )


def _diagnose(prev_row: Row | None, prev_mac: str, row: Row, following: Row | None) -> str:
    """Why ``row`` does not chain onto ``prev_mac``, judged from the row after it."""
    if not row["mac"]:
        return _("the row has no MAC: it was written outside the application (or before the chain).")
    gap = ""
    if prev_row is not None and row["id"] > prev_row["id"] + 1:
        gap = " " + _("Ids %(first)s to %(last)s are missing.") % {
            "first": prev_row["id"] + 1,
            "last": row["id"] - 1,
        }
    if following is not None and hmac.compare_digest(mac_for(prev_mac, following), following["mac"]):
        return _("the row was inserted: the next row chains onto the row before it, not onto this one.")
    if following is not None and not hmac.compare_digest(mac_for(row["mac"], following), following["mac"]):
        return _("neither this row nor the next match the chain: rows were changed, inserted or removed here.") + gap
    return _("its content does not match its MAC: the row was changed, or rows just before it were removed.") + gap


def chain_verify(
    *, after_id: int = 0, prev_mac: str = GENESIS, prev_row: Row | None = None, rows: Iterator[Row] | None = None
) -> ChainReport:
    """Recompute the chain over the rows after ``after_id``, starting from ``prev_mac``.

    Stops at the first row whose MAC does not match and names it, with a guess at what
    happened (changed, inserted, rows removed before it) from the row that follows.
    """
    report = ChainReport()
    stream = rows if rows is not None else rows_stream(after_id=after_id)
    key = settings.AUDIT_CHAIN_KEY
    pending = None
    for row in stream:
        if pending is not None:
            report.problem = _problem(pending, _diagnose(prev_row, prev_mac, pending, row))
            return report
        if row["mac"] and hmac.compare_digest(mac_for(prev_mac, row, key=key), row["mac"]):
            report.rows += 1
            report.first_id = report.first_id or row["id"]
            report.last_id, report.last_mac = row["id"], row["mac"]
            prev_mac, prev_row = row["mac"], row
            continue
        pending = row  # bad: look at the next row before saying why
    if pending is not None:
        report.problem = _problem(pending, _diagnose(prev_row, prev_mac, pending, None))
    return report


# --------------------------------------------------------------------------- gaps in the ids

# Gap ranges listed at most (each is one line of the report; the count says if there are more).
GAPS_LISTED = 100

# Ids looked at per statement when looking for gaps: a window over the primary key (an index
# scan, no row fetched), about a second per million ids on the bench machine under load, well
# inside DATABASE_STATEMENT_TIMEOUT however long the trail.
GAPS_CHUNK = 1_000_000
# The missing ids in (%s, %s], the row before being %s; then the largest id there.
_GAPS = (
    "SELECT first, last FROM (SELECT COALESCE(LAG(id) OVER (ORDER BY id), %s) + 1 AS first, id - 1 AS last "
    'FROM "audit_auditevent" WHERE id > %s AND id <= %s) AS g WHERE first <= last ORDER BY first'
)
_GAPS_TOP = 'SELECT MAX(id) FROM "audit_auditevent" WHERE id > %s AND id <= %s'


@dataclass
class Gaps:
    """Ids missing from the trail: ``ranges`` (first, last) in order, at most ``GAPS_LISTED``;
    ``tail`` is the range cut from the end (the tip is past the last row), if any."""

    ranges: list[tuple[int, int]]
    more: bool = False
    tail: tuple[int, int] | None = None
    tip: int | None = None

    def describe(self) -> list[str]:
        lines = [
            _("Ids %(first)s to %(last)s are missing: rows were removed (the ids have no gaps otherwise).")
            % {"first": first, "last": last}
            for first, last in self.ranges
        ]
        if self.more:
            lines.append(
                _("More ids are missing after these (the first %(n)d ranges are listed).") % {"n": GAPS_LISTED}
            )
        if self.tail is not None:
            lines.append(
                _(
                    "Ids %(first)s to %(last)s are missing at the end of the trail: its tail was removed "
                    "(ids up to %(last)s were written)."
                )
                % {"first": self.tail[0], "last": self.tail[1]}
            )
        return lines

    @property
    def all(self) -> list[tuple[int, int]]:
        return [*self.ranges, *([self.tail] if self.tail else [])]


def id_gaps(*, after_id: int = 0) -> Gaps:
    """The ids missing after ``after_id`` (a row trusted to be there), up to the tip.

    The tip is read first: every row up to it was committed with it, so what is missing
    below it now was removed, whatever is written meanwhile (new rows take larger ids).
    Ids at or below the tip's ``gap_free_after`` (drawn before the chain drew its own ids,
    migration audit.0012) are not looked at: rolled-back writes of that time left gaps.
    Without a tip row (removed), the largest id stands in for it: no tail is judged.
    """
    with default_connection.cursor() as cursor:
        cursor.execute("SELECT last_id, gap_free_after FROM audit_chaintip WHERE id = 1")
        tip, gap_free_after = cursor.fetchone() or (None, 0)
        lo = max(after_id, gap_free_after)
        end = tip
        if end is None:
            cursor.execute(_GAPS_TOP, [lo, 2**63 - 1])
            end = cursor.fetchone()[0] or lo
        ranges: list[tuple[int, int]] = []
        prev, start = lo, lo
        while start < end and len(ranges) <= GAPS_LISTED:
            stop = min(start + GAPS_CHUNK, end)
            cursor.execute(_GAPS, [prev, start, stop])
            ranges.extend(cursor.fetchall())
            cursor.execute(_GAPS_TOP, [start, stop])
            prev = cursor.fetchone()[0] or prev
            start = stop
        if start < end:  # stopped listing: where the rows end is all that is left to know
            cursor.execute(_GAPS_TOP, [start, end])
            prev = cursor.fetchone()[0] or prev
    gaps = Gaps(ranges=ranges[:GAPS_LISTED], more=len(ranges) > GAPS_LISTED, tip=tip)
    if tip is not None and tip > prev:
        gaps.tail = (prev + 1, tip)
    return gaps


# --------------------------------------------------------------------------- exported heads


@dataclass(frozen=True)
class Head:
    """An exported head: the id and MAC of the trail's last row when it was exported, and
    where it was read (a log file's line, a check recorded in the database), for people."""

    row_id: int
    mac: str
    source: str


def head_current() -> tuple[int, str]:
    """The trail's head now: the last row's id and MAC ((0, "") for an empty trail)."""
    return AuditEvent.objects.order_by("-id").values_list("id", "mac").first() or (0, "")


def head_export() -> tuple[int, str]:
    """Log the trail's head as one line on the ``audit.heads`` logger, the export that
    ``audit_verify --head-file`` reads back: ``audit head: max_id=<id> mac=<MAC> at=<time>``.

    Worth something only where the database's users cannot rewrite it: ship that logger to
    another machine (docs/operations.md). Writes nothing to the database.
    """
    head_id, mac = head_current()
    heads_logger.info("audit head: max_id=%d mac=%s at=%s", head_id, mac or "-", timezone.now().isoformat())
    return head_id, mac


# Rows looked up per query when comparing heads (a year of five-minute exports is 105,000 lines).
_HEADS_CHUNK = 1000
# Problems named at most (each missing head costs a query to name the row before it).
_HEADS_NAMED = 10


def heads_check(heads: Iterable[Head]) -> tuple[int, list[str]]:
    """Compare the trail with exported heads: every head's row must be there with its MAC.

    What the chain alone cannot show: what is left of a chain cut short is still a valid
    chain, and rows written after the cut chain onto it. Every head counts, not only the last
    one: after a cut, the next export is taken from the cut trail. Returns how many distinct
    heads were compared and the problems in words (at most ``_HEADS_NAMED``, then a count).
    """
    by_id: dict[int, Head] = {}
    problems: list[str] = []
    for head in heads:
        if not head.row_id or not head.mac:
            continue
        known = by_id.setdefault(head.row_id, head)
        if known.mac != head.mac:
            problems.append(
                _(
                    "the exported heads disagree on row %(id)s (%(first)s; %(second)s): "
                    "the trail was rewritten between the two exports."
                )
                % {"id": head.row_id, "first": known.source, "second": head.source}
            )
    wanted = sorted(by_id)
    for start in range(0, len(wanted), _HEADS_CHUNK):
        chunk = wanted[start : start + _HEADS_CHUNK]
        stored = dict(AuditEvent.objects.filter(id__in=chunk).values_list("id", "mac"))
        for row_id in chunk:
            head = by_id[row_id]
            mac = stored.get(row_id)
            if mac is not None and hmac.compare_digest(mac, head.mac):
                continue
            if len(problems) >= _HEADS_NAMED:
                problems.append("")  # counted below
                continue
            if mac is None:
                last = AuditEvent.objects.filter(id__lt=row_id).order_by("-id").values_list("id", flat=True).first()
                problems.append(
                    _(
                        "row %(head)s, the head exported earlier, is missing: the tail of the trail was removed "
                        "(the last row before it is %(last)s; head from %(source)s)."
                    )
                    % {"head": row_id, "last": last or "-", "source": head.source}
                )
            else:
                problems.append(
                    _("row %(head)s differs from the head exported earlier (%(source)s): it was replaced.")
                    % {"head": row_id, "source": head.source}
                )
    named = [p for p in problems if p]
    if len(named) < len(problems):
        named.append(_("%(n)d more exported heads do not match.") % {"n": len(problems) - len(named)})
    return len(by_id), named


# --------------------------------------------------------------------------- the whole check


@dataclass
class TrailReport:
    """What ``trail_verify`` found: the chain, the gaps in the ids, the exported heads."""

    chain: ChainReport
    gaps: Gaps
    heads_compared: int = 0
    head_problems: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every finding in words, the first bad row first."""
        found = []
        if self.chain.problem is not None:
            found.append(_("First bad row: %(problem)s") % {"problem": self.chain.problem.describe()})
        found.extend(self.gaps.describe())
        found.extend(_("Exported head: %(problem)s") % {"problem": p} for p in self.head_problems)
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def trail_verify(*, after_id: int = 0, prev_mac: str = GENESIS, heads: Iterable[Head] = ()) -> TrailReport:
    """The trail's whole check, for ``manage.py audit_verify`` and the nightly task.

    The chain from the row after ``after_id`` on (whose predecessor's MAC is ``prev_mac``),
    stopping at the first bad row; every gap in the ids after ``after_id``, and a tail cut
    short of the tip; and each exported head in ``heads``. Decrypts nothing, writes nothing.
    """
    gaps = id_gaps(after_id=after_id)
    chain = chain_verify(after_id=after_id, prev_mac=prev_mac)
    compared, problems = heads_check(heads)
    return TrailReport(chain=chain, gaps=gaps, heads_compared=compared, head_problems=problems)
