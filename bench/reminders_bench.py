"""Reminders benchmark: the reminder sweep over a day of 10,000 appointments.

    .venv/bin/python bench/reminders_bench.py [--appointments 10000]
        [--database-url postgres://postgres@127.0.0.1:5432/cabinet_reminders_bench] [--reset]

Sets Django up itself (production settings, DEBUG off), creates and migrates the bench
database, seeds once one patient per appointment (mobile and e-mail, both consents, French or
English), then on every run books tomorrow's N appointments afresh (bulk insert, 100
practitioners), gives each its two pending reminders due now, and runs
`scheduling.tasks.reminders_sweep` as beat would, with Celery eager (no broker: each
`reminder_send` runs in this process, in its own audit context) and the console e-mail and
SMS backends writing to /dev/null. Prints the time, messages per second and queries per
message, then the same sweep again under CaptureQueriesContext for the query shapes, and the
cost of `reminders_plan` per booking. See bench/README.md ("Reminders benchmark").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import datetime
import io
import os
import pstats
import random
import sys
import tempfile
from pathlib import Path
from time import perf_counter, process_time

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from _common import load_average

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cabinet_reminders_bench"
PRACTITIONERS = 100
SLOT_MINUTES = 7  # 100 appointments of 7 minutes from 8:00: a full day per practitioner
DAY_START = datetime.time(8, 0)
BATCH = 2000
PLAN_SAMPLE = 1000


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appointments", type=int, default=10_000, help="appointments of the day (default 10,000)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_REMINDERS_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"bench database (default {DEFAULT_DATABASE_URL}; created if missing)",
    )
    parser.add_argument("--chunk", type=int, default=500, help="sweep chunk (default 500, the task's default)")
    parser.add_argument("--profile", action="store_true", help="cProfile the counted sweep (own time, top 25)")
    parser.add_argument("--reset", action="store_true", help="drop the bench database and its key file first")
    args = parser.parse_args(argv)
    if not 0 < args.appointments <= PRACTITIONERS * 100:
        parser.error(f"--appointments must be between 1 and {PRACTITIONERS * 100:,}")
    return args


def key_file_for(url: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{_common.database_name(url)}.env"


# --------------------------------------------------------------------------- seeding


def structure_seed():
    """100 practitioners (bench.rdr001..), one 7-minute type, the clinic's details."""
    from django.contrib.auth.models import User

    from practice.models import Clinic, Practitioner, Specialty
    from scheduling.models import AppointmentType

    clinic = Clinic.current()
    clinic.name, clinic.phone = "Cabinet des Lilas", "04 72 00 00 00"
    clinic.address = "3 place de la Mairie, 69001 Lyon"
    clinic.save()
    specialty, _ = Specialty.objects.get_or_create(name="Médecine générale")
    practitioners = []
    for i in range(1, PRACTITIONERS + 1):
        user, created = User.objects.get_or_create(username=f"bench.rdr{i:03d}")
        if created:
            user.set_unusable_password()
            user.save()
        practitioner, _ = Practitioner.objects.get_or_create(
            user=user, defaults={"display_name": f"Dr Bench {i:03d}", "specialty": specialty}
        )
        practitioners.append(practitioner)
    kind, _ = AppointmentType.objects.get_or_create(
        name="Bench consultation", defaults={"duration_minutes": SLOT_MINUTES, "reminder_hours": 24}
    )
    kind.practitioners.set(practitioners)
    return practitioners, kind


def patients_seed(n: int) -> tuple[list, float]:
    """Patient ids for the appointments (seeded once: phone, e-mail, both consents)."""
    from audit.context import system_context
    from patients.models import Patient

    started = perf_counter()
    ids = list(Patient.objects.filter(bidx_email__isnull=False).order_by("id").values_list("id", flat=True)[:n])
    rng = random.Random(len(ids))
    with system_context("bench"):
        while len(ids) < n:
            batch = []
            for i in range(len(ids), min(n, len(ids) + BATCH)):
                patient = Patient(
                    last_name=f"Bench{i:06d}",
                    first_names="Camille",
                    sex="F" if i % 2 else "M",
                    birth_date=datetime.date(1950 + i % 50, 1 + i % 12, 1 + i % 28),
                    phone_mobile=f"+336{10_000_000 + i:08d}",
                    email=f"bench{i:06d}@example.fr",
                    language=rng.choice(["fr", "en"]),
                    consent_sms=True,
                    consent_email=True,
                )
                patient.blind_indexes_update()
                batch.append(patient)
            Patient.objects.bulk_create(batch)
            ids += [p.pk for p in batch]
    return ids, perf_counter() - started


