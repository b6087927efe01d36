"""Booking rules: overlaps, working hours, absences, DST days, the status flow."""

import datetime

import pytest

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import PARIS, book, make_patient, make_practitioner, make_type, paris
from scheduling import services
from scheduling.availability import free_slots
from scheduling.models import Absence, Appointment, AppointmentStatus

MONDAY = (2026, 3, 2)  # an ordinary Monday


def _local_times(slots) -> list[str]:
    return [slot.start.astimezone(PARIS).strftime("%H:%M") for slot in slots]


@pytest.fixture
def doctor(roles):
    return make_practitioner()


@pytest.fixture
def consultation(doctor):
    return make_type(doctor, minutes=20)


def test_it_books_a_slot_and_audits_it(doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0), reason="Toux")
    assert appointment.end - appointment.start == datetime.timedelta(minutes=20)
    event = AuditEvent.objects.get(event_type=EventType.CREATE, model_label="scheduling.Appointment")
    assert event.patient_id == patient.pk
    assert "reason" in event.fields
    assert "Toux" not in str(event.extra)


def test_it_allows_adjacent_appointments(doctor, consultation, patient):
    book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    book(doctor, patient, consultation, paris(*MONDAY, 9, 20))
    book(doctor, patient, consultation, paris(*MONDAY, 8, 40), force=True)
    assert Appointment.objects.count() == 3


@pytest.mark.parametrize("minute", [0, 10, 19])
def test_it_refuses_an_overlap(doctor, consultation, patient, minute):
    book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with pytest.raises(services.SlotTaken):
        book(doctor, patient, consultation, paris(*MONDAY, 9, minute))
    with pytest.raises(services.SlotTaken):
        book(doctor, patient, consultation, paris(*MONDAY, 8, 50), force=True)
    assert Appointment.objects.count() == 1


def test_it_lets_another_practitioner_take_the_same_time(doctor, consultation, patient):
    other = make_practitioner("dr.other")
    consultation.practitioners.add(other)
    mine = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    theirs = book(other, patient, consultation, paris(*MONDAY, 9, 0))
    assert (mine.practitioner, theirs.practitioner) == (doctor, other)
    assert theirs.start == mine.start
    assert not theirs.forced  # booked as an ordinary slot: nothing was overridden
    booked = Appointment.objects.filter(start=paris(*MONDAY, 9, 0), status=AppointmentStatus.BOOKED)
    assert set(booked.values_list("practitioner", flat=True)) == {doctor.pk, other.pk}


def test_it_frees_the_slot_of_a_cancelled_appointment(doctor, consultation, patient):
    first = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"):
        services.appointment_cancel(appointment=first, reason="Patient unwell", actor=None)
    second = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    assert second.status == AppointmentStatus.BOOKED
    with system_context("tests"):
        first.refresh_from_db()
        assert first.cancellation_reason == "Patient unwell"
        assert first.cancelled_at is not None


