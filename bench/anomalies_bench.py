"""Anomaly signals benchmark: the periodic scan and the reads chart over a large trail.

    .venv/bin/python bench/anomalies_bench.py [--rows 1000000] [--database-url URL] [--runs 24]

The trail: the audit bench's (bench/audit_bench.py) when its database holds a complete one
(``cabinet_audit_bench``, 10,000,000 rows, built by that bench): reused as it is, only
migrated (the anomaly tables are added). Otherwise this bench makes its own database
(``cabinet_anomalies_bench``) and builds a trail of ``--rows`` rows with the audit bench's
generator (18 people, 200,000 patients, a year of events, mostly reads; built once, reused).
``--database-url`` chooses explicitly.

Then it times, on the trail's last full day (p50 and p95):
  [a] one periodic run (investigations.anomalies.anomalies_scan over 5 minutes): each run re-evaluates
      its clock hour from the hour's start, so the runs are taken at minute 55, the most work;
  [b] a whole day scanned at once (24 hours: a catch-up after a day without a worker);
  [c] the reads chart page (/audit/reads/?day=...), through the test client as a practice
      admin: the hourly chart of the day and the 30-day daily distribution;
  [d] the anomaly list page.
Every scan runs in a transaction rolled back at the end: the findings and the ANOMALY events
of high ones are written (timed), then undone, so the trail is left as it was.

See bench/README.md ("Anomaly signals benchmark").
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from _common import load_average, ms, pct

AUDIT_BENCH_URL = "postgres://postgres@127.0.0.1:5432/cabinet_audit_bench"
OWN_URL = "postgres://postgres@127.0.0.1:5432/cabinet_anomalies_bench"
TARGET_RUN_MS = 1000.0  # a five-minute run must stay far below its interval
TARGET_PAGE_MS = 1000.0


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of a trail built here (default 1,000,000)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_ANOMALIES_DATABASE_URL", ""))
    parser.add_argument("--runs", type=int, default=24, help="timed five-minute runs and page loads (default 24)")
    return parser.parse_args(argv)


def audit_bench_trail_rows() -> int | None:
    """Rows of the audit bench's trail when its database holds a complete one, else None."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/cabinet_audit_bench", connect_timeout=3) as conn:
            exists = conn.execute("SELECT to_regclass('bench_audit_state') IS NOT NULL").fetchone()[0]
            if not exists:
                return None
            row = conn.execute(sql.SQL("SELECT value FROM bench_audit_state WHERE name = 'rows'")).fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def key_file_for(url: str) -> Path:
    # The audit bench's naming: reusing its database means reusing its keys.
    return Path(tempfile.gettempdir()) / f"{_common.database_name(url)}.env"


def timed_scan(start: datetime.datetime, end: datetime.datetime):
    """One scan in a transaction that is rolled back: (seconds, result)."""
    from django.db import transaction

    from investigations.anomalies import anomalies_scan

    with transaction.atomic():
        t0 = perf_counter()
        result = anomalies_scan(start=start, end=end)
        elapsed = perf_counter() - t0
        transaction.set_rollback(True)
    return elapsed, result


def line(label: str, times: list[float], target_ms: float | None = None, note: str = "") -> None:
    p50, p95 = pct(times, 50), pct(times, 95)
    verdict = ""
    if target_ms is not None:
        verdict = f"   target {target_ms:,.0f} ms: {'met' if p95 * 1000 < target_ms else 'MISSED'} (p95)"
    print(f"  {label:<40} p50 {ms(p50)} ms  p95 {ms(p95)} ms  (n={len(times)}){verdict}{note}")


