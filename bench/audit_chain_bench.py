"""Audit chain benchmark: chained trail writes per second with concurrent writers, and
`audit_verify`'s time per million rows.

    .venv/bin/python bench/audit_chain_bench.py [--writers 1,4,16] [--seconds 5]
        [--verify-rows 1000000] [--hold-ms 0,5] [--only writes|verify]
        [--database-url postgres://postgres@127.0.0.1:5432/cabinet_chain_bench] [--reset]

Sets Django up itself (production settings, see _common.py), creates and migrates the bench
database, then:
1. writes: N threads (own connections) each write audit events for a fixed time, one event
   per transaction (``audit_event_write``, the security-event path) and 50 reads per
   transaction (``audit_reads_write``, a list page), and a list page's reads as a request
   writes them (outside any transaction, with the read budget's tally), chained (the advisory lock, ids drawn
   under it, MACs in Python) and, for the ratio, unchained (a plain INSERT, no lock);
   ``--hold-ms``: the event is written at the start of a service transaction that then
   works that long before committing (the lock is held until the commit);
2. verify: fills the trail up to ``--verify-rows`` (kept between runs), times a full
   ``chain_verify`` (what ``manage.py audit_verify`` runs) and the fetch alone.
See bench/README.md ("Audit chain benchmark").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from time import perf_counter, process_time

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from _common import load_average

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cabinet_chain_bench"
READS_PER_PAGE = 50
FILL_BATCH = 5000


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_CHAIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"bench database (default {DEFAULT_DATABASE_URL}; created if missing)",
    )
    parser.add_argument("--writers", default="1,4,16", help="concurrent writers to measure (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    parser.add_argument(
        "--hold-ms", default="0,5", help="service work after the audit row, before commit (default 0,5)"
    )
    parser.add_argument("--verify-rows", type=int, default=1_000_000, help="trail size for verify (default 1e6)")
    parser.add_argument("--only", choices=("writes", "verify"), help="run one part only")
    parser.add_argument("--reset", action="store_true", help="drop the bench database and its key file first")
    return parser.parse_args(argv)


def key_file_for(url: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{_common.database_name(url)}.env"


# --------------------------------------------------------------------------- writes


UNCHAINED_TABLE = "bench_unchained_auditevent"
_unchained_model = None


def unchained_model():
    """A copy of the trail's table, for the baseline: the same ORM writes, no chain, and it
    leaves the real trail's chain intact (the verify part reads that)."""
    global _unchained_model
    if _unchained_model is None:
        from django.db import connection, models

        from audit.models import AuditEvent

        attrs = {field.name: field.clone() for field in AuditEvent._meta.local_fields}
        attrs["__module__"] = __name__
        attrs["Meta"] = type("Meta", (), {"app_label": "audit", "db_table": UNCHAINED_TABLE, "managed": False})
        _unchained_model = type("BenchUnchainedEvent", (models.Model,), attrs)
        if UNCHAINED_TABLE not in connection.introspection.table_names():
            with connection.schema_editor() as editor:
                editor.create_model(_unchained_model)
    return _unchained_model


def _unchained_event() -> None:
    """The insert as it was before the chain: no lock, no id draw, no MAC."""
    from django.utils import timezone

    from audit.models import EventType

    unchained_model().objects.create(
        occurred_at=timezone.now(),
        event_type=EventType.LOGIN_FAILED,
        actor_username="system:bench",
        actor_role="system",
        extra={"bench": True},
    )


def _chained_event() -> None:
    from audit.models import EventType
    from audit.services import audit_event_write

    audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"bench": True})


def _reads(n: int):
    import uuid

    from audit.context import _Read

    return [_Read("patients.Patient", str(uuid.uuid4()), uuid.uuid4(), {"last_name", "first_names"}) for _ in range(n)]


def _chained_page(ctx, reads) -> None:
    from audit.services import audit_reads_write

    audit_reads_write(context=ctx, reads=reads)