def test_it_requires_a_reason_to_cancel(doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"), pytest.raises(services.BookingError):
        services.appointment_cancel(appointment=appointment, reason="  ", actor=None)


def test_it_refuses_outside_working_hours_unless_forced(doctor, consultation, patient):
    with pytest.raises(services.OutsideWorkingHours):
        book(doctor, patient, consultation, paris(*MONDAY, 12, 50))  # lunch break
    with pytest.raises(services.OutsideWorkingHours):
        book(doctor, patient, consultation, paris(*MONDAY, 11, 50))  # ends 12:10, past the morning
    with pytest.raises(services.OutsideWorkingHours):
        book(doctor, patient, consultation, paris(2026, 3, 8, 10, 0))  # a Sunday
    forced = book(doctor, patient, consultation, paris(*MONDAY, 12, 50), force=True)
    assert forced.forced
    event = AuditEvent.objects.get(event_type=EventType.CREATE, object_pk=str(forced.pk))
    assert event.extra["forced"] == ["working_hours"]


def test_it_refuses_during_an_absence_unless_forced(doctor, consultation, patient):
    Absence.objects.create(practitioner=doctor, start=paris(*MONDAY, 0), end=paris(2026, 3, 3, 0))
    with pytest.raises(services.PractitionerAbsent):
        book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    assert book(doctor, patient, consultation, paris(*MONDAY, 9, 0), force=True).forced


def test_it_treats_a_practice_closure_as_everyone_absent(doctor, consultation, patient):
    Absence.objects.create(practitioner=None, kind="closure", start=paris(*MONDAY, 0), end=paris(2026, 3, 3, 0))
    with pytest.raises(services.PractitionerAbsent):
        book(doctor, patient, consultation, paris(*MONDAY, 9, 0))


def test_it_refuses_a_type_the_practitioner_does_not_offer(doctor, patient):
    other_type = make_type(minutes=30, name="Dermatoscopie")
    with pytest.raises(services.BookingError):
        book(doctor, patient, other_type, paris(*MONDAY, 9, 0))


@pytest.mark.parametrize("day", [(2026, 3, 29), (2026, 10, 25)], ids=["spring-forward", "fall-back"])
def test_it_books_on_dst_change_days_at_wall_clock_time(roles, patient, day):
    sunday_doctor = make_practitioner("dr.sunday", days=[6])
    consultation = make_type(sunday_doctor)
    appointment = book(sunday_doctor, patient, consultation, paris(*day, 9, 0))
    local = appointment.start.astimezone(paris(*day).tzinfo)
    assert (local.hour, local.minute) == (9, 0)
    utc_hour = appointment.start.astimezone(datetime.UTC).hour
    assert utc_hour == (7 if day[1] == 3 else 8)
    with pytest.raises(services.OutsideWorkingHours):
        book(sunday_doctor, patient, consultation, paris(*day, 8, 0))
    slots = free_slots(practitioner_id=sunday_doctor.pk, duration_minutes=20, after=paris(*day, 0, 0), count=3)
    assert _local_times(slots) == ["09:20", "09:40", "10:00"]


def test_it_finds_the_next_free_slots_around_bookings_and_absences(doctor, consultation, patient):
    book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    book(doctor, patient, consultation, paris(*MONDAY, 9, 40))
    Absence.objects.create(practitioner=doctor, start=paris(*MONDAY, 10, 0), end=paris(*MONDAY, 11, 30))
    slots = free_slots(practitioner_id=doctor.pk, duration_minutes=20, after=paris(*MONDAY, 8, 0), count=4)
    assert _local_times(slots) == ["09:20", "11:30", "14:00", "14:20"]


def test_it_skips_past_time_and_rounds_to_the_grid(doctor, consultation):
    slots = free_slots(practitioner_id=doctor.pk, duration_minutes=20, after=paris(*MONDAY, 9, 7), count=2)
    assert _local_times(slots) == ["09:10", "09:30"]


def test_it_moves_an_appointment_keeping_its_length(doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    blocker = book(doctor, patient, consultation, paris(*MONDAY, 10, 0))
    with system_context("tests"):
        with pytest.raises(services.SlotTaken):
            services.appointment_move(appointment=appointment, start=paris(*MONDAY, 9, 50), actor=None)
        services.appointment_move(appointment=appointment, start=paris(*MONDAY, 10, 20), actor=None)
    appointment.refresh_from_db()
    assert appointment.start == paris(*MONDAY, 10, 20)
    assert appointment.end == paris(*MONDAY, 10, 40)
    assert blocker.pk != appointment.pk
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).exists()


def test_it_changes_type_only_if_the_longer_visit_fits(doctor, consultation, patient):
    long_visit = make_type(doctor, minutes=40, name="Bilan")
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    book(doctor, patient, consultation, paris(*MONDAY, 9, 20))
    with system_context("tests"), pytest.raises(services.SlotTaken):
        services.appointment_change_type(appointment=appointment, appointment_type=long_visit, actor=None)
    other = book(doctor, patient, consultation, paris(*MONDAY, 10, 0))
    with system_context("tests"):
        services.appointment_change_type(appointment=other, appointment_type=long_visit, actor=None)
    other.refresh_from_db()
    assert other.end == paris(*MONDAY, 10, 40)


def test_it_follows_the_status_flow(doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"):
        with pytest.raises(services.BookingError):
            services.appointment_set_status(appointment=appointment, status="done", actor=None)
        for status in ("arrived", "in_consultation", "done"):
            services.appointment_set_status(appointment=appointment, status=status, actor=None)
    appointment.refresh_from_db()
    assert appointment.status == "done"
    assert appointment.arrived_at
    assert appointment.consultation_started_at
    assert appointment.done_at
    changes = AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk))
    assert [e.extra["status_to"] for e in changes.order_by("id")] == ["arrived", "in_consultation", "done"]


def test_it_frees_the_slot_of_a_no_show_and_refuses_to_revive_it_over_a_new_booking(doctor, consultation, patient):
    missed = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"):
        services.appointment_set_status(appointment=missed, status="no_show", actor=None)
    book(doctor, make_patient(last_name="Walk-in"), consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"), pytest.raises(services.SlotTaken):
        services.appointment_set_status(appointment=missed, status="booked", actor=None)


def test_it_never_hard_deletes(doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"):
        services.appointment_cancel(appointment=appointment, reason="Doublon", actor=None)
    assert Appointment.objects.filter(pk=appointment.pk, status="cancelled").exists()


def test_it_refuses_to_move_an_appointment_to_a_practitioner_without_its_type(doctor, consultation, patient):
    other = make_practitioner("dr.other")
    appointment = book(doctor, patient, consultation, paris(*MONDAY, 9, 0))
    with system_context("tests"), pytest.raises(services.BookingError) as refused:
        services.appointment_move(appointment=appointment, start=paris(*MONDAY, 9, 0), practitioner=other, actor=None)
    assert refused.value.code == "type_not_offered"
    consultation.practitioners.add(other)
    with system_context("tests"):
        services.appointment_move(appointment=appointment, start=paris(*MONDAY, 9, 0), practitioner=other, actor=None)
    appointment.refresh_from_db()
    assert appointment.practitioner == other
