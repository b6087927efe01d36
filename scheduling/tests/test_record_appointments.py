"""The patient's appointments on their record (scheduling.record, a panel of patients:detail):
what each role sees, the next appointment's reminders, moving and cancelling from the record
through the appointment page's endpoints, the Book and Find a slot buttons, a bounded number of
queries, and no decryption beyond the record's own fields. Who may open the record at all is
in the access table (practice/tests/test_url_access.py)."""

import datetime

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.context import system_context
from config.testing import (
    DAY,
    at,
    book,
    client_for,
    make_patient,
    make_practitioner,
    patient_key,
    read_map,
    user_create,
)
from patients.services import break_glass_open, patient_archive
from practice.roles import PRACTITIONER
from scheduling import services
from scheduling.models import Appointment, AppointmentStatus, Reminder, ReminderStatus
from scheduling.record import PAST_LIMIT, UPCOMING_LIMIT

# The record page's statements, warm, panel included (test_the_record_page_query_count).
RECORD_PAGE_QUERIES = {"sqlite": 20, "postgresql": 19}
# What the record page decrypts, panel or not: the identity and care fields it shows.
RECORD_FIELDS = {"last_name", "first_names", "birth_name", "sex", "birth_date", "referring_doctor", "notes"}


@pytest.fixture(autouse=True)
def clock():
    """Monday DAY at noon."""
    with time_machine.travel(at(DAY, 12), tick=False) as traveller:
        yield traveller


def _days(n: int) -> datetime.date:
    return DAY + datetime.timedelta(days=n)


def _set_status(appointment, *statuses):
    with system_context("tests"):
        for status in statuses:
            appointment = services.appointment_set_status(appointment=appointment, status=status, actor=None)
    return appointment


def _cancel(appointment):
    with system_context("tests"):
        return services.appointment_cancel(appointment=appointment, reason="Empêchement", actor=None)


@pytest.fixture
def lefevre(db):
    """Anne-Marie Lefèvre, who agreed to SMS reminders."""
    return make_patient(consent_sms=True)


@pytest.fixture
def history(doctor, other_doctor, consultation, lefevre):
    """Her appointments: three to come (Dr Martin's, Dr Bernard's, one of his cancelled), three
    past (a consultation done with Dr Martin, a no-show with Dr Bernard, one cancelled)."""
    return {
        "tuesday": book(doctor, lefevre, consultation, at(_days(1), 14)),
        "wednesday": book(other_doctor, lefevre, consultation, at(_days(2), 10)),
        "thursday": _cancel(book(other_doctor, lefevre, consultation, at(_days(3), 10))),
        "done": _set_status(
            book(doctor, lefevre, consultation, at(_days(-7), 9)), "arrived", "in_consultation", "done"
        ),
        "no_show": _set_status(book(other_doctor, lefevre, consultation, at(_days(-14), 9)), "no_show"),
        "cancelled": _cancel(book(doctor, lefevre, consultation, at(_days(-21), 9))),
    }


def _panel(response) -> dict:
    (panel,) = response.context["panels"]
    return panel.context


def _listed(response, part: str) -> list[tuple[str, str]]:
    return [(row["appt"].practitioner.display_name, row["appt"].status) for row in _panel(response)[part]]


# ---------------------------------------------------------------------------------------------
# What each role sees


@pytest.mark.parametrize("role", ["secretary", "practice_admin"])
def test_the_front_desk_sees_every_appointment_with_move_and_cancel(request, role, history, lefevre):
    response = client_for(request.getfixturevalue(role)).get(lefevre.get_absolute_url())
    assert response.status_code == 200
    assert _listed(response, "upcoming") == [
        ("Dr Claire Martin", "booked"),
        ("Dr Paul Bernard", "booked"),
        ("Dr Paul Bernard", "cancelled"),
    ]
    assert _listed(response, "past") == [
        ("Dr Claire Martin", "done"),
        ("Dr Paul Bernard", "no_show"),
        ("Dr Claire Martin", "cancelled"),
    ]
    body = response.content.decode()
    for key in ("tuesday", "wednesday"):
        assert f'action="{reverse("scheduling:move", args=[history[key].pk])}"' in body
        assert f'action="{reverse("scheduling:cancel", args=[history[key].pk])}"' in body
    assert reverse("scheduling:cancel", args=[history["thursday"].pk]) not in body  # cancelled already
    assert reverse("scheduling:move", args=[history["done"].pk]) not in body  # past: on its own page
    assert f'name="next" value="{lefevre.get_absolute_url()}"' in body
    assert body.count('name="submission_key"') == 4  # a key per form
    assert f'href="{reverse("scheduling:book")}?patient={lefevre.pk}"' in body
    assert f'href="{reverse("scheduling:free_slots")}?patient={lefevre.pk}"' in body
    for status in ("Booked", "Cancelled", "Done", "No-show"):
        assert f">{status}</span>" in body


