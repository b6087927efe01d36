"""Squeezing an emergency in over an existing appointment (scheduling.services): only when the
clinic allows it, only by the front desk, only with a reason; recorded in the trail with the
reason; at most one squeezed appointment at any moment, and ordinary bookings never overlap
it. On PostgreSQL the database holds the same line (migration 0009's two exclusion
constraints), ordinary bookings as strictly as before."""

import re

import pytest
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import DAY, at, book, client_for, make_patient, read_map
from patients.models import Patient
from practice.models import Clinic
from scheduling import services
from scheduling.models import Appointment, AppointmentStatus

REASON = "Chest pain, sent by the pharmacist next door"


@pytest.fixture
def squeezing(db):
    clinic = Clinic.current()
    clinic.squeeze_in_allowed = True
    clinic.save(update_fields=["squeeze_in_allowed"])
    return clinic


@pytest.fixture
def walk_in(db):
    return make_patient(last_name="Urgent", first_names="Paul", email="", nir="", phone_mobile="")


def _squeeze(doctor, patient, kind, start, *, actor, reason=REASON, **kwargs):
    with system_context("tests"):
        return services.appointment_book(
            practitioner=doctor,
            patient=patient,
            appointment_type=kind,
            start=start,
            actor=actor,
            squeeze=True,
            squeeze_reason=reason,
            **kwargs,
        )


# ---------------------------------------------------------------------------------------------
# The rules


def test_it_is_off_by_default(db):
    assert Clinic.current().squeeze_in_allowed is False


def test_it_refuses_a_squeeze_when_the_clinic_does_not_allow_it(secretary, doctor, consultation, appointment, walk_in):
    with pytest.raises(services.SqueezeRefused, match="does not allow"):
        _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=secretary)
    assert Appointment.objects.count() == 1


@pytest.mark.parametrize("reason", ["", "   ", "urgent"])
def test_it_refuses_a_squeeze_without_a_reason(
    squeezing, secretary, doctor, consultation, appointment, walk_in, reason
):
    with pytest.raises(services.SqueezeRefused, match="Say why"):
        _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=secretary, reason=reason)
    assert Appointment.objects.count() == 1


def test_it_refuses_a_squeeze_by_a_practitioner(squeezing, practitioner, doctor, consultation, appointment, walk_in):
    with pytest.raises(services.SqueezeRefused, match="Only the front desk"):
        _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=practitioner)
    assert Appointment.objects.count() == 1


def test_it_refuses_a_squeeze_by_nobody(squeezing, doctor, consultation, appointment, walk_in):
    with pytest.raises(services.SqueezeRefused):
        _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=None)


def test_it_creates_no_patient_when_a_squeeze_is_refused(secretary, doctor, consultation, appointment):
    patients = Patient.objects.count()
    with system_context("tests"), pytest.raises(services.SqueezeRefused):
        services.patient_create_and_book(
            patient_data={"last_name": "Nouveau", "first_names": "Jean", "sex": "M", "birth_date": "1970-01-01"},
            practitioner=doctor,
            appointment_type=consultation,
            start=at(DAY, 9),
            actor=secretary,
            squeeze=True,
            squeeze_reason=REASON,
        )
    assert Appointment.objects.count() == 1
    assert Patient.objects.count() == patients


# ---------------------------------------------------------------------------------------------
# A squeeze


def test_it_squeezes_an_emergency_in_and_records_why(squeezing, secretary, doctor, consultation, appointment, walk_in):
    urgent = _squeeze(doctor, walk_in, consultation, at(DAY, 9, 10), actor=secretary)

    assert urgent.squeezed is True
    assert urgent.forced is False
    assert Appointment.objects.filter(status=AppointmentStatus.BOOKED).count() == 2
    event = AuditEvent.objects.get(event_type=EventType.CREATE, object_pk=str(urgent.pk))
    assert event.patient_id == walk_in.pk
    assert event.extra["squeeze_reason"] == REASON
    assert event.extra["squeezed_over"] == str(appointment.pk)
    assert event.extra["forced"] == []


def test_it_books_an_ordinary_appointment_when_nothing_is_in_the_way(
    squeezing, secretary, doctor, consultation, walk_in
):
    free = _squeeze(doctor, walk_in, consultation, at(DAY, 11), actor=secretary)
    assert free.squeezed is False
    event = AuditEvent.objects.get(event_type=EventType.CREATE, object_pk=str(free.pk))
    assert "squeeze_reason" not in event.extra


