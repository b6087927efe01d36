"""Audit trail benchmark: the investigation reports over a trail of 10,000,000 rows.

    .venv/bin/python bench/audit_bench.py [--rows 10000000]
        [--database-url postgres://postgres@127.0.0.1:5432/cabinet_audit_bench] [--reset]

Sets Django up itself (production settings, DEBUG off), creates and migrates the bench
database, and builds the trail once in SQL (INSERT ... SELECT FROM generate_series, indexes
dropped during the load and rebuilt after, then VACUUM ANALYZE): 18 people and 2 system jobs,
200,000 patients (a few read very often, most rarely), a year of events, mostly decrypted
reads. A later run reuses the trail when it holds the expected rows. Then it times, p50 and
p95 over many runs:

  [a] "who opened patient X": the queries of the access report page (investigations.selectors:
      the per-person summary, the row count and the first page of 100 events), for random
      patients and for the most-read one; then the whole page for a real patient;
  [b] breach scope (investigations.reports.breach_scope) for one actor over one day, and wider
      scopes for scale (an IP over a day, everyone over a day, one actor over a month);
  [c] the read-budget check per request (audit.budget), when that module exists.

See bench/README.md ("Audit trail benchmark").
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import tempfile
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from _common import load_average, ms, pct

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cabinet_audit_bench"
PATIENTS = 200_000
DAYS = 365
START = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)
ROWS_PER_REQUEST = 8
CHUNK = 1_000_000
GENERATOR_VERSION = 2  # bump when the generated trail changes shape: the next run rebuilds
TARGET_WHO_OPENED_MS = 50.0
TARGET_BREACH_MS = 1000.0
# The index proposed for the access report's per-person summary (see bench/README.md):
# audit_patient_time's key plus the columns the summary reads, so that an index-only scan
# answers it without visiting the table's rows, scattered over the year.
COVERING_INDEX = "bench_patient_time_cover"
COVERING_INDEX_SQL = (
    f"CREATE INDEX IF NOT EXISTS {COVERING_INDEX} ON audit_auditevent (patient_id, occurred_at) "
    "INCLUDE (event_type, actor_username, actor_role)"
)
# Real patients whose ids the generated trail uses (patient numbers): the most-read one and a
# typical one, so the whole report page can be timed too.
REAL_PATIENTS = {"most read": 0, "typical": 120_000}

# (username, role): who the generated trail says acted. Secretaries read most, then
# practitioners, a little by the practice admins, the rest by system jobs (reminders).
PEOPLE = (
    [(f"bench.sec{i}", "Secretary") for i in range(1, 7)]
    + [(f"bench.dr{i:02d}", "Practitioner") for i in range(1, 11)]
    + [(f"bench.admin{i}", "Practice admin") for i in range(1, 3)]
)
SYSTEM_JOBS = ["system:reminders", "system:command:dumpdata"]


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="trail rows (default 10,000,000)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_AUDIT_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"bench database (default {DEFAULT_DATABASE_URL}; created if missing)",
    )
    parser.add_argument("--runs", type=int, default=200, help="timed runs per query (default 200)")
    parser.add_argument(
        "--covering-index",
        action="store_true",
        help=f"add the proposed index {COVERING_INDEX} first (dropped again on a run without this flag)",
    )
    parser.add_argument("--build-only", action="store_true", help="build (or check) the trail, time nothing")
    parser.add_argument("--reset", action="store_true", help="drop the bench database and its key file first")
    args = parser.parse_args(argv)
    if args.rows < 100_000:
        parser.error("--rows must be at least 100,000")
    return args


def key_file_for(url: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{_common.database_name(url)}.env"


# --------------------------------------------------------------------------- building the trail


def patient_uuid_sql(number_sql: str) -> str:
    """The id of generated patient number n (the same expression everywhere)."""
    return f"md5('bench-patient-' || ({number_sql})::text)::uuid"


# One request is ROWS_PER_REQUEST consecutive rows: same actor, IP, session, page, time.
# Pseudo-random choices come from hashint8 (PostgreSQL's integer hash: deterministic and cheap),
# patient numbers from random() after setseed() (deterministic per chunk): n = PATIENTS * r^2
# makes a few patients very often read (number 0 about 20,000 rows) and most rarely (~35).
INSERT_SQL = f"""
INSERT INTO audit_auditevent (occurred_at, event_type, actor_user_id, actor_username, actor_role, ip,
    user_agent, request_id, session, path, purpose, model_label, object_pk, patient_id, fields, extra, mac)
