"""Scheduling in Django admin: practice admins edit the clinic's structure; appointments are
read-only there (they change through the audited services), and their list decrypts nothing."""

import datetime

import pytest
from django.contrib.auth.models import User

from audit.models import AuditEvent, EventType
from config.testing import book, client_for, make_patient, make_practitioner, make_type, paris, valid_nir
from practice.models import Practitioner, Specialty
from scheduling.models import Absence, Appointment, AppointmentType, WorkingHours

MONDAY = (2026, 3, 2)


@pytest.fixture
def doctor(roles):
    return make_practitioner()


@pytest.fixture
def consultation(doctor):
    return make_type(doctor, minutes=20)


@pytest.fixture
def appointment(doctor, consultation, patient):
    return book(
        doctor, patient, consultation, paris(*MONDAY, 9, 0), reason="Douleur thoracique", internal_note="Voir ECG"
    )


@pytest.fixture
def admin_client(practice_admin):
    return client_for(practice_admin)


def reads() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=EventType.READ))


# The clinic's structure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/practice/practitioner/",
        "/admin/practice/practitioner/add/",
        "/admin/practice/specialty/",
        "/admin/practice/specialty/add/",
        "/admin/scheduling/appointmenttype/",
        "/admin/scheduling/appointmenttype/add/",
        "/admin/scheduling/workinghours/",
        "/admin/scheduling/workinghours/add/",
        "/admin/scheduling/absence/",
        "/admin/scheduling/absence/add/",
        "/admin/scheduling/appointment/",
    ],
)
def test_a_practice_admin_opens_the_scheduling_admin(admin_client, doctor, consultation, url):
    assert admin_client.get(url).status_code == 200


def test_the_lists_show_their_columns(admin_client, doctor, consultation):
    Absence.objects.create(
        practitioner=doctor, start=paris(*MONDAY, 0, 0), end=paris(2026, 3, 4, 0, 0), label="Congrès"
    )
    Absence.objects.create(start=paris(2026, 5, 1, 0, 0), end=paris(2026, 5, 2, 0, 0), kind="closure")

    types = admin_client.get("/admin/scheduling/appointmenttype/").content.decode()
    assert "Consultation" in types
    assert "#3366cc" in types
    assert doctor.display_name in types
    hours = admin_client.get("/admin/scheduling/workinghours/", {"weekday__exact": 0}).content.decode()
    assert doctor.display_name in hours
    assert "9 a.m." in hours
    assert "6 p.m." in hours
    assert 'field-weekday">Monday' in hours
    assert 'field-weekday">Saturday' not in hours
    absences = admin_client.get("/admin/scheduling/absence/", {"start__year": 2026}).content.decode()
    assert "Congrès" in absences
    assert "Whole practice" in absences
    practitioners = admin_client.get(f"/admin/practice/practitioner/{doctor.pk}/change/").content.decode()
    assert 'name="working_hours-TOTAL_FORMS" value="12"' in practitioners
    assert "Congrès" not in practitioners  # past absences are in the absence list, not the inline


