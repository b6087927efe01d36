"""Agenda benchmark: the front desk's day view among 1,000,000 stored appointments.

    .venv/bin/python bench/agenda_bench.py [--appointments 1000000]
        [--database-url postgres://postgres@127.0.0.1:5432/cabinet_agenda_bench] [--profile] [--reset]

Sets Django up itself (production settings: DEBUG off, TLS redirect off because there is no
proxy here), creates and migrates the bench database, seeds 10 practitioners, ~20,000
patients and N appointments once, then measures the day view (GET /agenda/<day>/ as a
Secretary), the selector behind it, the next-free-slot search and the day query's plan, and
prints the figures against the targets of docs/design.md. See bench/README.md ("Agenda benchmark").
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from time import perf_counter, process_time

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from _common import load_average, ms, pct

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cabinet_agenda_bench"
SECRETARY_USERNAME = "bench.secretary"
PRACTITIONERS = 10
DAY_START = datetime.time(8, 0)  # working hours, Monday to Saturday
DAY_END = datetime.time(20, 0)
SLOT_MINUTES = 20  # the one appointment type
SLOTS_PER_DAY = 36  # 8:00-20:00 in 20-minute appointments: a full day
TARGET_FREE_SLOTS = range(12, 18)  # 12:00-14:00 left free on the target day: 30 appointments each
TARGET_PER_PRACTITIONER = SLOTS_PER_DAY - len(TARGET_FREE_SLOTS)
NOW_ON_TARGET_DAY = datetime.time(10, 30)  # "now" for statuses and the free-slot search
PAST_SHARE = 0.75  # of the other appointments, before the target day (the rest after it)
SHUFFLE_DAYS = 28  # rows are inserted in booking order: shuffled within 4-week windows
BATCH = 5000
PATIENT_BATCH = 2000
TARGET_QUERIES = 12
TARGET_P50_MS = 80.0
# Fixed-date French public holidays: the practice is closed (an Absence with no practitioner).
PUBLIC_HOLIDAYS = {(1, 1), (5, 1), (5, 8), (7, 14), (8, 15), (11, 1), (11, 11), (12, 25)}
REASONS = (
    "Renouvellement d'ordonnance",
    "Douleurs lombaires depuis une semaine",
    "Certificat de sport",
    "Contrôle tension artérielle",
    "Résultats de prise de sang",
    "Fièvre et toux",
    "Suivi diabète",
    "Vaccin grippe",
)
CANCEL_REASONS = ("Empêchement du patient", "Patient hospitalisé", "Reporté à la demande du patient")


# --------------------------------------------------------------------------- set-up


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appointments", type=int, default=1_000_000, help="appointments to store (default 1e6)")
    parser.add_argument("--patients", type=int, default=20_000, help="patients to seed (default 20,000)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_AGENDA_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"bench database (default {DEFAULT_DATABASE_URL}; created if missing)",
    )
    parser.add_argument("--iterations", type=int, default=60, help="timed loads per measurement (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed loads first (default 10)")
    parser.add_argument("--conn-max-age", type=int, default=600, help="CONN_MAX_AGE unless set (default 600)")
    parser.add_argument("--profile", action="store_true", help="cProfile the day view even when targets are met")
    parser.add_argument("--reset", action="store_true", help="drop the bench database and its key file first")
    args = parser.parse_args(argv)
    if args.appointments < PRACTITIONERS * TARGET_PER_PRACTITIONER:
        parser.error(f"--appointments must be at least {PRACTITIONERS * TARGET_PER_PRACTITIONER}")
    return args


def key_file_for(url: str) -> Path:
    """Keys (and the target day) live next to the database's name, outside the repository:
    /tmp/<database name>.env (mode 600, refused if another user owns it)."""
    return Path(tempfile.gettempdir()) / f"{_common.database_name(url)}.env"


def pick_target_day(today: datetime.date) -> datetime.date:
    """Today, or the next day the practice is open (Monday to Saturday, not a public holiday)."""
    day = today
    while day.weekday() == 6 or (day.month, day.day) in PUBLIC_HOLIDAYS:
        day += datetime.timedelta(days=1)
    return day


# --------------------------------------------------------------------------- the plan


class Plan:
    """Which practitioner works which day, and the appointments of every day, deterministic.

    A practitioner works Monday to Saturday 8:00-20:00 except on practice closures (fixed
    public holidays) and on their holiday weeks (ISO week w with (w + i) % 10 == 0: about 5
    weeks a year, one practitioner away at a time; never the target day's week). Every
    working day is full (36 x 20 min) except the target day (12:00-14:00 free: 30 each).
    """

    def __init__(self, target: datetime.date, total: int):
        self.target = target
        self.target_week = target.isocalendar()[:2]
        rest = total - PRACTITIONERS * TARGET_PER_PRACTITIONER
        past_goal = round(rest * PAST_SHARE)
        future_goal = rest - past_goal
        past = self._walk(target, -1, past_goal)
        future = self._walk(target, +1, future_goal)
        target_entries = [
            (i, s) for s in range(SLOTS_PER_DAY) if s not in TARGET_FREE_SLOTS for i in self._present(target)
        ]
        self.days = [*reversed(past), (target, target_entries), *future]  # chronological
        self.first, self.last = self.days[0][0], self.days[-1][0]

    @staticmethod
    def open(day: datetime.date) -> bool:
        return day.weekday() < 6 and (day.month, day.day) not in PUBLIC_HOLIDAYS

    def away(self, i: int, day: datetime.date) -> bool:
        year, week, _ = day.isocalendar()
        return (week + i) % 10 == 0 and (year, week) != self.target_week

    def _present(self, day: datetime.date) -> list[int]:
        if not self.open(day):
            return []
        return [i for i in range(PRACTITIONERS) if not self.away(i, day)]

    def _walk(self, target: datetime.date, step: int, goal: int) -> list:
        days, total, day = [], 0, target
        while total < goal:
            day += datetime.timedelta(days=step)
            entries = [(i, s) for s in range(SLOTS_PER_DAY) for i in self._present(day)]
            if not entries:
                continue
            entries = entries[: goal - total]  # the farthest day may be partly filled
            days.append((day, entries))
            total += len(entries)
        return days

    def absences(self):
        """(practitioner index or None, first day, last day) of every absence over the plan's span."""
        day = self.first - datetime.timedelta(days=self.first.weekday())
        while day <= self.last:
            if (day.month, day.day) in PUBLIC_HOLIDAYS:
                yield None, day, day
            if day.weekday() == 0:
                for i in range(PRACTITIONERS):
                    if self.away(i, day):
                        yield i, day, day + datetime.timedelta(days=6)
            day += datetime.timedelta(days=1)

    def rows(self, patients: int):
        """Every appointment as a tuple, in insertion (booking) order: chronological windows of
        SHUFFLE_DAYS days, shuffled inside each window (a day's appointments are booked over the
        weeks before it, interleaved with other days')."""
        window, key = [], None
        for day, entries in self.days:
            k = (day - self.first).days // SHUFFLE_DAYS
            if key is not None and k != key:
                random.Random(f"agenda bench window {key}").shuffle(window)
                yield from window
                window = []
            key = k
            window.extend(self._day_rows(day, entries, patients))
        random.Random(f"agenda bench window {key}").shuffle(window)
        yield from window

    def _day_rows(self, day: datetime.date, entries, patients: int):
        rng = random.Random(f"agenda bench day {day.isoformat()}")
        now_slot = (NOW_ON_TARGET_DAY.hour * 60 + NOW_ON_TARGET_DAY.minute - DAY_START.hour * 60) // SLOT_MINUTES
        for i, slot in entries:
            roll = rng.random()
            if day < self.target:
                status = "cancelled" if roll < 0.08 else ("no_show" if roll < 0.12 else "done")
            elif day > self.target:
                status = "cancelled" if roll < 0.07 else "booked"
            elif slot < now_slot - 1:
                status = "done"
            elif slot == now_slot - 1:
                status = "in_consultation"
            elif slot <= now_slot + 1:
                status = "arrived"
            else:
                status = "booked"
            reason = rng.randrange(len(REASONS)) if rng.random() < 0.4 else -1
            cancel = rng.randrange(len(CANCEL_REASONS)) if status == "cancelled" else -1
            yield (day.toordinal(), i, slot, rng.randrange(patients), status, reason, cancel)


# --------------------------------------------------------------------------- seeding


def structure_seed(plan: Plan):
    """Specialty, 10 practitioners with users, working hours, the 20-minute type, absences. Idempotent."""
    from django.contrib.auth.models import Group, User

    from practice.models import Practitioner, Specialty
    from practice.roles import PRACTITIONER, roles_sync
    from scheduling.availability import practice_tz
    from scheduling.models import Absence, AbsenceKind, AppointmentType, WorkingHours

    roles_sync()
    group = Group.objects.get(name=PRACTITIONER)
    names = ("Médecine générale", "Pédiatrie", "Kinésithérapie")
    specialties = [Specialty.objects.get_or_create(name=n)[0] for n in names]
    colours = (
        "#0b6bcb",
        "#c2410c",
        "#15803d",
        "#7c3aed",
        "#be123c",
        "#0f766e",
        "#a16207",
        "#4338ca",
        "#b91c1c",
        "#047857",
    )
    people = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau")
    practitioners = []
    for i in range(PRACTITIONERS):
        user, created = User.objects.get_or_create(username=f"bench.dr{i + 1:02d}")
        if created:
            user.set_unusable_password()
            user.save()
        user.groups.add(group)
        practitioner, _ = Practitioner.objects.get_or_create(
            user=user,
            defaults={
                "display_name": f"Dr {people[i]}",
                "specialty": specialties[i % len(specialties)],
                "colour": colours[i],
            },
        )
        if not practitioner.working_hours.exists():
            WorkingHours.objects.bulk_create(
                WorkingHours(practitioner=practitioner, weekday=w, start_time=DAY_START, end_time=DAY_END)
                for w in range(6)
            )
        practitioners.append(practitioner)
    kind, _ = AppointmentType.objects.get_or_create(
        name="Consultation", defaults={"duration_minutes": SLOT_MINUTES, "colour": "#5b8def"}
    )
    kind.practitioners.add(*practitioners)
    if not Absence.objects.exists():
        tz = practice_tz()
        Absence.objects.bulk_create(
            Absence(
                practitioner=practitioners[i] if i is not None else None,
                start=datetime.datetime.combine(first, datetime.time.min, tzinfo=tz),
                end=datetime.datetime.combine(last + datetime.timedelta(days=1), datetime.time.min, tzinfo=tz),
                kind=AbsenceKind.CLOSURE if i is None else AbsenceKind.HOLIDAY,
                label="Jour férié" if i is None else "Congés",
            )
            for i, first, last in plan.absences()
        )
    return practitioners, kind


class People:
    """Cheap deterministic patients: Faker fr_FR word lists (names), unique mobile numbers."""

    def __init__(self):
        from faker.providers.person.fr_FR import Provider as Person

        self.last = list(Person.last_names)
        self.male = list(Person.first_names_male)
        self.female = list(Person.first_names_female)
        self.domains = ("orange.fr", "free.fr", "gmail.com", "laposte.net")

    def person(self, i: int, rng: random.Random) -> dict:
        sex = "F" if rng.random() < 0.52 else "M"
        names = self.female if sex == "F" else self.male
        first_names = " ".join(rng.sample(names, 1 if rng.random() < 0.75 else 2))
        last_name = rng.choice(self.last)
        if rng.random() < 0.6:  # the 400 common names, and derived ones (fewer homonyms)
            last_name = f"{last_name}{rng.choice(('et', 'ot', 'in', 'eau', 'ier', 'ard'))}"
        return {
            "last_name": last_name,
            "first_names": first_names,
            "sex": sex,
            "birth_date": datetime.date(1935, 1, 1) + datetime.timedelta(days=rng.randrange(88 * 365)),
            "phone_mobile": f"+337{(i * 7919 + 23_456_789) % 100_000_000:08d}",
            "email": f"patient{i}@{rng.choice(self.domains)}" if rng.random() < 0.6 else "",
            "consent_sms": rng.random() < 0.7,
        }


def patients_seed(n: int) -> tuple[int, float]:
    from django.db import transaction

    from audit.context import system_context
    from patients.models import Patient

    existing = Patient.objects.count()
    if existing >= n:
        return 0, 0.0
    people = People()
    started = perf_counter()
    with system_context("bench", purpose="agenda bench seed"):
        for start in range(existing, n, PATIENT_BATCH):
            rng = random.Random(f"agenda bench patients {start}")
            batch = []
            for i in range(start, min(start + PATIENT_BATCH, n)):
                patient = Patient(**people.person(i, rng))
                patient.blind_indexes_update()
                batch.append(patient)
            with transaction.atomic():
                Patient.objects.bulk_create(batch)
            print(f"\r  patients {start + len(batch):>7,}/{n:,}", end="", flush=True)
    print()
    return n - existing, perf_counter() - started


def appointments_seed(plan: Plan, n: int, practitioners, kind) -> tuple[int, float]:
    """Insert the plan's rows not stored yet (resumes after an interruption: rows are committed
    per batch, in the plan's fixed order)."""
    from django.db import transaction

    from audit.context import system_context
    from patients.models import Patient
    from scheduling.availability import practice_tz
    from scheduling.models import Appointment

    existing = Appointment.objects.count()
    if existing >= n:
        return 0, 0.0
    tz = practice_tz()
    patient_ids = list(Patient.objects.order_by("pk").values_list("pk", flat=True))
    pids = [p.pk for p in practitioners]
    step = datetime.timedelta(minutes=SLOT_MINUTES)
    day_cache: dict[int, datetime.datetime] = {}

    def build(row) -> Appointment:
        ordinal, i, slot, patient, status, reason, cancel = row
        base = day_cache.get(ordinal)
        if base is None:
            base = day_cache[ordinal] = datetime.datetime.combine(
                datetime.date.fromordinal(ordinal), DAY_START, tzinfo=tz
            )
        start = base + slot * step
        end = start + step
        extra = {}
        if status in ("arrived", "in_consultation", "done"):
            extra["arrived_at"] = start - datetime.timedelta(minutes=7)
        if status in ("in_consultation", "done"):
            extra["consultation_started_at"] = start + datetime.timedelta(minutes=2)
        if status == "done":
            extra["done_at"] = end
        if status == "cancelled":
            extra["cancelled_at"] = start - datetime.timedelta(days=2)
            extra["cancellation_reason"] = CANCEL_REASONS[cancel]
        return Appointment(
            practitioner_id=pids[i],
            patient_id=patient_ids[patient],
            appointment_type_id=kind.pk,
            start=start,
            end=end,
            status=status,
            reason=REASONS[reason] if reason >= 0 else "",
            internal_note="",
            **extra,
        )

    started = perf_counter()
    done = 0
    rows = plan.rows(len(patient_ids))
    for _ in range(existing):  # already stored: the same rows, in the same order
        next(rows)
    with system_context("bench", purpose="agenda bench seed"):
        batch = []
        for row in rows:
            batch.append(build(row))
            if len(batch) == BATCH:
                with transaction.atomic():
                    Appointment.objects.bulk_create(batch)
                done += len(batch)
                batch = []
                if done % 50_000 == 0:
                    elapsed = perf_counter() - started
                    rate = done / elapsed
                    print(
                        f"  appointments {existing + done:>9,}/{n:,}  ({rate:,.0f}/s, "
                        f"~{(n - existing - done) / rate:,.0f} s left, load {load_average()})",
                        flush=True,
                    )
        if batch:
            with transaction.atomic():
                Appointment.objects.bulk_create(batch)
            done += len(batch)
    return done, perf_counter() - started


def vacuum_analyze(full: bool) -> float:
    from django.db import connection

    started = perf_counter()
    with connection.cursor() as cursor:
        for table in ("scheduling_appointment", "patients_patient", "scheduling_absence", "audit_auditevent"):
            cursor.execute(f"{'VACUUM ' if full else ''}ANALYZE {table}")
    return perf_counter() - started


def target_day_check(day: datetime.date) -> dict:
    """Appointments shown on the target day, per practitioner (the day view excludes cancelled)."""
    from django.db.models import Count

    from scheduling.availability import local_day_bounds
    from scheduling.models import Appointment, AppointmentStatus

    start, end = local_day_bounds(day)
    rows = (
        Appointment.objects.filter(start__lt=end, end__gt=start)
        .exclude(status=AppointmentStatus.CANCELLED)
        .values("practitioner_id")
        .annotate(n=Count("id"))
        .order_by("practitioner_id")
    )
    return {r["practitioner_id"]: r["n"] for r in rows}


# --------------------------------------------------------------------------- measuring


def get_ok(client, url):
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"GET {url} answered {response.status_code}; the bench needs 200.")
    return response