def test_it_still_checks_hours_when_squeezing(squeezing, secretary, doctor, consultation, walk_in):
    early = book(doctor, make_patient(last_name="Tot", email="", nir=""), consultation, at(DAY, 7), force=True)
    with pytest.raises(services.OutsideWorkingHours):
        _squeeze(doctor, walk_in, consultation, at(DAY, 7), actor=secretary)
    urgent = _squeeze(doctor, walk_in, consultation, at(DAY, 7), actor=secretary, force=True)
    assert urgent.squeezed
    assert urgent.forced
    assert early.pk != urgent.pk


def test_it_never_squeezes_twice_at_the_same_time(squeezing, secretary, doctor, consultation, appointment, walk_in):
    first = _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=secretary)
    with pytest.raises(services.SlotTaken, match="already squeezed in") as refused:
        _squeeze(
            doctor, make_patient(last_name="Second", email="", nir=""), consultation, at(DAY, 9, 5), actor=secretary
        )
    assert refused.value.conflict.pk == first.pk
    assert Appointment.objects.count() == 2


def test_it_keeps_ordinary_bookings_off_a_squeezed_appointment(squeezing, secretary, doctor, consultation, walk_in):
    urgent_patient = make_patient(last_name="Urgent", first_names="Marie", email="", nir="")
    book(doctor, walk_in, consultation, at(DAY, 9))
    urgent = _squeeze(doctor, urgent_patient, consultation, at(DAY, 9, 10), actor=secretary)
    with pytest.raises(services.SlotTaken) as refused:  # 9:20-9:40 overlaps the squeezed 9:10-9:30
        book(doctor, make_patient(last_name="Later", email="", nir=""), consultation, at(DAY, 9, 20))
    assert refused.value.conflict.pk == urgent.pk


def test_it_makes_a_squeezed_appointment_ordinary_when_moved_to_a_free_time(
    squeezing, secretary, doctor, consultation, appointment, walk_in
):
    urgent = _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=secretary)
    with system_context("tests"), pytest.raises(services.SlotTaken):
        services.appointment_move(appointment=urgent, start=at(DAY, 9, 5), actor=secretary)
    with system_context("tests"):
        services.appointment_move(appointment=urgent, start=at(DAY, 10), actor=secretary)
    urgent.refresh_from_db()
    assert urgent.squeezed is False


def test_it_keeps_a_squeezed_appointment_over_its_appointment_when_its_type_changes(
    squeezing, secretary, doctor, consultation, long_visit, appointment, walk_in
):
    urgent = _squeeze(doctor, walk_in, consultation, at(DAY, 9), actor=secretary)
    with system_context("tests"):
        services.appointment_change_type(appointment=urgent, appointment_type=long_visit, actor=secretary)
    urgent.refresh_from_db()
    assert urgent.squeezed is True
    assert urgent.end == at(DAY, 9, 40)


# ---------------------------------------------------------------------------------------------
# The database's last word (PostgreSQL: migration 0009)


def _raw(doctor, patient, kind, start, end, *, squeezed):
    """A row saved without the service: what only the database's constraints stand against."""
    with system_context("tests"):
        row = Appointment(
            practitioner=doctor, patient=patient, appointment_type=kind, start=start, end=end, squeezed=squeezed
        )
        with transaction.atomic():
            row.save()
    return row


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no exclusion constraints")
def test_it_has_the_database_allow_one_squeezed_appointment_over_an_ordinary_one(doctor, consultation, walk_in):
    other = make_patient(last_name="Other", email="", nir="")
    _raw(doctor, walk_in, consultation, at(DAY, 9), at(DAY, 9, 20), squeezed=False)
    _raw(doctor, other, consultation, at(DAY, 9, 10), at(DAY, 9, 30), squeezed=True)  # accepted
    with pytest.raises(IntegrityError, match="appointment_no_overlap_squeezed"):
        _raw(doctor, other, consultation, at(DAY, 9, 15), at(DAY, 9, 35), squeezed=True)
    with pytest.raises(IntegrityError, match="appointment_no_overlap"):
        _raw(doctor, other, consultation, at(DAY, 9, 5), at(DAY, 9, 25), squeezed=False)
    assert Appointment.objects.count() == 2


# ---------------------------------------------------------------------------------------------
# The booking page: offered after a refusal, when allowed; recorded; shown double


def _booking(doctor, kind, patient, **changes) -> dict:
    data = {
        "action": "book_existing",
        "patient": str(patient.pk),
        "practitioner": doctor.pk,
        "appointment_type": kind.pk,
        "date": DAY.isoformat(),
        "time": "09:00",
    }
    data.update(changes)
    return data