def day_book(practitioners, kind, patient_ids, n: int, day: datetime.date) -> float:
    """Tomorrow's N appointments afresh (the bench's earlier ones and their reminders deleted)."""
    from django.db import transaction

    from audit.context import system_context
    from scheduling.availability import practice_tz
    from scheduling.models import Appointment, Reminder

    started = perf_counter()
    bench_ids = [p.pk for p in practitioners]
    with transaction.atomic():
        Reminder.objects.filter(appointment__practitioner_id__in=bench_ids).delete()
        Appointment.objects.filter(practitioner_id__in=bench_ids).delete()
    tz = practice_tz()
    rows = []
    with system_context("bench"):
        for i in range(n):
            practitioner = practitioners[i % PRACTITIONERS]
            slot = i // PRACTITIONERS
            start = datetime.datetime.combine(day, DAY_START, tzinfo=tz) + datetime.timedelta(
                minutes=SLOT_MINUTES * slot
            )
            rows.append(
                Appointment(
                    practitioner=practitioner,
                    patient_id=patient_ids[i],
                    appointment_type=kind,
                    start=start,
                    end=start + datetime.timedelta(minutes=SLOT_MINUTES),
                    reason="Douleurs lombaires depuis une semaine" if i % 3 == 0 else "",
                )
            )
        for k in range(0, n, BATCH):
            Appointment.objects.bulk_create(rows[k : k + BATCH])
    return perf_counter() - started


def reminders_make_due(day_appointments) -> int:
    """Two pending reminders per appointment (e-mail, SMS), due a minute ago: what the plan
    leaves for a day whose reminders all fall due at once (the worst sweep)."""
    from django.utils import timezone

    from scheduling.models import Reminder, ReminderChannel, ReminderStatus

    due = timezone.now() - datetime.timedelta(minutes=1)
    Reminder.objects.filter(appointment__in=day_appointments).delete()
    rows = [
        Reminder(appointment_id=a.pk, channel=channel, planned_for=a.start, due_at=due, status=ReminderStatus.PENDING)
        for a in day_appointments
        for channel in (ReminderChannel.EMAIL, ReminderChannel.SMS)
    ]
    Reminder.objects.bulk_create(rows, batch_size=BATCH)
    return len(rows)


# --------------------------------------------------------------------------- measuring


def sql_head(sql: str) -> str:
    words = sql.replace('"', "").split()
    if not words:
        return ""
    if words[0] == "SELECT" and "FROM" in words:
        tail = " FOR UPDATE" if "FOR UPDATE" in sql else ""
        return "SELECT ... FROM " + words[words.index("FROM") + 1] + tail
    if words[0] in ("UPDATE", "INSERT", "DELETE") and len(words) > 2:
        return " ".join(words[:3])
    return " ".join(words[:2])[:60]


class QueryCounter:
    """Counts statements by shape (an execute wrapper: no cap on their number, unlike
    CaptureQueriesContext, and no SQL kept)."""

    def __init__(self):
        self.shapes: collections.Counter = collections.Counter()

    def __call__(self, execute, sql, params, many, context):
        self.shapes[sql_head(sql)] += 1
        return execute(sql, params, many, context)


def sweep_run(chunk: int, *, count: bool, profile: bool = False) -> dict:
    from django.db import connection

    from scheduling.models import Reminder, ReminderStatus
    from scheduling.tasks import reminders_sweep

    counter = QueryCounter()
    wrapper = connection.execute_wrapper(counter) if count else contextlib.nullcontext()
    profiler = cProfile.Profile() if profile else None
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), wrapper:
        c0, t0 = process_time(), perf_counter()
        if profiler:
            profiler.enable()
        queued = reminders_sweep(chunk=chunk)
        if profiler:
            profiler.disable()
        wall, cpu = perf_counter() - t0, process_time() - c0
    sent = Reminder.objects.filter(status=ReminderStatus.SENT).count()
    result = {"queued": queued, "sent": sent, "wall": wall, "cpu": cpu}
    if count:
        # BEGIN/COMMIT of transaction.atomic() are not statements Django executes: counted apart.
        result["queries"] = sum(counter.shapes.values())
        result["shapes"] = counter.shapes
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        result["profile"] = out.getvalue()
    return result