def sql_head(sql: str) -> str:
    words = sql.replace('"', "").split()
    if words and words[0] == "SELECT" and "FROM" in words:
        return "SELECT ... FROM " + words[words.index("FROM") + 1]
    return " ".join(words[:3])[:60]


def timed(fn, iterations: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iterations):
        c0, t0 = process_time(), perf_counter()
        fn()
        wall.append(perf_counter() - t0)
        cpu.append(process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def day_view_bench(client, url: str, args) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audit.models import AuditEvent

    get_ok(client, url)
    last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    with CaptureQueriesContext(connection) as captured:
        response = get_ok(client, url)
    # captured_queries reads connection.queries when accessed; the next request empties it.
    queries = [q["sql"] for q in captured.captured_queries]
    written = list(AuditEvent.objects.filter(pk__gt=last).values_list("model_label", "fields"))
    fields = sorted({f"{label}: {', '.join(f)}" for label, f in written})
    result = timed(lambda: get_ok(client, url), args.iterations, args.warmup)
    # The request stack without the grid: same middleware, session save, login and role check,
    # two tiny queries, no decryption. What any page pays before its own work.
    floor = timed(lambda: get_ok(client, "/agenda/colours.css"), args.iterations, args.warmup)
    result.update(
        floor=floor,
        queries=queries,
        audit_rows=len(written),
        audit_fields=fields,
        html=len(response.content),
        blocks=response.content.decode().count('class="appt '),
        free=response.content.decode().count('class="free '),
        buttons=response.content.decode().count('class="go '),
    )
    return result


def selector_bench(day: datetime.date, args) -> dict:
    """agenda_day alone, then with its decryptions, then with the audit write; then, on a grid
    decrypted once, scheduling.grid.grid_context (grid lines, blocks) and the page's template alone."""
    from django.db import connection
    from django.template.loader import render_to_string
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from audit.context import system_context
    from scheduling import grid as agenda_grid
    from scheduling import selectors, views

    def appointments(grid):
        return [a for column in grid.columns for a in column.appointments]

    def select_only():
        with system_context("bench", purpose="agenda bench selector") as ctx:
            selectors.agenda_day(day)
            ctx.discard()

    def select_decrypt():
        with system_context("bench", purpose="agenda bench selector") as ctx:
            for a in appointments(selectors.agenda_day(day)):
                a.patient.display_name  # noqa: B018  (the read is what is timed)
            ctx.discard()

    def select_decrypt_flush():
        with system_context("bench", purpose="agenda bench selector"):
            for a in appointments(selectors.agenda_day(day)):
                a.patient.display_name  # noqa: B018

    with CaptureQueriesContext(connection) as captured, system_context("bench", purpose="agenda bench") as ctx:
        grid = selectors.agenda_day(day)
        ctx.discard()
    out = {
        "queries": [q["sql"] for q in captured.captured_queries],
        "rows": len(appointments(grid)),
        "selector, SQL + model instances (nothing decrypted)": timed(select_only, args.iterations, args.warmup),
        "selector + decrypt 2 name fields per appointment": timed(select_decrypt, args.iterations, args.warmup),
        "selector + decrypt + audit write (context closes)": timed(select_decrypt_flush, args.iterations, args.warmup),
    }

    request = RequestFactory().get(f"/agenda/{day.isoformat()}/")
    request.user = _common.role_user(SECRETARY_USERNAME, "Secretary")
    # What django-otp's middleware gives a session past its second factor (the base template asks).
    request.user.is_verified = lambda: True
    with system_context("bench", purpose="agenda bench render") as ctx:
        grid = selectors.agenda_day(day)
        for a in appointments(grid):
            a.patient.display_name  # noqa: B018  (decrypted once: the renders below read the cache)
        ctx.discard()

        today = views._today()
        # What day_view offers the front desk: free time to book, one-click status buttons.
        actions = agenda_grid.Actions(book=True, status_next=f"/agenda/{day.isoformat()}/#now")

        def layout():
            return agenda_grid.grid_context(grid, today=today, actions=actions)

        prepared = layout()

        def render():  # the context day_view builds, around a layout made once
            context = {
                "day": day,
                "today": today,
                "previous": day - datetime.timedelta(days=1),
                "next": day + datetime.timedelta(days=1),
                **prepared,
            }
            render_to_string("scheduling/day.html", context, request=request)

        out["layout: grid.grid_context alone (already decrypted)"] = timed(layout, args.iterations, args.warmup)
        try:
            out["render: scheduling/day.html alone (layout made once)"] = timed(render, args.iterations, args.warmup)
        except Exception as exc:  # a template needing more of the request: the figure is optional
            out["render_error"] = f"{exc.__class__.__name__}: {exc}"
        ctx.discard()
    return out


def empty_day(plan: Plan) -> datetime.date:
    """A working day after the last seeded one: nothing booked, so the grid offers its whole
    working time as links to book (10 practitioners x 12 hours by quarters: 480 links), the
    clickable grid's largest page."""
    day = plan.last + datetime.timedelta(days=7)
    while not Plan.open(day):
        day += datetime.timedelta(days=1)
    return day


def free_slots_bench(day: datetime.date, practitioners, args) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from scheduling import availability

    after = datetime.datetime.combine(day, NOW_ON_TARGET_DAY, tzinfo=availability.practice_tz())
    counter = iter(range(10**9))

    def search():
        practitioner = practitioners[next(counter) % len(practitioners)]
        return availability.free_slots(
            practitioner_id=practitioner.pk, duration_minutes=SLOT_MINUTES, after=after, count=10
        )

    with CaptureQueriesContext(connection) as captured:
        slots = availability.free_slots(
            practitioner_id=practitioners[0].pk, duration_minutes=SLOT_MINUTES, after=after, count=10
        )
    window_start, _ = availability.local_day_bounds(day)
    _, window_end = availability.local_day_bounds(day + datetime.timedelta(days=62))
    busy = availability.active_appointments_between([practitioners[0].pk], window_start, window_end).count()
    result = timed(search, args.iterations, args.warmup)
    tz = availability.practice_tz()
    result.update(
        after=after,
        queries=len(captured.captured_queries),
        found=len(slots),
        first=slots[0].start.astimezone(tz) if slots else None,
        last=slots[-1].start.astimezone(tz) if slots else None,
        busy=busy,
    )
    return result


def explain(day: datetime.date, practitioners) -> dict:
    from django.db import connection

    from scheduling import availability, selectors

    start, end = availability.local_day_bounds(day)
    ids = [p.pk for p in practitioners]
    _, window_end = availability.local_day_bounds(day + datetime.timedelta(days=62))
    plans = {}
    queries = {
        "day view: selectors.agenda_appointments(10 practitioners, the day)": selectors.agenda_appointments(
            ids, start, end
        ),
        "free slots: availability.active_appointments_between(1 practitioner, 62 days)": (
            availability.active_appointments_between([ids[0]], start, window_end).only("start", "end")
        ),
    }
    with connection.cursor() as cursor:
        for name, qs in queries.items():
            sql, params = qs.query.sql_with_params()
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plans[name] = [row[0] for row in cursor.fetchall()]
    return plans


PROFILE_PIECES = (
    r"scheduling/|audit/(middleware|context|services|fields)\.py|fernet\.py.*(decrypt|_verify)"
    r"|psycopg/cursor\.py.*execute|template/base\.py.*\(render\)|template/loader_tags|sessions/"
)


def profile_day_view(client, url: str, n: int = 20) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        get_ok(client, url)
    profiler.disable()
    stream = io.StringIO()
    stream.write(f"\n--- cProfile, GET {url} x{n}: top 25 by own time ---\n")
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    stream.write(
        f"\n--- cProfile, GET {url} x{n}: the agenda, audit, crypto, SQL and template pieces, cumulative ---\n"
    )
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(PROFILE_PIECES, 35)
    return stream.getvalue()


# --------------------------------------------------------------------------- report


def environment_describe(keys_note, db_note, day, seeded, per_practitioner, load_start) -> list[tuple[str, str]]:
    from django.conf import settings
    from django.db import connection

    from audit.models import AuditEvent
    from patients.models import Patient
    from practice.models import Practitioner
    from scheduling.models import Absence, Appointment

    sizes = "n/a"
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_size_pretty(pg_table_size('scheduling_appointment')), "
                "pg_size_pretty(pg_indexes_size('scheduling_appointment')), "
                "pg_size_pretty(pg_total_relation_size('patients_patient')), "
                "pg_size_pretty(pg_total_relation_size('audit_auditevent'))"
            )
            sizes = "scheduling_appointment {} + indexes {}; patients_patient {}; audit_auditevent {}".format(
                *cursor.fetchone()
            )
    (p_added, p_seconds), (a_added, a_seconds), vacuum = seeded
    seeding = "reused (already seeded)"
    if p_added or a_added:
        seeding = (
            f"seeded now: {p_added:,} patients in {p_seconds:,.0f} s, {a_added:,} appointments in {a_seconds:,.0f} s"
            f" ({a_added / a_seconds if a_seconds else 0:,.0f}/s), VACUUM ANALYZE {vacuum:,.0f} s"
        )
    shown = sorted(per_practitioner.values())
    return [
        ("calibration", calibration()),
        *_common.server_describe(),
        ("keys", keys_note),
        ("data", f"db {db_note}; {seeding}"),
        (
            "rows",
            f"{Appointment.objects.count():,} appointments, {Patient.objects.count():,} patients, "
            f"{Practitioner.objects.filter(is_active=True).count()} active practitioners, "
            f"{Absence.objects.count():,} absences, {AuditEvent.objects.count():,} audit rows",
        ),
        ("table sizes", sizes),
        (
            "target day",
            f"{day.isoformat()} ({day:%A}): {len(shown)} practitioners x {shown[0] if shown else 0}"
            f"{'' if len(set(shown)) <= 1 else f'..{shown[-1]}'} appointments shown (sum {sum(shown)}); "
            f"'now' = {NOW_ON_TARGET_DAY:%H:%M} practice time",
        ),
        (
            "settings",
            f"DEBUG={settings.DEBUG}, TIME_ZONE={settings.TIME_ZONE}, "
            f"AGENDA_SLOT_MINUTES={settings.AGENDA_SLOT_MINUTES}",
        ),
        ("load average", f"{load_start} at start (1, 5, 15 min; 2 CPUs shared with other work)"),
    ]