def test_it_offers_a_squeeze_on_the_booking_page_only_when_allowed(
    secretary, doctor, consultation, appointment, walk_in, settings
):
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10  # DAY lies years ahead
    client = client_for(secretary)
    body = client.post(reverse("scheduling:book"), _booking(doctor, consultation, walk_in)).content.decode()
    assert "This slot is already taken" in body
    assert 'name="squeeze"' not in body

    Clinic.objects.filter(pk=1).update(squeeze_in_allowed=True)
    body = client.post(reverse("scheduling:book"), _booking(doctor, consultation, walk_in)).content.decode()
    assert 'name="squeeze"' in body
    assert 'name="squeeze_reason"' in body
    assert Appointment.objects.count() == 1


def test_it_books_a_squeeze_from_the_booking_page(squeezing, secretary, doctor, consultation, appointment, walk_in):
    client = client_for(secretary)
    refused = client.post(
        reverse("scheduling:book"), _booking(doctor, consultation, walk_in, squeeze="on", squeeze_reason="")
    )
    assert refused.status_code == 200
    assert "Say why this cannot wait" in refused.content.decode()
    assert Appointment.objects.count() == 1

    response = client.post(
        reverse("scheduling:book"), _booking(doctor, consultation, walk_in, squeeze="on", squeeze_reason=REASON)
    )
    assert response.status_code == 302
    urgent = Appointment.objects.get(patient=walk_in)
    assert urgent.squeezed is True
    event = AuditEvent.objects.get(event_type=EventType.CREATE, object_pk=str(urgent.pk))
    assert (event.actor_user_id, event.extra["squeeze_reason"]) == (secretary.pk, REASON)


def test_it_shows_a_squeeze_double_on_the_agenda(squeezing, secretary, doctor, consultation, appointment, walk_in):
    urgent = _squeeze(doctor, walk_in, consultation, at(DAY, 9, 10), actor=secretary)
    client = client_for(secretary)
    start = AuditEvent.objects.order_by("-id").first().id
    body = client.get(reverse("scheduling:day", args=[DAY])).content.decode()
    assert (
        f'class="appt type-{consultation.pk} st-booked rs-25 re-29 dbl" href="/appointments/{appointment.pk}/"' in body
    )
    assert (
        f'class="appt type-{consultation.pk} st-booked rs-27 re-31 squeezed" href="/appointments/{urgent.pk}/"' in body
    )
    assert "squeezed in" in body
    assert "Emergency squeezed in (double booking)" in body
    assert read_map(id__gt=start) == {
        ("patients.Patient", str(appointment.patient_id)): {"last_name", "first_names"},
        ("patients.Patient", str(walk_in.pk)): {"last_name", "first_names"},
    }


def test_it_offers_no_second_squeeze_over_the_same_time(
    squeezing, secretary, doctor, consultation, appointment, walk_in
):
    _squeeze(doctor, walk_in, consultation, at(DAY, 9, 10), actor=secretary)
    other = make_patient(last_name="Third", email="", nir="")
    body = (
        client_for(secretary).post(reverse("scheduling:book"), _booking(doctor, consultation, other)).content.decode()
    )
    assert "Held by the appointment of Monday 4 March 2030, 09:00–09:20, with Dr Claire Martin" in body  # the first
    assert 'name="squeeze"' not in body  # an emergency already holds 9:10-9:30
    refused = client_for(secretary).post(
        reverse("scheduling:book"), _booking(doctor, consultation, other, squeeze="on", squeeze_reason=REASON)
    )
    assert "An emergency is already squeezed in at this time." in refused.content.decode()
    assert Appointment.objects.count() == 2


def test_a_practice_admin_turns_squeezing_on_in_admin(practice_admin):
    clinic = Clinic.current()
    url = reverse("admin:practice_clinic_change", args=[clinic.pk])
    client = client_for(practice_admin)
    page = client.get(url).content.decode()
    assert "checked" not in re.search(r'<input type="checkbox" name="squeeze_in_allowed"[^>]*>', page).group(0)
    data = {"name": clinic.name, "address": "", "phone": "", "email": "", "squeeze_in_allowed": "on"}
    for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"):
        for edge in ("opens", "closes"):
            value = getattr(clinic, f"{day}_{edge}")
            data[f"{day}_{edge}"] = value.strftime("%H:%M") if value else ""
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Clinic.current().squeeze_in_allowed is True
