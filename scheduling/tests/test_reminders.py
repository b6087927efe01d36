"""Reminders: planned by the booking services, sent once by the tasks, shown on the page.

Tasks run eagerly here (no broker: the embedded default); test_reminders_worker.py runs them
in a real worker through Redis. "Time passes" is written as moving `due_at` into the past.
"""

import datetime
import smtplib

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone
from kombu.exceptions import OperationalError

from audit.context import system_context
from config.celery import app as celery_app
from config.testing import DAY, at, book, client_for, make_patient, patient_key, reads
from patients.services import patient_archive, patient_restore, patient_update
from practice import sms
from practice.models import Clinic
from scheduling import services, tasks
from scheduling.models import AppointmentStatus, Reminder, ReminderChannel, ReminderStatus
from scheduling.reminders import reminders_plan

REASON, NOTE = "Douleur au genou droit", "Préfère le matin"


@pytest.fixture(autouse=True)
def _outboxes(settings, db):
    # Eager whatever CELERY_BROKER_URL says (CI sets one): the app read it at start-up.
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    settings.SMS_BACKEND = "practice.sms.LocmemBackend"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.REMINDERS_ENABLED = True
    settings.REMINDER_MIN_LEAD_MINUTES = 120
    mail.outbox = []
    sms.outbox.clear()
    yield
    sms.outbox.clear()
    celery_app.conf.task_always_eager = eager


@pytest.fixture
def mailoutbox(_outboxes):
    """Django's test outbox, taken after the test environment set it up (pytest-django's own
    fixture can hand out a list that Django no longer writes to, depending on fixture order)."""
    return mail.outbox


@pytest.fixture
def clinic(db):
    clinic = Clinic.current()
    clinic.name, clinic.address, clinic.phone = "Cabinet des Lilas", "3 place de la Mairie, Lyon", "04 72 00 00 00"
    clinic.save()
    return clinic


@pytest.fixture
def consenting(db):
    """A patient who agreed to both channels, and reads English."""
    return make_patient(consent_sms=True, consent_email=True, language="en")


@pytest.fixture
def booked(doctor, consenting, consultation, clinic):
    """Monday DAY at 9:00 (Paris), with a reason and an internal note."""
    return book(doctor, consenting, consultation, at(DAY, 9), reason=REASON, internal_note=NOTE)


def _time_passes() -> None:
    """Every pending reminder is now due."""
    Reminder.objects.filter(status=ReminderStatus.PENDING).update(due_at=timezone.now() - datetime.timedelta(minutes=1))


def _rows(appointment) -> set[tuple]:
    return {(r.channel, r.kind, r.status) for r in Reminder.objects.filter(appointment=appointment)}


def _move(appointment, start):
    with system_context("tests"):
        return services.appointment_move(appointment=appointment, start=start, actor=None)


# --------------------------------------------------------------------------- planning


def test_it_plans_one_reminder_per_consented_channel_24_hours_before(booked):
    reminders = list(Reminder.objects.filter(appointment=booked).order_by("channel"))
    assert [(r.channel, r.kind, r.status) for r in reminders] == [
        ("email", "first", "pending"),
        ("sms", "first", "pending"),
    ]
    assert {r.due_at for r in reminders} == {at(DAY, 9) - datetime.timedelta(hours=24)}
    assert {r.planned_for for r in reminders} == {at(DAY, 9)}


def test_it_plans_nothing_without_consent_or_address(doctor, consultation, clinic):
    nobody = make_patient(consent_sms=False, consent_email=False)
    sms_only = make_patient(last_name="Garnier", consent_sms=True, consent_email=True, email="")
    assert _rows(book(doctor, nobody, consultation, at(DAY, 9))) == set()
    assert _rows(book(doctor, sms_only, consultation, at(DAY, 10))) == {("sms", "first", "pending")}


def test_it_plans_without_decrypting_anything(doctor, consenting, consultation, clinic):
    before = len(reads())
    book(doctor, consenting, consultation, at(DAY, 9))
    assert len(reads()) == before


