"""A form sent twice acts once: booking, moving, changing the type, cancelling and status
changes carry a submission key (practice.models.FormSubmission).

The fault behind it: a booking POST cut short by a worker restart after its commit, sent
again by the browser, answered "slot taken" although the booking was the user's own. Each
test sends a POST, forgets its answer (the response lost: its message cookie never reached
the browser), sends the same POST again and checks what the user sees and what the
database and the audit trail hold.
"""

import datetime
import re
import secrets
import threading

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.chain import ADVISORY_LOCK_ID
from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import DAY, at, book, client_for, make_patient, today, wait_until
from patients.models import Patient
from practice.models import FormSubmission
from practice.tasks import sessions_purge
from scheduling import services
from scheduling.models import Appointment, AppointmentStatus

KEY = "submission_key"


def _key() -> str:
    return secrets.token_urlsafe(24)


def _booking(doctor, kind, patient, **changes) -> dict:
    data = {
        "action": "book_existing",
        "patient": str(patient.pk) if patient else "",
        "practitioner": doctor.pk,
        "appointment_type": kind.pk,
        "date": DAY.isoformat(),
        "time": "10:00",
        "reason": "Renouvellement d'ordonnance",
        "internal_note": "",
    }
    data.update(changes)
    return data


def _lost(client) -> None:
    """The first answer never reached the browser: neither did the message it carried."""
    client.cookies.pop("messages", None)


def _keys_in(body: str) -> list[str]:
    return re.findall(r'name="submission_key" value="([^"]*)"', body)


def _trail_size() -> int:
    return AuditEvent.objects.count()


# ---------------------------------------------------------------------------------------------
# Sent again: the first answer, nothing done twice


def test_a_booking_sent_again_answers_with_the_first_booking(secretary, doctor, consultation, patient):
    client = client_for(secretary)
    data = {**_booking(doctor, consultation, patient), KEY: _key()}
    first = client.post(reverse("scheduling:book"), data)
    assert first.status_code == 302
    appointment = Appointment.objects.get()
    _lost(client)
    trail = _trail_size()

    again = client.post(reverse("scheduling:book"), data)

    assert again.status_code == 302, "slot taken" if b"already taken" in again.content else again.content[:200]
    assert again["Location"] == first["Location"] == appointment.get_absolute_url()
    assert Appointment.objects.count() == 1
    # The replay changed nothing and decrypted nothing: not one row in the trail.
    assert _trail_size() == trail
    page = client.get(again["Location"]).content.decode()
    assert page.count("Appointment booked.") == 1
    assert AuditEvent.objects.filter(event_type=EventType.CREATE, model_label="scheduling.Appointment").count() == 1


def test_a_new_patient_and_booking_sent_again_create_one_patient(secretary, doctor, consultation):
    client = client_for(secretary)
    data = {
        **_booking(doctor, consultation, patient=None),
        "action": "book_new",
        "patient": "",
        "new-last_name": "Durand",
        "new-first_names": "Léa",
        "new-sex": "F",
        "new-birth_date": "1990-05-17",
        "new-phone_mobile": "06 11 22 33 44",
        KEY: _key(),
    }
    first = client.post(reverse("scheduling:book"), data)
    _lost(client)
    again = client.post(reverse("scheduling:book"), data)
    assert first.status_code == again.status_code == 302
    assert again["Location"] == first["Location"]
    assert Patient.objects.count() == 1
    assert Appointment.objects.count() == 1
    assert "Patient record created and appointment booked." in client.get(again["Location"]).content.decode()


def test_a_move_sent_again_moves_once(secretary, appointment):
    client = client_for(secretary)
    url = reverse("scheduling:move", args=[appointment.pk])
    data = {"date": "2030-03-04", "time": "15:00", KEY: _key()}
    first = client.post(url, data)
    _lost(client)
    again = client.post(url, data)
    assert first.status_code == again.status_code == 302
    assert again["Location"] == appointment.get_absolute_url()
    appointment.refresh_from_db()
    assert appointment.start == at(DAY, 15)
    moves = AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk))
    assert moves.count() == 1
    assert "Appointment moved." in client.get(again["Location"]).content.decode()


def test_a_type_change_sent_again_changes_once(secretary, appointment, long_visit):
    client = client_for(secretary)
    url = reverse("scheduling:change_type", args=[appointment.pk])
    data = {"appointment_type": long_visit.pk, KEY: _key()}
    assert client.post(url, data).status_code == 302
    _lost(client)
    assert client.post(url, data).status_code == 302
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).count() == 1


