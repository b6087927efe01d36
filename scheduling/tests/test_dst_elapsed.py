"""Appointments last their real duration on both DST nights: the end is
computed in elapsed time, not on the practice's wall clock."""

import datetime
from zoneinfo import ZoneInfo

import pytest

from config.testing import book, make_doctor, make_patient, make_type, practitioner_create
from scheduling import availability, services

PARIS = ZoneInfo("Europe/Paris")
AUTUMN = datetime.date(2027, 10, 31)  # 03:00 CEST -> 02:00 CET: 02:00-02:59 happen twice
SPRING = datetime.date(2027, 3, 28)  # 02:00 CET -> 03:00 CEST: 02:00-02:59 never happen


def _night(day: datetime.date):
    """Every quarter hour from 00:00 to 04:45 local that exists, each pass of the repeated hour."""
    utc = datetime.datetime.combine(day, datetime.time(0), tzinfo=PARIS).astimezone(datetime.UTC)
    end = datetime.datetime.combine(day, datetime.time(5), tzinfo=PARIS).astimezone(datetime.UTC)
    while utc < end:
        yield utc.astimezone(PARIS)
        utc += datetime.timedelta(minutes=15)


@pytest.mark.parametrize("day", [AUTUMN, SPRING], ids=["autumn", "spring"])
def test_a_booking_lasts_its_duration_at_every_quarter_hour_of_the_dst_night(practitioner, day):
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    kind = make_type(doctor, minutes=15)
    patient = make_patient(email="", nir="")
    starts = list(_night(day))
    assert len(starts) == (24 if day == AUTUMN else 16)  # 5 wall hours: one real hour more, or less
    for start in starts:
        appointment = book(doctor, patient, kind, start, force=True)
        appointment.refresh_from_db()
        assert appointment.end - appointment.start == datetime.timedelta(minutes=15), start


def test_the_first_pass_of_0245_on_the_autumn_night_ends_at_0300_cest(practitioner):
    """The case found: 02:45 (first pass) for 15 minutes was stored 00:45-02:00 UTC."""
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    kind = make_type(doctor, minutes=15)
    start = datetime.datetime(2027, 10, 31, 2, 45, tzinfo=PARIS)  # fold 0: CEST, 00:45 UTC
    appointment = book(doctor, make_patient(email="", nir=""), kind, start, force=True)
    appointment.refresh_from_db()
    assert appointment.start == datetime.datetime(2027, 10, 31, 0, 45, tzinfo=datetime.UTC)
    assert appointment.end == datetime.datetime(2027, 10, 31, 1, 0, tzinfo=datetime.UTC)


def test_a_move_and_a_change_of_type_keep_real_durations_across_the_change(practitioner):
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    short, long = make_type(doctor, minutes=15), make_type(doctor, name="Long", minutes=60)
    appointment = book(doctor, make_patient(email="", nir=""), short, datetime.datetime(2027, 10, 30, 10, tzinfo=PARIS))
    moved = services.appointment_move(
        appointment=appointment, start=datetime.datetime(2027, 10, 31, 2, 45, tzinfo=PARIS), actor=None, force=True
    )
    assert moved.end - moved.start == datetime.timedelta(minutes=15)
    changed = services.appointment_change_type(appointment=moved, appointment_type=long, actor=None, force=True)
    assert changed.end - changed.start == datetime.timedelta(minutes=60)


def test_free_slots_over_the_autumn_change_are_of_real_length(practitioner):
    """A practitioner who works through the night of the change (an on-call night)."""
    doctor = practitioner_create(practitioner, "Dr Claire Martin", days=(6,), hours=((1, 0, 4, 0),))
    after = datetime.datetime(2027, 10, 31, 0, 30, tzinfo=PARIS)
    slots = availability.free_slots(
        practitioner_id=doctor.pk, duration_minutes=20, after=after, count=20, horizon_days=0
    )
    assert slots
    assert all(slot.end - slot.start == datetime.timedelta(minutes=20) for slot in slots)
    assert all(b.start >= a.end for a, b in zip(slots, slots[1:], strict=False))