def test_it_plans_a_second_reminder_when_the_type_asks(doctor, consenting, consultation, clinic):
    consultation.reminder_hours, consultation.second_reminder_hours = 48, 3
    consultation.save()
    appointment = book(doctor, consenting, consultation, at(DAY, 9))
    due = {(r.channel, r.kind): r.due_at for r in Reminder.objects.filter(appointment=appointment)}
    assert due == {
        ("email", "first"): at(DAY, 9) - datetime.timedelta(hours=48),
        ("sms", "first"): at(DAY, 9) - datetime.timedelta(hours=48),
        ("email", "second"): at(DAY, 6),
        ("sms", "second"): at(DAY, 6),
    }


def test_a_type_without_reminders_plans_none_and_changing_type_cancels_them(doctor, booked, long_visit):
    long_visit.reminder_hours = 0
    long_visit.save()
    with system_context("tests"):
        services.appointment_change_type(appointment=booked, appointment_type=long_visit, actor=None)
    assert _rows(booked) == {("email", "first", "cancelled"), ("sms", "first", "cancelled")}


def test_a_late_booking_gets_one_reminder_now_and_a_too_late_one_none(
    doctor, consenting, consultation, clinic, django_capture_on_commit_callbacks
):
    consultation.reminder_hours, consultation.second_reminder_hours = 48, 3
    consultation.save()
    soon = timezone.now() + datetime.timedelta(minutes=150)
    with django_capture_on_commit_callbacks(execute=True):
        appointment = book(doctor, consenting, consultation, soon, force=True)
    # Both reminders' times have passed: only the closer one goes, and it goes now.
    assert _rows(appointment) == {("email", "second", "sent"), ("sms", "second", "sent")}
    assert len(sms.outbox) == 1

    too_soon = timezone.now() + datetime.timedelta(minutes=90)
    with django_capture_on_commit_callbacks(execute=True):
        assert _rows(book(doctor, consenting, consultation, too_soon, force=True)) == set()


def test_it_refuses_reminder_hours_that_would_never_be_sent(consultation, settings):
    consultation.reminder_hours, consultation.second_reminder_hours = 24, 1
    with pytest.raises(ValidationError) as refused:
        consultation.full_clean()
    assert "second_reminder_hours" in refused.value.message_dict
    consultation.second_reminder_hours = 30
    with pytest.raises(ValidationError, match="after the first"):
        consultation.full_clean()
    consultation.second_reminder_hours = 2
    consultation.full_clean()


# --------------------------------------------------------------------------- sending


def test_the_sweep_sends_one_email_and_one_sms_with_what_the_patient_needs(booked, mailoutbox):
    _time_passes()
    assert tasks.reminders_sweep() == 2

    assert len(mailoutbox) == 1
    assert len(sms.outbox) == 1
    text = sms.outbox[0]
    assert text.to == "+33612345678"
    assert text.body == (
        "Reminder: appointment at Cabinet des Lilas on Monday 4 March 2030 at 09:00. "
        "3 place de la Mairie, Lyon. To cancel, call 04 72 00 00 00."
    )
    email = mailoutbox[0]
    assert email.to == ["anne-marie.lefevre@example.fr"]
    assert email.subject == "Your appointment at Cabinet des Lilas on Monday 4 March 2030 at 09:00"
    assert "Monday 4 March 2030 at 09:00" in email.body
    assert "3 place de la Mairie, Lyon" in email.body
    assert "please cancel by calling 04 72 00 00 00" in email.body
    for message in (text.body, email.subject, email.body):
        for secret in (REASON, NOTE, "genou", "Médecine", "Martin", "Lefèvre", "Anne-Marie"):
            assert secret not in message

    sent = {r.channel: r for r in Reminder.objects.filter(appointment=booked)}
    assert {r.status for r in sent.values()} == {ReminderStatus.SENT}
    assert sent["sms"].provider_id == text.provider_id
    assert sent["email"].provider_id == email.extra_headers["Message-ID"]
    assert sent["sms"].sent_at is not None
    assert sent["sms"].attempts == 1


def test_a_second_sweep_and_a_duplicate_task_send_nothing(booked, mailoutbox):
    _time_passes()
    tasks.reminders_sweep()
    assert tasks.reminders_sweep() == 0
    for reminder in Reminder.objects.filter(appointment=booked):
        assert tasks.reminder_send(reminder.pk) == "already_sent"
    assert len(mailoutbox) == 1
    assert len(sms.outbox) == 1


