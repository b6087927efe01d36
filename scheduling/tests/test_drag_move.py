"""A block dragged on the grid (scheduling.agenda_views.appointment_drag_move): the appointment
page's move, answered in JSON for the script. The service's rules and refusals, the submission
key, who may; a plain form POST comes back to the page it came from."""

import pytest
from django.urls import reverse

from audit.models import AuditEvent, EventType
from config.testing import DAY, at, client_for, patient_key, read_map
from scheduling.models import Absence, Appointment

JSON = {"HTTP_ACCEPT": "application/json"}
KEY = "drag-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _day_explained(settings):
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10  # DAY lies years ahead, like today's bookings


def _drop(client, appointment, *, time, practitioner, key=KEY, day=DAY, json=True, **extra):
    data = {"date": day.isoformat(), "time": time, "practitioner": practitioner.pk, "submission_key": key, **extra}
    return client.post(reverse("scheduling:drag_move", args=[appointment.pk]), data, **(JSON if json else {}))


def _last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def test_it_moves_a_dropped_block_and_says_so_on_the_next_page(secretary, doctor, other_doctor, appointment):
    client = client_for(secretary)
    response = _drop(client, appointment, time="10:40", practitioner=other_doctor)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": "Appointment moved."}
    appointment.refresh_from_db()
    assert (appointment.start, appointment.practitioner_id) == (at(DAY, 10, 40), other_doctor.pk)
    change = AuditEvent.objects.get(event_type=EventType.CHANGE, object_pk=str(appointment.pk))
    assert change.actor_user_id == secretary.pk
    assert change.extra["moved_from"]["practitioner"] == doctor.pk
    assert read_map(path=reverse("scheduling:drag_move", args=[appointment.pk])) == {}  # nothing decrypted
    page = client.get(reverse("scheduling:day", args=[DAY])).content.decode()
    assert "Appointment moved." in page  # the page the script reloads


def test_it_moves_once_for_one_key(secretary, doctor, appointment):
    client = client_for(secretary)
    assert _drop(client, appointment, time="10:40", practitioner=doctor).json()["ok"] is True
    again = _drop(client, appointment, time="10:40", practitioner=doctor)
    assert again.json() == {"ok": True, "message": "Appointment moved."}
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).count() == 1
    other = _drop(client, appointment, time="11:00", practitioner=doctor)  # the same key, other values
    assert other.status_code == 409
    assert "already sent" in other.json()["message"]
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 10, 40)


def test_it_refuses_a_drop_on_a_taken_time_and_names_it(
    secretary, doctor, other_doctor, appointment, others_appointment
):
    before = _last_id()
    response = _drop(client_for(secretary), appointment, time="10:10", practitioner=other_doctor)
    assert response.status_code == 409
    answer = response.json()
    assert answer["ok"] is False
    assert answer["message"] == (
        "This slot is already taken. Pick another time. Held by the appointment of Monday 4 March 2030, "
        "10:00–10:20, with Dr Paul Bernard (GARNIER Hugo). Next free time: Monday 4 March 2030, 10:20."
    )
    assert answer["next_free"] == {"date": "2030-03-04", "time": "10:20"}
    appointment.refresh_from_db()
    assert (appointment.start, appointment.practitioner_id) == (at(DAY, 9), doctor.pk)
    assert read_map(id__gt=before) == {patient_key(others_appointment.patient): {"last_name", "first_names"}}
    assert not AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).exists()


def test_it_refuses_a_drop_outside_hours_or_during_an_absence(secretary, doctor, appointment):
    client = client_for(secretary)
    late = _drop(client, appointment, time="19:40", practitioner=doctor)
    assert late.status_code == 409
    assert late.json()["message"] == "This time is outside the practitioner's working hours."
    assert late.json()["next_free"] is None
    Absence.objects.create(practitioner=doctor, start=at(DAY, 14), end=at(DAY, 16))
    away = _drop(client, appointment, time="15:00", practitioner=doctor, key=KEY + "2")
    assert away.status_code == 409
    assert away.json()["message"] == "The practitioner is away at that time."
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 9)


def test_it_refuses_to_move_an_appointment_that_is_under_way(secretary, doctor, appointment):
    client = client_for(secretary)
    client.post(reverse("scheduling:status", args=[appointment.pk]), {"status": "arrived"})
    response = _drop(client, appointment, time="10:40", practitioner=doctor)
    assert response.status_code == 409
    assert response.json()["message"] == "Only a booked appointment can be moved."


@pytest.mark.parametrize(("time", "who"), [("25:00", "doctor"), ("", "doctor"), ("10:00", 987654)])
def test_it_answers_bad_values_with_400(secretary, doctor, appointment, time, who):
    data = {"date": DAY.isoformat(), "time": time, "practitioner": doctor.pk if who == "doctor" else who}
    response = client_for(secretary).post(
        reverse("scheduling:drag_move", args=[appointment.pk]), {**data, "submission_key": KEY}, **JSON
    )
    assert response.status_code == 400
    assert response.json()["ok"] is False
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 9)


def test_it_answers_a_plain_form_with_a_redirect_back_and_a_message(
    secretary, doctor, other_doctor, appointment, others_appointment
):
    client = client_for(secretary)
    day = reverse("scheduling:day", args=[DAY])
    refused = _drop(client, appointment, time="10:10", practitioner=other_doctor, json=False, next=day)
    assert refused.status_code == 302
    assert refused["Location"] == day
    assert "Held by the appointment of" in client.get(day).content.decode()
    moved = _drop(client, appointment, time="10:40", practitioner=doctor, json=False, key=KEY + "2", next=day)
    assert (moved.status_code, moved["Location"]) == (302, day)
    assert "Appointment moved." in client.get(day).content.decode()


def test_it_keeps_practitioners_and_others_out(practitioner, other_practitioner, outsider, doctor, appointment):
    assert _drop(client_for(practitioner), appointment, time="10:40", practitioner=doctor).status_code == 403
    assert _drop(client_for(other_practitioner), appointment, time="10:40", practitioner=doctor).status_code == 404
    assert _drop(client_for(outsider), appointment, time="10:40", practitioner=doctor).status_code == 403
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 9)
    assert not Appointment.objects.exclude(start=at(DAY, 9)).exists()