def calibration() -> str:
    """Two machine-speed figures, to compare runs on different machines (no app data involved)."""
    import timeit

    from cryptography.fernet import Fernet, MultiFernet

    crypter = MultiFernet([Fernet(Fernet.generate_key())])
    token = crypter.encrypt(b"\x02" + bytes(16) + b"DUPONT-MARTINET")
    fernet = min(timeit.repeat(lambda: crypter.decrypt(token), number=2000, repeat=3)) / 2000
    loop = min(timeit.repeat("sum(i * i for i in range(100000))", number=5, repeat=3)) / 5
    return (
        f"one Fernet decrypt of a short token {fernet * 1e6:.1f} us; "
        f"pure Python, sum(i*i for i in range(100000)) {loop * 1000:.1f} ms"
    )


def line_of(label: str, values: dict, extra: str = "") -> str:
    wall, cpu = values["wall"], values["cpu"]
    return (
        f"    {label:<58}{ms(pct(wall, 50))}{ms(pct(wall, 95))}{ms(statistics.mean(wall))}{ms(pct(cpu, 50))}  {extra}"
    )


def report(env, view, sel, slots, plans, args, load_end) -> list[tuple[str, str, str, bool | None]]:
    line = "=" * 110
    print(f"\n{line}\nCabinet agenda bench\n{line}")
    for k, v in env:
        print(f"  {k:<16} {v}")
    head = f"    {'':<58}{'p50 ms':>8}{'p95 ms':>8}{'mean ms':>8}{'cpu p50':>8}"

    print(
        f"\n[a] front-desk day view: GET /agenda/<day>/ via django.test.Client as a Secretary ({args.iterations} timed)"
    )
    print("    full request -> response: middleware, session, auth, view, selector, decryption, template, audit INSERT")
    print(head)
    print(line_of("day view", view, f"{len(view['queries'])} queries"))
    print(line_of("request floor: GET /agenda/colours.css (same stack, no grid)", view["floor"]))
    if "empty" in view:
        empty = view["empty"]
        print(
            line_of(
                f"an empty working day ({empty['day']:%Y-%m-%d}: all free)",
                empty,
                f"{len(empty['queries'])} queries, {empty['free']} free-time links, {empty['html']:,} bytes",
            )
        )
    print(
        f"    one request: {len(view['queries'])} queries, {view['audit_rows']} audit rows written "
        f"({'; '.join(view['audit_fields'])}), {view['blocks']} appointment blocks, {view['buttons']} one-click "
        f"status buttons, {view['free']} free-time links, {view['html']:,} bytes of HTML"
    )
    for n, sql in enumerate(view["queries"], start=1):
        print(f"      {n:>2}. {sql_head(sql)}")

    print(f"\n[b] the same work without the request (scheduling.selectors.agenda_day; {sel['rows']} appointments)")
    print(f"    selector queries: {len(sel['queries'])} ({', '.join(sql_head(q) for q in sel['queries'])})")
    print(head)
    for label, values in sel.items():
        if isinstance(values, dict) and "wall" in values:
            print(line_of(label, values))
    if "render_error" in sel:
        print(f"    layout + template render alone: not measured ({sel['render_error']})")
    parts = [k for k in sel if isinstance(sel[k], dict) and "wall" in sel[k]]
    if len(parts) == 5:
        wall = sum(pct(sel[k]["wall"], 50) for k in parts[2:]) + pct(view["floor"]["wall"], 50)
        cpu = sum(pct(sel[k]["cpu"], 50) for k in parts[2:]) + pct(view["floor"]["cpu"], 50)
        print(
            f"    selector+decrypt+audit write, layout, render and the request floor, p50s added: {wall * 1000:.1f} ms"
            f" wall, {cpu * 1000:.1f} ms cpu (day view: {pct(view['wall'], 50) * 1000:.1f} /"
            f" {pct(view['cpu'], 50) * 1000:.1f})"
        )
        print("    (parts timed separately in warm loops: they need not add up to the request exactly)")

    print(f"\n[c] next free slots: scheduling.availability.free_slots({SLOT_MINUTES} min, count=10), ", end="")
    print(f"after = {slots['after']:%Y-%m-%d %H:%M %Z}, the 10 practitioners in turn ({args.iterations} timed)")
    print(head)
    print(line_of("free_slots", slots, f"{slots['queries']} queries"))
    first = f"{slots['first']:%a %d %b %H:%M}" if slots["first"] else "-"
    last = f"{slots['last']:%a %d %b %H:%M}" if slots["last"] else "-"
    print(
        f"    practitioner 1: {slots['found']} slots found, first {first}, last {last}; "
        f"{slots['busy']:,} active appointments loaded for the 62-day horizon"
    )

    print("\n[d] EXPLAIN (ANALYZE, BUFFERS): which index answers")
    for name, plan in plans.items():
        print(f"    {name}")
        for row in plan[:14]:
            print(f"      {row}")
        if len(plan) > 14:
            print(f"      ... ({len(plan) - 14} more lines)")

    p50 = pct(view["wall"], 50) * 1000
    results = [
        (
            "day view: queries per request",
            f"{len(view['queries'])}",
            f"<= {TARGET_QUERIES}",
            len(view["queries"]) <= TARGET_QUERIES,
        ),
        ("day view: p50", f"{p50:.1f} ms", f"< {TARGET_P50_MS:.0f} ms", p50 < TARGET_P50_MS),
        ("day view: p95", f"{pct(view['wall'], 95) * 1000:.1f} ms", "(none)", None),
        (
            "free slots (next 10): p50 / p95",
            f"{pct(slots['wall'], 50) * 1000:.1f} / {pct(slots['wall'], 95) * 1000:.1f} ms",
            "(none in docs/design.md)",
            None,
        ),
    ]
    print(f"\nSUMMARY vs docs/design.md targets (10 practitioners x {TARGET_PER_PRACTITIONER} appointments, ", end="")
    print(f"{env_rows(env)} stored)")
    print(f"    {'what':<48}{'figure':>18}  {'target':<22}verdict")
    for what, figure, target, ok in results:
        verdict = "-" if ok is None else ("pass" if ok else "FAIL")
        print(f"    {what:<48}{figure:>18}  {target:<22}{verdict}")
    print(f"  load average at the end: {load_end}")
    print(line)
    return results