def test_it_writes_in_french_for_a_french_patient(doctor, consultation, clinic, mailoutbox):
    patient = make_patient(consent_sms=True, consent_email=True, language="fr")
    book(doctor, patient, consultation, at(DAY, 9))
    _time_passes()
    tasks.reminders_sweep()
    assert sms.outbox[0].body == (
        "Rappel : rendez-vous le lundi 4 mars 2030 à 09:00, Cabinet des Lilas. "
        "3 place de la Mairie, Lyon. Pour annuler, appelez le 04 72 00 00 00."
    )
    assert mailoutbox[0].subject == "Votre rendez-vous du lundi 4 mars 2030 à 09:00 – Cabinet des Lilas"
    assert "lundi 4 mars 2030 à 09:00\n3 place de la Mairie, Lyon" in mailoutbox[0].body
    assert "merci d’annuler en appelant le 04 72 00 00 00." in mailoutbox[0].body


def test_it_names_the_practitioner_and_specialty_only_when_the_practice_turns_it_on(booked, clinic):
    clinic.reminders_show_specialty = True
    clinic.save()
    _time_passes()
    tasks.reminders_sweep()
    assert "with Dr Claire Martin (Médecine générale)" in sms.outbox[0].body
    assert REASON not in sms.outbox[0].body


def test_it_audits_the_one_decrypted_address_under_system_reminders(booked, consenting):
    before = {e.pk for e in reads()}
    _time_passes()
    tasks.reminders_sweep()
    events = [e for e in reads() if e.pk not in before]
    assert {e.actor_username for e in events} == {"system:reminders"}
    assert {e.path for e in events} == {"job:reminders"}
    # One row per message: the patient, with only the field that message went to.
    assert sorted(tuple(e.fields) for e in events) == [("email",), ("phone_mobile",)]
    assert {e.patient_id for e in events} == {consenting.pk}
    # Never the appointment (its reason and note are not even loaded).
    assert ("scheduling.Appointment", str(booked.pk)) not in {(e.model_label, e.object_pk) for e in events}
    assert {(e.model_label, e.object_pk) for e in events} == {patient_key(consenting)}


# --------------------------------------------------------------------------- never stale


def test_a_moved_appointment_gets_a_fresh_reminder_and_no_stale_one(booked, doctor):
    _move(booked, at(DAY, 11))
    rows = {(r.channel, r.status, r.planned_for, r.error) for r in Reminder.objects.filter(appointment=booked)}
    assert rows == {
        ("email", "cancelled", at(DAY, 9), "moved"),
        ("sms", "cancelled", at(DAY, 9), "moved"),
        ("email", "pending", at(DAY, 11), ""),
        ("sms", "pending", at(DAY, 11), ""),
    }
    _time_passes()
    tasks.reminders_sweep()
    assert len(sms.outbox) == 1
    assert "at 11:00" in sms.outbox[0].body


def test_a_move_after_the_reminder_went_out_sends_a_fresh_one_and_moving_back_too(booked, mailoutbox):
    _time_passes()
    tasks.reminders_sweep()
    _move(booked, at(DAY, 11))
    _time_passes()
    tasks.reminders_sweep()
    _move(booked, at(DAY, 9))
    _time_passes()
    tasks.reminders_sweep()
    assert [m.body.split(" on ")[1][:30] for m in sms.outbox] == [
        "Monday 4 March 2030 at 09:00. ",
        "Monday 4 March 2030 at 11:00. ",
        "Monday 4 March 2030 at 09:00. ",
    ]
    assert len(mailoutbox) == 3


def test_a_task_for_a_moved_appointment_sends_nothing(booked):
    stale = list(Reminder.objects.filter(appointment=booked))
    _move(booked, at(DAY, 11))
    # A task queued before the move, delivered after it (the plan's cancellation lost, say).
    Reminder.objects.filter(planned_for=at(DAY, 11)).delete()
    Reminder.objects.filter(pk__in=[r.pk for r in stale]).update(status=ReminderStatus.PENDING, error="")
    assert tasks.reminder_send(stale[0].pk) == "cancelled:moved"
    assert sms.outbox == []


@pytest.mark.parametrize("how", ["cancel", "no_show"])
def test_a_cancelled_appointment_or_a_no_show_gets_no_reminder(booked, how):
    with system_context("tests"):
        if how == "cancel":
            services.appointment_cancel(appointment=booked, reason="Empêchement", actor=None)
        else:
            services.appointment_set_status(appointment=booked, status=AppointmentStatus.NO_SHOW, actor=None)
    assert {r.status for r in Reminder.objects.filter(appointment=booked)} == {ReminderStatus.CANCELLED}
    _time_passes()
    assert tasks.reminders_sweep() == 0
    assert sms.outbox == []