def plan_cost(day_appointments) -> dict:
    """reminders_plan for a sample of bookings, inside a transaction rolled back afterwards
    (nothing is queued: on_commit never fires)."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from audit.context import system_context
    from scheduling.models import Appointment
    from scheduling.reminders import reminders_plan

    sample = list(
        Appointment.objects.filter(pk__in=[a.pk for a in day_appointments[:PLAN_SAMPLE]]).select_related(
            "appointment_type"
        )
    )
    with system_context("bench"), transaction.atomic(), CaptureQueriesContext(connection) as captured:
        t0 = perf_counter()
        for appointment in sample:
            reminders_plan(appointment=appointment)
        wall = perf_counter() - t0
        transaction.set_rollback(True)
    return {"n": len(sample), "wall": wall, "queries": len(captured.captured_queries)}


def main(argv=None) -> int:
    args = args_parse(argv)
    key_file = key_file_for(args.database_url)
    if args.reset:
        dropped = _common.database_drop(args.database_url)
        key_file.unlink(missing_ok=True)
        print(f"Reset: database {'dropped' if dropped else 'absent'}, {key_file} removed.")
    os.environ.pop("CELERY_BROKER_URL", None)  # eager: each reminder_send runs here
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.console.EmailBackend"
    os.environ["SMS_BACKEND"] = "practice.sms.ConsoleBackend"
    os.environ["REMINDERS_ENABLED"] = "1"
    keys_note = _common.environment_prepare(database_url=args.database_url, key_file=key_file)
    db_note = _common.database_ensure(args.database_url)
    _common.django_setup()

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from scheduling.availability import practice_tz
    from scheduling.models import Appointment, Reminder, ReminderStatus

    problem = _common.keys_problem()
    if problem:
        print(f"The bench database was made with other keys: {problem}\nRun again with --reset.", file=sys.stderr)
        return 2
    print(f"Bench database {settings.DATABASES['default']['NAME']}: {db_note}; migrating...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)

    practitioners, kind = structure_seed()
    print(f"Patients: seeding up to {args.appointments:,}...", flush=True)
    patient_ids, seed_patients = patients_seed(args.appointments)
    day = timezone.localdate(timezone=practice_tz()) + datetime.timedelta(days=1)
    booking = day_book(practitioners, kind, patient_ids, args.appointments, day)
    day_appointments = list(
        Appointment.objects.filter(practitioner__in=practitioners).only("id", "start").order_by("id")
    )
    plan = plan_cost(day_appointments)
    expected = reminders_make_due(day_appointments)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE scheduling_reminder")
        cursor.execute("ANALYZE scheduling_appointment")

    print()
    print("Reminders benchmark")
    for label, value in _common.server_describe():
        print(f"  {label:<16} {value}")
    print(f"  {'keys':<16} {keys_note}")
    print(f"  {'backends':<16} e-mail {settings.EMAIL_BACKEND}, SMS {settings.SMS_BACKEND} (to /dev/null)")
    print(f"  {'celery':<16} eager={settings.CELERY_TASK_ALWAYS_EAGER} (reminder_send runs in this process)")
    print(f"  {'load average':<16} {load_average()}")
    print(
        f"  {'day':<16} {day.isoformat()}: {len(day_appointments):,} appointments, {PRACTITIONERS} practitioners, "
        f"{expected:,} reminders due (e-mail + SMS each)"
    )
    print(f"  {'set-up':<16} patients {seed_patients:.1f} s (0 when reused), booking the day {booking:.1f} s")
    print()

    first = sweep_run(args.chunk, count=False)
    print(f"[a] Sweep, timed (chunk {args.chunk})")
    print(f"  messages sent     {first['sent']:,} of {expected:,} (queued {first['queued']:,})")
    print(f"  time              {first['wall']:.2f} s wall, {first['cpu']:.2f} s cpu (this process)")
    print(f"  messages/s        {first['sent'] / first['wall']:,.0f}")
    print(f"  per message       {first['wall'] / max(first['sent'], 1) * 1000:.2f} ms")
    again = sweep_run(args.chunk, count=False)
    print(f"  second sweep      queued {again['queued']}, sent in all {again['sent']:,} (never twice)")
    print()

    Reminder.objects.filter(appointment__in=day_appointments).update(
        status=ReminderStatus.PENDING, sent_at=None, provider_id="", attempts=0, enqueued_at=None
    )
    counted = sweep_run(args.chunk, count=True, profile=args.profile)
    print("[b] Sweep again (reminders put back to pending), statements counted by an execute wrapper")
    rate = counted["sent"] / counted["wall"]
    print(f"  messages sent     {counted['sent']:,} in {counted['wall']:.2f} s ({rate:,.0f}/s)")
    print(f"  queries           {counted['queries']:,}: {counted['queries'] / max(counted['sent'], 1):.2f} per message")
    for shape, count in counted["shapes"].most_common(12):
        print(f"    {count / max(counted['sent'], 1):6.2f}/msg  {count:>7,}  {shape}")
    if "profile" in counted:
        print(counted["profile"])
    print()
    print(f"[c] reminders_plan per booking ({plan['n']:,} bookings of the day, rolled back)")
    print(
        f"  {plan['wall'] / max(plan['n'], 1) * 1000:.2f} ms and "
        f"{plan['queries'] / max(plan['n'], 1):.1f} queries per booking"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
