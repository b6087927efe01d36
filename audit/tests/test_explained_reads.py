"""Explained reads (audit/explain.py): every READ row says why its patient could be decrypted,
unexplained patients are paid from a small allowance, then a reason and the second factor are
asked, then the account is blocked. What a user and an attacker see, through the real pages."""

import datetime
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.context import Actor, AuditContext, opened
from audit.explain import allowance_spend
from audit.models import AllowanceKind, AllowanceUse, AuditEvent, EventType, ReadBlock, ReadReason
from config.testing import at, book, client_for, log_in, make_doctor, make_patient, make_type, today, totp_next_code
from patients.models import Patient
from practice.models import Practitioner
from scheduling.models import Appointment, AppointmentStatus


def _reads(user, patient=None):
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk)
    return reads.filter(patient_id=patient.pk) if patient is not None else reads


def _why(user, patient) -> set[str]:
    return set(_reads(user, patient).values_list("explanation", flat=True))


def _people(n: int, prefix: str = "Expl") -> list[Patient]:
    return [make_patient(last_name=f"{prefix}{i:03d}", first_names="Zoé", email="", nir="") for i in range(n)]


@pytest.fixture
def clinic(practitioner, other_practitioner):
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    other = make_doctor(other_practitioner, "Dr Paul Bernard")
    kind = make_type(doctor, other)
    return {"doctor": doctor, "other": other, "kind": kind}


@pytest.fixture
def small(settings):
    """A secretary allowance of 2 unexplained patients, and 2 reasons, so tests reach the limits."""
    settings.READ_ALLOWANCES = {**settings.READ_ALLOWANCES, "Secretary": (2, 2), "Practitioner": (2, 2)}
    settings.READ_REASONS = (2, 2)
    return settings


def _today_at(hour: int) -> datetime.datetime:
    return at(today(), hour)


# --------------------------------------------------------------------------- explanations


def test_todays_patients_are_explained_by_their_appointment(secretary, clinic):
    patient = make_patient(email="", nir="")
    appointment = book(clinic["doctor"], patient, clinic["kind"], _today_at(23), force=True)
    response = client_for(secretary).get(reverse("scheduling:day", args=[today()]))
    assert response.status_code == 200
    [read] = _reads(secretary, patient)
    assert (read.explanation, read.explained_by) == ("appointment", str(appointment.pk))


def test_an_appointment_long_past_or_cancelled_explains_nothing(secretary, clinic):
    old, cancelled = _people(2)
    book(clinic["doctor"], old, clinic["kind"], _today_at(10) - datetime.timedelta(days=30), force=True)
    appointment = book(clinic["doctor"], cancelled, clinic["kind"], _today_at(23), force=True)
    Appointment.objects.filter(pk=appointment.pk).update(status=AppointmentStatus.CANCELLED)
    client = client_for(secretary)
    for patient in (old, cancelled):
        assert client.get(patient.get_absolute_url()).status_code == 200
        assert _why(secretary, patient) == {"unexplained"}
    assert AllowanceUse.objects.filter(user_id=secretary.pk, kind="unexplained").count() == 2


def test_an_assigned_secretary_is_explained_by_her_practitioners_only(secretary, clinic):
    mine, theirs = _people(2)
    book(clinic["doctor"], mine, clinic["kind"], _today_at(23), force=True)
    book(clinic["other"], theirs, clinic["kind"], _today_at(23), force=True)
    clinic["doctor"].assistants.add(secretary)
    client = client_for(secretary)
    assert client.get(mine.get_absolute_url()).status_code == 200
    assert client.get(theirs.get_absolute_url()).status_code == 200
    assert _why(secretary, mine) == {"appointment"}
    assert _why(secretary, theirs) == {"unexplained"}


def test_a_practitioner_reads_a_patient_seen_last_year_by_care(practitioner, clinic):
    patient = make_patient(email="", nir="")
    seen = book(clinic["doctor"], patient, clinic["kind"], _today_at(10) - datetime.timedelta(days=365), force=True)
    Appointment.objects.filter(pk=seen.pk).update(status=AppointmentStatus.DONE)
    assert client_for(practitioner).get(patient.get_absolute_url()).status_code == 200
    [read] = _reads(practitioner, patient)
    assert (read.explanation, read.explained_by) == ("care", str(seen.pk))