SELECT
    g.at,
    g.event_type,
    a.user_id,
    a.username,
    a.role,
    (CASE WHEN g.remote THEN '203.0.113.' ELSE '10.1.0.' END || (10 + g.actor))::inet,
    CASE WHEN a.role = 'system' THEN '' ELSE 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' END,
    md5('request-' || g.req)::uuid::text,
    CASE WHEN a.role = 'system' THEN ''
         ELSE md5('session-' || g.actor || '-' || (extract(epoch FROM g.at)::bigint / 43200))::text END,
    CASE WHEN g.event_type = 20 THEN '/accounts/login/'
         WHEN g.model = 'scheduling.Appointment' THEN '/appointments/' || g.object_id || '/'
         WHEN g.page = '/patients/detail/' THEN '/patients/' || g.object_id || '/'
         ELSE g.page END,
    g.purpose,
    CASE WHEN g.event_type = 20 THEN '' ELSE g.model END,
    CASE WHEN g.event_type = 20 THEN '' ELSE g.object_id END,
    CASE WHEN g.event_type = 20 THEN NULL ELSE g.patient END,
    CASE WHEN g.event_type = 20 THEN '[]'::jsonb ELSE g.fields END,
    '{{}}'::jsonb,
    g.mac
FROM (
    SELECT
        s.at, s.req, s.actor, s.remote, s.patient, s.model, s.page, s.purpose,
        md5(s.i::text) || md5((s.i + 1)::text) AS mac,
        CASE WHEN s.model = 'scheduling.Appointment' THEN md5('appointment-' || s.i)::uuid::text
             ELSE s.patient::text END AS object_id,
        CASE WHEN s.model = 'scheduling.Appointment' THEN '["reason"]'::jsonb
             WHEN s.purpose = 'patients:list' THEN '["birth_date", "first_names", "last_name", "phone_mobile"]'::jsonb
             ELSE '["address", "birth_date", "birth_name", "city", "email", "first_names", "last_name", "nir",
                    "notes", "phone_mobile", "phone_other", "postal_code", "referring_doctor", "sex"]'::jsonb
        END AS fields,
        CASE WHEN s.kind < 920 THEN 1 WHEN s.kind < 955 THEN 11 WHEN s.kind < 965 THEN 10
             WHEN s.kind < 966 THEN 15 ELSE 20 END AS event_type
    FROM (
        SELECT
            r.i, r.req, r.at, r.actor, r.remote,
            {patient_uuid_sql("floor(%(patients)s * power(random(), 2))::int")} AS patient,
            (hashint8(r.i * 31 + 3) & 2147483647) %% 1000 AS kind,
            CASE WHEN r.page_kind < 15 THEN 'scheduling.Appointment' ELSE 'patients.Patient' END AS model,
            CASE WHEN r.page_kind < 15 THEN '/agenda/' WHEN r.page_kind < 75 THEN '/patients/'
                 ELSE '/patients/detail/' END AS page,
            CASE WHEN r.actor >= 19 THEN 'reminders'
                 WHEN r.page_kind < 15 THEN 'scheduling:today'
                 WHEN r.page_kind < 75 THEN 'patients:list'
                 ELSE 'patients:detail' END AS purpose
        FROM (
            SELECT
                i,
                i / {ROWS_PER_REQUEST} AS req,
                %(start)s::timestamptz + (i::float8 / %(rows)s) * interval '{DAYS} days' AS at,
                1 + (CASE WHEN h %% 1000 < 600 THEN h %% 6
                          WHEN h %% 1000 < 900 THEN 6 + h %% 10
                          WHEN h %% 1000 < 930 THEN 16 + h %% 2
                          ELSE 18 + h %% 2 END) AS actor,
                (hashint8(i / {ROWS_PER_REQUEST} + 104729) & 2147483647) %% 100 < 5 AS remote,
                (hashint8(i / {ROWS_PER_REQUEST} + 7919) & 2147483647) %% 100 AS page_kind
            FROM (
                SELECT i, (hashint8(i / {ROWS_PER_REQUEST}) & 2147483647) AS h
                FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i
            ) AS base
        ) AS r
    ) AS s
) AS g
JOIN (
    SELECT * FROM unnest(%(actor_ids)s::int[], %(usernames)s::text[], %(roles)s::text[])
        WITH ORDINALITY AS t(user_id, username, role, n)
) AS a ON a.n = g.actor
"""


def actors_ensure() -> tuple[list, list, list]:
    """The 18 bench users (real accounts, so actor ids resolve) and the 2 system jobs."""
    ids, names, roles = [], [], []
    for username, role in PEOPLE:
        user = _common.role_user(username, role)
        ids.append(user.pk)
        names.append(username)
        roles.append(role)
    for job in SYSTEM_JOBS:
        ids.append(None)
        names.append(job)
        roles.append("system")
    return ids, names, roles


def trail_state() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_audit_state (name text PRIMARY KEY, value text NOT NULL)")
        cursor.execute("SELECT name, value FROM bench_audit_state")
        return dict(cursor.fetchall())


def _user_triggers(cursor) -> list[str]:
    cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_auditevent'::regclass AND NOT tgisinternal")
    return [row[0] for row in cursor.fetchall()]


def trail_empty() -> None:
    """Empty the trail, if the table exists. The trail refuses TRUNCATE once the chain's
    trigger exists: the bench disables it for the statement, on its own database only."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM bench_audit_state")
        cursor.execute("SELECT to_regclass('audit_auditevent') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return
        triggers = _user_triggers(cursor)
        for name in triggers:
            cursor.execute(f'ALTER TABLE audit_auditevent DISABLE TRIGGER "{name}"')
        cursor.execute("TRUNCATE audit_auditevent RESTART IDENTITY")
        for name in triggers:
            cursor.execute(f'ALTER TABLE audit_auditevent ENABLE TRIGGER "{name}"')


def trail_build(rows: int) -> float:
    """Empty the trail and generate `rows` rows; indexes are dropped during the load and
    recreated from their own definitions afterwards (several times faster than inserting
    through them). Every row gets a MAC-sized value in `mac` (not a valid chain: the bench
    times reports, `audit_verify` would rightly reject this trail), so that the rows are as
    wide as real ones and the chain's migration finds nothing to seal."""
    from django.db import connection

    ids, names, roles = actors_ensure()
    started = perf_counter()
    trail_empty()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_auditevent' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = 'audit_auditevent'::regclass)"
        )
        indexes = cursor.fetchall()
        for name, _definition in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute("SET synchronous_commit = off")
        for lo in range(0, rows, CHUNK):
            hi = min(rows, lo + CHUNK)
            cursor.execute("SELECT setseed(%s)", [(lo // CHUNK % 1000) / 1000])
            cursor.execute(
                INSERT_SQL,
                {
                    "lo": lo,
                    "hi": hi,
                    "rows": rows,
                    "start": START,
                    "patients": PATIENTS,
                    "actor_ids": ids,
                    "usernames": names,
                    "roles": roles,
                },
            )
            print(f"  {hi:>12,} rows  ({perf_counter() - started:6.0f} s)", flush=True)
        cursor.execute("SET maintenance_work_mem = '1GB'")
        for name, definition in indexes:
            t0 = perf_counter()
            cursor.execute(definition)
            print(f"  index {name}: {perf_counter() - t0:.0f} s", flush=True)
    vacuum_analyze()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_audit_state (name, value) VALUES ('rows', %s), ('version', %s)",
            [str(rows), str(GENERATOR_VERSION)],
        )
    return perf_counter() - started


def covering_index_set(wanted: bool) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if wanted:
            cursor.execute("SET maintenance_work_mem = '1GB'")
            cursor.execute(COVERING_INDEX_SQL)
        else:
            cursor.execute(f"DROP INDEX IF EXISTS {COVERING_INDEX}")
    if wanted:
        vacuum_analyze()
        return f"the model's, plus the proposed {COVERING_INDEX}: {COVERING_INDEX_SQL.split(' ON ')[1]}"
    return "the model's indexes only"


def vacuum_analyze() -> None:
    """VACUUM sets the visibility map (index-only counts), ANALYZE the planner's statistics."""
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    autocommit = raw.autocommit
    raw.autocommit = True  # VACUUM cannot run inside a transaction block
    try:
        with raw.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audit_auditevent")
    finally:
        raw.autocommit = autocommit


def real_patients_ensure() -> dict:
    """Real (encrypted) patients whose ids the generated trail reads: label -> Patient."""
    from django.db import connection

    from audit.context import system_context
    from patients.models import Patient

    found = {}
    with connection.cursor() as cursor:
        for label, number in REAL_PATIENTS.items():
            cursor.execute(f"SELECT {patient_uuid_sql('%s')}", [number])
            pk = cursor.fetchone()[0]
            patient = Patient.objects.filter(pk=pk).first()
            if patient is None:
                with system_context("bench", purpose="audit bench seed"):
                    patient = Patient(
                        id=pk,
                        last_name=f"Bench{number:06d}",
                        first_names="Camille",
                        sex="F",
                        birth_date=datetime.date(1980, 1, 1 + number % 28),
                    )
                    patient.save()
            found[label] = patient
    return found


# --------------------------------------------------------------------------- measuring


def timed(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = perf_counter()
        fn()
        times.append(perf_counter() - t0)
    return times


def line(label: str, times: list[float], target_ms: float | None = None, note: str = "") -> None:
    p50, p95 = pct(times, 50), pct(times, 95)
    verdict = ""
    if target_ms is not None:
        verdict = f"   target {target_ms:,.0f} ms: {'met' if p95 * 1000 < target_ms else 'MISSED'} (p95)"
    print(f"  {label:<44} p50 {ms(p50)} ms  p95 {ms(p95)} ms  (n={len(times)}){verdict}{note}")


def patient_ids_sample(n: int, rng: random.Random) -> list:
    """Ids of n generated patients, uniform over patient numbers (most are read rarely)."""
    from django.db import connection

    numbers = [rng.randrange(PATIENTS) for _ in range(n)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {patient_uuid_sql('n')} FROM unnest(%s::int[]) AS t(n)",
            [numbers],
        )
        return [row[0] for row in cursor.fetchall()]


def who_opened(patient_id) -> int:
    """What the access report page asks of the trail: the summary, the count and page one."""
    from django.core.paginator import Paginator

    from investigations.selectors import patient_access_events, patient_access_summary

    summary = patient_access_summary(patient_id=patient_id)
    page = Paginator(patient_access_events(patient_id=patient_id), 100).get_page(1)
    list(page)
    return len(summary) + page.paginator.count


def measure_who_opened(runs: int, rng: random.Random, real: dict) -> None:
    from django.urls import reverse

    from investigations.selectors import patient_access_events, patient_access_summary

    print('[a] "Who opened patient X": the access report\'s queries (summary, count, first 100 events)')
    sample = patient_ids_sample(runs, rng)
    for pk in sample[:10]:  # warm-up
        who_opened(pk)
    rows = []
    times = []
    for pk in sample:
        t0 = perf_counter()
        rows.append(who_opened(pk))
        times.append(perf_counter() - t0)
    print(f"  random patients: {pct(rows, 50):,} trail rows at the median, {max(rows):,} at most")
    line("random patient", times, TARGET_WHO_OPENED_MS)
    heavy = real["most read"].pk
    heavy_rows = who_opened(heavy)
    line(f"most-read patient ({heavy_rows:,} rows)", timed(lambda: who_opened(heavy), runs), TARGET_WHO_OPENED_MS)
    parts = {
        "  of which the per-person summary": lambda: patient_access_summary(patient_id=heavy),
        "  of which the count": lambda: patient_access_events(patient_id=heavy).count(),
        "  of which page one (100 events)": lambda: list(patient_access_events(patient_id=heavy)[:100]),
    }
    for label, fn in parts.items():
        line(label, timed(fn, max(runs // 4, 20)))

    admin = _common.role_user("bench.admin1", "Practice admin")
    admin.is_staff = True
    admin.save(update_fields=["is_staff"])
    client = _verified_client(admin)
    for label, patient in real.items():
        url = reverse("investigations:patient_access", args=[patient.pk])
        response = client.get(url)
        if response.status_code != 200:
            print(f"  page for the {label} patient: HTTP {response.status_code}, not timed")
            continue
        line(f"whole page, {label} patient (HTTP, audited)", timed(lambda url=url: client.get(url), max(runs // 4, 20)))
    print()


def _verified_client(user):
    """A logged-in client past the second factor (as conftest.client_for does)."""
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    device = device or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def measure_breach(runs: int, rng: random.Random, rows: int) -> None:
    from django.contrib.auth.models import User

    from investigations.reports import breach_scope

    print("[b] Breach scope (investigations.reports.breach_scope: one aggregate query)")
    people = list(User.objects.filter(username__startswith="bench.").values_list("pk", "username"))
    days = [START + datetime.timedelta(days=rng.randrange(DAYS - 31)) for _ in range(runs)]
    actors = [rng.choice(people) for _ in range(runs)]

    def one_actor_day(i):
        return breach_scope(start=days[i], end=days[i] + datetime.timedelta(days=1), actor_user_id=actors[i][0])

    for i in range(5):
        one_actor_day(i)
    sizes, times = [], []
    for i in range(runs):
        t0 = perf_counter()
        scope = one_actor_day(i)
        times.append(perf_counter() - t0)
        sizes.append((scope.patient_count, scope.total_reads))
    patients = sorted(s[0] for s in sizes)
    reads = sorted(s[1] for s in sizes)
    print(
        f"  one actor, one day: {pct(patients, 50):,} patients / {pct(reads, 50):,} reads at the median, "
        f"{patients[-1]:,} / {reads[-1]:,} at most"
    )
    line("one actor, one day", times, TARGET_BREACH_MS)

    wider = max(runs // 10, 10)
    line(
        "one actor by username, one day",
        timed(
            lambda: breach_scope(start=days[0], end=days[0] + datetime.timedelta(days=1), actor_username=actors[0][1]),
            wider,
        ),
    )
    line(
        "one IP, one day",
        timed(lambda: breach_scope(start=days[1], end=days[1] + datetime.timedelta(days=1), ip="10.1.0.11"), wider),
    )
    line(
        "everyone, one day",
        timed(lambda: breach_scope(start=days[2], end=days[2] + datetime.timedelta(days=1)), wider),
    )
    month = breach_scope(start=days[3], end=days[3] + datetime.timedelta(days=30), actor_user_id=actors[3][0])
    line(
        f"one actor, 30 days ({month.patient_count:,} patients)",
        timed(
            lambda: breach_scope(start=days[3], end=days[3] + datetime.timedelta(days=30), actor_user_id=actors[3][0]),
            max(runs // 20, 5),
        ),
    )
    print()


def tally_build(end: datetime.datetime) -> tuple[float, int]:
    """The read budget's tally (audit.ReadTally) as the app would hold it at ``end``: built from
    the generated trail's last day (the app upserts it with each trail write; migration
    audit.0009 builds it this way from an existing trail). Seconds taken and rows."""
    from django.db import connection

    from audit.models import TALLY_DAY

    started = perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_readtally")
        cursor.execute(
            "INSERT INTO audit_readtally (user_id, patient_id, first_read_at, last_read_at) "
            "SELECT actor_user_id, patient_id, MIN(occurred_at), MAX(occurred_at) FROM audit_auditevent "
            "WHERE event_type = 1 AND actor_user_id IS NOT NULL AND patient_id IS NOT NULL "
            "AND occurred_at >= %s AND occurred_at < %s GROUP BY actor_user_id, patient_id",
            [end - TALLY_DAY, end],
        )
        count = cursor.rowcount
        cursor.execute("VACUUM ANALYZE audit_readtally")
    return perf_counter() - started, count


def measure_budget(runs: int, rng: random.Random) -> None:
    """The read budget's check (audit.budget): one query at a request's first decryption (the
    account's block, last lift and two counts on the tally), the exact load near a budget (the
    day's patient ids), and the re-check after a write that reached new patients."""
    from django.db import connection

    from audit import budget as budgets
    from audit.models import ReadTally

    print("[c] Read-budget check per request (audit.budget, counted on audit.ReadTally)")
    # The budget's clock is the generated trail's end, so that nothing lies after it (as in production).
    end = START + datetime.timedelta(days=DAYS)
    seconds, tally_rows = tally_build(end)
    print(f"  tally of the last day built from the trail: {tally_rows:,} rows in {seconds:.1f} s (as at upgrade)")
    actors = [_common.role_user(username, role) for username, role in PEOPLE[:16]]  # secretaries, practitioners
    sizes = {u.pk: ReadTally.objects.filter(user_id=u.pk).count() for u in actors}
    print(
        f"  patients an account read in the day before: {pct(list(sizes.values()), 50):,} at the median, "
        f"{max(sizes.values()):,} at most"
    )
    shipped = {"Secretary": (600, 1500), "Practitioner": (200, 500)}  # config/settings.py defaults
    cases = [rng.choice(actors) for _ in range(runs)]
    capped, uncapped, exact = [], [], []
    for user in cases:
        hour, day = shipped[dict(PEOPLE)[user.username]]
        t0 = perf_counter()
        budgets._counts_load(user.pk, end, day_cap=day + 1, hour_cap=hour + 1)
        capped.append(perf_counter() - t0)
        t0 = perf_counter()
        budgets._counts_load(user.pk, end, day_cap=budgets.UNCAPPED, hour_cap=budgets.UNCAPPED)
        uncapped.append(perf_counter() - t0)
        budget = budgets.ReadBudget(user_id=user.pk, username=user.username, role="", hour_limit=hour, day_limit=day)
        budget._loaded_at, budget._day_since = end, end - budgets.TALLY_DAY
        budget._hour_since = end - budgets.HOUR
        t0 = perf_counter()
        budget._exact_load()
        exact.append(perf_counter() - t0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size('audit_readtally'), pg_indexes_size('audit_readtally')")
        table, indexes = cursor.fetchone()
    print(f"  tally size: table {table / 1e6:.1f} MB, indexes {indexes / 1e6:.1f} MB (the trail: see above)")
    line("first decryption, shipped budgets", capped)
    line("first decryption, uncapped counts", uncapped)
    line("exact load near a budget", exact)
    print("  (first decryption: one query per request; the exact load: the day's patient ids, once, only near")
    print("  a budget; the re-check rides in the trail write's INSERT, under the chain lock)")
    print()


def main(argv=None) -> int:
    args = args_parse(argv)
    key_file = key_file_for(args.database_url)
    if args.reset:
        dropped = _common.database_drop(args.database_url)
        key_file.unlink(missing_ok=True)
        print(f"Reset: database {'dropped' if dropped else 'absent'}, {key_file} removed.")
    os.environ.pop("CELERY_BROKER_URL", None)
    keys_note = _common.environment_prepare(database_url=args.database_url, key_file=key_file)
    db_note = _common.database_ensure(args.database_url)
    _common.django_setup()

    from django.conf import settings
    from django.core.management import call_command

    problem = _common.keys_problem()
    if problem:
        print(f"The bench database was made with other keys: {problem}\nRun again with --reset.", file=sys.stderr)
        return 2
    state = trail_state()
    wanted = {"rows": str(args.rows), "version": str(GENERATOR_VERSION)}
    fresh = all(state.get(k) == v for k, v in wanted.items())
    if not fresh:
        # Before migrating: the chain's migration would otherwise seal (UPDATE) every stale row.
        trail_empty()
    print(f"Bench database {settings.DATABASES['default']['NAME']}: {db_note}; migrating...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    if fresh:
        build_note = f"reused ({args.rows:,} rows)"
    else:
        print(f"Building a trail of {args.rows:,} rows (once; later runs reuse it)...", flush=True)
        build_note = f"built now in {trail_build(args.rows):.0f} s"
    real = real_patients_ensure()
    index_note = covering_index_set(args.covering_index)
    if args.build_only:
        print(f"Trail: {build_note}.")
        return 0

    print()
    print("Audit trail benchmark")
    for label, value in _common.server_describe():
        print(f"  {label:<16} {value}")
    print(f"  {'keys':<16} {keys_note}")
    print(
        f"  {'trail':<16} {build_note}: {len(PEOPLE)} people and {len(SYSTEM_JOBS)} system jobs, "
        f"{PATIENTS:,} patients, {DAYS} days from {START:%Y-%m-%d}"
    )
    print(f"  {'indexes':<16} {index_note}")
    print(f"  {'table size':<16} {table_size()}")
    print(f"  {'load average':<16} {load_average()}")
    print()
    rng = random.Random(6)
    measure_who_opened(args.runs, rng, real)
    measure_breach(args.runs, rng, args.rows)
    measure_budget(args.runs, rng)
    return 0


def table_size() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_table_size('audit_auditevent')), "
            "pg_size_pretty(pg_indexes_size('audit_auditevent'))"
        )
        table, indexes = cursor.fetchone()
    return f"audit_auditevent {table} + indexes {indexes}"


if __name__ == "__main__":
    sys.exit(main())
