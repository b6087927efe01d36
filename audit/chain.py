"""The audit trail's HMAC chain: tamper evidence for every row.

Rule enforced here: each row's ``mac`` is HMAC-SHA256, keyed by ``AUDIT_CHAIN_KEY`` (kept
outside the database), over the previous row's ``mac`` and this row's canonical content,
its id included. Without the key nobody can change, insert, reorder or renumber a row
without breaking the chain at that row; a deleted row breaks the next row's MAC. The chain
follows the id order and tolerates gaps in the ids (a rolled-back write leaves one): a
row's predecessor is the row with the next smaller id that exists.

Writers serialize (``chain_tail_lock``): on PostgreSQL a transaction-level advisory lock,
taken before the ids are drawn and held until commit, so ids and chain order agree and two
writers never chain onto the same row (a fork); on SQLite the write transaction itself
(``BEGIN IMMEDIATE``, practice/settings.py) already does that.

Verification (``chain_verify``) streams the rows in id order in constant memory and stops at
the first bad one; ``manage.py audit_verify`` and the nightly task use it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import connection as default_connection
from django.utils.translation import gettext as _

# The PostgreSQL advisory lock every chain writer takes ("audit" in ASCII, a constant that no
# other part of the app uses).
ADVISORY_LOCK_ID = 0x6175646974
# The "previous MAC" of the first row.
GENESIS = "0" * 64
# Bumped if the canonical form ever changes (old rows then keep verifying under their version).
VERSION = "cabinet-audit-chain-v1"

# Every column of the trail, in the order the canonical form lists them. The id is part of
# the content: a forged row cannot take a free id, nor a real row be renumbered.
COLUMNS = (
    "id",
    "occurred_at",
    "event_type",
    "actor_user_id",
    "actor_username",
    "actor_role",
    "ip",
    "user_agent",
    "request_id",
    "session",
    "path",
    "purpose",
    "model_label",
    "object_pk",
    "patient_id",
    "fields",
    "extra",
    "explanation",
    "explained_by",
)


def _ip(value) -> str | None:
    # PostgreSQL's inet type rewrites addresses (case, zero compression): compare addresses.
    if value in (None, ""):
        return value
    try:
        return str(ipaddress.ip_address(str(value).split("/")[0]))
    except ValueError:
        return str(value)


def canonical(values: dict) -> bytes:
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


def mac_for(prev_mac: str, values: dict, *, key: bytes | None = None) -> str:
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
# holder committed. The ids are drawn under the lock, so they are larger than every id chained
# before.
_PG_LOCK = "/* audit chain */ SELECT pg_advisory_xact_lock(%s)"
_PG_TAIL = (
    "/* audit chain */ SELECT last.mac, "
    "ARRAY(SELECT nextval(pg_get_serial_sequence('audit_auditevent', 'id')) FROM generate_series(1, %s)) "
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL "
    '(SELECT mac FROM "audit_auditevent" ORDER BY id DESC LIMIT 1) AS last ON true'
)


def chain_tail_lock(count: int, connection=None) -> tuple[str, list[int]]:
    """Take the chain's writer lock; return the last row's MAC and ``count`` fresh ids.

    Must run inside ``transaction.atomic`` and be followed, in the same transaction, by the
    insert of the rows chained onto the returned MAC, with the returned ids (increasing).
    SQLite: the transaction already holds the database's write lock (BEGIN IMMEDIATE), so the
    read and the insert see and extend the same tail; the ids follow AUTOINCREMENT's rule
    (never reuse one, even a deleted last row's).
    """
    connection = connection or default_connection
    if not connection.in_atomic_block:
        raise RuntimeError("The audit chain is extended inside a transaction only.")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_PG_LOCK, [ADVISORY_LOCK_ID])
            cursor.execute(_PG_TAIL, [count])
            mac, ids = cursor.fetchone()
            return mac or GENESIS, sorted(ids)
        cursor.execute(
            '/* audit chain */ SELECT (SELECT id FROM "audit_auditevent" ORDER BY id DESC LIMIT 1), '
            '(SELECT mac FROM "audit_auditevent" ORDER BY id DESC LIMIT 1), '
            "(SELECT seq FROM sqlite_sequence WHERE name = 'audit_auditevent')"
        )
        last_id, mac, seq = cursor.fetchone()
        next_id = max(last_id or 0, seq or 0) + 1
        return mac if last_id else GENESIS, list(range(next_id, next_id + count))


def _rows_normalize(rows: list[dict]) -> None:
    for row in rows:
        # The values as the database gives them back (tuples as lists, keys as strings), so
        # that the MAC computed now is the MAC recomputed from the stored row.
        row["fields"] = json.loads(json.dumps(row.get("fields", [])))
        row["extra"] = json.loads(json.dumps(row.get("extra", {})))


def _rows_seal(rows: list[dict], prev: str, ids: list[int]) -> None:
    for row, row_id in zip(rows, ids, strict=True):
        row["id"] = row_id
        row["mac"] = prev = mac_for(prev, row)


def chain_rows(rows: list[dict], connection=None) -> None:
    """Give each row (a dict of column values, without id or mac) its id and MAC, in order.

    Takes the chain lock: call it inside the transaction that inserts the rows, right
    before the insert.
    """
    connection = connection or default_connection
    _rows_normalize(rows)
    prev, ids = chain_tail_lock(len(rows), connection)
    _rows_seal(rows, prev, ids)


def chain_write_alone(rows: list[dict], statement: Callable[[list[dict]], tuple[str, list]], connection=None) -> list:
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
            cursor.execute(f"BEGIN; {_PG_LOCK}; {_PG_TAIL}", [ADVISORY_LOCK_ID, len(rows)])
            cursor.nextset()  # past BEGIN's and the lock's results, to the tail's
            cursor.nextset()
            mac, ids = cursor.fetchone()
            _rows_seal(rows, mac or GENESIS, sorted(ids))
            sql, params = statement(rows)
            cursor.execute(f"{sql}; COMMIT", params)
            return cursor.fetchall() if cursor.description else []
        except BaseException:
            _rollback_quietly(cursor)
            raise


def _rollback_quietly(cursor) -> None:
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


def rows_stream(*, after_id: int = 0, chunk: int = 5000) -> Iterator[dict]:
    """Every trail row with id > ``after_id``, in id order, ``chunk`` rows per query.

    Keyset pagination on the primary key: constant memory, no long transaction. PostgreSQL
    reads through a plain cursor (twice the ORM's rate: psycopg already gives aware times,
    UUIDs and text; only the two JSON columns are parsed here); SQLite through the ORM, whose
    converters turn its stored text into the same Python values.
    """
    from audit.models import AuditEvent

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


def _problem(row: dict, reason: str) -> ChainProblem:
    return ChainProblem(
        row_id=row["id"],
        occurred_at=row["occurred_at"],
        actor=row["actor_username"],
        event_type=row["event_type"],
        reason=reason,
    )


def _diagnose(prev_row: dict | None, prev_mac: str, row: dict, following: dict | None) -> str:
    """Why ``row`` does not chain onto ``prev_mac``, judged from the row after it."""
    if not row["mac"]:
        return _("the row has no MAC: it was written outside the application (or before the chain).")
    gap = ""
    if prev_row is not None and row["id"] > prev_row["id"] + 1:
        gap = " " + _("Ids %(first)s to %(last)s are missing (a gap also comes from a write that was rolled back).") % {
            "first": prev_row["id"] + 1,
            "last": row["id"] - 1,
        }
    if following is not None and hmac.compare_digest(mac_for(prev_mac, following), following["mac"]):
        return _("the row was inserted: the next row chains onto the row before it, not onto this one.")
    if following is not None and not hmac.compare_digest(mac_for(row["mac"], following), following["mac"]):
        return _("neither this row nor the next match the chain: rows were changed, inserted or removed here.") + gap
    return _("its content does not match its MAC: the row was changed, or rows just before it were removed.") + gap


def chain_verify(
    *, after_id: int = 0, prev_mac: str = GENESIS, prev_row: dict | None = None, rows: Iterator[dict] | None = None
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


def head_check(*, head_id: int, head_mac: str) -> str | None:
    """Compare the trail with an exported head (id and MAC of the last row then); a problem
    in words, or None. Catches a truncated tail, which the chain alone cannot: what is left
    of a chain cut short is still a valid chain."""
    from audit.models import AuditEvent

    if not head_id:
        return None
    row = AuditEvent.objects.filter(id=head_id).values_list("mac", flat=True).first()
    if row is None:
        last = AuditEvent.objects.filter(id__lt=head_id).order_by("-id").values_list("id", flat=True).first()
        return _(
            "row %(head)s, the head exported earlier, is missing: the tail of the trail was removed "
            "(the last row before it is %(last)s)."
        ) % {"head": head_id, "last": last or "-"}
    if not hmac.compare_digest(row, head_mac):
        return _("row %(head)s differs from the head exported earlier: it was replaced.") % {"head": head_id}
    return None
