"""Explained reads benchmark: the explanation query (audit/explain.py) at a practice's full size.

    .venv/bin/python bench/explain_bench.py [--runs 200]
        [--database-url postgres://postgres@127.0.0.1:5432/cabinet_explain_bench] [--reset]

Sets Django up itself (production settings, DEBUG off), creates and migrates its own
database, and seeds it once in SQL (INSERT ... SELECT FROM generate_series): a practice of
10 practitioners, 4 secretaries and an admin, 100,000 patients, 1,000,000 appointments over
five years around the seed's day, a trail of 10,000,000 rows (unchained filler: the MACs are
not a chain), break-the-glass grants and stated reasons; then ANALYZE. Every seeded row is
placed relative to the seed's clock (the "anchor", kept in the database), and the timings use
that clock as "now", so a later run measures the same data the same way.

Then it times, for a secretary working for every practitioner, a secretary assigned to three,
and a practitioner; for batches of 1 patient (a record page), 50 (a list) and 300 (the day
view: 10 practitioners x 30), explained and unexplained:

  [a] ``audit.explain.explanations_find`` (the one UNION ALL query of every explainer) and
      ``Admission.prepare`` through a real audit context, side by side: p50/p95 wall and CPU
      (this process), and the number of queries (asserted: exactly one per batch);
  [b] where a call's time goes: building and compiling the query in Python, the round trip
      of the compiled SQL, the server's planning and execution times;
  [c] a request's loads: the day's 300 appointments with their patients, then the same
      patients again, in an audit context (one explanation query added, none for the second
      load: asserted) and outside any, alternately;
  [d] a prototype of the change the figures argue for (not the app's code): the same five
      explainers as one hand-written SQL with the batch's patient ids as one array parameter,
      side by side with explanations_find on the same batches (results checked equal);
  [e] the changes the plans argue for, measured in the run and undone: the session without
      parallel plans, then also two indexes (created as bench_..., dropped at the end);
  [f] EXPLAIN (ANALYZE, BUFFERS) of the 1- and 300-patient queries: the indexes each
      explainer's part uses.

See bench/README.md ("Explained reads benchmark").
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import sys
import tempfile
from pathlib import Path
from time import perf_counter, process_time
from types import SimpleNamespace
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from _common import load_average, ms, pct

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cabinet_explain_bench"
GENERATOR_VERSION = 1  # bump when the seeded data changes shape: the next run rebuilds the database
PATIENTS = 100_000
APPOINTMENTS = 1_000_000
TRAIL_ROWS = 10_000_000
PRACTITIONERS = 10
SLOTS_PER_DAY = 55  # 10-minute appointments from 8:00 to 17:10 (practice time), every day
SLOT_MINUTES = 10
FUTURE_SHARE = 0.1  # of the days of appointments (~1,818 at full size), the share after the anchor's day
TRAIL_DAYS = 365  # the trail covers the year before the anchor
ROWS_PER_REQUEST = 8
CHUNK = 1_000_000
TARGET_MS = 1.0  # docs/design.md: at most 1 ms for a request's explanation at this size
BATCHES = (1, 50, 300)
DAY_VIEW_SLOTS = 30  # the day view measured: 10 practitioners x their first 30 appointments
POOL = 20_000  # random patients put to the explainers (untimed) to find explained and unexplained ones
PRACTITIONER_SHARE = 0.85  # of a patient's appointments, with their own practitioner

# The trail's actors, in the order the generator numbers them (1-based): who reads and writes.
SECRETARIES = ("bench.sec1", "bench.sec2", "bench.sec3", "bench.sec4")
DOCTORS = tuple(f"bench.dr{i:02d}" for i in range(1, PRACTITIONERS + 1))
ADMIN = "bench.admin1"
SYSTEM_JOB = "system:reminders"
ASSIGNED_SECRETARY = "bench.sec2"  # assigned to the first three practitioners (Practitioner.assistants)
ASSIGNED_TO = 3
# The readers measured: (label, username).
READERS = (
    ("secretary (all practitioners)", "bench.sec1"),
    ("secretary (assigned to 3)", ASSIGNED_SECRETARY),
    ("practitioner", "bench.dr01"),
)


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_EXPLAIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"bench database (default {DEFAULT_DATABASE_URL}; created if missing)",
    )
    parser.add_argument("--runs", type=int, default=200, help="timed calls per reader, batch and kind (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    parser.add_argument("--no-plans", action="store_true", help="leave out the EXPLAIN plans (section [f])")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the patients, appointments and trail rows (default 1: 100,000 / 1,000,000 / 10,000,000)",
    )
    parser.add_argument("--build-only", action="store_true", help="seed (or check) the database, time nothing")
    parser.add_argument("--reset", action="store_true", help="drop the bench database and its key file first")
    args = parser.parse_args(argv)
    if not 0.001 <= args.scale <= 10:
        parser.error("--scale must be between 0.001 and 10")
    return args


def sizes_scale(scale: float) -> None:
    """Apply --scale to the seeded sizes (module constants: the SQL takes them as parameters)."""
    global PATIENTS, APPOINTMENTS, TRAIL_ROWS
    PATIENTS = max(1000, round(100_000 * scale))
    APPOINTMENTS = max(PRACTITIONERS * SLOTS_PER_DAY * 10, round(1_000_000 * scale))
    TRAIL_ROWS = max(100_000, round(10_000_000 * scale))


def key_file_for(url: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{_common.database_name(url)}.env"


# --------------------------------------------------------------------------- seeding


def patient_uuid_sql(number_sql: str) -> str:
    """The id of generated patient number n (the same expression everywhere)."""
    return f"md5('bench-patient-' || ({number_sql})::text)::uuid"


def token_sql(seed_sql: str) -> str:
    """A stand-in for a Fernet token (never decrypted here): about as long as a short one's."""
    return f"'gAAAAAB' || md5({seed_sql}) || md5(({seed_sql}) || 'x') || md5(({seed_sql}) || 'y')"


def state_read() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('bench_explain_state') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return {}
        cursor.execute("SELECT name, value FROM bench_explain_state")
        return dict(cursor.fetchall())


def seeded_anchor() -> datetime.datetime | None:
    """The seed's clock when the database holds a complete seed of this generator, else None."""
    state = state_read()
    wanted = {
        "version": str(GENERATOR_VERSION),
        "patients": str(PATIENTS),
        "appointments": str(APPOINTMENTS),
        "trail": str(TRAIL_ROWS),
    }
    if any(state.get(k) != v for k, v in wanted.items()) or "anchor" not in state:
        return None
    return datetime.datetime.fromisoformat(state["anchor"])


def anchor_pick() -> datetime.datetime:
    """The seed's clock: today at 10:30 in the practice's time zone (the day half done)."""
    from django.utils import timezone

    local = timezone.localtime(timezone.now())
    return local.replace(hour=10, minute=30, second=0, microsecond=0).astimezone(datetime.UTC)