def test_a_practitioner_sees_only_their_own_appointments_and_no_actions(practitioner, history, lefevre):
    response = client_for(practitioner).get(lefevre.get_absolute_url())
    assert response.status_code == 200
    assert _listed(response, "upcoming") == [("Dr Claire Martin", "booked")]
    assert _listed(response, "past") == [("Dr Claire Martin", "done"), ("Dr Claire Martin", "cancelled")]
    body = response.content.decode()
    assert "Your appointments with this patient" in body
    assert "Dr Paul Bernard" not in body
    assert "/move/" not in body
    assert "/cancel/" not in body
    assert reverse("scheduling:book") not in body
    assert reverse("scheduling:free_slots") not in body


def test_the_other_practitioner_sees_their_own(other_practitioner, history, lefevre):
    response = client_for(other_practitioner).get(lefevre.get_absolute_url())
    assert _listed(response, "upcoming") == [("Dr Paul Bernard", "booked"), ("Dr Paul Bernard", "cancelled")]
    assert _listed(response, "past") == [("Dr Paul Bernard", "no_show")]
    assert "Dr Claire Martin" not in response.content.decode()


def test_emergency_access_opens_the_record_not_the_others_appointments(roles, history, lefevre):
    stranger = make_practitioner("dr.urgence")
    break_glass_open(user=stranger.user, patient=lefevre, reason="Appel du SAMU, patiente inconsciente")
    response = client_for(stranger.user).get(lefevre.get_absolute_url())
    assert response.status_code == 200
    panel = _panel(response)
    assert panel["upcoming"] == []
    assert panel["past"] == []
    assert panel["next"] is None
    assert "No upcoming appointment." in response.content.decode()


def test_a_practitioner_account_without_a_profile_gets_no_panel(roles, history, lefevre):
    """Such an account opens records through emergency access only; it has no appointments."""
    account = user_create("dr.noprofile", PRACTITIONER)
    break_glass_open(user=account, patient=lefevre, reason="Appel du SAMU, patiente inconsciente")
    response = client_for(account).get(lefevre.get_absolute_url())
    assert response.status_code == 200
    assert response.context["panels"] == []
    assert "Appointments" not in response.content.decode()


def test_an_archived_record_offers_no_booking(secretary, history, lefevre):
    with system_context("tests"):
        patient_archive(patient=lefevre, actor=None)
    body = client_for(secretary).get(lefevre.get_absolute_url()).content.decode()
    assert reverse("scheduling:book") not in body
    assert reverse("scheduling:free_slots") not in body


# ---------------------------------------------------------------------------------------------
# The next appointment and its reminders


def test_it_shows_the_reminder_status_of_the_next_appointment(secretary, history, lefevre):
    response = client_for(secretary).get(lefevre.get_absolute_url())
    panel = _panel(response)
    assert panel["next"] == history["tuesday"]
    (reminder,) = panel["next_reminders"]
    assert (reminder.channel, reminder.status) == ("sms", ReminderStatus.PENDING)
    body = response.content.decode()
    assert "Next appointment:" in body
    assert "SMS, first reminder: <strong>Planned</strong>" in body


