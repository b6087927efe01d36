"""An absence over booked time, in Django admin: saving it lists the appointments the front desk
must move (time and practitioner, each a link to its page; nothing decrypted, nothing of the
patients in the message the session carries), and the absence's page lists them with the
patients' names, an audited read explained in one batch. Both lists are bounded."""

import datetime
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.context import system_context
from config.testing import at, book, client_for, make_patient, patient_key, read_map, reads, today
from scheduling import services
from scheduling.models import Absence
from scheduling.selectors import ABSENCE_CONFLICTS_SHOWN

ADD = reverse("admin:scheduling_absence_add")
NAMES = {"last_name", "first_names"}
# Next week's Tuesday: within the 90 days whose appointments explain a practice admin's reads.
DAY = today() + datetime.timedelta(days=7 + (1 - today().weekday()) % 7)


def _patients(n: int, first: int = 0) -> list:
    return [make_patient(last_name=f"Absent{first + i:02d}", first_names="Zoé", email="", nir="") for i in range(n)]


def _book_morning(doctor, kind, patients, hour: int = 8):
    """One appointment each, every 20 minutes from `hour` on DAY."""
    return [
        book(doctor, p, kind, at(DAY, hour) + datetime.timedelta(minutes=20 * n), force=True)
        for n, p in enumerate(patients)
    ]


def _absence_form(doctor=None) -> dict:
    """DAY from 8:00 to 20:00, for the doctor (the whole practice without one)."""
    return {
        "practitioner": doctor.pk if doctor else "",
        "start_0": DAY.isoformat(),
        "start_1": "08:00",
        "end_0": DAY.isoformat(),
        "end_1": "20:00",
        "kind": "sick",
        "label": "",
    }


def _booked_messages(response) -> list[str]:
    """The messages about appointments booked during the absence (admin adds "... was added")."""
    return [str(m) for m in response.context["messages"] if "booked during this absence" in str(m)]


def _message(response) -> str:
    [message] = _booked_messages(response)
    return message


def test_saving_lists_the_appointments_to_move_with_links(practice_admin, doctor, other_doctor, consultation):
    booked = _book_morning(doctor, consultation, _patients(3))
    with system_context("tests"):
        services.appointment_cancel(appointment=booked[1], reason="Le patient a appelé", actor=None)
    elsewhere = _book_morning(other_doctor, consultation, _patients(1, first=3))  # not during this absence

    response = client_for(practice_admin).post(ADD, _absence_form(doctor), follow=True)

    assert response.status_code == 200
    assert Absence.objects.filter(practitioner=doctor).exists()
    message = _message(response)
    assert message.startswith("2 appointments are booked during this absence: the front desk should move them.")
    for appointment, time in [(booked[0], "08:00–08:20"), (booked[2], "08:40–09:00")]:
        assert f'<a href="{appointment.get_absolute_url()}">' in message
        assert time in message
    assert booked[1].get_absolute_url() not in message  # cancelled
    assert elsewhere[0].get_absolute_url() not in message
    assert message.count("Dr Claire Martin") == 2
    assert "ABSENT" not in message.upper()  # no patient: the message goes through the session
    assert "And " not in message
    assert reads() == []  # nothing decrypted to list them


def test_the_absences_page_names_the_patients_in_one_audited_batch(practice_admin, doctor, consultation):
    booked = _book_morning(doctor, consultation, _patients(2))
    absence = Absence.objects.create(practitioner=doctor, start=at(DAY, 8), end=at(DAY, 20))
    url = reverse("admin:scheduling_absence_change", args=[absence.pk])

    body = client_for(practice_admin).get(url).content.decode()

    for appointment, name in zip(booked, ["ABSENT00 Zoé", "ABSENT01 Zoé"], strict=True):
        assert re.search(
            rf'<a href="{appointment.get_absolute_url()}">[^<]*08:[0-9]{{2}}–[^<]*</a> · Dr Claire Martin · {name}',
            body,
        )
    assert read_map(path=url) == {patient_key(a.patient): NAMES for a in booked}
    assert {(r.explanation, r.explained_by) for r in reads(path=url)} == {("appointment", str(a.pk)) for a in booked}


def test_an_absence_with_nothing_booked_lists_nothing(practice_admin, doctor):
    absence = Absence.objects.create(practitioner=doctor, start=at(DAY, 8), end=at(DAY, 20))
    client = client_for(practice_admin)
    body = client.get(reverse("admin:scheduling_absence_change", args=[absence.pk])).content.decode()
    assert "Booked during this absence" in body
    assert "absence-booked" not in body
    response = client.post(ADD, _absence_form(doctor), follow=True)
    assert response.status_code == 200
    assert _booked_messages(response) == []
    assert client.get(ADD).status_code == 200  # the add page has no list
    assert reads() == []


def test_a_closed_practice_lists_every_practitioners_appointments(practice_admin, doctor, other_doctor, consultation):
    mine = _book_morning(doctor, consultation, _patients(1))
    theirs = _book_morning(other_doctor, consultation, _patients(1, first=1))

    response = client_for(practice_admin).post(ADD, _absence_form(), follow=True)

    message = _message(response)
    assert message.startswith("2 appointments are booked")
    assert f"{mine[0].get_absolute_url()}" in message
    assert f"{theirs[0].get_absolute_url()}" in message
    assert "Dr Claire Martin" in message
    assert "Dr Paul Bernard" in message
    assert reads() == []


@pytest.fixture
def busy_day(doctor, consultation):
    """More appointments than a list shows: the morning and the afternoon full."""
    patients = _patients(ABSENCE_CONFLICTS_SHOWN + 3)
    return _book_morning(doctor, consultation, patients[:12], hour=8) + _book_morning(
        doctor, consultation, patients[12:], hour=13
    )


def test_the_lists_are_bounded_and_cost_the_same_queries_whatever_their_length(practice_admin, doctor, busy_day):
    client = client_for(practice_admin)
    response = client.post(ADD, _absence_form(doctor), follow=True)
    message = _message(response)
    assert message.startswith(f"{len(busy_day)} appointments are booked")
    assert message.count("<li>") == ABSENCE_CONFLICTS_SHOWN
    assert "And 3 more:" in message
    assert reverse("scheduling:day", args=[DAY]) in message

    absence = Absence.objects.get()
    url = reverse("admin:scheduling_absence_change", args=[absence.pk])
    with CaptureQueriesContext(connection) as full:
        body = client.get(url).content.decode()
    assert body.count("· Dr Claire Martin ·") == ABSENCE_CONFLICTS_SHOWN
    assert read_map(path=url) == {patient_key(a.patient): NAMES for a in busy_day[:ABSENCE_CONFLICTS_SHOWN]}

    Absence.objects.filter(pk=absence.pk).update(end=at(DAY, 8, 40))  # two appointments now
    with CaptureQueriesContext(connection) as two:
        body = client.get(url).content.decode()
    assert body.count("· Dr Claire Martin ·") == 2
    assert len(two.captured_queries) <= len(full.captured_queries)