def structure_seed() -> dict:
    """Accounts (real users, so ids resolve), the 10 practitioners, the 10-minute type and the
    secretary assigned to three practitioners. Returns username -> user id, and the ids."""
    from django.contrib.auth.models import User

    from practice.models import Practitioner, Specialty
    from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY
    from scheduling.models import AppointmentType

    specialty, _ = Specialty.objects.get_or_create(name="Médecine générale")
    ids = {}
    practitioners = []
    for i, username in enumerate(DOCTORS):
        user = _common.role_user(username, PRACTITIONER)
        practitioner, _ = Practitioner.objects.get_or_create(
            user=user, defaults={"display_name": f"Dr Bench {i + 1:02d}", "specialty": specialty}
        )
        practitioners.append(practitioner)
        ids[username] = user.pk
    for username in SECRETARIES:
        ids[username] = _common.role_user(username, SECRETARY).pk
    ids[ADMIN] = _common.role_user(ADMIN, PRACTICE_ADMIN).pk
    assigned = User.objects.get(username=ASSIGNED_SECRETARY)
    for practitioner in practitioners[:ASSIGNED_TO]:
        practitioner.assistants.add(assigned)
    kind, _ = AppointmentType.objects.get_or_create(name="Consultation", defaults={"duration_minutes": SLOT_MINUTES})
    kind.practitioners.add(*practitioners)
    return {"users": ids, "practitioners": [p.pk for p in practitioners], "type": kind.pk}


PATIENTS_SQL = f"""
INSERT INTO patients_patient (id, last_name, birth_name, first_names, sex, birth_date, phone_mobile, phone_other,
    email, address, postal_code, city, nir, referring_doctor, notes, language, consent_sms, consent_email,
    is_archived, archived_at, created_at, updated_at, bidx_last_name, bidx_full_name, bidx_birth_date,
    bidx_phone_mobile, bidx_phone_other, bidx_email)
SELECT {patient_uuid_sql("n")},
    {token_sql("'ln' || n")}, '', {token_sql("'fn' || n")}, {token_sql("'sx' || n")}, {token_sql("'bd' || n")},
    {token_sql("'pm' || n")}, '', {token_sql("'em' || n")}, {token_sql("'ad' || n")}, {token_sql("'pc' || n")},
    {token_sql("'ci' || n")}, {token_sql("'ni' || n")}, '', '', 'fr', n %% 3 = 0, n %% 5 = 0,
    n %% 33 = 0, CASE WHEN n %% 33 = 0 THEN %(anchor)s::timestamptz - interval '30 days' END,
    %(anchor)s::timestamptz - (n %% 1800) * interval '1 day',
    %(anchor)s::timestamptz - (n %% 900) * interval '1 day',
    hashint4(n) %% 1000000, hashint4(n + 1) %% 100000000, hashint4(n + 2) %% 30000,
    hashint4(n + 3), NULL, hashint4(n + 4)
FROM generate_series(0, %(patients)s - 1) AS n
"""

# Appointment i: practitioner i % 10, slot k = i / 10 of that practitioner's calendar (55 a day,
# every day, 10 minutes from 8:00 practice time; no overlap, as the exclusion constraint wants).
# A patient's own practitioner is n % 10: 85% of the appointments go to one of its patients,
# the rest to anyone; patients are drawn as r^1.5 (a few come often, most a few times).
APPOINTMENTS_SQL = f"""
INSERT INTO scheduling_appointment (id, start, "end", status, reason, internal_note, created_at, patient_id,
    practitioner_id, forced, updated_at, appointment_type_id, done_at, cancelled_at)
SELECT md5('bench-appointment-' || s.i)::uuid, s.start, s.start + interval '{SLOT_MINUTES} minutes', s.status,
    {token_sql("'re' || s.i")}, '', s.start - interval '14 days', {patient_uuid_sql("s.patient")},
    (%(practitioners)s::bigint[])[s.p + 1], false,
    CASE WHEN s.start < %(anchor)s THEN s.start ELSE s.start - interval '14 days' END,
    %(type)s, CASE WHEN s.status = 'done' THEN s.start + interval '{SLOT_MINUTES} minutes' END,
    CASE WHEN s.status = 'cancelled' THEN s.start - interval '2 days' END
FROM (
    SELECT r.i, r.p, r.start,
        CASE WHEN r.start < %(anchor)s THEN
                 CASE WHEN r.c < 85 THEN 'done' WHEN r.c < 90 THEN 'no_show' ELSE 'cancelled' END
             ELSE CASE WHEN r.c < 92 THEN 'booked' ELSE 'cancelled' END END AS status,
        CASE WHEN r.own < {round(PRACTITIONER_SHARE * 100)}
             THEN {PRACTITIONERS} * floor(%(patients)s / {PRACTITIONERS} * power(random(), 1.5))::int + r.p
             ELSE floor(%(patients)s * power(random(), 1.5))::int END AS patient
    FROM (
        SELECT i, i %% {PRACTITIONERS} AS p,
            %(day0)s::timestamptz + (i / {PRACTITIONERS} / {SLOTS_PER_DAY}) * interval '1 day'
                + (i / {PRACTITIONERS} %% {SLOTS_PER_DAY}) * interval '{SLOT_MINUTES} minutes' AS start,
            (hashint8(i) & 2147483647) %% 100 AS c,
            (hashint8(i + 1000003) & 2147483647) %% 100 AS own
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i
    ) AS r
) AS s
"""