def test_back_from_no_show_plans_again(booked):
    with system_context("tests"):
        services.appointment_set_status(appointment=booked, status=AppointmentStatus.NO_SHOW, actor=None)
        services.appointment_set_status(appointment=booked, status=AppointmentStatus.BOOKED, actor=None)
    assert ("sms", "first", "pending") in _rows(booked)


def test_consent_withdrawn_after_booking_stops_the_reminder(booked, consenting):
    with system_context("tests"):
        consenting.consent_sms = False
        consenting.save(update_fields=["consent_sms"])
    _time_passes()
    tasks.reminders_sweep()
    assert sms.outbox == []
    sms_row = Reminder.objects.get(appointment=booked, channel=ReminderChannel.SMS)
    assert (sms_row.status, sms_row.error) == (ReminderStatus.SKIPPED, "no_consent")
    assert Reminder.objects.get(appointment=booked, channel=ReminderChannel.EMAIL).status == ReminderStatus.SENT


def test_the_sweep_closes_reminders_too_close_to_the_appointment(booked):
    Reminder.objects.update(due_at=timezone.now() - datetime.timedelta(hours=1))
    booked.__class__.objects.filter(pk=booked.pk).update(
        start=timezone.now() + datetime.timedelta(minutes=60), end=timezone.now() + datetime.timedelta(minutes=80)
    )
    assert tasks.reminders_sweep() == 0
    assert {(r.status, r.error) for r in Reminder.objects.filter(appointment=booked)} == {("skipped", "too_late")}


# --------------------------------------------------------------------------- failures


def test_a_refused_sms_is_marked_failed_with_the_error_class_only(booked, monkeypatch):
    def refuse(**kwargs):
        raise sms.SMSRejected(f"invalid number {kwargs['to']}")

    monkeypatch.setattr(sms, "send", refuse)
    _time_passes()
    tasks.reminders_sweep()
    row = Reminder.objects.get(appointment=booked, channel=ReminderChannel.SMS)
    assert (row.status, row.error, row.attempts, row.provider_id) == ("failed", "SMSRejected", 1, "")


def _retry_time_comes() -> None:
    Reminder.objects.update(enqueued_at=timezone.now() - tasks.REQUEUE_AFTER - datetime.timedelta(seconds=1))


def test_a_transient_failure_is_tried_again_then_sent(booked, monkeypatch):
    calls = []
    real_send = sms.send

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise sms.SMSTransientError("provider unreachable")
        return real_send(**kwargs)

    monkeypatch.setattr(sms, "send", flaky)
    _time_passes()
    tasks.reminders_sweep()
    row = Reminder.objects.get(appointment=booked, channel=ReminderChannel.SMS)
    assert (row.status, row.attempts, row.error) == ("pending", 1, "SMSTransientError")
    # Eager (no broker): no retry inside the caller; the sweep leaves it alone for a while...
    assert tasks.reminders_sweep() == 0
    # ...then tries again.
    _retry_time_comes()
    tasks.reminders_sweep()
    _retry_time_comes()
    tasks.reminders_sweep()
    row.refresh_from_db()
    assert (row.status, row.attempts, row.error, len(sms.outbox)) == ("sent", 3, "", 1)


def test_it_gives_up_after_the_last_attempt(booked, monkeypatch):
    def down(self, fail_silently=False):
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr("django.core.mail.EmailMessage.send", down)
    _time_passes()
    for _attempt in range(tasks.MAX_RETRIES + 2):
        tasks.reminders_sweep()
        _retry_time_comes()
    row = Reminder.objects.get(appointment=booked, channel=ReminderChannel.EMAIL)
    assert (row.status, row.error, row.attempts) == ("failed", "SMTPServerDisconnected", tasks.MAX_RETRIES + 1)
    assert Reminder.objects.get(appointment=booked, channel=ReminderChannel.SMS).status == "sent"