def _unchained_page(ctx, reads) -> None:
    """The one-INSERT unnest path as it was before the chain (PostgreSQL), into the copy."""
    import json

    from django.db import connection
    from django.utils import timezone

    from audit.models import EventType
    from audit.services import _COMMON, _context_columns

    if connection.vendor != "postgresql":
        unchained_model().objects.bulk_create(
            [
                unchained_model()(
                    occurred_at=timezone.now(),
                    event_type=EventType.READ,
                    model_label=r.model_label,
                    object_pk=r.object_pk,
                    patient_id=r.patient_id,
                    fields=sorted(r.fields),
                    **_context_columns(ctx),
                )
                for r in reads
            ]
        )
        return
    columns = _context_columns(ctx)
    sql = (
        f'INSERT INTO "{UNCHAINED_TABLE}" (occurred_at, event_type, extra, '
        + ", ".join(_COMMON)
        + ", model_label, object_pk, patient_id, fields, mac) "
        "SELECT %s, %s, %s::jsonb, %s, %s, %s, %s::inet, %s, %s, %s, %s, %s, t.m, t.o, t.p, t.f::jsonb, '' "
        "FROM unnest(%s::varchar[], %s::varchar[], %s::uuid[], %s::text[]) AS t(m, o, p, f)"
    )
    params = [
        timezone.now(),
        int(EventType.READ),
        json.dumps(ctx.extra),
        *(columns.get(name) for name in _COMMON),
        [r.model_label for r in reads],
        [r.object_pk for r in reads],
        [r.patient_id for r in reads],
        [json.dumps(sorted(r.fields)) for r in reads],
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def run_writers(kind: str, chained: bool, writers: int, seconds: float, hold_ms: float) -> tuple[int, int, float]:
    """(transactions, rows, elapsed) for ``writers`` threads writing for ``seconds``."""
    from django.db import connections, transaction

    from audit.context import Actor, AuditContext

    unchained_model()  # created once, before the threads
    barrier = threading.Barrier(writers + 1)
    counts = [0] * writers
    errors: list[BaseException] = []
    stop_at = [0.0]

    def work(i: int) -> None:
        try:
            ctx = AuditContext(purpose="bench", actor=Actor.system("bench"))
            if kind == "request":  # a person's page: the read budget's tally is written too
                ctx = AuditContext(
                    purpose="bench", actor=Actor(user_id=100_000 + i, username="bench", role="Secretary")
                )
            reads = _reads(READS_PER_PAGE)
            barrier.wait()
            n = 0
            while perf_counter() < stop_at[0]:
                if kind == "request":
                    # As a request writes its reads after its view: no transaction around it, so
                    # the write takes two round trips (audit.chain.chain_write_alone).
                    (_chained_page if chained else _unchained_page)(ctx, reads)
                    n += 1
                    continue
                with transaction.atomic():
                    if kind == "event":
                        (_chained_event if chained else _unchained_event)()
                    else:
                        (_chained_page if chained else _unchained_page)(ctx, reads)
                    if hold_ms:
                        time.sleep(hold_ms / 1000)
                n += 1
            counts[i] = n
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    stop_at[0] = perf_counter() + seconds + 0.05
    started = perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = perf_counter() - started
    if errors:
        raise errors[0]
    transactions = sum(counts)
    rows = transactions * (1 if kind == "event" else READS_PER_PAGE)
    return transactions, rows, elapsed


def measure_writes(args) -> None:
    writer_counts = [int(x) for x in args.writers.split(",")]
    holds = [float(x) for x in args.hold_ms.split(",")]
    print()
    print(f"writes ({args.seconds:.0f} s each; rows/s, and chained/unchained ratio)")
    print(
        f"{'path':<28} {'hold':>6} {'writers':>7} {'unchained tx/s':>15} {'chained tx/s':>13} "
        f"{'chained rows/s':>15} {'ratio':>6} {'p/writer tx/s':>14}"
    )
    labels = {
        "event": "audit_event_write (1 row)",
        "page": f"audit_reads_write ({READS_PER_PAGE} rows)",
        "request": f"request's reads ({READS_PER_PAGE}, +tally)",
    }
    for kind, label in labels.items():
        for hold in holds if kind == "event" else [0.0]:
            for writers in writer_counts:
                plain_tx, _plain_rows, plain_s = run_writers(kind, False, writers, args.seconds, hold)
                tx, rows, s = run_writers(kind, True, writers, args.seconds, hold)
                plain_rate, rate = plain_tx / plain_s, tx / s
                print(
                    f"{label:<28} {hold:>4.0f}ms {writers:>7} {plain_rate:>15,.0f} {rate:>13,.0f} "
                    f"{rows / s:>15,.0f} {plain_rate / rate:>5.2f}x {rate / writers:>14,.0f}"
                )


# --------------------------------------------------------------------------- verify


def fill(target: int) -> int:
    """Chained reads until the trail holds ``target`` rows; returns the row count."""
    from audit.context import Actor, AuditContext
    from audit.models import AuditEvent
    from audit.services import audit_reads_write

    count = AuditEvent.objects.count()
    if count >= target:
        return count
    ctx = AuditContext(purpose="bench fill", actor=Actor.system("bench"), ip="10.0.0.7", path="/patients/")
    started = perf_counter()
    print(f"filling the trail: {count:,} -> {target:,} rows ...", flush=True)
    while count < target:
        n = min(FILL_BATCH, target - count)
        audit_reads_write(context=ctx, reads=_reads(n))
        count += n
    print(f"  {perf_counter() - started:.1f} s", flush=True)
    return count


def measure_verify(args) -> None:
    from audit import chain

    total = fill(args.verify_rows)
    print()
    print(f"verify ({total:,} rows)")
    started, cpu = perf_counter(), process_time()
    fetched = sum(1 for _ in chain.rows_stream())
    fetch_s, fetch_cpu = perf_counter() - started, process_time() - cpu
    started, cpu = perf_counter(), process_time()
    report = chain.chain_verify()
    verify_s, verify_cpu = perf_counter() - started, process_time() - cpu
    if not report.ok:
        print(f"  the chain does not verify: {report.problem.describe()}")
    per_million = verify_s / report.rows * 1_000_000 if report.rows else 0.0
    print(f"  load average {load_average()}; CPU: this process's CPU time (the figure that load does not skew)")
    print(
        f"  fetch only (rows_stream)  {fetched:>12,} rows  {fetch_s:8.2f} s  {fetched / fetch_s:>10,.0f} rows/s"
        f"  CPU {fetch_cpu:.2f} s"
    )
    rate = report.rows / verify_s
    print(
        f"  chain_verify (full)       {report.rows:>12,} rows  {verify_s:8.2f} s  {rate:>10,.0f} rows/s"
        f"  CPU {verify_cpu:.2f} s  = {per_million:.2f} s per million rows"
    )


def main(argv=None) -> None:
    args = args_parse(argv)
    key_file = key_file_for(args.database_url)
    if args.reset:
        _common.database_drop(args.database_url)
        key_file.unlink(missing_ok=True)
    keys = _common.environment_prepare(database_url=args.database_url, key_file=key_file)
    created = _common.database_ensure(args.database_url)
    _common.django_setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print("Audit chain benchmark")
    for name, value in _common.server_describe():
        print(f"  {name:<16} {value}")
    print(f"  {'keys':<16} {keys}; database {created}; load average {load_average()}")
    if args.only != "verify":
        measure_writes(args)
    if args.only != "writes":
        measure_verify(args)


if __name__ == "__main__":
    main()
