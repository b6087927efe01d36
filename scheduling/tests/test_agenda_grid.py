"""The clickable grid without its script (scheduling/grid.py, templates/scheduling/_grid.html):
free time as links to the prefilled booking page, one-click status buttons on today's
appointments (one shared form, the status endpoint, back to the grid at now), the #now
anchor, the legend of the types' colours; the whole day printed; the waiting room's expected
patients. Statement counts of the day view: test_day_view_queries.py."""

import datetime
import re

import pytest
import time_machine
from django.urls import reverse

from audit.models import AuditEvent, EventType
from config.testing import DAY, at, book, client_for, make_patient, patient_key, read_map
from scheduling.models import Absence, Appointment, AppointmentStatus

BOOK = "/appointments/new/?practitioner={pk}&amp;start={day}T{time}"


@pytest.fixture(autouse=True)
def _day_explained(settings):
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10  # DAY lies years ahead, like today's bookings


def _last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _free_times(body: str, practitioner) -> list[str]:
    pattern = re.escape(BOOK.format(pk=practitioner.pk, day=DAY.isoformat(), time="")) + r"(\d\d:\d\d)"
    return re.findall(pattern, body)


def _day(client, day=DAY) -> str:
    response = client.get(reverse("scheduling:day", args=[day]))
    assert response.status_code == 200
    return response.content.decode()


# ---------------------------------------------------------------------------------------------
# Free time: a link per quarter of an hour to the booking page, prefilled


def test_it_links_free_time_to_the_prefilled_booking_page(secretary, doctor, other_doctor, appointment):
    Absence.objects.create(practitioner=doctor, start=at(DAY, 16), end=at(DAY, 19))
    body = _day(client_for(secretary))
    times = _free_times(body, doctor)
    # 8:00-12:00 and 13:00-16:00, less the 9:00-9:20 appointment, cut at quarters of an hour.
    morning = ["08:00", "08:15", "08:30", "08:45", "09:20", "09:30", "09:45"] + [
        f"{h:02d}:{m:02d}" for h in (10, 11) for m in (0, 15, 30, 45)
    ]
    afternoon = [f"{h:02d}:{m:02d}" for h in (13, 14, 15) for m in (0, 15, 30, 45)]
    assert times == morning + afternoon
    link = BOOK.format(pk=doctor.pk, day=DAY.isoformat(), time="09:20")
    assert f'<a class="free rs-29 re-31" href="{link}"><span class="sr-only">Book </span>09:20</a>' in body
    assert len(_free_times(body, other_doctor)) == 4 * 10  # 8-12 and 13-19, nothing booked


def test_the_link_opens_the_booking_form_at_that_practitioner_and_time(secretary, doctor):
    response = client_for(secretary).get(f"/appointments/new/?practitioner={doctor.pk}&start={DAY}T09:20")
    assert response.status_code == 200
    form = response.context["form"]
    assert (form.initial["practitioner"], form.initial["date"], form.initial["time"]) == (
        doctor.pk,
        DAY,
        datetime.time(9, 20),
    )


def test_it_offers_no_free_time_in_the_past(secretary, doctor, appointment):
    with time_machine.travel(at(DAY, 10, 32), tick=False):
        client = client_for(secretary)
        today = _free_times(_day(client), doctor)
        yesterday = _day(client, DAY - datetime.timedelta(days=1))
    assert today[0] == "10:35"  # the next whole row after now
    assert "09:20" not in today
    assert 'class="free ' not in yesterday


def test_it_offers_no_booking_in_a_practitioners_own_week(practitioner, doctor, appointment):
    body = client_for(practitioner).get(reverse("scheduling:week", args=[doctor.pk, DAY])).content.decode()
    assert 'class="free ' not in body
    assert "data-move" not in body
    assert "move-dialog" not in body


# ---------------------------------------------------------------------------------------------
# One click to the next step of the day