def test_it_shows_the_reminder_that_counts_after_a_move_and_one_sent(secretary, history, lefevre):
    with system_context("tests"):
        services.appointment_move(appointment=history["tuesday"], start=at(_days(1), 16), actor=None)
    Reminder.objects.filter(appointment=history["wednesday"]).update(
        status=ReminderStatus.SENT, sent_at=at(DAY, 10), provider_id="brevo-1"
    )
    assert Reminder.objects.filter(appointment=history["tuesday"]).count() == 2  # cancelled, planned again
    response = client_for(secretary).get(lefevre.get_absolute_url())
    panel = _panel(response)
    assert [r.status for r in panel["next_reminders"]] == [ReminderStatus.PENDING]
    rows = {row["appt"].pk: row["reminders"] for row in panel["upcoming"]}
    assert [r.status for r in rows[history["wednesday"].pk]] == [ReminderStatus.SENT]
    assert "SMS: Sent" in response.content.decode()


def test_without_reminders_it_says_why_there_may_be_none(secretary, doctor, consultation):
    quiet = make_patient(last_name="Roux", email="", nir="")  # no consent
    book(doctor, quiet, consultation, at(_days(1), 9))
    body = client_for(secretary).get(quiet.get_absolute_url()).content.decode()
    assert "No reminder: the patient has not agreed to reminders" in body


# ---------------------------------------------------------------------------------------------
# Audited reads and bounded queries


def test_the_panel_decrypts_nothing_more_than_the_record(secretary, history, lefevre):
    url = lefevre.get_absolute_url()
    client_for(secretary).get(url)
    assert read_map(path=url) == {patient_key(lefevre): RECORD_FIELDS}


def test_a_practitioners_panel_decrypts_nothing_either(practitioner, history, lefevre):
    url = lefevre.get_absolute_url()
    client_for(practitioner).get(url)
    assert read_map(path=url) == {patient_key(lefevre): RECORD_FIELDS}