def env_rows(env) -> str:
    return dict(env)["rows"].split(" appointments")[0] + " appointments"


def main(argv=None) -> int:
    args = args_parse(argv)
    key_file = key_file_for(args.database_url)
    if args.reset:
        dropped = _common.database_drop(args.database_url)
        key_file.unlink(missing_ok=True)
        print(f"Reset: database {'dropped' if dropped else 'absent'}, {key_file} removed.")
    keys_note = _common.environment_prepare(
        database_url=args.database_url, key_file=key_file, conn_max_age=args.conn_max_age
    )
    db_note = _common.database_ensure(args.database_url)
    _common.django_setup()

    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    problem = _common.keys_problem()
    if problem:
        print(f"The bench database was made with other keys: {problem}\nRun again with --reset.", file=sys.stderr)
        return 2
    print(f"Bench database {settings.DATABASES['default']['NAME']}: {db_note}; migrating...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)

    state = _common.state_read(key_file)
    if "AGENDA_BENCH_DAY" in state:
        day = datetime.date.fromisoformat(state["AGENDA_BENCH_DAY"])
    else:
        from scheduling.availability import practice_tz

        day = pick_target_day(datetime.datetime.now(practice_tz()).date())
    planned = int(state.get("AGENDA_BENCH_APPOINTMENTS", args.appointments))
    from scheduling.models import Appointment

    stored = Appointment.objects.count()
    if stored and stored < args.appointments and planned != args.appointments:
        print(
            f"{stored:,} appointments are stored from a plan of {planned:,}: the rows would not line up. "
            "Run again with --reset.",
            file=sys.stderr,
        )
        return 2
    if stored < args.appointments or "AGENDA_BENCH_DAY" not in state:
        _common.state_set(key_file, "AGENDA_BENCH_DAY", day.isoformat())
        _common.state_set(key_file, "AGENDA_BENCH_APPOINTMENTS", str(args.appointments))
        planned = args.appointments

    plan = Plan(day, planned)
    practitioners, kind = structure_seed(plan)
    print(f"Target day {day.isoformat()}; plan {plan.first} .. {plan.last} ({len(plan.days):,} working days).")
    print(f"Seeding up to {args.patients:,} patients...", flush=True)
    patients = patients_seed(args.patients)
    print(f"Seeding up to {planned:,} appointments (batches of {BATCH:,})...", flush=True)
    appointments = appointments_seed(plan, planned, practitioners, kind)
    vacuum = vacuum_analyze(full=bool(patients[0] or appointments[0]))
    per_practitioner = target_day_check(day)
    if sorted(per_practitioner.values()) != [TARGET_PER_PRACTITIONER] * PRACTITIONERS:
        print(f"Warning: the target day shows {per_practitioner}, not 10 x 30.", file=sys.stderr)

    load_start = load_average()
    env = environment_describe(keys_note, db_note, day, (patients, appointments, vacuum), per_practitioner, load_start)
    secretary = _common.role_user(SECRETARY_USERNAME, "Secretary")
    client = Client()
    client.force_login(secretary)
    _common.second_factor_passed(client, secretary)
    url = f"/agenda/{day.isoformat()}/"

    print("Measuring the day view...", flush=True)
    view = day_view_bench(client, url, args)
    empty = empty_day(plan)
    view["empty"] = day_view_bench(client, f"/agenda/{empty.isoformat()}/", args)
    view["empty"]["day"] = empty
    print("Measuring the selector...", flush=True)
    sel = selector_bench(day, args)
    print("Measuring free slots...", flush=True)
    slots = free_slots_bench(day, practitioners, args)
    plans = explain(day, practitioners)
    results = report(env, view, sel, slots, plans, args, load_average())
    if args.profile or any(ok is False for *_, ok in results):
        print(profile_day_view(client, url))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"(bench ran {time.time() - started:,.0f} s)")
    raise SystemExit(code)
