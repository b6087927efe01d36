"""Fifty people book the same slot at the same instant: exactly one gets it; fifty squeeze an
emergency in over the same appointment: exactly one is squeezed in.

Real threads, each with its own database connection, released together by a barrier.
PostgreSQL relies on the exclusion constraints (migrations 0004 and 0009); SQLite on
immediate transactions.
"""

import threading

import pytest
from django.db import IntegrityError, connection, transaction

from audit.context import system_context
from config.testing import make_patient, make_practitioner, make_type, paris
from practice.models import Clinic
from scheduling import services
from scheduling.models import Appointment

ATTEMPTS = 50


@pytest.mark.django_db(transaction=True)
def test_it_gives_a_contested_slot_to_exactly_one_booking(roles):
    doctor = make_practitioner()
    consultation = make_type(doctor)
    patients = [make_patient(last_name=f"Concurrent{i}") for i in range(ATTEMPTS)]
    barrier = threading.Barrier(ATTEMPTS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(patient):
        try:
            barrier.wait()
            with system_context("tests:concurrency"):
                services.appointment_book(
                    practitioner=doctor,
                    patient=patient,
                    appointment_type=consultation,
                    start=paris(2026, 3, 2, 9, 0),
                    actor=None,
                )
            result = "booked"
        except services.SlotTaken as exc:
            result = "taken: " + exc.messages[0]
        except Exception as exc:
            result = f"error: {exc!r}"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(p,)) for p in patients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(outcomes) == ATTEMPTS
    assert outcomes.count("booked") == 1, [o for o in outcomes if o.startswith("error")][:3]
    refused = [o for o in outcomes if o.startswith("taken: ")]
    assert len(refused) == ATTEMPTS - 1
    assert all("taken" in o for o in refused)
    assert Appointment.objects.count() == 1


def test_it_has_the_database_refuse_an_overlap_that_skips_the_service(roles, patient):
    """On PostgreSQL the exclusion constraint has the last word, even against code that
    forgets the service; SQLite has no such constraint, which is why booking serializes. (The
    clashing appointment is a raw row on purpose: it is the code that skips the service.)"""
    doctor = make_practitioner()
    consultation = make_type(doctor)
    first = services_book(doctor, patient, consultation)
    with system_context("tests"):
        clash = Appointment(
            practitioner=doctor, patient=patient, start=first.start, end=first.end, appointment_type=consultation
        )
        if connection.vendor == "postgresql":
            with pytest.raises(IntegrityError, match="appointment_no_overlap"), transaction.atomic():
                clash.save()
            clash.status = "cancelled"
            clash.save()  # cancelled appointments do not hold the slot
        else:
            assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def services_book(doctor, patient, consultation):
    with system_context("tests"):
        return services.appointment_book(
            practitioner=doctor, patient=patient, appointment_type=consultation, start=paris(2026, 3, 2, 9), actor=None
        )


@pytest.mark.django_db(transaction=True)
def test_it_gives_a_contested_emergency_to_exactly_one_squeeze(roles, secretary):
    """Fifty secretaries squeeze an emergency in over the same appointment at once: one is
    squeezed in, 49 are told an emergency already holds the time (PostgreSQL: the second
    exclusion constraint, migration 0009; SQLite: immediate transactions). The ordinary
    constraint is untouched: the appointment squeezed over is the only ordinary one."""
    Clinic.objects.update_or_create(pk=1, defaults={"squeeze_in_allowed": True})
    doctor = make_practitioner()
    consultation = make_type(doctor)
    held = services_book(doctor, make_patient(last_name="Held"), consultation)
    patients = [make_patient(last_name=f"Emergency{i}") for i in range(ATTEMPTS)]
    barrier = threading.Barrier(ATTEMPTS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(patient):
        try:
            barrier.wait()
            with system_context("tests:concurrency"):
                services.appointment_book(
                    practitioner=doctor,
                    patient=patient,
                    appointment_type=consultation,
                    start=paris(2026, 3, 2, 9, 10),
                    actor=secretary,
                    squeeze=True,
                    squeeze_reason="Chest pain, sent by the pharmacist",
                )
            result = "squeezed"
        except services.SlotTaken as exc:
            result = "taken: " + exc.messages[0]
        except Exception as exc:
            result = f"error: {exc!r}"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(p,)) for p in patients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(outcomes) == ATTEMPTS
    assert outcomes.count("squeezed") == 1, [o for o in outcomes if o.startswith("error")][:3]
    assert sum(o.startswith("taken: ") for o in outcomes) == ATTEMPTS - 1
    assert Appointment.objects.filter(squeezed=True).count() == 1
    assert list(Appointment.objects.filter(squeezed=False).values_list("pk", flat=True)) == [held.pk]