def test_it_offers_one_click_status_buttons_on_todays_appointments_only(secretary, doctor, consultation, appointment):
    tomorrow = book(
        doctor,
        make_patient(last_name="Demain", email="", nir=""),
        consultation,
        at(DAY, 11) + datetime.timedelta(days=1),
    )
    with time_machine.travel(at(DAY, 8, 30), tick=False):
        body = _day(client_for(secretary))
        later = _day(client_for(secretary), DAY + datetime.timedelta(days=1))
    assert (
        f'<button class="go to-arrived rs-25" form="grid-status" formaction="/appointments/{appointment.pk}/status/" '
        f'name="status" value="arrived" title="Mark arrived"></button>'
    ) in body
    form = re.search(r'<form id="grid-status" method="post" hidden>(.*?)</form>', body).group(1)
    assert 'name="csrfmiddlewaretoken"' in form
    assert re.search(r'name="submission_key" value="[A-Za-z0-9_-]{32}"', form)
    assert f'name="next" value="/agenda/{DAY}/#now"' in form
    assert 'class="go ' not in later
    assert str(tomorrow.pk) in later
    assert body.count('class="go ') == 1


def test_it_offers_arrival_for_the_next_two_hours_only(secretary, doctor, consultation, appointment):
    """Who may walk in now: due within two hours, or late (the waiting room lists everyone)."""
    later = book(doctor, make_patient(last_name="Plus", email="", nir=""), consultation, at(DAY, 11))
    with time_machine.travel(at(DAY, 8, 30), tick=False):
        early = _day(client_for(secretary))
    with time_machine.travel(at(DAY, 10, 30), tick=False):
        late = _day(client_for(secretary))
    assert f"/appointments/{appointment.pk}/status/" in early
    assert f"/appointments/{later.pk}/status/" not in early  # 11:00 is two and a half hours ahead
    assert f"/appointments/{appointment.pk}/status/" in late  # 9:00, not arrived yet: late
    assert f"/appointments/{later.pk}/status/" in late


@pytest.mark.parametrize(
    ("status", "button"),
    [
        (AppointmentStatus.BOOKED, "arrived"),
        (AppointmentStatus.ARRIVED, "in_consultation"),
        (AppointmentStatus.IN_CONSULTATION, "done"),
        (AppointmentStatus.DONE, None),
        (AppointmentStatus.NO_SHOW, None),
    ],
)
def test_it_offers_the_next_step_of_the_day(secretary, appointment, status, button):
    Appointment.objects.filter(pk=appointment.pk).update(status=status)
    with time_machine.travel(at(DAY, 8, 30), tick=False):
        body = _day(client_for(secretary))
    buttons = re.findall(r'<button class="go [^"]*"[^>]*value="(\w+)"', body)
    assert buttons == ([button] if button else [])


def test_one_click_marks_the_arrival_and_comes_back_to_the_grid(secretary, appointment):
    with time_machine.travel(at(DAY, 8, 55), tick=False):
        client = client_for(secretary)
        body = _day(client)
        key = re.search(r'<form id="grid-status".*?name="submission_key" value="([^"]+)"', body, re.S).group(1)
        url = re.search(rf'formaction="(/appointments/{appointment.pk}/status/)"', body).group(1)
        data = {"submission_key": key, "next": f"/agenda/{DAY}/#now", "status": "arrived"}
        response = client.post(url, data)
        assert (response.status_code, response["Location"]) == (302, f"/agenda/{DAY}/#now")
        again = client.post(url, data)  # a double click: answered as the first, nothing done twice
        assert (again.status_code, again["Location"]) == (302, f"/agenda/{DAY}/#now")
        page = _day(client)
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.ARRIVED
    assert appointment.arrived_at == at(DAY, 8, 55)
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).count() == 1
    assert "Status changed to “Arrived”." in page
    assert 'value="in_consultation"' in page  # the next click is on the grid already


def test_one_click_from_my_day_comes_back_to_my_day(practitioner, doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, at(DAY, 9))
    with time_machine.travel(at(DAY, 8, 55), tick=False):
        client = client_for(practitioner)
        body = client.get(reverse("scheduling:my_day")).content.decode()
        form = re.search(r'<form method="post" action="[^"]+/status/">(.*?)</form>', body).group(1)
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form))
        assert fields["status"] == "arrived"
        response = client.post(reverse("scheduling:status", args=[appointment.pk]), fields)
    assert (response.status_code, response["Location"]) == (302, "/my-day/")
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.ARRIVED