def test_a_cancellation_sent_again_is_confirmed_not_refused(secretary, appointment):
    client = client_for(secretary)
    url = reverse("scheduling:cancel", args=[appointment.pk])
    data = {"reason": "La patiente a appelé", KEY: _key()}
    assert client.post(url, data).status_code == 302
    _lost(client)
    again = client.post(url, data)
    assert again.status_code == 302, again.content.decode()[:300]
    body = client.get(again["Location"]).content.decode()
    assert "Appointment cancelled." in body
    assert "can no longer be cancelled" not in body
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).count() == 1


def test_a_status_change_sent_again_is_confirmed_not_refused(secretary, appointment):
    client = client_for(secretary)
    url = reverse("scheduling:status", args=[appointment.pk])
    data = {"status": "arrived", "next": "/waiting-room/", KEY: _key()}
    assert client.post(url, data)["Location"] == "/waiting-room/"
    _lost(client)
    again = client.post(url, data, follow=True)
    body = again.content.decode()
    assert again.redirect_chain == [("/waiting-room/", 302)]
    assert "Status changed to “Arrived”." in body
    assert "cannot become" not in body
    assert AuditEvent.objects.filter(event_type=EventType.CHANGE, object_pk=str(appointment.pk)).count() == 1


def test_a_refused_booking_leaves_the_key_unused(secretary, doctor, consultation, patient):
    """Outside the hours: refused, nothing recorded; ticking "book anyway" with the same form books."""
    client = client_for(secretary)
    data = {**_booking(doctor, consultation, patient, time="19:30"), KEY: _key()}
    assert client.post(reverse("scheduling:book"), data).status_code == 200
    assert client.post(reverse("scheduling:book"), {**data, "force": "on"}).status_code == 302
    assert Appointment.objects.get().forced


def test_without_a_key_a_form_works_as_before(secretary, doctor, consultation, patient, others_appointment):
    """An old page or a script sends no key: no protection, no failure either. (The same
    booking sent again is then caught by the duplicate warning; another patient's, by the
    slot check.)"""
    client = client_for(secretary)
    data = _booking(doctor, consultation, patient)
    assert client.post(reverse("scheduling:book"), data).status_code == 302
    again = client.post(reverse("scheduling:book"), data)
    assert again.status_code == 200
    assert "already has an appointment" in again.content.decode()
    other = client.post(reverse("scheduling:book"), _booking(doctor, consultation, others_appointment.patient))
    assert other.status_code == 200
    assert "already taken" in other.content.decode()
    assert Appointment.objects.count() == 2


# ---------------------------------------------------------------------------------------------
# Bound to the user, the action and the values


def test_another_users_key_replays_nothing_of_theirs(
    secretary, practice_admin, doctor, consultation, patient, others_appointment
):
    key = _key()
    data = {**_booking(doctor, consultation, patient), KEY: key}
    first = client_for(secretary).post(reverse("scheduling:book"), data)
    assert first.status_code == 302
    intruder = client_for(practice_admin)

    same = intruder.post(reverse("scheduling:book"), data)
    assert same.status_code == 200  # not the secretary's answer: a booking of their own, to confirm
    assert "already has an appointment" in same.content.decode()
    someone = _booking(doctor, consultation, others_appointment.patient)
    taken = intruder.post(reverse("scheduling:book"), {**someone, KEY: key})
    assert taken.status_code == 200  # their own attempt at that slot: taken
    assert "already taken" in taken.content.decode()
    assert first["Location"] not in taken.content.decode()

    other = intruder.post(reverse("scheduling:book"), {**someone, "time": "11:00", KEY: key})
    assert other.status_code == 302  # their own booking, not the secretary's
    assert other["Location"] != first["Location"]
    assert Appointment.objects.count() == 3


def test_a_key_used_for_a_booking_cannot_cancel_or_move(secretary, doctor, consultation, patient):
    client = client_for(secretary)
    key = _key()
    assert (
        client.post(reverse("scheduling:book"), {**_booking(doctor, consultation, patient), KEY: key}).status_code
        == 302
    )
    appointment = Appointment.objects.get()
    cancel = client.post(reverse("scheduling:cancel", args=[appointment.pk]), {"reason": "x", KEY: key})
    move = client.post(
        reverse("scheduling:move", args=[appointment.pk]), {"date": "2030-03-04", "time": "15:00", KEY: key}
    )
    status = client.post(
        reverse("scheduling:status", args=[appointment.pk]), {"status": "arrived", KEY: key}, follow=True
    )
    for response in (cancel, move):
        assert response.status_code == 200
        assert "already sent" in response.content.decode()
    assert "already sent" in status.content.decode()
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED
    assert appointment.start == at(DAY, 10)


