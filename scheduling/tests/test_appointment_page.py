"""The appointment page: its main status button follows the day's flow, and the line that says
when it was booked and changed reads right in English and French."""

import re

import pytest
import time_machine

from audit.context import system_context
from config.testing import DAY, at, client_for, read_map
from scheduling import services
from scheduling.models import AppointmentStatus

# One status form of templates/scheduling/_status_buttons.html: its status and its button.
STATUS_FORM = re.compile(
    r'<input type="hidden" name="status" value="(?P<status>\w+)">.*?<button type="submit"(?P<attrs>[^>]*)>',
    re.DOTALL,
)


def _buttons(body: str) -> list[tuple[str, bool]]:
    """(status, is the main button) for each status button of the page, in order."""
    return [(m["status"], "secondary" not in m["attrs"]) for m in STATUS_FORM.finditer(body)]


def _walk(appointment, *statuses: str) -> None:
    with system_context("tests"):
        for status in statuses:
            services.appointment_set_status(appointment=appointment, status=status, actor=None)


# The statuses that lead to each one, from booked.
PATH = {
    AppointmentStatus.BOOKED: (),
    AppointmentStatus.ARRIVED: (AppointmentStatus.ARRIVED,),
    AppointmentStatus.IN_CONSULTATION: (AppointmentStatus.ARRIVED, AppointmentStatus.IN_CONSULTATION),
    AppointmentStatus.DONE: (AppointmentStatus.ARRIVED, AppointmentStatus.IN_CONSULTATION, AppointmentStatus.DONE),
    AppointmentStatus.NO_SHOW: (AppointmentStatus.NO_SHOW,),
}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # The next step is the main button; what undoes a click comes after, secondary.
        (AppointmentStatus.BOOKED, [("arrived", True), ("no_show", False)]),
        (AppointmentStatus.ARRIVED, [("in_consultation", True), ("booked", False)]),
        (AppointmentStatus.IN_CONSULTATION, [("done", True), ("arrived", False)]),
        # The end of the day's flow: nothing is the main button.
        (AppointmentStatus.DONE, [("in_consultation", False)]),
        (AppointmentStatus.NO_SHOW, [("booked", False)]),
    ],
)
def test_it_makes_the_next_step_of_the_day_the_main_button(secretary, appointment, status, expected):
    _walk(appointment, *PATH[status])
    body = client_for(secretary).get(appointment.get_absolute_url()).content.decode()
    assert _buttons(body) == expected


def test_it_makes_mark_done_the_practitioners_main_button_in_consultation(practitioner, appointment):
    _walk(appointment, *PATH[AppointmentStatus.IN_CONSULTATION])
    body = client_for(practitioner).get(appointment.get_absolute_url()).content.decode()
    assert _buttons(body) == [("done", True), ("arrived", False)]
    assert re.search(r'<button type="submit">Mark done</button>', body)


@pytest.mark.parametrize(
    ("language", "sentence"),
    [
        ("en", "Booked 03/01/2030 14:30 by sophie.secretary, last changed 03/01/2030 14:45."),
        ("fr", "Rendez-vous pris le 01/03/2030 14:30 par sophie.secretary, dernière modification le 01/03/2030 14:45."),
    ],
)
def test_it_ends_the_booked_line_with_one_full_stop(secretary, doctor, patient, consultation, language, sentence):
    """English short date-times end with "p.m.": the sentence ended "p.m..". Times read on 24
    hours in both languages, like everywhere else on the page."""
    with time_machine.travel(at(DAY.replace(day=1), 14, 30), tick=False), system_context("tests"):
        appointment = services.appointment_book(
            practitioner=doctor, patient=patient, appointment_type=consultation, start=at(DAY, 9), actor=secretary
        )
    with time_machine.travel(at(DAY.replace(day=1), 14, 45), tick=False):
        _walk(appointment, AppointmentStatus.ARRIVED)
    client = client_for(secretary)
    client.cookies["django_language"] = language
    body = client.get(appointment.get_absolute_url()).content.decode()

    assert sentence in body
    assert ".." not in re.sub(r"<[^>]*>", "", body).replace("...", "")
    assert read_map(path=appointment.get_absolute_url()) == {
        ("patients.Patient", str(patient.pk)): {"last_name", "first_names"},
        ("scheduling.Appointment", str(appointment.pk)): {"reason", "internal_note"},
    }


def test_it_shows_the_cancellation_time_on_24_hours(secretary, appointment):
    with time_machine.travel(at(DAY.replace(day=1), 18, 5), tick=False), system_context("tests"):
        services.appointment_cancel(appointment=appointment, reason="Le patient a appelé", actor=secretary)
    body = client_for(secretary).get(appointment.get_absolute_url()).content.decode()
    assert "03/01/2030 18:05 by sophie.secretary" in body
    assert "p.m." not in body