def main(argv=None) -> int:
    args = args_parse(argv)
    reused_rows = None
    url = args.database_url
    if not url:
        reused_rows = audit_bench_trail_rows()
        url = AUDIT_BENCH_URL if reused_rows else OWN_URL
    key_file = key_file_for(url)
    os.environ.pop("CELERY_BROKER_URL", None)
    keys_note = _common.environment_prepare(database_url=url, key_file=key_file)
    db_note = _common.database_ensure(url)
    _common.django_setup()

    import audit_bench
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    problem = _common.keys_problem()
    if problem:
        print(f"The bench database was made with other keys: {problem}", file=sys.stderr)
        return 2
    state = audit_bench.trail_state()
    if reused_rows is None and state.get("rows") != str(args.rows):
        audit_bench.trail_empty()  # before migrating (see audit_bench.main)
    print(f"Bench database {settings.DATABASES['default']['NAME']}: {db_note}; migrating...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    state = audit_bench.trail_state()
    if state.get("rows") and (reused_rows or state.get("rows") == str(args.rows)):
        trail_note = f"reused ({int(state['rows']):,} rows)"
    else:
        print(f"Building a trail of {args.rows:,} rows (once; later runs reuse it)...", flush=True)
        trail_note = f"built now in {audit_bench.trail_build(args.rows):.0f} s ({args.rows:,} rows)"

    # The generator's last full day (other benches may have added a few rows of today since).
    zone = timezone.get_default_timezone()
    day = (audit_bench.START + datetime.timedelta(days=audit_bench.DAYS)).date() - datetime.timedelta(days=1)
    day_start = datetime.datetime.combine(day, datetime.time(0), tzinfo=zone)

    print()
    print("Anomaly signals benchmark")
    for label, value in _common.server_describe():
        print(f"  {label:<16} {value}")
    print(f"  {'keys':<16} {keys_note}")
    print(f"  {'trail':<16} {trail_note}; the day measured: {day:%Y-%m-%d} (the trail's last full day)")
    print(f"  {'table size':<16} {audit_bench.table_size()}")
    print(f"  {'load average':<16} {load_average()}")
    print()

    from django.core.cache import cache

    # [a] the periodic run, at minute 55 of each hour of the day (the hour re-evaluated from its
    # start). The first run of a day computes the volume baselines (cached for the day).
    cache.clear()
    runs, findings = [], 0
    for hour in range(args.runs + 1):
        end = day_start + datetime.timedelta(hours=hour % 24, minutes=55)
        elapsed, result = timed_scan(end - datetime.timedelta(minutes=5), end)
        runs.append(elapsed)
        findings += result.findings
    print(f"  {'[a] first 5-minute run of the day':<40} {ms(runs[0])} ms  (computes the volume baselines)")
    line("[a] one 5-minute run (scan to hh:55)", runs[1:], TARGET_RUN_MS, f"  {findings} findings in all")

    # [b] a whole day at once, baselines not cached (a catch-up in a fresh worker)
    days = []
    for _n in range(3):
        cache.clear()
        elapsed, result = timed_scan(day_start, day_start + datetime.timedelta(days=1))
        days.append(elapsed)
    line("[b] one day scanned at once (24 hours)", days, note=f"  {result.findings} findings, {result.alerts} high")
    by_kind: dict[str, int] = {}
    from django.db import transaction

    from audit.models import Anomaly
    from investigations.anomalies import anomalies_scan

    admin = _common.role_user("bench.anomalies.admin", "Practice admin")
    admin.is_staff = True
    admin.save()
    client = Client()
    client.force_login(admin)
    _common.second_factor_passed(client, admin)
    with transaction.atomic():  # the day's findings, for the list page, then undone
        anomalies_scan(start=day_start, end=day_start + datetime.timedelta(days=1))
        for kind in Anomaly.objects.values_list("kind", flat=True):
            by_kind[kind] = by_kind.get(kind, 0) + 1
        pages = []
        for _n in range(args.runs):
            t0 = perf_counter()
            response = client.get("/audit/anomalies/")
            pages.append(perf_counter() - t0)
            assert response.status_code == 200, response.status_code
        transaction.set_rollback(True)
    print(f"      findings of the day by signal: {by_kind or 'none'}")

    # [c] the chart page
    chart = []
    for _n in range(args.runs):
        t0 = perf_counter()
        response = client.get("/audit/reads/", {"day": day.isoformat()})
        chart.append(perf_counter() - t0)
        assert response.status_code == 200, response.status_code
    users = response.content.decode().count('<g class="series ')
    line("[c] reads chart page (day + 30 days)", chart, TARGET_PAGE_MS, f"  {users} users plotted")
    line("[d] anomaly list page (a day's findings)", pages, TARGET_PAGE_MS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