def test_a_broker_down_at_booking_does_not_fail_the_booking(
    doctor, consenting, consultation, clinic, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.reminder_send, "delay", broker_down)
    soon = timezone.now() + datetime.timedelta(hours=5)
    with django_capture_on_commit_callbacks(execute=True):
        appointment = book(doctor, consenting, consultation, soon, force=True)
    assert appointment.pk
    assert sms.outbox == []
    assert {r.enqueued_at for r in Reminder.objects.filter(appointment=appointment)} == {None}
    assert "the sweep will send them" in caplog.text
    assert "+336" not in caplog.text
    assert "lefevre" not in caplog.text.lower()

    monkeypatch.undo()  # the broker is back
    assert tasks.reminders_sweep() == 2
    assert len(sms.outbox) == 1
    assert tasks.reminders_sweep() == 0


def test_plan_is_idempotent(booked):
    before = _rows(booked)
    with system_context("tests"):
        reminders_plan(appointment=booked)
        reminders_plan(appointment=booked)
    assert _rows(booked) == before
    assert Reminder.objects.filter(appointment=booked).count() == 2


def test_nothing_is_sent_when_reminders_are_off(booked, settings):
    settings.REMINDERS_ENABLED = False
    _time_passes()
    assert tasks.reminders_sweep() == 0
    assert tasks.reminder_send(Reminder.objects.first().pk) == "disabled"
    assert sms.outbox == []


# --------------------------------------------------------------------------- the page


@pytest.mark.parametrize("who", ["secretary", "practitioner"])
def test_it_shows_the_reminders_on_the_appointment_page(request, who, booked, monkeypatch):
    def refuse(**kwargs):
        raise sms.SMSRejected("no")

    monkeypatch.setattr(sms, "send", refuse)
    _time_passes()
    tasks.reminders_sweep()
    page = client_for(request.getfixturevalue(who)).get(booked.get_absolute_url()).content.decode()
    assert "Reminders" in page
    assert "E-mail" in page
    assert "Sent" in page
    assert "SMS" in page
    assert "Failed: refused by the SMS provider" in page
    # Plain columns only: no address or number on the page for this section.
    assert "+33612345678" not in page
    assert "anne-marie.lefevre@example.fr" not in page


def test_the_page_says_when_no_reminder_is_planned(secretary, appointment):
    page = client_for(secretary).get(appointment.get_absolute_url()).content.decode()
    assert "No reminder:" in page


def test_another_practitioner_sees_no_reminders_of_an_appointment_not_theirs(other_practitioner, other_doctor, booked):
    assert client_for(other_practitioner).get(booked.get_absolute_url()).status_code == 404


# --------------------------------------------------------------------------- the patient changes


def _update(patient, **data):
    with system_context("tests"):
        return patient_update(patient=patient, data=data, actor=None)


def test_consent_given_after_booking_plans_the_reminders_then_withdrawing_cancels_them(doctor, consultation, clinic):
    patient = make_patient(consent_sms=False, consent_email=False)
    later = book(doctor, patient, consultation, at(DAY, 9))
    assert _rows(later) == set()

    _update(patient, consent_sms=True)
    assert _rows(later) == {("sms", "first", "pending")}

    _update(patient, consent_sms=False, consent_email=True)
    assert _rows(later) == {("sms", "first", "cancelled"), ("email", "first", "pending")}
    _time_passes()
    tasks.reminders_sweep()
    assert sms.outbox == []
    assert len(mail.outbox) == 1


def test_a_mobile_number_added_after_booking_plans_the_sms(doctor, consultation, clinic):
    patient = make_patient(consent_sms=True, consent_email=False, phone_mobile="")
    later = book(doctor, patient, consultation, at(DAY, 9))
    assert _rows(later) == set()
    _update(patient, phone_mobile="+33698765432")
    assert _rows(later) == {("sms", "first", "pending")}


def test_archiving_a_patient_cancels_their_reminders_and_restoring_plans_them_again(booked, consenting):
    with system_context("tests"):
        patient_archive(patient=consenting, actor=None)
    assert {status for _c, _k, status in _rows(booked)} == {"cancelled"}
    with system_context("tests"):
        patient_restore(patient=consenting, actor=None)
    assert {("email", "first", "pending"), ("sms", "first", "pending")} <= _rows(booked)


def test_a_change_that_does_not_touch_reminders_leaves_them_alone(booked, consenting):
    before = {(r.pk, r.status) for r in Reminder.objects.filter(appointment=booked)}
    _update(consenting, last_name="Lefebvre")
    assert {(r.pk, r.status) for r in Reminder.objects.filter(appointment=booked)} == before