# ---------------------------------------------------------------------------------------------
# Opening at now, the legend


def test_it_anchors_the_day_an_hour_before_now(secretary, appointment):
    with time_machine.travel(at(DAY, 10, 32), tick=False):
        body = _day(client_for(secretary))
        other = _day(client_for(secretary), DAY + datetime.timedelta(days=1))
    assert '<span id="now" class="now-anchor rs-31"></span>' in body  # 9:30, the row of 9:32
    assert 'id="now"' not in other


def test_it_explains_the_type_colours_on_the_grid(secretary, doctor, consultation, long_visit, appointment):
    book(doctor, make_patient(last_name="Long", email="", nir=""), long_visit, at(DAY, 14))
    body = _day(client_for(secretary))
    legend = re.search(r'<ul class="legend types"[^>]*>(.*?)</ul>', body, re.S).group(1)
    assert re.findall(r'<span class="key type-(\d+)"></span>([^<]+)</li>', legend) == [
        (str(consultation.pk), "Consultation"),
        (str(long_visit.pk), "Première consultation"),
    ]


# ---------------------------------------------------------------------------------------------
# The whole day printed


def test_it_prints_every_practitioners_day(secretary, doctor, other_doctor, appointment, others_appointment):
    before = _last_id()
    response = client_for(secretary).get(reverse("scheduling:print_all", args=[DAY]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert body.count('<section class="sheet sheet-all"') == 2
    assert body.index("Dr Claire Martin") < body.index("LEFÈVRE Anne-Marie") < body.index("Dr Paul Bernard")
    assert body.index("Dr Paul Bernard") < body.index("GARNIER Hugo")
    assert "09:00–09:20" in body
    assert "Douleur" not in body  # the reason is not on the sheet, nor decrypted
    assert read_map(id__gt=before) == {
        patient_key(appointment.patient): {"last_name", "first_names"},
        patient_key(others_appointment.patient): {"last_name", "first_names"},
    }


def test_it_keeps_the_whole_day_print_for_the_front_desk(practitioner, outsider, appointment):
    url = reverse("scheduling:print_all", args=[DAY])
    assert client_for(practitioner).get(url).status_code == 403
    assert client_for(outsider).get(url).status_code == 403
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exists()


# ---------------------------------------------------------------------------------------------
# The waiting room: who has arrived, then who is expected


def test_it_lists_patients_expected_in_order_of_their_start(
    secretary, practitioner, doctor, other_doctor, consultation
):
    with time_machine.travel(at(DAY, 9, 50), tick=False):
        late = book(doctor, make_patient(last_name="Retard", email="", nir=""), consultation, at(DAY, 9, 40))
        later = book(other_doctor, make_patient(last_name="Apres", email="", nir=""), consultation, at(DAY, 11))
        soon = book(doctor, make_patient(last_name="Bientot", email="", nir=""), consultation, at(DAY, 10, 20))
        here = book(doctor, make_patient(last_name="Present", email="", nir=""), consultation, at(DAY, 10))
        client_for(secretary).post(reverse("scheduling:status", args=[here.pk]), {"status": "arrived"})
        before = _last_id()
        response = client_for(secretary).get(reverse("scheduling:waiting_room"))
        mine = client_for(practitioner).get(reverse("scheduling:waiting_room"))
    assert [row["appt"].pk for row in response.context["rows"]] == [here.pk]
    assert [row["appt"].pk for row in response.context["expected"]] == [late.pk, soon.pk, later.pk]
    assert [row["late"] for row in response.context["expected"]] == [True, False, False]
    body = response.content.decode()
    assert "3 patients expected today, not arrived yet" in body
    assert body.index("PRESENT") < body.index("RETARD") < body.index("BIENTOT") < body.index("APRES")
    assert 'value="arrived"' in body
    assert [row["appt"].pk for row in mine.context["expected"]] == [late.pk, soon.pk]
    names = {"last_name", "first_names"}
    desk = read_map(id__gt=before, actor_user_id=secretary.pk)
    assert desk == {patient_key(a.patient): names for a in (here, late, soon, later)}
    own = read_map(id__gt=before, actor_user_id=practitioner.pk)
    assert own == {patient_key(a.patient): names for a in (here, late, soon)}