def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def _many(doctor, patient, kind):
    """More appointments than the panel shows: upcoming and past, each with a reminder."""
    hours = (8, 9, 10, 11, 13, 14, 15, 16)
    for n in range(UPCOMING_LIMIT + 5):
        book(doctor, patient, kind, at(_days(1 + n // len(hours)), hours[n % len(hours)]))
    for n in range(PAST_LIMIT + 5):
        book(doctor, patient, kind, at(_days(-1 - n), 9))


@pytest.mark.parametrize("role", ["secretary", "practitioner"])
def test_the_queries_do_not_grow_with_the_appointments(request, role, doctor, consultation):
    client = client_for(request.getfixturevalue(role))
    few = make_patient(consent_sms=True)
    book(doctor, few, consultation, at(_days(1), 17))
    many = make_patient(last_name="Morel", consent_sms=True, email="", nir="")
    _many(doctor, many, consultation)
    assert Reminder.objects.filter(appointment__patient=many).count() >= UPCOMING_LIMIT
    for patient in (few, many):  # warm: a first read of a patient does more (its explanation, the budget)
        client.get(patient.get_absolute_url())
    expected = _queries(client, few.get_absolute_url())
    assert _queries(client, many.get_absolute_url()) == expected
    assert _queries(client, many.get_absolute_url() + "?appointments=all") == expected


def test_the_record_page_query_count(secretary, django_assert_num_queries, doctor, consultation, lefevre):
    """The record page, panel included, in a fixed number of statements (session, user, second
    factor, role, the record, the panel's three, permissions, the trail write, the session);
    the panel's own are three whatever the number of appointments: upcoming, past, reminders."""
    _many(doctor, lefevre, consultation)
    client = client_for(secretary)
    client.get(lefevre.get_absolute_url())
    with django_assert_num_queries(RECORD_PAGE_QUERIES[connection.vendor]) as captured:
        client.get(lefevre.get_absolute_url())
    panel = [q["sql"].split(" FROM ", 1)[1].split(" ", 1)[0] for q in captured if '"scheduling_' in q["sql"]]
    assert panel == ['"scheduling_appointment"', '"scheduling_appointment"', '"scheduling_reminder"']


def test_it_shows_the_latest_past_ones_then_all_on_request(secretary, doctor, consultation, lefevre):
    _many(doctor, lefevre, consultation)
    client = client_for(secretary)
    response = client.get(lefevre.get_absolute_url())
    panel = _panel(response)
    assert len(panel["upcoming"]) == UPCOMING_LIMIT
    assert panel["more_upcoming"]
    assert len(panel["past"]) == PAST_LIMIT
    assert panel["past"][0]["appt"].start == at(_days(-1), 9)
    assert "Show all past appointments" in response.content.decode()
    every = client.get(lefevre.get_absolute_url() + "?appointments=all")
    assert len(_panel(every)["past"]) == PAST_LIMIT + 5
    assert "Show all past appointments" not in every.content.decode()


# ---------------------------------------------------------------------------------------------
# Moving, cancelling and booking from the record


def test_it_moves_from_the_record_and_comes_back_to_it(secretary, history, lefevre):
    appointment = history["tuesday"]
    client = client_for(secretary)
    data = {
        "submission_key": "k" * 32,
        "date": _days(1).isoformat(),
        "time": "15:00",
        "next": lefevre.get_absolute_url(),
    }
    response = client.post(reverse("scheduling:move", args=[appointment.pk]), data)
    assert response.status_code == 302
    assert response["Location"] == lefevre.get_absolute_url()
    appointment.refresh_from_db()
    assert appointment.start == at(_days(1), 15)
    again = client.post(reverse("scheduling:move", args=[appointment.pk]), data)  # sent twice: acts once
    assert again["Location"] == lefevre.get_absolute_url()
    page = client.get(lefevre.get_absolute_url())
    assert "Appointment moved." in page.content.decode()
    assert _panel(page)["upcoming"][0]["appt"].start == at(_days(1), 15)


def test_it_cancels_from_the_record(secretary, history, lefevre):
    appointment = history["wednesday"]
    client = client_for(secretary)
    data = {"submission_key": "c" * 32, "reason": "La patiente a appelé", "next": lefevre.get_absolute_url()}
    response = client.post(reverse("scheduling:cancel", args=[appointment.pk]), data)
    assert response["Location"] == lefevre.get_absolute_url()
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.CANCELLED
    assert ("Dr Paul Bernard", "cancelled") in _listed(client.get(lefevre.get_absolute_url()), "upcoming")


def test_a_refused_cancellation_comes_back_on_the_appointment_page(secretary, history, lefevre):
    appointment = history["wednesday"]
    data = {"submission_key": "e" * 32, "reason": "  ", "next": lefevre.get_absolute_url()}
    response = client_for(secretary).post(reverse("scheduling:cancel", args=[appointment.pk]), data)
    assert response.status_code == 200
    assert "Say why the appointment is cancelled." in response.content.decode()
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED


def test_it_goes_back_only_to_this_site(secretary, history):
    appointment = history["wednesday"]
    data = {"reason": "Empêchement", "next": "https://evil.example/"}
    response = client_for(secretary).post(reverse("scheduling:cancel", args=[appointment.pk]), data)
    assert response["Location"] == appointment.get_absolute_url()


def test_practitioners_still_may_not_move_or_cancel(practitioner, history, lefevre):
    appointment = history["tuesday"]
    data = {"date": _days(1).isoformat(), "time": "15:00", "reason": "x", "next": lefevre.get_absolute_url()}
    for action in ("move", "cancel"):
        assert (
            client_for(practitioner).post(reverse(f"scheduling:{action}", args=[appointment.pk]), data).status_code
            == 403
        )
    appointment.refresh_from_db()
    assert (appointment.status, appointment.start) == (AppointmentStatus.BOOKED, at(_days(1), 14))


def test_book_starts_with_the_patient_picked(secretary, doctor, consultation, history, lefevre):
    client = client_for(secretary)
    page = client.get(f"{reverse('scheduling:book')}?patient={lefevre.pk}")
    assert f'value="{lefevre.pk}" checked' in page.content.decode()
    data = {
        "practitioner": doctor.pk,
        "appointment_type": consultation.pk,
        "date": _days(8).isoformat(),
        "time": "15:00",
        "action": "book_existing",
        "patient": str(lefevre.pk),
        "submission_key": "b" * 32,
    }
    response = client.post(reverse("scheduling:book"), data)
    assert response.status_code == 302
    booked = Appointment.objects.get(start=at(_days(8), 15))
    assert booked.patient_id == lefevre.pk
    assert booked.pk in [row["appt"].pk for row in _panel(client.get(lefevre.get_absolute_url()))["upcoming"]]