# One request is 8 consecutive rows (same actor, session, page, time). Actors: 4 secretaries
# 60% of the requests, 10 practitioners 35%, the admin 2%, the reminders job 3%. Rows: 94.5%
# decrypted reads, 0.6% creations, 3.4% changes, 0.1% archivings (writes 4.1%, all with a
# patient: the "own action" index's rows), 1.4% logins. Patients as r^1.5 (as appointments).
TRAIL_SQL = f"""
INSERT INTO audit_auditevent (occurred_at, event_type, actor_user_id, actor_username, actor_role, ip, user_agent,
    request_id, session, path, purpose, model_label, object_pk, patient_id, fields, extra, explanation,
    explained_by, mac)
SELECT
    g.at, g.event_type, a.user_id, a.username, a.role, ('10.1.0.' || (10 + g.actor))::inet,
    CASE WHEN a.role = 'system' THEN '' ELSE 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' END,
    md5('request-' || g.req)::uuid::text,
    CASE WHEN a.role = 'system' THEN ''
         ELSE left(md5('session-' || g.actor || '-' || (extract(epoch FROM g.at)::bigint / 43200)), 32) END,
    CASE WHEN g.event_type = 20 THEN '/accounts/login/'
         WHEN g.model = 'scheduling.Appointment' THEN '/agenda/'
         ELSE '/patients/' || g.patient || '/' END,
    CASE WHEN g.event_type = 20 THEN 'login' WHEN a.role = 'system' THEN 'reminders'
         WHEN g.model = 'scheduling.Appointment' THEN 'scheduling:day' ELSE 'patients:detail' END,
    CASE WHEN g.event_type = 20 THEN '' ELSE g.model END,
    CASE WHEN g.event_type = 20 THEN ''
         WHEN g.model = 'scheduling.Appointment' THEN md5('trail-appointment-' || g.i)::uuid::text
         ELSE g.patient::text END,
    CASE WHEN g.event_type = 20 THEN NULL ELSE g.patient END,
    CASE WHEN g.event_type = 20 THEN '[]'::jsonb
         WHEN g.model = 'scheduling.Appointment' THEN '["reason"]'::jsonb
         ELSE '["birth_date", "first_names", "last_name", "phone_mobile"]'::jsonb END,
    '{{}}'::jsonb,
    CASE WHEN g.event_type = 1 AND a.role <> 'system' THEN 'appointment' ELSE '' END,
    CASE WHEN g.event_type = 1 AND a.role <> 'system' THEN md5('explained-' || g.req)::uuid::text ELSE '' END,
    md5(g.i::text) || md5((g.i + 1)::text)
FROM (
    SELECT r.i, r.req, r.at, r.actor,
        {patient_uuid_sql("floor(%(patients)s * power(random(), 1.5))::int")} AS patient,
        CASE WHEN r.page < 40 THEN 'scheduling.Appointment' ELSE 'patients.Patient' END AS model,
        CASE WHEN r.kind < 945 THEN 1 WHEN r.kind < 951 THEN 10 WHEN r.kind < 985 THEN 11
             WHEN r.kind < 986 THEN 12 ELSE 20 END AS event_type
    FROM (
        SELECT i, i / {ROWS_PER_REQUEST} AS req,
            %(end)s::timestamptz - ((%(rows)s - i)::float8 / %(rows)s) * interval '{TRAIL_DAYS} days' AS at,
            1 + CASE WHEN h %% 1000 < 600 THEN h %% 4
                     WHEN h %% 1000 < 950 THEN 4 + h %% 10
                     WHEN h %% 1000 < 970 THEN 14
                     ELSE 15 END AS actor,
            (hashint8(i * 31 + 3) & 2147483647) %% 1000 AS kind,
            (hashint8(i / {ROWS_PER_REQUEST} + 7919) & 2147483647) %% 100 AS page
        FROM (
            SELECT i, (hashint8(i / {ROWS_PER_REQUEST}) & 2147483647) AS h
            FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i
        ) AS base
    ) AS r
) AS g
JOIN (
    SELECT * FROM unnest(%(actor_ids)s::int[], %(usernames)s::text[], %(roles)s::text[])
        WITH ORDINALITY AS t(user_id, username, role, n)
) AS a ON a.n = g.actor
"""

# Break-the-glass grants: one every ~2 days over the five years, by a practitioner, an hour each
# (BREAK_GLASS_MINUTES), plus 3 open at the anchor for each practitioner.
GRANTS_SQL = f"""
INSERT INTO patients_breakglassgrant (id, username, reason, granted_at, expires_at, reviewed_at, review_note,
    patient_id, reviewed_by_id, user_id)
SELECT md5('bench-grant-' || g)::uuid, u.username, 'Urgence: patient vu en garde, dossier nécessaire',
    at, at + interval '60 minutes',
    CASE WHEN at < %(anchor)s::timestamptz - interval '7 days' THEN at + interval '2 days' END,
    '', {patient_uuid_sql("(hashint4(g) & 2147483647) %% %(patients)s")}, NULL, u.user_id
FROM (
    SELECT g, CASE WHEN g < 900 THEN %(anchor)s::timestamptz - (g * 2 + 1) * interval '1 day'
                   ELSE %(anchor)s::timestamptz - interval '10 minutes' END AS at,
           g %% {PRACTITIONERS} + 1 AS n
    FROM generate_series(0, 900 + 3 * {PRACTITIONERS} - 1) AS g
) AS s
JOIN unnest(%(doctor_ids)s::int[], %(doctor_names)s::text[]) WITH ORDINALITY AS u(user_id, username, n) ON u.n = s.n
"""

# Stated reasons: 3 a day for each secretary and practitioner over the last 30 days, valid to the
# end of their day (approximated in UTC); today's are valid at the anchor.
REASONS_SQL = f"""
INSERT INTO audit_readreason (id, user_id, username, patient_id, reason, stated_at, valid_until)
SELECT md5('bench-reason-' || u.n || '-' || d || '-' || k)::uuid, u.user_id, u.username,
    {patient_uuid_sql("(hashint4(u.n::int * 100000 + d * 10 + k) & 2147483647) %% %(patients)s")},
    'Appel du laboratoire: résultats à transmettre au patient',
    date_trunc('day', %(anchor)s::timestamptz) - d * interval '1 day' + (6 + k) * interval '1 hour',
    date_trunc('day', %(anchor)s::timestamptz) - (d - 1) * interval '1 day'
FROM unnest(%(user_ids)s::int[], %(usernames)s::text[]) WITH ORDINALITY AS u(user_id, username, n),
     generate_series(0, 29) AS d, generate_series(0, 2) AS k
"""


def _indexes_drop(cursor, table: str) -> list[tuple[str, str]]:
    """Drop a table's indexes that back no constraint; return (name, definition) to rebuild them."""
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
        [table, table],
    )
    indexes = cursor.fetchall()
    for name, _definition in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    return indexes


def _indexes_rebuild(cursor, indexes) -> None:
    for name, definition in indexes:
        t0 = perf_counter()
        cursor.execute(definition)
        print(f"    index {name}: {perf_counter() - t0:.0f} s", flush=True)