def test_a_key_sent_again_with_other_values_is_refused_then_a_fresh_one_books(secretary, doctor, consultation, patient):
    """The back button, another time typed, the same form sent: not the first booking's answer
    (that would confirm a booking at 10:00 for a form that asked 11:00), and not a second one
    unnoticed: a clear refusal that links the first, and a fresh key to send it for real."""
    client = client_for(secretary)
    key = _key()
    first = client.post(reverse("scheduling:book"), {**_booking(doctor, consultation, patient), KEY: key})
    other = client.post(reverse("scheduling:book"), {**_booking(doctor, consultation, patient, time="11:00"), KEY: key})
    body = other.content.decode()
    assert other.status_code == 200
    assert "already sent" in body
    assert f'href="{first["Location"]}"' in body
    assert Appointment.objects.count() == 1
    fresh = _keys_in(body)
    assert fresh
    assert fresh[0] != key
    data = {**_booking(doctor, consultation, patient, time="11:00"), KEY: fresh[0], "confirm_duplicate": "on"}
    assert client.post(reverse("scheduling:book"), data).status_code == 302
    assert Appointment.objects.count() == 2


@pytest.mark.parametrize("bad", ["x" * 65, "short", "<script>alert(1)</script>", "clé-accentuée-0123456789", "a b" * 8])
def test_a_malformed_key_is_a_form_error_never_a_500(secretary, doctor, consultation, patient, appointment, bad):
    client = client_for(secretary)
    response = client.post(
        reverse("scheduling:book"), {**_booking(doctor, consultation, patient, time="11:00"), KEY: bad}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "could not be checked" in body
    assert "<script>alert(1)" not in body
    fresh = _keys_in(body)
    assert fresh
    assert fresh[0] != bad
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", fresh[0])
    for action, data in [
        ("move", {"date": "2030-03-04", "time": "15:00"}),
        ("change_type", {"appointment_type": consultation.pk}),
        ("cancel", {"reason": "x"}),
    ]:
        response = client.post(reverse(f"scheduling:{action}", args=[appointment.pk]), {**data, KEY: bad})
        assert response.status_code == 200, action
        assert "could not be checked" in response.content.decode()
    status = client.post(
        reverse("scheduling:status", args=[appointment.pk]), {"status": "arrived", KEY: bad}, follow=True
    )
    assert status.status_code == 200
    assert "could not be checked" in status.content.decode()
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED
    assert appointment.start == at(DAY, 9)
    assert Appointment.objects.count() == 1


def test_every_form_carries_a_fresh_key(secretary, practitioner, doctor, consultation, appointment):
    book(doctor, make_patient(last_name="Morel", email="", nir=""), consultation, at(today(), 12), force=True)
    client = client_for(secretary)
    book_keys = [_keys_in(client.get(reverse("scheduling:book")).content.decode()) for _ in range(2)]
    assert len(book_keys[0]) == 1
    assert book_keys[0] != book_keys[1]
    page = client.get(appointment.get_absolute_url()).content.decode()
    # move, change type, cancel, and one per status button (arrived, no-show)
    keys = _keys_in(page)
    assert len(keys) == 5
    assert len(set(keys)) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", k) for k in keys)
    my_day = client_for(practitioner).get(reverse("scheduling:my_day")).content.decode()
    assert my_day.count('name="status"') == len(set(_keys_in(my_day))) == 2


# ---------------------------------------------------------------------------------------------
# Twins racing: a double click, and a retry while the first is still at work


def _same_browser(client):
    """Another request from the same browser: the same session cookie."""
    twin = Client()
    twin.cookies = client.cookies.__class__(client.cookies)
    return twin


@pytest.mark.django_db(transaction=True)
def test_identical_posts_racing_book_once_and_all_answer_with_it(secretary, doctor, consultation, patient):
    twins = 8
    client = client_for(secretary)
    data = {**_booking(doctor, consultation, patient), KEY: _key()}
    clients = [_same_browser(client) for _ in range(twins)]
    barrier = threading.Barrier(twins)
    answers: list = []
    lock = threading.Lock()

    def send(browser):
        try:
            barrier.wait()
            response = browser.post(reverse("scheduling:book"), data)
            answer = (response.status_code, response.get("Location"))
        except Exception as exc:
            answer = ("error", repr(exc))
        finally:
            connection.close()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    appointment = Appointment.objects.get()
    assert answers == [(302, appointment.get_absolute_url())] * twins
    assert AuditEvent.objects.filter(event_type=EventType.CREATE, model_label="scheduling.Appointment").count() == 1


def _waiting_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_retry_while_the_first_is_still_at_work_waits_for_it_and_answers_with_its_booking(
    secretary, doctor, consultation, patient
):
    """PostgreSQL: the first request is held inside its transaction (after booking, at the
    audit trail's lock, which the test holds); the retry waits on the key, not on the slot,
    and answers with the first one's booking once it commits. (SQLite serializes whole write
    transactions, so a retry there starts after the first has committed: the racing test
    above covers it.)"""
    if connection.vendor != "postgresql":
        pytest.skip("row-level waits are PostgreSQL's; SQLite's whole-database lock is covered above")

    client = client_for(secretary)
    data = {**_booking(doctor, consultation, patient), KEY: _key()}
    answers: dict = {}

    def send(name):
        try:
            response = _same_browser(client).post(reverse("scheduling:book"), data)
            answers[name] = (response.status_code, response.get("Location"))
        except Exception as exc:
            answers[name] = ("error", repr(exc))
        finally:
            connection.close()

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_ID])
        threads = [threading.Thread(target=send, args=(name,)) for name in ("first", "retry")]
        for thread in threads:
            thread.start()
        # One at the trail's lock, the other behind it.
        wait_until(lambda: _waiting_locks() >= 2, "the two requests to both wait", interval=0.01)
    for thread in threads:
        thread.join(timeout=120)

    appointment = Appointment.objects.get()
    assert answers == {"first": (302, appointment.get_absolute_url()), "retry": (302, appointment.get_absolute_url())}