def test_the_users_own_new_patient_is_explained_by_their_action(secretary):
    client = client_for(secretary)
    data = {"last_name": "Nouvelle", "first_names": "Inès", "sex": "F", "birth_date": "1990-02-03", "language": "fr"}
    response = client.post(reverse("patients:create"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    patient = Patient.objects.get()
    assert client.get(patient.get_absolute_url()).status_code == 200
    created = AuditEvent.objects.get(event_type=EventType.CREATE, patient_id=patient.pk)
    [read] = _reads(secretary, patient)
    assert (read.explanation, read.explained_by) == ("own", str(created.pk))


def test_an_emergency_access_explains_the_practitioners_reads(practitioner, clinic):
    patient = make_patient(email="", nir="")
    client = client_for(practitioner)
    reason = "Patient au cabinet sans rendez-vous, malaise en salle d'attente"
    client.post(reverse("patients:break_glass", args=[patient.pk]), {"reason": reason})
    assert client.get(patient.get_absolute_url()).status_code == 200
    [read] = _reads(practitioner, patient)
    assert read.explanation == "grant"
    assert read.explained_by == str(patient.break_glass_grants.get().pk)


def test_a_call_that_ends_in_a_booking_explains_the_read_afterwards(secretary, clinic):
    patient = make_patient(email="", nir="")
    client = client_for(secretary)
    assert client.get(patient.get_absolute_url()).status_code == 200
    [read] = _reads(secretary, patient)
    assert read.explanation == "unexplained"
    slot = {
        "practitioner": clinic["doctor"].pk,
        "appointment_type": clinic["kind"].pk,
        "date": (today() + datetime.timedelta(days=7)).isoformat(),
        "time": "10:00",
        "reason": "",
        "internal_note": "",
        "action": "book_existing",
        "patient": str(patient.pk),
    }
    assert client.post(reverse("scheduling:book"), slot).status_code == 302
    explained = AuditEvent.objects.get(event_type=EventType.READ_EXPLAINED, patient_id=patient.pk)
    booked = AuditEvent.objects.get(event_type=EventType.CREATE, model_label="scheduling.Appointment")
    assert explained.extra["reads"] == [read.pk]
    assert explained.extra["explained_by"] == booked.pk
    assert explained.actor_user_id == secretary.pk
    # Given back: the allowance no longer counts the patient.
    assert AllowanceUse.objects.get(user_id=secretary.pk, patient_id=patient.pk).given_back_at is not None


def test_one_query_explains_a_whole_batch(secretary, clinic):
    people = _people(30)
    for n, patient in enumerate(people[:10]):
        book(clinic["doctor"], patient, clinic["kind"], _today_at(8) + datetime.timedelta(minutes=20 * n), force=True)
    ctx = AuditContext(purpose="tests", actor=Actor.for_user(secretary))
    with opened(ctx), CaptureQueriesContext(connection) as captured:
        rows = list(Patient.objects.filter(pk__in=[p.pk for p in people[:10]]).only("id", "last_name"))
        names = [p.last_name for p in rows]
    assert len(names) == 10
    explaining = [q["sql"] for q in captured.captured_queries if "scheduling_appointment" in q["sql"]]
    assert len(explaining) == 1, explaining
    assert "UNION ALL" in explaining[0]


# --------------------------------------------------------------------------- allowance and step-up


def test_past_the_allowance_a_reason_and_the_second_factor_open_the_record(secretary, small):
    first, second, third = _people(3)
    client = client_for(secretary)
    for patient in (first, second):
        assert client.get(patient.get_absolute_url()).status_code == 200

    page = client.get(third.get_absolute_url())
    body = page.content.decode()
    assert page.status_code == 403
    assert "Why do you need this record?" in body
    assert "EXPL002" not in body.upper()
    assert "Zoé" not in body
    assert page["Cache-Control"].startswith("no-store") or "no-store" in page["Cache-Control"]
    asked = AuditEvent.objects.get(event_type=EventType.REASON_ASKED)
    assert asked.patient_id == third.pk
    assert asked.actor_user_id == secretary.pk
    # What was decrypted for the withheld page is in the trail, marked as not served.
    assert all(r.extra.get("withheld") == "step-up" for r in _reads(secretary, third))

    url = reverse("patients:reason", args=[third.pk])
    empty = client.post(url, {"reason": "   ", "code": totp_next_code(secretary)})
    assert empty.status_code == 400
    assert "Write why you need this record." in empty.content.decode()
    short = client.post(url, {"reason": "besoin", "code": totp_next_code(secretary)})
    assert short.status_code == 400
    assert "Write at least 20 characters" in short.content.decode()
    wrong = client.post(url, {"reason": "La patiente appelle pour sa facture", "code": "000000"})
    assert wrong.status_code == 400
    assert "This code is not valid" in wrong.content.decode()
    assert AuditEvent.objects.filter(event_type=EventType.OTP_FAILED, actor_user_id=secretary.pk).count() == 1
    assert not ReadReason.objects.exists()

    reason = "La patiente appelle pour sa facture de mars"
    done = client.post(url, {"reason": reason, "code": totp_next_code(secretary), "next": third.get_absolute_url()})
    assert done.status_code == 302
    assert done["Location"] == third.get_absolute_url()
    stated = ReadReason.objects.get()
    assert (stated.user_id, stated.patient_id, stated.reason) == (secretary.pk, third.pk, reason)
    assert stated.valid_until > timezone.now()
    assert timezone.localtime(stated.valid_until).time() == datetime.time(0)
    event = AuditEvent.objects.get(event_type=EventType.REASON_STATED)
    assert event.extra["reason"] == reason
    assert event.patient_id == third.pk

    opened_now = client.get(third.get_absolute_url())
    assert opened_now.status_code == 200
    assert "EXPL002" in opened_now.content.decode().upper()
    served = _reads(secretary, third).exclude(extra__has_key="withheld")
    assert {(r.explanation, r.explained_by) for r in served} == {("reason", str(stated.pk))}


def test_a_reason_cannot_be_stated_ahead_for_any_patient(secretary):
    patient = make_patient(email="", nir="")
    client = client_for(secretary)
    response = client.post(
        reverse("patients:reason", args=[patient.pk]),
        {"reason": "Je veux juste regarder ce dossier", "code": totp_next_code(secretary)},
    )
    assert response.status_code == 409
    assert "No reason is needed for this record now" in response.content.decode()
    assert not ReadReason.objects.exists()


def test_nobody_states_a_reason_for_a_record_they_may_not_open(other_practitioner, practitioner, clinic):
    patient = make_patient(email="", nir="")
    book(clinic["doctor"], patient, clinic["kind"], _today_at(23), force=True)
    response = client_for(other_practitioner).post(
        reverse("patients:reason", args=[patient.pk]),
        {"reason": "Je veux juste regarder ce dossier", "code": totp_next_code(other_practitioner)},
    )
    assert response.status_code == 404


def test_past_the_reason_limit_the_account_is_blocked_and_the_admins_mailed_once(
    secretary, practice_admin, small, mailoutbox, eager, django_capture_on_commit_callbacks
):
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    people = _people(6)
    client = client_for(secretary)
    statuses = []
    with django_capture_on_commit_callbacks(execute=True):
        for patient in people:
            statuses.append(client.get(patient.get_absolute_url()).status_code)
    # 2 from the allowance, 2 step-ups (the reason limit), then the block.
    assert statuses == [200, 200, 403, 403, 429, 429]
    block = ReadBlock.objects.get(user_id=secretary.pk)
    assert block.window == "reasons"
    assert block.lifted_at is None
    assert AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK).count() == 1
    assert len(mailoutbox) == 1
    assert "Read budget exceeded" in mailoutbox[0].subject
    # Blocked: not even a patient already paid for decrypts now.
    assert client.get(people[0].get_absolute_url()).status_code == 429


def test_a_new_login_does_not_reset_the_allowance(secretary, small):
    first, second, third = _people(3)
    client = client_for(secretary)
    for patient in (first, second):
        assert client.get(patient.get_absolute_url()).status_code == 200
    client.post(reverse("logout"))
    again = client.__class__()
    log_in(again, secretary)
    assert again.get(first.get_absolute_url()).status_code == 200  # already paid for today
    assert again.get(third.get_absolute_url()).status_code == 403


def test_a_masked_search_pays_from_its_own_allowance(secretary, settings):
    settings.READ_MASKED_ALLOWANCES = {**settings.READ_MASKED_ALLOWANCES, "Secretary": (2, 2)}
    for first in ("Anne", "Bruno", "Chloé"):
        make_patient(last_name="Dupont", first_names=first, email="", nir="")
    client = client_for(secretary)
    response = client.post(reverse("patients:list"), {"last_name": "dupont"})
    assert response.status_code == 403
    assert "search lines" in response.content.decode()
    assert AllowanceUse.objects.filter(kind="masked").count() == 2
    assert not AllowanceUse.objects.filter(kind="unexplained").exists()


@pytest.mark.django_db(transaction=True)
def test_parallel_requests_cannot_spend_one_allowance_twice(roles):
    user = User.objects.create_user("parallel.secretary")
    patients = [f"00000000-0000-4000-8000-{n:012d}" for n in range(8)]
    now = timezone.now()
    results, barrier = [], threading.Barrier(len(patients))

    def spend(patient):
        try:
            barrier.wait(timeout=10)
            claim = allowance_spend(
                user_id=user.pk, patient_id=patient, kind=AllowanceKind.UNEXPLAINED, limits=(3, 3), now=now
            )
            results.append(claim.admitted)
        finally:
            connection.close()

    threads = [threading.Thread(target=spend, args=(p,)) for p in patients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False] * 5 + [True] * 3
    assert AllowanceUse.objects.filter(user_id=user.pk).count() == 3


def test_a_practitioner_is_never_asked_about_their_own_days_patients(practitioner, clinic, small):
    people = _people(6)
    for n, patient in enumerate(people):
        book(clinic["doctor"], patient, clinic["kind"], _today_at(8) + datetime.timedelta(minutes=20 * n), force=True)
    client = client_for(practitioner)
    assert client.get(reverse("scheduling:my_day")).status_code == 200
    for patient in people:
        assert client.get(patient.get_absolute_url()).status_code == 200
    assert _reads(practitioner).exclude(explanation="appointment").count() == 0
    assert not Practitioner.objects.filter(user=practitioner).get().assistants.exists()