def test_a_practice_admin_adds_working_hours(admin_client, doctor):
    response = admin_client.post(
        "/admin/scheduling/workinghours/add/",
        {"practitioner": doctor.pk, "weekday": 6, "start_time": "09:00", "end_time": "12:00"},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert WorkingHours.objects.filter(practitioner=doctor, weekday=6).count() == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"start_time": "12:00", "end_time": "09:00"}, "The end must come after the start."),
        ({"start_time": "09:00", "end_time": "09:00"}, "The end must come after the start."),
        ({"start_time": "11:00", "end_time": "13:00"}, "These hours overlap"),  # Monday 9-12 exists
        (
            {"start_time": "08:00", "end_time": "10:00", "valid_from": "2026-05-01", "valid_until": "2026-04-01"},
            "The end of validity must not come before its start.",
        ),
    ],
)
def test_it_refuses_bad_working_hours(admin_client, doctor, data, message):
    before = WorkingHours.objects.count()
    response = admin_client.post(
        "/admin/scheduling/workinghours/add/", {"practitioner": doctor.pk, "weekday": 0, **data}
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert WorkingHours.objects.count() == before


def test_hours_valid_in_other_periods_do_not_overlap(admin_client, doctor):
    WorkingHours.objects.filter(practitioner=doctor).update(valid_until=datetime.date(2026, 6, 30))
    response = admin_client.post(
        "/admin/scheduling/workinghours/add/",
        {
            "practitioner": doctor.pk,
            "weekday": 0,
            "start_time": "08:00",
            "end_time": "12:00",
            "valid_from": "2026-07-01",
        },
    )
    assert response.status_code == 302


def test_it_edits_a_week_on_the_practitioner_page(admin_client, roles):
    user = User.objects.create_user("dr.new", password="x" * 20)
    specialty = Specialty.objects.create(name="Pédiatrie")
    data = {
        "user": user.pk,
        "display_name": "Dr New",
        "specialty": specialty.pk,
        "colour": "#123456",
        "is_active": "on",
        "working_hours-TOTAL_FORMS": "2",
        "working_hours-INITIAL_FORMS": "0",
        "working_hours-0-weekday": "0",
        "working_hours-0-start_time": "08:30",
        "working_hours-0-end_time": "12:30",
        "working_hours-1-weekday": "0",
        "working_hours-1-start_time": "14:00",
        "working_hours-1-end_time": "18:30",
        "absences-TOTAL_FORMS": "1",
        "absences-INITIAL_FORMS": "0",
        "absences-0-start_0": "2099-08-03",
        "absences-0-start_1": "00:00",
        "absences-0-end_0": "2099-08-22",
        "absences-0-end_1": "00:00",
        "absences-0-kind": "holiday",
        "absences-0-label": "Été",
    }
    response = admin_client.post("/admin/practice/practitioner/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    practitioner = Practitioner.objects.get(display_name="Dr New")
    assert practitioner.working_hours.count() == 2
    assert practitioner.absences.get().label == "Été"


def test_the_practitioner_page_refuses_overlapping_hours(admin_client, roles):
    user = User.objects.create_user("dr.new", password="x" * 20)
    specialty = Specialty.objects.create(name="Pédiatrie")
    response = admin_client.post(
        "/admin/practice/practitioner/add/",
        {
            "user": user.pk,
            "display_name": "Dr New",
            "specialty": specialty.pk,
            "colour": "#123456",
            "working_hours-TOTAL_FORMS": "2",
            "working_hours-INITIAL_FORMS": "0",
            "working_hours-0-weekday": "2",
            "working_hours-0-start_time": "08:30",
            "working_hours-0-end_time": "12:30",
            "working_hours-1-weekday": "2",
            "working_hours-1-start_time": "12:00",
            "working_hours-1-end_time": "18:30",
            "absences-TOTAL_FORMS": "0",
            "absences-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "These hours overlap another range of the same day." in response.content.decode()
    assert not Practitioner.objects.filter(display_name="Dr New").exists()


def test_a_practice_admin_adds_an_absence_and_is_told_about_bookings(admin_client, doctor, appointment):
    response = admin_client.post(
        "/admin/scheduling/absence/add/",
        {
            "practitioner": doctor.pk,
            "start_0": "2026-03-02",
            "start_1": "00:00",
            "end_0": "2026-03-03",
            "end_1": "00:00",
            "kind": "sick",
            "label": "",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert Absence.objects.filter(practitioner=doctor, kind="sick").exists()
    assert "1 appointment is booked during this absence" in response.content.decode()
    assert not reads()


def test_it_refuses_an_absence_ending_before_it_starts(admin_client, doctor):
    response = admin_client.post(
        "/admin/scheduling/absence/add/",
        {
            "practitioner": doctor.pk,
            "start_0": "2026-03-03",
            "start_1": "00:00",
            "end_0": "2026-03-02",
            "end_1": "00:00",
            "kind": "holiday",
        },
    )
    assert response.status_code == 200
    assert "The end must come after the start." in response.content.decode()
    assert not Absence.objects.exists()


def test_a_practice_admin_adds_an_appointment_type(admin_client, doctor):
    response = admin_client.post(
        "/admin/scheduling/appointmenttype/add/",
        {
            "name": "Vaccination",
            "duration_minutes": "10",
            "colour": "#dc2626",
            "practitioners": [doctor.pk],
            "is_active": "on",
            "reminder_hours": "24",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(AppointmentType.objects.get(name="Vaccination").practitioners.all()) == [doctor]


def test_it_refuses_a_colour_that_is_not_hex(admin_client, doctor):
    response = admin_client.post(
        "/admin/scheduling/appointmenttype/add/", {"name": "Suivi", "duration_minutes": "15", "colour": "red"}
    )
    assert response.status_code == 200
    assert not AppointmentType.objects.filter(name="Suivi").exists()


def test_a_practice_admin_adds_a_specialty_but_deletes_nothing(admin_client, doctor, consultation):
    response = admin_client.post("/admin/practice/specialty/add/", {"name": "Dermatologie"})
    assert response.status_code == 302
    hours = doctor.working_hours.first()
    assert admin_client.get(f"/admin/scheduling/workinghours/{hours.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/scheduling/appointmenttype/{consultation.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/practice/practitioner/{doctor.pk}/delete/").status_code == 403


# Appointments: read-only, and the list decrypts nothing ---------------------------------------


def test_the_appointment_list_decrypts_nothing(admin_client, doctor, consultation, appointment, audit_trail_writable):
    other = make_patient(
        last_name="Girard",
        first_names="Paul",
        sex="M",
        birth_date=datetime.date(1975, 11, 2),
        phone_mobile="+33687654321",
        email="paul.girard@example.fr",
        nir=valid_nir("1751169123456"),
    )
    book(doctor, other, consultation, paris(*MONDAY, 9, 20), reason="Vaccin grippe")
    AuditEvent.objects.filter(event_type=EventType.READ).delete()

    for params in ({}, {"status__exact": "booked"}, {"start__year": 2026, "start__month": 3}, {"o": "1"}):
        response = admin_client.get("/admin/scheduling/appointment/", params)
        assert response.status_code == 200
        body = response.content.decode()
        assert doctor.display_name in body
        assert "Consultation" in body
        for plaintext in ("Douleur thoracique", "Voir ECG", "Vaccin grippe", "Lefèvre", "Girard"):
            assert plaintext not in body
    assert not reads()


def test_the_appointment_list_has_no_search_on_encrypted_fields(admin_client, appointment):
    response = admin_client.get("/admin/scheduling/appointment/", {"q": "Douleur"})
    assert response.status_code == 200
    assert 'id="searchbar"' not in response.content.decode()
    assert not reads()


def test_appointments_are_read_only_in_admin(admin_client, appointment):
    url = f"/admin/scheduling/appointment/{appointment.pk}/change/"
    assert admin_client.get("/admin/scheduling/appointment/add/").status_code == 403

    page = admin_client.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="_save"' not in body
    assert "<textarea" not in body
    # The change page shows the reason: decrypted through the audited fields, by this admin.
    assert "Douleur thoracique" in body
    read = reads()
    assert len(read) == 1
    assert read[0].object_pk == str(appointment.pk)
    assert read[0].actor_role == "Practice admin"
    assert "reason" in read[0].fields

    response = admin_client.post(url, {"status": "cancelled", "reason": "changed"})
    assert response.status_code == 403
    assert (
        admin_client.post(f"/admin/scheduling/appointment/{appointment.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    appointment = Appointment.objects.only("status").get(pk=appointment.pk)
    assert appointment.status == "booked"


# Other roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["secretary", "practitioner", "outsider"])
@pytest.mark.parametrize(
    "url",
    ["/admin/", "/admin/scheduling/appointment/", "/admin/scheduling/workinghours/", "/admin/practice/practitioner/"],
)
def test_other_roles_do_not_get_into_admin(request, persona, url, appointment):
    response = client_for(request.getfixturevalue(persona)).get(url)
    assert response.status_code in (302, 403)
    if response.status_code == 302:
        assert response["Location"].startswith("/admin/login/")
    assert not reads()


def test_a_staff_secretary_only_sees_what_her_role_allows(secretary, appointment):
    """Staff status alone opens nothing: the role's permissions decide."""
    secretary.is_staff = True
    secretary.save()
    client = client_for(secretary)
    assert client.get("/admin/scheduling/workinghours/").status_code == 200  # view only
    assert client.get("/admin/scheduling/workinghours/add/").status_code == 403
    assert client.get("/admin/practice/practitioner/").status_code == 403
    assert client.get("/admin/scheduling/appointment/add/").status_code == 403