# ---------------------------------------------------------------------------------------------
# The duplicate a user makes by booking again at another time


def test_it_warns_before_booking_a_patient_already_booked_with_that_practitioner_soon(
    secretary, doctor, consultation, patient, appointment
):
    client = client_for(secretary)
    data = {**_booking(doctor, consultation, patient, time="15:00"), KEY: _key()}
    response = client.post(reverse("scheduling:book"), data)
    body = response.content.decode()
    assert response.status_code == 200
    assert "already has an appointment with Dr Claire Martin" in body
    assert f'href="{appointment.get_absolute_url()}"' in body
    assert "09:00" in body
    assert 'name="confirm_duplicate"' in body
    assert Appointment.objects.count() == 1

    confirmed = client.post(reverse("scheduling:book"), {**data, "confirm_duplicate": "on"})
    assert confirmed.status_code == 302
    assert Appointment.objects.count() == 2


def test_it_does_not_warn_for_another_practitioner_a_cancelled_one_or_one_weeks_away(
    secretary, doctor, other_doctor, consultation, patient, appointment
):
    client = client_for(secretary)
    other = {**_booking(other_doctor, consultation, patient, time="15:00"), KEY: _key()}
    assert client.post(reverse("scheduling:book"), other).status_code == 302
    later = (DAY + datetime.timedelta(days=8)).isoformat()
    far = {**_booking(doctor, consultation, patient, date=later), KEY: _key()}
    assert client.post(reverse("scheduling:book"), far).status_code == 302
    someone = make_patient(last_name="Morel", email="", nir="", phone_mobile="")
    cancelled = book(doctor, someone, consultation, at(DAY, 11))
    with system_context("tests"):
        services.appointment_cancel(appointment=cancelled, reason="empêchement", actor=None)
    again = {**_booking(doctor, consultation, someone, time="16:00"), KEY: _key()}
    assert client.post(reverse("scheduling:book"), again).status_code == 302


# ---------------------------------------------------------------------------------------------
# Housekeeping


def test_keys_are_purged_with_the_expired_sessions(secretary, doctor, consultation, patient):
    client = client_for(secretary)
    client.post(reverse("scheduling:book"), {**_booking(doctor, consultation, patient), KEY: _key()})
    client.post(
        reverse("scheduling:book"),
        {**_booking(doctor, consultation, patient, time="11:00", confirm_duplicate="on"), KEY: _key()},
    )
    old, recent = FormSubmission.objects.order_by("pk")
    FormSubmission.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=2))

    sessions_purge()

    assert list(FormSubmission.objects.values_list("pk", flat=True)) == [recent.pk]


def test_the_warning_and_the_refusals_are_in_french(secretary, doctor, consultation, patient, appointment):
    client = client_for(secretary)
    data = {**_booking(doctor, consultation, patient, time="15:00"), KEY: _key()}
    body = client.post(reverse("scheduling:book"), data, HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert "Ce patient a déjà un rendez-vous avec Dr Claire Martin" in body
    assert "Prendre le rendez-vous quand même : c’est un autre rendez-vous" in body
    body = client.post(reverse("scheduling:book"), {**data, KEY: "x"}, HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert "Ce formulaire n’a pas pu être vérifié" in body
    key = _key()
    client.post(reverse("scheduling:book"), {**data, "confirm_duplicate": "on", KEY: key})
    other = {**data, "time": "16:00", "confirm_duplicate": "on", KEY: key}
    body = client.post(reverse("scheduling:book"), other, HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert "Ce formulaire a déjà été envoyé, avec d’autres valeurs" in body
    assert "Voir ce que le formulaire a fait la première fois" in body
