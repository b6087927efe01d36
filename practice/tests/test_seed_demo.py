import io

import phonenumbers
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from audit.context import system_context
from audit.models import AuditEvent, EventType
from patients.access import patient_queryset_for
from patients.models import Patient
from patients.validators import validate_nir
from practice.management.commands.seed_demo import DEFAULT_PASSWORD
from practice.models import Practitioner
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, role_of
from scheduling.models import Appointment

pytestmark = pytest.mark.django_db

DEMO_PASSWORD = "a demo password for tests"


@pytest.fixture(autouse=True)
def _fast_hasher(settings):
    # Five accounts per run: PBKDF2 at production cost would dominate these tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def demo_password(monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", DEMO_PASSWORD)


def seed(**options) -> str:
    out = io.StringIO()
    call_command("seed_demo", no_progress=True, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def counts() -> dict:
    return {
        "users": User.objects.count(),
        "practitioners": Practitioner.objects.count(),
        "patients": Patient.objects.count(),
        "appointments": Appointment.objects.count(),
        "audit": AuditEvent.objects.count(),
    }


def test_it_creates_the_demo_accounts_in_their_groups(demo_password):
    seed(patients=30)
    expected = {
        "secretary": SECRETARY,
        "doctor": PRACTITIONER,
        "doctor2": PRACTITIONER,
        "doctor3": PRACTITIONER,
        "admin": PRACTICE_ADMIN,
    }
    for username, role in expected.items():
        user = User.objects.get(username=username)
        assert list(user.groups.values_list("name", flat=True)) == [role]
        assert role_of(user) == role
        assert user.check_password(DEMO_PASSWORD)
    admin = User.objects.get(username="admin")
    assert admin.is_staff and not admin.is_superuser
    assert not User.objects.filter(is_superuser=True).exists()


def test_it_creates_three_practitioners_with_distinct_colours(demo_password):
    seed(patients=30)
    practitioners = Practitioner.objects.select_related("user", "specialty")
    assert sorted(p.user.username for p in practitioners) == ["doctor", "doctor2", "doctor3"]
    assert len({p.colour for p in practitioners}) == 3
    assert len({p.specialty.name for p in practitioners}) == 3
    assert all(p.display_name.startswith("Dr ") for p in practitioners)


def test_it_creates_the_patients_asked_for(demo_password):
    seed(patients=30)
    assert Patient.objects.count() == 30


def test_it_gives_the_demo_practitioners_patients_of_their_own(demo_password):
    seed(patients=30)
    for username in ("doctor", "doctor2"):
        user = User.objects.get(username=username)
        appointments = Appointment.objects.filter(practitioner=user.practitioner)
        assert appointments.count() == 5
        assert all(a.status == "done" and a.end > a.start for a in appointments)
        assert patient_queryset_for(user).count() == 5
    assert not Appointment.objects.filter(practitioner__user__username="doctor3").exists()


def test_it_is_idempotent(demo_password):
    first = seed(patients=30)
    before = counts()
    second = seed(patients=30)
    assert counts() == before
    assert "Created" in first
    assert "Created" not in second


def test_it_prints_the_default_password_once(settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    first = seed(patients=0)
    second = seed(patients=0)
    assert first.count(DEFAULT_PASSWORD) == 1
    assert DEFAULT_PASSWORD not in second
    assert User.objects.get(username="secretary").check_password(DEFAULT_PASSWORD)


def test_it_never_prints_a_password_from_the_environment(demo_password):
    assert DEMO_PASSWORD not in seed(patients=0)


def test_it_refuses_the_default_password_with_debug_off(settings, monkeypatch):
    settings.DEBUG = False
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="DEMO_PASSWORD"):
        seed(patients=0)
    assert not User.objects.exists()


def test_it_refuses_a_weak_demo_password(monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "short")
    with pytest.raises(CommandError, match="DEMO_PASSWORD"):
        seed(patients=0)
    assert not User.objects.exists()


def test_it_tops_up_to_the_number_asked_for(demo_password):
    seed(patients=30)
    first_ids = set(Patient.objects.values_list("id", flat=True))
    seed(patients=45)
    assert Patient.objects.count() == 45
    assert first_ids <= set(Patient.objects.values_list("id", flat=True))
    seed(patients=10)  # never deletes
    assert Patient.objects.count() == 45


def test_it_counts_archived_patients_when_topping_up(demo_password):
    seed(patients=30)
    Patient.objects.filter(pk__in=Patient.objects.values_list("pk", flat=True)[:5]).update(is_archived=True)
    seed(patients=30)
    assert Patient.objects.count() == 30


def test_it_seeds_valid_phones_and_nirs(demo_password):
    seed(patients=30)
    with system_context("tests"):
        for patient in Patient.objects.all():
            number = phonenumbers.parse(patient.phone_mobile)
            assert phonenumbers.is_valid_number(number)
            assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == patient.phone_mobile
            assert patient.phone_mobile[:4] in ("+336", "+337")
            if patient.phone_other:
                assert phonenumbers.is_valid_number(phonenumbers.parse(patient.phone_other))
            validate_nir(patient.nir)
            assert patient.nir[0] == {"M": "1", "F": "2"}[patient.sex]
            assert patient.nir[1:3] == f"{patient.birth_date.year % 100:02d}"
            assert patient.nir[3:5] == f"{patient.birth_date.month:02d}"
            patient.full_clean()


def test_it_computes_blind_indexes(demo_password):
    from patients.models import full_name_index

    seed(patients=30)
    assert not Patient.objects.filter(bidx_full_name__isnull=True).exists()
    assert not Patient.objects.filter(bidx_phone_mobile__isnull=True).exists()
    with system_context("tests"):
        patient = Patient.objects.first()
        assert patient.bidx_full_name == full_name_index(patient.last_name, patient.first_names)


def test_it_records_one_summary_event_and_no_reads(demo_password):
    seed(patients=30)
    events = AuditEvent.objects.filter(model_label="patients.Patient")
    assert [(e.event_type, e.extra["seeded"], e.actor_username) for e in events] == [
        (EventType.CREATE, 30, "system:command:seed_demo")
    ]
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exists()
    seed(patients=30)
    assert AuditEvent.objects.filter(model_label="patients.Patient").count() == 1


def test_it_reproduces_a_run_with_a_seed(demo_password):
    seed(patients=5, seed=7)
    with system_context("tests"):
        first = sorted(p.nir for p in Patient.objects.all())
    Appointment.objects.all().delete()
    Patient.objects.all().delete()
    seed(patients=5, seed=7)
    with system_context("tests"):
        assert sorted(p.nir for p in Patient.objects.all()) == first
