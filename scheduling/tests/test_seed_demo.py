import collections
import datetime
import io
import os
import subprocess
import sys
from pathlib import Path

import phonenumbers
import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import PARIS, today
from patients.access import patient_queryset_for
from patients.models import Patient, full_name_index
from patients.validators import validate_nir
from practice.models import Practitioner
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, role_of
from scheduling.availability import absences_between, hours_for_days
from scheduling.management.commands.seed_demo import DEFAULT_PASSWORD, FORTNIGHT_DAYS, _window
from scheduling.models import ACTIVE_STATUSES, Absence, Appointment, AppointmentStatus, AppointmentType, WorkingHours

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = [pytest.mark.django_db, pytest.mark.slow]

DEMO_PASSWORD = "a demo password for tests"


@pytest.fixture
def demo_password(monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", DEMO_PASSWORD)


def seed(**options) -> str:
    out = io.StringIO()
    call_command("seed_demo", no_progress=True, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def counts() -> dict:
    return {
        "users": User.objects.count(),
        "practitioners": Practitioner.objects.count(),
        "patients": Patient.objects.count(),
        "appointments": Appointment.objects.count(),
        "audit": AuditEvent.objects.count(),
    }


def test_it_creates_the_demo_accounts_in_their_groups(demo_password):
    seed(patients=30)
    expected = {
        "secretary": SECRETARY,
        "doctor": PRACTITIONER,
        "doctor2": PRACTITIONER,
        "doctor3": PRACTITIONER,
        "admin": PRACTICE_ADMIN,
    }
    for username, role in expected.items():
        user = User.objects.get(username=username)
        assert list(user.groups.values_list("name", flat=True)) == [role]
        assert role_of(user) == role
        assert user.check_password(DEMO_PASSWORD)
    admin = User.objects.get(username="admin")
    assert admin.is_staff
    assert not admin.is_superuser
    assert not User.objects.filter(is_superuser=True).exists()


def test_it_creates_three_practitioners_with_distinct_colours(demo_password):
    seed(patients=30)
    practitioners = Practitioner.objects.select_related("user", "specialty")
    assert sorted(p.user.username for p in practitioners) == ["doctor", "doctor2", "doctor3"]
    assert len({p.colour for p in practitioners}) == 3
    assert len({p.specialty.name for p in practitioners}) == 3
    assert all(p.display_name.startswith("Dr ") for p in practitioners)


def test_it_creates_the_patients_asked_for(demo_password):
    seed(patients=30)
    assert Patient.objects.count() == 30


def test_it_gives_the_demo_practitioners_patients_of_their_own(demo_password):
    seed(patients=30)
    window_start, _end = _window(today())
    for username in ("doctor", "doctor2"):
        user = User.objects.get(username=username)
        visits = Appointment.objects.filter(practitioner=user.practitioner, start__lt=window_start)
        assert visits.count() == 5
        assert all(a.status == "done" and a.end > a.start for a in visits)
        assert {a.appointment_type.name for a in visits} == {"Consultation"}
        assert patient_queryset_for(user).count() >= 5
    assert not Appointment.objects.filter(practitioner__user__username="doctor3", start__lt=window_start).exists()


def test_it_is_idempotent(demo_password):
    first = seed(patients=30)
    before = counts()
    second = seed(patients=30)
    assert counts() == before
    assert "Created" in first
    assert "Created" not in second


def test_it_prints_the_default_password_once(settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    first = seed(patients=0)
    second = seed(patients=0)
    assert first.count(DEFAULT_PASSWORD) == 1
    assert DEFAULT_PASSWORD not in second
    assert User.objects.get(username="secretary").check_password(DEFAULT_PASSWORD)


def test_it_never_prints_a_password_from_the_environment(demo_password):
    assert DEMO_PASSWORD not in seed(patients=0)


def test_it_refuses_the_default_password_with_debug_off(settings, monkeypatch):
    settings.DEBUG = False
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="DEMO_PASSWORD"):
        seed(patients=0)
    assert not User.objects.exists()


def test_it_refuses_a_weak_demo_password(monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "short")
    with pytest.raises(CommandError, match="DEMO_PASSWORD"):
        seed(patients=0)
    assert not User.objects.exists()


# `manage.py ARGS...` as if Faker were not installed (`import faker` fails), as in production.
WITHOUT_FAKER = (
    "import runpy, sys; sys.modules['faker'] = None; "
    "sys.argv = ['manage.py', *sys.argv[1:]]; runpy.run_path('manage.py', run_name='__main__')"
)


def test_it_says_what_to_install_when_faker_is_missing(tmp_path):
    """Faker is a demo requirement (requirements-demo.txt), not a production one."""
    env = {**os.environ, "DEMO_PASSWORD": DEMO_PASSWORD, "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}"}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_FAKER, "seed_demo", "--patients", "5", "--no-progress"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "seed_demo needs Faker" in result.stderr
    assert "pip install -r requirements-demo.txt" in result.stderr


def test_it_tops_up_to_the_number_asked_for(demo_password):
    seed(patients=30)
    first_ids = set(Patient.objects.values_list("id", flat=True))
    seed(patients=45)
    assert Patient.objects.count() == 45
    assert first_ids <= set(Patient.objects.values_list("id", flat=True))
    seed(patients=10)  # never deletes
    assert Patient.objects.count() == 45


def test_it_counts_archived_patients_when_topping_up(demo_password):
    seed(patients=30)
    Patient.objects.filter(pk__in=Patient.objects.values_list("pk", flat=True)[:5]).update(is_archived=True)
    seed(patients=30)
    assert Patient.objects.count() == 30


def test_it_seeds_valid_phones_and_nirs(demo_password):
    seed(patients=30)
    with system_context("tests"):
        for patient in Patient.objects.all():
            number = phonenumbers.parse(patient.phone_mobile)
            assert phonenumbers.is_valid_number(number)
            assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == patient.phone_mobile
            assert patient.phone_mobile[:4] in ("+336", "+337")
            if patient.phone_other:
                assert phonenumbers.is_valid_number(phonenumbers.parse(patient.phone_other))
            validate_nir(patient.nir)
            assert patient.nir[0] == {"M": "1", "F": "2"}[patient.sex]
            assert patient.nir[1:3] == f"{patient.birth_date.year % 100:02d}"
            assert patient.nir[3:5] == f"{patient.birth_date.month:02d}"
            patient.full_clean()


def test_it_computes_blind_indexes(demo_password):
    seed(patients=30)
    assert not Patient.objects.filter(bidx_full_name__isnull=True).exists()
    assert not Patient.objects.filter(bidx_phone_mobile__isnull=True).exists()
    with system_context("tests"):
        patient = Patient.objects.first()
        assert patient.bidx_full_name == full_name_index(patient.last_name, patient.first_names)


def test_it_records_one_summary_event_and_no_reads(demo_password):
    seed(patients=30)
    events = AuditEvent.objects.filter(model_label="patients.Patient")
    assert [(e.event_type, e.extra["seeded"], e.actor_username) for e in events] == [
        (EventType.CREATE, 30, "system:command:seed_demo")
    ]
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exists()
    seed(patients=30)
    assert AuditEvent.objects.filter(model_label="patients.Patient").count() == 1


def test_it_reproduces_a_run_with_a_seed(demo_password):
    seed(patients=5, seed=7)
    with system_context("tests"):
        first = sorted(p.nir for p in Patient.objects.all())
    Appointment.objects.all().delete()
    Patient.objects.all().delete()
    seed(patients=5, seed=7)
    with system_context("tests"):
        assert sorted(p.nir for p in Patient.objects.all()) == first


# The fortnight around today ---------------------------------------------------------------------

# Moments to seed at, besides the real one: a Tuesday morning (today under way), a Saturday, the
# Monday after the spring DST change, the Wednesday before the autumn one, a Sunday night.
NOWS = {
    "tuesday-10:05": datetime.datetime(2026, 3, 3, 10, 5, tzinfo=PARIS),
    "saturday-11:40": datetime.datetime(2026, 6, 13, 11, 40, tzinfo=PARIS),
    "after-spring-dst": datetime.datetime(2026, 3, 30, 16, 50, tzinfo=PARIS),
    "before-autumn-dst": datetime.datetime(2026, 10, 21, 8, 45, tzinfo=PARIS),
    "sunday-night": datetime.datetime(2026, 11, 29, 23, 30, tzinfo=PARIS),
}


def _clock_at(name: str):
    """Seed at this moment, the clock stopped there for the test (time-machine); "real": now."""
    if name == "real":
        yield timezone.now()
        return
    with time_machine.travel(NOWS[name], tick=False):
        yield NOWS[name]


@pytest.fixture(params=["real", *NOWS])
def now(request):
    yield from _clock_at(request.param)


@pytest.fixture(params=["real", "after-spring-dst"])
def a_now(request):
    """Fewer moments, for what does not depend much on the clock."""
    yield from _clock_at(request.param)


def fortnight_appointments():
    start, end = _window(today())
    return list(
        Appointment.objects.filter(start__gte=start, start__lt=end)
        .select_related("practitioner__user", "appointment_type")
        .defer("reason", "internal_note", "cancellation_reason")
    )


def local_day(moment: datetime.datetime) -> datetime.date:
    return moment.astimezone(PARIS).date()


def fortnight_days() -> list[datetime.date]:
    return [today() + datetime.timedelta(days=n) for n in range(-FORTNIGHT_DAYS, FORTNIGHT_DAYS + 1)]


def working_ranges():
    ids = list(Practitioner.objects.values_list("pk", flat=True))
    days = fortnight_days()
    return hours_for_days(ids, days[0], days[-1])


def test_it_gives_the_practitioners_a_week_of_working_hours(demo_password):
    seed(patients=0)
    week = collections.defaultdict(set)
    for hours in WorkingHours.objects.select_related("practitioner__user"):
        week[hours.practitioner.user.username].add((hours.weekday, f"{hours.start_time:%H:%M}-{hours.end_time:%H:%M}"))
    for username in ("doctor", "doctor2", "doctor3"):
        assert {day for day, _range in week[username]} >= {0, 1, 2, 3, 4}
    assert (2, "14:00-18:00") not in week["doctor3"]  # Wednesday afternoon off
    assert any(day == 5 for day, _range in week["doctor2"])  # Saturday morning
    assert not any(day == 6 for ranges in week.values() for day, _range in ranges)


def test_it_offers_appointment_types_sensibly(demo_password):
    seed(patients=0)
    offered = {t.name: {p.user.username for p in t.practitioners.all()} for t in AppointmentType.objects.all()}
    durations = dict(AppointmentType.objects.values_list("name", "duration_minutes"))
    assert durations["Consultation"] == 20
    assert durations["Première consultation"] == 30
    assert durations["Suivi"] == 15
    assert durations["Vaccination"] == 10
    assert durations["Pédiatrie bilan"] == 40
    assert offered["Pédiatrie bilan"] == {"doctor2"}
    assert offered["Consultation"] == {"doctor", "doctor2", "doctor3"}
    assert "doctor3" not in offered["Vaccination"]
    colours = list(AppointmentType.objects.values_list("colour", flat=True))
    assert len(set(colours)) == len(colours)


def test_it_fills_the_fortnight(demo_password, now):
    seed(patients=200, seed=3)
    appointments = fortnight_appointments()
    ranges = working_ranges()
    absences = list(absences_between(Practitioner.objects.values_list("pk", flat=True), *_window(today())))
    booked = collections.Counter()
    for a in appointments:
        if a.status in ACTIVE_STATUSES:
            booked[(a.practitioner_id, local_day(a.start))] += (a.end - a.start).total_seconds()
    total = worked = 0
    for (practitioner_id, day), day_ranges in ranges.items():
        away = [x for x in absences if x.practitioner_id in (None, practitioner_id)]
        if any(x.start < day_ranges[-1][1] and day_ranges[0][0] < x.end for x in away):
            assert not booked[(practitioner_id, day)]  # nobody is booked during a holiday
            continue
        length = sum((end - start).total_seconds() for start, end in day_ranges)
        assert booked[(practitioner_id, day)] >= 0.4 * length, (practitioner_id, day)
        total, worked = total + booked[(practitioner_id, day)], worked + length
    assert 0.65 <= total / worked <= 0.9
    statuses = collections.Counter(a.status for a in appointments)
    assert statuses[AppointmentStatus.DONE]
    assert statuses[AppointmentStatus.BOOKED]
    assert statuses[AppointmentStatus.CANCELLED]
    assert statuses[AppointmentStatus.NO_SHOW]
    # Each practitioner has patients of their own, and sees some of their colleagues'.
    for username in ("doctor", "doctor2", "doctor3"):
        user = User.objects.get(username=username)
        assert 30 < patient_queryset_for(user).count() < 200


def test_it_has_a_holiday_in_the_fortnight(demo_password, a_now):
    seed(patients=50, seed=3)
    start, end = _window(today())
    holiday = Absence.objects.get(start__lt=end, end__gt=start)
    assert holiday.practitioner.user.username == "doctor3"
    assert holiday.kind == "holiday"
    local_start, local_end = holiday.start.astimezone(PARIS), holiday.end.astimezone(PARIS)
    assert (local_start.hour, local_start.minute, local_end.hour, local_end.minute) == (0, 0, 0, 0)
    assert local_start.weekday() == 0
    assert local_start.date() > today()
    assert not holiday.practitioner.appointments.filter(start__lt=holiday.end, end__gt=holiday.start).exists()


def test_no_two_active_appointments_of_a_practitioner_overlap(demo_password, now):
    seed(patients=120, seed=5)
    by_practitioner = collections.defaultdict(list)
    for a in Appointment.objects.filter(status__in=ACTIVE_STATUSES).order_by("start"):
        by_practitioner[a.practitioner_id].append(a)
    assert len(by_practitioner) == 3
    for appointments in by_practitioner.values():
        for before, after in zip(appointments, appointments[1:], strict=False):
            assert before.end <= after.start, (before.start, after.start)


def test_every_appointment_lies_within_working_hours_unless_forced(demo_password, now):
    seed(patients=120, seed=7)
    ranges = working_ranges()
    absences = list(absences_between(Practitioner.objects.values_list("pk", flat=True), *_window(today())))
    offered = set(AppointmentType.practitioners.through.objects.values_list("appointmenttype_id", "practitioner_id"))
    forced = 0
    for a in fortnight_appointments():
        day_ranges = ranges.get((a.practitioner_id, local_day(a.start)), [])
        inside = any(start <= a.start and a.end <= end for start, end in day_ranges)
        away = any(
            x.start < a.end and a.start < x.end for x in absences if x.practitioner_id in (None, a.practitioner_id)
        )
        assert inside != a.forced, (a.practitioner_id, a.start.astimezone(PARIS), a.forced)
        assert not away
        assert (a.appointment_type_id, a.practitioner_id) in offered
        assert a.end - a.start == datetime.timedelta(minutes=a.appointment_type.duration_minutes)
        assert a.start.astimezone(PARIS).minute % 5 == 0
        forced += a.forced
    assert forced <= 12  # a few patients squeezed in, not a habit


def test_statuses_follow_the_clock(demo_password, now):
    seed(patients=120, seed=11)
    moment = timezone.now()
    assert not Appointment.objects.filter(status="cancelled", cancellation_reason__isnull=True).exists()
    for a in fortnight_appointments():
        stamps = [t for t in (a.arrived_at, a.consultation_started_at, a.done_at, a.cancelled_at) if t]
        assert all(t <= moment for t in stamps)
        assert a.created_at <= moment
        if a.status == AppointmentStatus.CANCELLED:
            assert a.cancelled_at
            assert a.cancelled_by
        elif a.end <= moment:
            assert a.status in (AppointmentStatus.DONE, AppointmentStatus.NO_SHOW)
        elif a.start <= moment:
            assert a.status == AppointmentStatus.IN_CONSULTATION
            assert a.arrived_at <= a.consultation_started_at
        elif a.status == AppointmentStatus.ARRIVED:
            assert a.start - moment <= datetime.timedelta(minutes=30)
            assert a.arrived_at
        else:
            assert a.status == AppointmentStatus.BOOKED
            assert not stamps
        if a.status == AppointmentStatus.DONE:
            assert a.arrived_at < a.consultation_started_at < a.done_at


def test_today_is_under_way_on_a_weekday_morning(demo_password):
    moment = NOWS["tuesday-10:05"]
    with time_machine.travel(moment, tick=False):
        seed(patients=200, seed=13)
        todays = collections.Counter(
            a.status
            for a in fortnight_appointments()
            if local_day(a.start) == moment.date() and a.status != "cancelled"
        )
    assert todays[AppointmentStatus.DONE] >= 6  # three practitioners since 8:30 or 9:00
    assert todays[AppointmentStatus.BOOKED] >= 20
    assert todays[AppointmentStatus.IN_CONSULTATION] + todays[AppointmentStatus.ARRIVED] >= 1


def test_it_seals_reasons_and_cancellation_reasons(demo_password):
    seed(patients=100, seed=17)
    with system_context("tests"):
        appointments = fortnight_appointments()
        reasons = collections.Counter(a.reason for a in appointments)
        cancelled = [a.cancellation_reason for a in appointments if a.status == "cancelled"]
    assert 0.3 < 1 - reasons[""] / len(appointments) < 0.8
    assert reasons["Renouvellement d'ordonnance"] or reasons["Fièvre"] or reasons["Certificat de sport"]
    assert cancelled
    assert all(cancelled)


def test_re_running_adds_nothing(demo_password, a_now):
    seed(patients=100, seed=19)
    before = counts()
    assert "0 appointments around today created" in seed(patients=100, seed=19)
    assert counts() == before
    assert Absence.objects.count() == 1


def test_a_run_days_later_fills_only_the_new_days(demo_password):
    first = NOWS["tuesday-10:05"]
    with time_machine.travel(first, tick=False) as clock:
        seed(patients=100, seed=23)
        per_day = collections.Counter((a.practitioner_id, local_day(a.start)) for a in Appointment.objects.all())

        clock.shift(datetime.timedelta(days=4))
        seed(patients=100, seed=23)
    again = collections.Counter((a.practitioner_id, local_day(a.start)) for a in Appointment.objects.all())
    for key, count in per_day.items():
        assert again[key] == count  # days filled before are left alone
    new_days = {day for _practitioner, day in again} - {day for _practitioner, day in per_day}
    assert new_days
    assert min(new_days) > first.date() + datetime.timedelta(days=FORTNIGHT_DAYS)
    active = sorted((a.practitioner_id, a.start, a.end) for a in Appointment.objects.filter(status__in=ACTIVE_STATUSES))
    for (p1, _s1, e1), (p2, s2, _e2) in zip(active, active[1:], strict=False):
        assert p1 != p2 or e1 <= s2


def test_it_leaves_no_read_rows_and_one_event_for_the_fortnight(demo_password):
    seed(patients=50)
    events = AuditEvent.objects.filter(model_label="scheduling.Appointment", event_type=EventType.CREATE)
    assert sorted("from" in e.extra for e in events) == [False, True]  # the visits, the fortnight
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exists()