def seed(anchor: datetime.datetime) -> float:
    """Everything, in SQL (the accounts through the ORM). Indexes that back no constraint are
    dropped during the bulk loads and rebuilt from their own definitions afterwards."""
    from django.db import connection

    started = perf_counter()
    structure = structure_seed()
    users = structure["users"]
    days = APPOINTMENTS // PRACTITIONERS // SLOTS_PER_DAY
    day0 = datetime.datetime.combine(
        anchor.date() - datetime.timedelta(days=days - round(days * FUTURE_SHARE)),
        datetime.time(7, 0),
        tzinfo=datetime.UTC,
    )
    actors = [*SECRETARIES, *DOCTORS, ADMIN]
    roles = ["Secretary"] * len(SECRETARIES) + ["Practitioner"] * len(DOCTORS) + ["Practice admin"]
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '512MB'")

        t0 = perf_counter()
        cursor.execute(PATIENTS_SQL, {"anchor": anchor, "patients": PATIENTS})
        print(f"  {PATIENTS:,} patients ({perf_counter() - t0:.0f} s)", flush=True)

        t0 = perf_counter()
        indexes = _indexes_drop(cursor, "scheduling_appointment")
        for lo in range(0, APPOINTMENTS, CHUNK // 4):
            hi = min(APPOINTMENTS, lo + CHUNK // 4)
            cursor.execute("SELECT setseed(%s)", [lo / APPOINTMENTS])
            cursor.execute(
                APPOINTMENTS_SQL,
                {
                    "lo": lo,
                    "hi": hi,
                    "anchor": anchor,
                    "day0": day0,
                    "patients": PATIENTS,
                    "practitioners": structure["practitioners"],
                    "type": structure["type"],
                },
            )
            print(f"  {hi:>12,} appointments ({perf_counter() - t0:.0f} s)", flush=True)
        _indexes_rebuild(cursor, indexes)

        t0 = perf_counter()
        indexes = _indexes_drop(cursor, "audit_auditevent")
        for lo in range(0, TRAIL_ROWS, CHUNK):
            hi = min(TRAIL_ROWS, lo + CHUNK)
            cursor.execute("SELECT setseed(%s)", [0.5 + lo / TRAIL_ROWS / 2])
            cursor.execute(
                TRAIL_SQL,
                {
                    "lo": lo,
                    "hi": hi,
                    "rows": TRAIL_ROWS,
                    "end": anchor,
                    "patients": PATIENTS,
                    "actor_ids": [users[name] for name in actors] + [None],
                    "usernames": [*actors, SYSTEM_JOB],
                    "roles": [*roles, "system"],
                },
            )
            print(f"  {hi:>12,} trail rows ({perf_counter() - t0:.0f} s)", flush=True)
        _indexes_rebuild(cursor, indexes)

        cursor.execute(
            GRANTS_SQL,
            {
                "anchor": anchor,
                "patients": PATIENTS,
                "doctor_ids": [users[name] for name in DOCTORS],
                "doctor_names": list(DOCTORS),
            },
        )
        grants = cursor.rowcount
        people = [*SECRETARIES, *DOCTORS]
        cursor.execute(
            REASONS_SQL,
            {
                "anchor": anchor,
                "patients": PATIENTS,
                "user_ids": [users[name] for name in people],
                "usernames": people,
            },
        )
        print(f"  {grants:,} break-the-glass grants, {cursor.rowcount:,} stated reasons", flush=True)
        cursor.execute("RESET synchronous_commit")
    t0 = perf_counter()
    vacuum_analyze()
    print(f"  VACUUM ANALYZE ({perf_counter() - t0:.0f} s)", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_explain_state (name text PRIMARY KEY, value text NOT NULL)")
        cursor.execute(
            "INSERT INTO bench_explain_state (name, value) VALUES ('version', %s), ('patients', %s), "
            "('appointments', %s), ('trail', %s), ('anchor', %s), ('seconds', %s)",
            [
                str(GENERATOR_VERSION),
                str(PATIENTS),
                str(APPOINTMENTS),
                str(TRAIL_ROWS),
                anchor.isoformat(),
                f"{perf_counter() - started:.0f}",
            ],
        )
    return perf_counter() - started


def vacuum_analyze() -> None:
    """VACUUM sets the visibility map (index-only scans), ANALYZE the planner's statistics."""
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    autocommit = raw.autocommit
    raw.autocommit = True  # VACUUM cannot run inside a transaction block
    try:
        with raw.cursor() as cursor:
            for table in (
                "patients_patient",
                "scheduling_appointment",
                "audit_auditevent",
                "patients_breakglassgrant",
                "audit_readreason",
                "practice_practitioner",
                "practice_practitioner_assistants",
            ):
                cursor.execute(f"VACUUM ANALYZE {table}")
    finally:
        raw.autocommit = autocommit


# --------------------------------------------------------------------------- samples


def readers() -> list[tuple[str, object, object]]:
    """(label, Reader, Actor) of each measured account."""
    from django.contrib.auth.models import User

    from audit.context import Actor
    from audit.explain import Reader

    found = []
    for label, username in READERS:
        actor = Actor.for_user(User.objects.get(username=username))
        found.append((label, Reader(user_id=actor.user_id, role=actor.role), actor))
    return found


def day_view_patients(anchor: datetime.datetime) -> list:
    """The patients of the anchor day's first 30 appointments of each practitioner (300 rows)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT patient_id FROM (SELECT patient_id, row_number() OVER (PARTITION BY practitioner_id "
            "ORDER BY start) AS n FROM scheduling_appointment WHERE start >= date_trunc('day', %s::timestamptz) "
            "AND start < date_trunc('day', %s::timestamptz) + interval '1 day') AS d WHERE n <= %s",
            [anchor, anchor, DAY_VIEW_SLOTS],
        )
        return [row[0] for row in cursor.fetchall()]


def pool_for(reader, anchor: datetime.datetime, rng: random.Random) -> list:
    """Candidates to sort into explained and unexplained: random patients, plus those the other
    explainers would hold for this reader (its writes of the last day, its grants and reasons)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {patient_uuid_sql('n')} FROM unnest(%s::int[]) AS t(n)",
            [rng.sample(range(PATIENTS), min(POOL, PATIENTS // 2))],
        )
        ids = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT DISTINCT patient_id FROM audit_auditevent WHERE actor_user_id = %s AND event_type IN "
            "(10, 11, 12, 13, 14) AND patient_id IS NOT NULL AND occurred_at >= %s",
            [reader.user_id, anchor - datetime.timedelta(hours=24)],
        )
        ids += [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT patient_id FROM patients_breakglassgrant WHERE user_id = %s AND expires_at > %s "
            "UNION SELECT patient_id FROM audit_readreason WHERE user_id = %s AND valid_until > %s",
            [reader.user_id, anchor, reader.user_id, anchor],
        )
        ids += [row[0] for row in cursor.fetchall()]
    return list(dict.fromkeys(ids))


def classify(reader, pool: list, anchor) -> tuple[dict, list]:
    """{patient: code} of the explained ones, and the unexplained ones (untimed, in chunks)."""
    from audit.explain import explanations_find

    explained = {}
    for i in range(0, len(pool), 2000):
        found = explanations_find(reader, pool[i : i + 2000], anchor)
        explained.update({p: code for p, (code, _ref) in found.items()})
    return explained, [p for p in pool if p not in explained]


def batches(ids: list, size: int, count: int, rng: random.Random) -> list[list]:
    """``count`` batches of ``size`` distinct patients (fewer when the pool is smaller: --scale)."""
    return [rng.sample(ids, min(size, len(ids))) for _ in range(count)]


# --------------------------------------------------------------------------- measuring


def count_queries(fn) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        fn()
    return len(captured.captured_queries)


def time_pair(reader, actor, samples: list[list], anchor, warmup: int) -> dict:
    """explanations_find and Admission.prepare (a fresh audit context per call), alternating."""
    from audit.context import AuditContext
    from audit.explain import explanations_find

    def find(ids):
        return explanations_find(reader, ids, anchor)

    def prepare(ids):
        ctx = AuditContext(purpose="bench:explain", actor=actor)
        c0, t0 = process_time(), perf_counter()
        ctx.prepare(ids)
        return perf_counter() - t0, process_time() - c0, ctx.admission

    for ids in samples[:warmup]:
        find(ids)
        prepare(ids)
    out = {"find": [], "find_cpu": [], "prepare": [], "prepare_cpu": [], "explained": []}
    for ids in samples:
        c0, t0 = process_time(), perf_counter()
        found = find(ids)
        out["find"].append(perf_counter() - t0)
        out["find_cpu"].append(process_time() - c0)
        wall, cpu, admission = prepare(ids)
        out["prepare"].append(wall)
        out["prepare_cpu"].append(cpu)
        out["explained"].append(len(found))
        if len(admission.why) != len(found):
            raise AssertionError("Admission.prepare and explanations_find disagree")
    ctx = AuditContext(purpose="bench:explain", actor=actor)
    out["queries"] = (count_queries(lambda: find(samples[0])), count_queries(lambda: ctx.prepare(samples[0])))
    if out["queries"] != (1, 1):
        raise AssertionError(f"expected exactly one query per batch, got {out['queries']}")
    return out


def breakdown(reader, samples: list[list], anchor) -> dict:
    """Where one call's time goes: Python building the explainers' SQL (``build``; ``compile`` is
    kept at zero since the explainers write plain SQL); the round trip of that SQL alone (psycopg
    adapting the parameters, the server parsing, planning and running it, the rows back); the
    server's planning and execution
    (EXPLAIN ANALYZE, timing off)."""
    from django.db import connection

    from audit.explain import explanations_query

    build, compile_, trip, plan, run = [], [], [], [], []
    with connection.cursor() as cursor:
        for ids in samples:
            ids = sorted(ids)
            t0 = perf_counter()
            sql, params = explanations_query(reader, ids, anchor)
            t1 = perf_counter()
            build.append(t1 - t0)
            compile_.append(perf_counter() - t1)
            t0 = perf_counter()
            cursor.execute(sql, params)
            cursor.fetchall()
            trip.append(perf_counter() - t0)
            cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
            doc = cursor.fetchone()[0]
            doc = doc[0] if isinstance(doc, list) else doc
            plan.append(doc["Planning Time"] / 1000)
            run.append(doc["Execution Time"] / 1000)
    return {"build": build, "compile": compile_, "trip": trip, "plan": plan, "run": run}


UUID_ARRAY = re.compile(r"'\{([0-9a-f,-]+)\}'::uuid\[\]")


def plan_line(line: str) -> str:
    """A plan line with its arrays of patient ids shortened to their length."""
    return UUID_ARRAY.sub(lambda m: f"'{{<{m.group(1).count(',') + 1} patient ids>}}'::uuid[]", line)


def plan_of(reader, ids: list, anchor) -> list[str]:
    from django.db import connection

    from audit.explain import explanations_query

    sql, params = explanations_query(reader, sorted(ids), anchor)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)  # warm
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return [plan_line(row[0]) for row in cursor.fetchall()]


def request_loads(actor, anchor: datetime.datetime, runs: int, warmup: int) -> dict:
    """The day view's loads: 300 appointments with their patients, then the same patients again
    (as a page may load them twice). In an audit context the first load adds one explanation
    query for all its patients and the second none (already explained); the same two loads
    outside any context are the baseline, measured alternately."""
    from audit import current
    from audit.context import AuditContext
    from patients.models import Patient
    from scheduling.models import Appointment

    day_start = datetime.datetime.combine(anchor.date(), datetime.time(7, 0), tzinfo=datetime.UTC)
    window_end = day_start + datetime.timedelta(minutes=SLOT_MINUTES * DAY_VIEW_SLOTS)

    def rows():
        return list(
            Appointment.objects.filter(start__gte=day_start, start__lt=window_end)
            .select_related("patient")
            .order_by("practitioner_id", "start")
        )

    def loads():
        loaded = rows()
        list(Patient.objects.filter(pk__in=[a.patient_id for a in loaded]))
        return loaded

    def audited():
        ctx = AuditContext(purpose="bench:explain", actor=actor)
        token = current.activate(ctx)  # nothing is decrypted: nothing to flush
        try:
            loaded = loads()
        finally:
            current.deactivate(token)
        return loaded, ctx

    out = {"plain": [], "plain_cpu": [], "audited": [], "audited_cpu": []}
    for _ in range(warmup):
        loads()
        audited()
    for _ in range(runs):
        c0, t0 = process_time(), perf_counter()
        loads()
        out["plain"].append(perf_counter() - t0)
        out["plain_cpu"].append(process_time() - c0)
        c0, t0 = process_time(), perf_counter()
        loaded, ctx = audited()
        out["audited"].append(perf_counter() - t0)
        out["audited_cpu"].append(process_time() - c0)
    out["rows"] = len(loaded)
    out["explained"] = len(ctx.admission.why)
    out["patients"] = len({a.patient_id for a in loaded})
    out["queries_plain"] = count_queries(loads)
    out["queries_audited"] = count_queries(audited)
    return out


# --------------------------------------------------------------------------- the alternative

# A prototype of the change this bench argues for (not the app's code): the same five explainers
# as one SQL text written once per reader kind, the batch's patient ids as ONE array parameter (an
# array literal cast to uuid[] by the server) instead of an IN list of N parameters in each of the
# five parts. Its results are checked equal
# to explanations_find's on every batch, so it measures the same work, minus the ORM's.
ALT_PARTS = {
    "appointment": """
SELECT a.patient_id, a.id::text, 'appointment' FROM scheduling_appointment a
JOIN practice_practitioner p ON p.id = a.practitioner_id
WHERE a.patient_id = ANY(%(ids)s::uuid[]) AND a.start >= %(appointment_from)s AND a.start < %(appointment_to)s
  AND a.status <> 'cancelled' AND (p.user_id = %(user)s{front_desk})""",
    "care": """
SELECT a.patient_id, a.id::text, 'care' FROM scheduling_appointment a
JOIN practice_practitioner p ON p.id = a.practitioner_id
WHERE a.patient_id = ANY(%(ids)s::uuid[]) AND p.user_id = %(user)s AND a.status = 'done'
  AND a.start >= %(care_from)s AND a.start < %(now)s""",
    "own": """
SELECT e.patient_id, e.id::text, 'own' FROM audit_auditevent e
WHERE e.actor_user_id = %(user)s AND e.patient_id = ANY(%(ids)s::uuid[]) AND e.occurred_at >= %(own_from)s
  AND e.event_type IN (10, 11, 12, 13, 14)""",
    "grant": """
SELECT g.patient_id, g.id::text, 'grant' FROM patients_breakglassgrant g
WHERE g.user_id = %(user)s AND g.patient_id = ANY(%(ids)s::uuid[]) AND g.expires_at > %(now)s""",
    "reason": """
SELECT r.patient_id, r.id::text, 'reason' FROM audit_readreason r
WHERE r.user_id = %(user)s AND r.patient_id = ANY(%(ids)s::uuid[]) AND r.valid_until > %(now)s""",
}
ALT_FRONT_DESK = """
    OR EXISTS (SELECT 1 FROM practice_practitioner_assistants s
               WHERE s.user_id = %(user)s AND s.practitioner_id = a.practitioner_id)
    OR NOT EXISTS (SELECT 1 FROM practice_practitioner_assistants s WHERE s.user_id = %(user)s)"""
_alt_sql: dict[bool, str] = {}


def alternative_find(reader, patient_ids, now: datetime.datetime) -> dict:
    """What explanations_find returns, from the prototype's one SQL (see ALT_PARTS)."""
    from django.conf import settings
    from django.db import connection

    from audit.explain import _as_uuid, explainers
    from scheduling.explainers import FRONT_DESK_ROLES

    ids = sorted({_as_uuid(p) for p in patient_ids})
    if not ids:
        return {}
    front_desk = reader.role in FRONT_DESK_ROLES
    sql = _alt_sql.get(front_desk)
    if sql is None:
        codes = [e.code for e in explainers()]
        if sorted(codes) != sorted(ALT_PARTS):
            raise AssertionError(f"the prototype mirrors {sorted(ALT_PARTS)}, the app registers {sorted(codes)}")
        parts = [ALT_PARTS[code] for code in codes]
        sql = _alt_sql[front_desk] = "\nUNION ALL".join(parts).replace(
            "{front_desk}", ALT_FRONT_DESK if front_desk else ""
        )
    params = {
        "ids": "{" + ",".join(str(p) for p in ids) + "}",  # one text parameter: cheaper to adapt than a list
        "user": reader.user_id,
        "now": now,
        "appointment_from": now - datetime.timedelta(days=settings.EXPLAIN_APPOINTMENT_PAST_DAYS),
        "appointment_to": now + datetime.timedelta(days=settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS),
        "care_from": now - datetime.timedelta(days=round(settings.EXPLAIN_CARE_MONTHS * 30.44)),
        "own_from": now - datetime.timedelta(hours=settings.EXPLAIN_OWN_ACTION_HOURS),
    }
    rank = {e.code: e.order for e in explainers()}
    found: dict = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for patient, ref, code in cursor.fetchall():
            held = found.get(patient)
            if held is None or rank[code] < rank[held[0]] or (rank[code] == rank[held[0]] and ref < held[1]):
                found[patient] = (code, ref)
    return found


def time_alternative(reader, samples: list[list], anchor, warmup: int) -> dict:
    """explanations_find and the prototype, alternating on the same batches; equal results checked."""
    from audit.explain import explanations_find

    for ids in samples[:warmup]:
        explanations_find(reader, ids, anchor)
        alternative_find(reader, ids, anchor)
    out = {"find": [], "find_cpu": [], "alt": [], "alt_cpu": []}
    for ids in samples:
        c0, t0 = process_time(), perf_counter()
        expected = explanations_find(reader, ids, anchor)
        out["find"].append(perf_counter() - t0)
        out["find_cpu"].append(process_time() - c0)
        c0, t0 = process_time(), perf_counter()
        got = alternative_find(reader, ids, anchor)
        out["alt"].append(perf_counter() - t0)
        out["alt_cpu"].append(process_time() - c0)
        if got != expected:
            raise AssertionError("the prototype's explanations differ from explanations_find's")
    out["queries"] = count_queries(lambda: alternative_find(reader, samples[0], anchor))
    return out


# --------------------------------------------------------------------------- proposed changes

# Measured in the run, then undone: indexes the explainers' parts would use (bench_ names, dropped
# at the end of the section) and a session without parallel plans.
PROPOSED_INDEXES = (
    # care and appointment parts of a practitioner: their own appointments of these patients
    "CREATE INDEX IF NOT EXISTS bench_appointment_practitioner_patient "
    "ON scheduling_appointment (practitioner_id, patient_id, start)",
    # own action: the user's writes of the last day (a range of one day), not all their writes ever
    "CREATE INDEX IF NOT EXISTS bench_audit_actor_writes_time ON audit_auditevent (actor_user_id, occurred_at) "
    "INCLUDE (patient_id) WHERE event_type IN (10, 11, 12, 13, 14)",
)
PROPOSED_NAMES = ("bench_appointment_practitioner_patient", "bench_audit_actor_writes_time")


def proposals_measure(cases, anchor, warmup: int) -> list[tuple]:
    """For each case (label, reader, size, kind, samples): p50 of explanations_find's wall, the
    prototype's wall, the server's planning and execution, in three set-ups: as shipped; the
    session without parallel plans (max_parallel_workers_per_gather = 0); that plus the indexes."""
    from django.db import connection

    stages = ("as shipped", "no parallel", "no parallel + indexes")
    out = []
    with connection.cursor() as cursor:
        try:
            for stage in stages:
                if stage == "no parallel":
                    cursor.execute("SET max_parallel_workers_per_gather = 0")
                if stage == "no parallel + indexes":
                    for ddl in PROPOSED_INDEXES:
                        cursor.execute(ddl)
                    cursor.execute("ANALYZE scheduling_appointment")
                for label, reader, size, kind, samples in cases:
                    t = time_alternative(reader, samples[:100], anchor, warmup)
                    b = breakdown(reader, samples[:50], anchor)
                    out.append(
                        (
                            stage,
                            label,
                            size,
                            kind,
                            pct(t["find"], 50),
                            pct(t["alt"], 50),
                            pct(t["alt"], 95),
                            pct(b["plan"], 50),
                            pct(b["run"], 50),
                        )
                    )
        finally:
            cursor.execute("RESET max_parallel_workers_per_gather")
            for name in PROPOSED_NAMES:
                cursor.execute(f"DROP INDEX IF EXISTS {name}")
    return out


# --------------------------------------------------------------------------- report


def sizes() -> list[tuple[str, str]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_table_size('audit_auditevent')),"
            " pg_size_pretty(pg_indexes_size('audit_auditevent')),"
            " pg_size_pretty(pg_relation_size('audit_actor_writes')),"
            " pg_size_pretty(pg_table_size('scheduling_appointment')),"
            " pg_size_pretty(pg_indexes_size('scheduling_appointment'))"
        )
        trail, trail_indexes, writes_index, appointments, appointment_indexes = cursor.fetchone()
        cursor.execute(
            "SELECT (SELECT count(*) FROM patients_patient), (SELECT count(*) FROM scheduling_appointment), "
            "(SELECT reltuples::bigint FROM pg_class WHERE relname = 'audit_auditevent'), "
            "(SELECT count(*) FROM audit_auditevent WHERE event_type IN (10, 11, 12, 13, 14)), "
            "(SELECT count(*) FROM patients_breakglassgrant), (SELECT count(*) FROM audit_readreason)"
        )
        patients, appointment_count, trail_rows, writes, grants, reasons = cursor.fetchone()
    return [
        (
            "rows",
            f"{patients:,} patients, {appointment_count:,} appointments, {trail_rows:,} trail rows (planner's "
            f"count), {writes:,} of them writes ({writes / max(trail_rows, 1):.1%}), {grants:,} grants, "
            f"{reasons:,} stated reasons",
        ),
        (
            "sizes",
            f"audit_auditevent {trail} + indexes {trail_indexes} (audit_actor_writes {writes_index}); "
            f"scheduling_appointment {appointments} + indexes {appointment_indexes}",
        ),
    ]


def row(label: str, values: list[float], cpu: list[float] | None = None) -> str:
    text = f"{ms(pct(values, 50))} {ms(pct(values, 95))}"
    if cpu is not None:
        text += f" {ms(pct(cpu, 50))}"
    return f"    {label:<40}{text}"


def verdict(p50: float, p95: float) -> str:
    if p95 * 1000 <= TARGET_MS:
        return "met"
    if p50 * 1000 <= TARGET_MS:
        return "p50 met, p95 ABOVE"
    return "ABOVE"


def measure(args, anchor: datetime.datetime) -> None:
    rng = random.Random(11)
    day_ids = list(dict.fromkeys(day_view_patients(anchor)))
    results = []
    alternatives = []
    plans = {}
    print("[a] explanations_find (one UNION ALL query) and Admission.prepare (a fresh audit context each call)")
    print("    (each call a different batch; wall p50 / p95 and this process's CPU p50, in ms; 'q' = queries per call)")
    header = (
        f"    {'reader / batch':<46}{'find p50':>9}{'p95':>9}{'cpu':>9}{'prepare p50':>12}{'p95':>9}{'cpu':>9}"
        f"{'q':>4}{'explained':>11}  target"
    )
    for label, reader, actor in readers():
        pool = pool_for(reader, anchor, rng)
        explained, unexplained = classify(reader, pool, anchor)
        codes = {}
        for code in explained.values():
            codes[code] = codes.get(code, 0) + 1
        day_explained = len(classify(reader, day_ids, anchor)[0])
        print(
            f"\n  {label} (user {reader.user_id}, role {reader.role}): of {len(pool):,} candidates, "
            f"{len(explained):,} explained ({', '.join(f'{k} {v:,}' for k, v in sorted(codes.items()))}), "
            f"{len(unexplained):,} not; the day view's {len(day_ids)} patients: {day_explained} explained"
        )
        print(header)
        explained_ids = list(explained)
        for size in BATCHES:
            kinds = [("explained", explained_ids), ("unexplained", unexplained)]
            for kind, ids in kinds:
                samples = batches(ids, size, args.runs, rng)
                if not samples[0]:
                    continue
                times = time_pair(reader, actor, samples, anchor, args.warmup)
                results.append(
                    (label, len(samples[0]), kind, times, breakdown(reader, samples[: min(50, args.runs)], anchor))
                )
                alternatives.append((label, reader, len(samples[0]), kind, samples))
                if size in (1, 300) and kind == "explained":
                    plans[(label, size)] = plan_of(reader, samples[0], anchor)
            if size == 300:
                samples = [rng.sample(day_ids, len(day_ids)) for _ in range(args.runs)]
                times = time_pair(reader, actor, samples, anchor, args.warmup)
                results.append((label, len(day_ids), "the day view", times, breakdown(reader, samples[:50], anchor)))
                alternatives.append((label, reader, len(day_ids), "the day view", samples))
        for lab, size, kind, t, _b in results:
            if lab != label:
                continue
            name = f"{size:>3} patient{'s' if size > 1 else ' '} {kind}"
            p50, p95 = pct(t["find"], 50), pct(t["find"], 95)
            print(
                f"    {name:<46}{ms(p50)} {ms(p95)} {ms(pct(t['find_cpu'], 50))}   {ms(pct(t['prepare'], 50))}"
                f" {ms(pct(t['prepare'], 95))} {ms(pct(t['prepare_cpu'], 50))}{t['queries'][0]:>4}"
                f"{sum(t['explained']) / len(t['explained']):>11.1f}  {verdict(p50, p95)}"
            )

    print("\n[b] Where the time goes (explanations_find's pieces, p50 ms over 50 batches of each row above)")
    print(f"    {'reader / batch':<46}{'build':>9}{'compile':>9}{'round trip':>12}{'planning':>10}{'execution':>11}")
    for label, size, kind, _t, b in results:
        name = f"{label[:22]}, {size} {kind}"
        print(
            f"    {name:<46}{ms(pct(b['build'], 50)):>9}{ms(pct(b['compile'], 50)):>9}{ms(pct(b['trip'], 50)):>12}"
            f"{ms(pct(b['plan'], 50)):>10}{ms(pct(b['run'], 50)):>11}"
        )
    print("    build: the explainers' querysets and their union (Python); compile: to SQL (Python); round trip:")
    print("    the compiled SQL executed and fetched (parameters adapted, parsed, planned, run); planning and")
    print("    execution: the server's own figures (EXPLAIN ANALYZE)")

    print("\n[c] A request's loads: the day's 300 appointments with select_related('patient'), then the same")
    print("    patients again; in one audit context (a secretary working for all) and outside any, alternately")
    from django.contrib.auth.models import User

    from audit.context import Actor

    secretary = Actor.for_user(User.objects.get(username=READERS[0][1]))
    loads = request_loads(secretary, anchor, args.runs // 2, args.warmup)
    plain50, audited50 = pct(loads["plain"], 50), pct(loads["audited"], 50)
    print(
        f"    {loads['rows']} appointments, {loads['patients']} patients, {loads['explained']} explained; queries: "
        f"{loads['queries_plain']} outside a context, {loads['queries_audited']} in one (the same two loads + one "
        "explanation query)"
    )
    print(f"    {'':<40}{'p50':>8} {'p95':>8} {'cpu p50':>8}")
    print(row("outside any context", loads["plain"], loads["plain_cpu"]))
    print(row("in an audit context (explained)", loads["audited"], loads["audited_cpu"]))
    print(
        f"    ratio in/outside p50 {audited50 / plain50:.2f}x, cpu "
        f"{pct(loads['audited_cpu'], 50) / pct(loads['plain_cpu'], 50):.2f}x; the explanation adds "
        f"{(audited50 - plain50) * 1000:.2f} ms at p50"
    )
    if loads["queries_audited"] != loads["queries_plain"] + 1:
        raise AssertionError(f"expected one explanation query per request, got {loads['queries_audited']} queries")

    print("\n[d] The prototype (one hand-written SQL, the patient ids as one array parameter; not the app's code)")
    print("    against explanations_find, alternating on the same batches; results checked equal on every batch")
    print(
        f"    {'reader / batch':<46}{'find p50':>9}{'cpu':>9}{'proto p50':>10}{'p95':>9}{'cpu':>9}{'q':>4}"
        f"{'ratio':>8}  target"
    )
    for label, reader, size, kind, samples in alternatives:
        t = time_alternative(reader, samples, anchor, args.warmup)
        p50, p95 = pct(t["alt"], 50), pct(t["alt"], 95)
        name = f"{label[:22]}, {size} {kind}"
        print(
            f"    {name:<46}{ms(pct(t['find'], 50))} {ms(pct(t['find_cpu'], 50))}  {ms(p50)} {ms(p95)}"
            f" {ms(pct(t['alt_cpu'], 50))}{t['queries']:>4}{pct(t['find'], 50) / p50:>7.1f}x  {verdict(p50, p95)}"
        )

    print("\n[e] Proposed changes, measured now and undone: the session without parallel plans, then also two")
    print("    indexes (bench_ names, dropped after): " + "; ".join(ddl.split(" ON ")[1] for ddl in PROPOSED_INDEXES))
    print(
        f"    {'set-up / reader / batch':<58}{'find p50':>9}{'proto p50':>10}{'p95':>9}{'planning':>9}"
        f"{'execution':>10}  target (proto)"
    )
    cases = [c for c in alternatives if c[2] in (1, 300) and c[3] in ("explained", "the day view")]
    for stage, label, size, kind, find, alt, alt95, plan, run in proposals_measure(cases, anchor, args.warmup):
        name = f"{stage}: {label[:22]}, {size} {kind}"
        print(f"    {name:<58}{ms(find)} {ms(alt)} {ms(alt95)} {ms(plan)}  {ms(run)}  {verdict(alt, alt95)}")

    if not args.no_plans:
        print("\n[f] EXPLAIN (ANALYZE, BUFFERS), warm, of the explained 1- and 300-patient batches")
        for (label, size), lines in plans.items():
            print(f"\n  --- {label}, {size} patient{'s' if size > 1 else ''} ---")
            for line in lines:
                print(f"    {line}")


def main(argv=None) -> int:
    args = args_parse(argv)
    sizes_scale(args.scale)
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
    from django.db import connection

    problem = _common.keys_problem() if db_note == "exists" and state_read() else None
    if problem:
        print(f"The bench database was made with other keys: {problem}\nRun again with --reset.", file=sys.stderr)
        return 2
    anchor = seeded_anchor() if db_note == "exists" else None
    if anchor is None and db_note == "exists" and state_read() != {}:
        # An incomplete or older seed: start again from an empty database (the trail refuses
        # deletes; dropping the bench's own database is the clean way).
        print("The bench database holds an incomplete or older seed: dropping it.", flush=True)
        connection.close()
        _common.database_drop(args.database_url)
        db_note = _common.database_ensure(args.database_url) + " again (older seed dropped)"
    print(f"Bench database {settings.DATABASES['default']['NAME']}: {db_note}; migrating...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    if anchor is not None:
        build_note = f"reused (seeded for {anchor:%Y-%m-%d %H:%M} UTC)"
    else:
        from audit.models import AuditEvent

        if AuditEvent.objects.exists():
            print("The bench database has trail rows but no complete seed: run again with --reset.", file=sys.stderr)
            return 2
        anchor = anchor_pick()
        print(f"Seeding (once; later runs reuse it), clock {anchor:%Y-%m-%d %H:%M} UTC...", flush=True)
        build_note = f"seeded now in {seed(anchor):.0f} s"
    if args.build_only:
        print(f"Data: {build_note}.")
        return 0

    with connection.cursor() as cursor:  # left by an interrupted run: the figures are of the model's indexes
        for name in PROPOSED_NAMES:
            cursor.execute(f"DROP INDEX IF EXISTS {name}")
    connection.close()  # a fresh session: the seed's settings are gone
    commits = _common.commit_latency()
    load_start = load_average()
    print()
    print("Explained reads benchmark (audit/explain.py)")
    for label, value in _common.server_describe():
        print(f"  {label:<16} {value}")
    print(f"  {'keys':<16} {keys_note}")
    print(
        f"  {'data':<16} {build_note}: {PRACTITIONERS} practitioners, {len(SECRETARIES)} secretaries "
        f"({ASSIGNED_SECRETARY} assigned to {ASSIGNED_TO} practitioners, the others to none: all), 1 admin"
    )
    for _label, value in sizes():
        print(f"  {'':<16} {value}")
    print(
        f"  {'':<16} the trail rows are unchained filler (a MAC-sized value, not a chain: audit_verify would "
        "reject them); nothing is decrypted (ciphertext columns hold stand-in tokens)"
    )
    print(
        f"  {'clock':<16} 'now' = the seed's clock {anchor:%Y-%m-%d %H:%M} UTC for every call "
        f"(EXPLAIN_APPOINTMENT {settings.EXPLAIN_APPOINTMENT_PAST_DAYS}d back / "
        f"{settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS}d ahead, CARE {settings.EXPLAIN_CARE_MONTHS} months, "
        f"OWN_ACTION {settings.EXPLAIN_OWN_ACTION_HOURS} h)"
    )
    print(
        f"  {'commit latency':<16} INSERT+COMMIT of 1 row: p50 {pct(commits, 50) * 1000:.2f} ms, "
        f"p95 {pct(commits, 95) * 1000:.2f} ms"
    )
    print(f"  {'load average':<16} {load_start} at start (1, 5, 15 min)")
    print(f"  {'target':<16} a request's explanation query under {TARGET_MS:g} ms (docs/design.md)")
    print()

    import audit.explain

    # Admission.prepare asks timezone.now(): the seed's clock instead, in audit.explain only.
    with mock.patch.object(audit.explain, "timezone", SimpleNamespace(now=lambda: anchor)):
        measure(args, anchor)
    print(f"\nLoad average at the end: {load_average()} (at start {load_start})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
