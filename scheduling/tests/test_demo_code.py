"""The demo's second factor: seed_demo enrols its accounts and prints their secrets once;
`demo_code` prints a code the login accepts, for those accounts and authenticators only."""

import base64
import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent, EventType
from config.testing import totp_device
from scheduling.management.commands.seed_demo import DEFAULT_PASSWORD, USERS

pytestmark = pytest.mark.django_db

DEMO_USERNAMES = [spec.username for spec in USERS]


def seed() -> str:
    out = io.StringIO()
    # DEBUG on, as under `make run`: the accounts get the published demo password.
    with override_settings(DEBUG=True):
        call_command("seed_demo", patients=0, no_progress=True, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def demo_code(username: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("demo_code", username, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_seed_demo_enrols_each_account_and_prints_its_secret_once(roles):
    output = seed()
    for username in DEMO_USERNAMES:
        device = TOTPDevice.objects.get(user__username=username)
        assert device.confirmed
        assert device.name == "demo"
        assert f"{username}: TOTP secret {base64.b32encode(device.bin_key).decode()}" in output
        assert device.config_url in output
    enrolments = AuditEvent.objects.filter(event_type=EventType.OTP_ENROLLED)
    assert sorted(e.extra["username"] for e in enrolments) == sorted(DEMO_USERNAMES)
    assert {e.actor_username for e in enrolments} == {"system:command:seed_demo"}

    again = seed()
    assert TOTPDevice.objects.count() == len(DEMO_USERNAMES)
    assert "TOTP secret" not in again
    assert "otpauth://" not in again
    assert f"Second factor already enrolled: {', '.join(DEMO_USERNAMES)}." in again
    assert AuditEvent.objects.filter(event_type=EventType.OTP_ENROLLED).count() == len(DEMO_USERNAMES)


def test_seed_demo_leaves_an_account_enrolled_with_its_own_authenticator(roles):
    doctor = User.objects.create_user(username="doctor", password=DEFAULT_PASSWORD)
    own = totp_device(doctor)
    output = seed()
    assert list(TOTPDevice.objects.filter(user=doctor)) == [own]
    assert "doctor: TOTP secret" not in output
    assert "Second factor already enrolled: doctor." in output


def test_the_code_logs_a_demo_account_in(roles):
    seed()
    client = Client()
    response = client.post("/accounts/login/", {"username": "secretary", "password": DEFAULT_PASSWORD})
    assert response.status_code == 302
    assert client.get("/patients/").url.startswith("/accounts/two-factor/")  # the password is not enough
    code, note = demo_code("secretary")
    assert re.fullmatch(r"\d{6}\n", code)  # alone on stdout, for scripts
    assert re.fullmatch(r"Valid for \d+ more seconds\.\n", note)
    response = client.post("/accounts/two-factor/", {"code": code.strip()})
    assert response.status_code == 302
    assert client.get("/patients/").status_code == 200
    assert AuditEvent.objects.filter(event_type=EventType.OTP_VERIFIED, actor_username="secretary").exists()


def test_it_says_when_the_code_was_used_already(roles):
    seed()
    device = TOTPDevice.objects.get(user__username="doctor")
    device.last_t = 2**40  # as if logged in with the current code (and every one before)
    device.save(update_fields=["last_t"])
    _code, note = demo_code("doctor")
    assert "used already" in note


def test_it_refuses_accounts_that_are_not_the_demos(roles, secretary):
    seed()
    totp_device(secretary)
    with pytest.raises(CommandError, match="not a demo account"):
        demo_code(secretary.username)


def test_it_refuses_a_demo_account_with_an_authenticator_of_its_own(roles):
    doctor = User.objects.create_user(username="doctor", password=DEFAULT_PASSWORD)
    totp_device(doctor)
    seed()
    with pytest.raises(CommandError, match="no authenticator from seed_demo"):
        demo_code("doctor")
    # Nor does a second authenticator beside the demo's open the account.
    admin = User.objects.get(username="admin")
    TOTPDevice.objects.create(user=admin, name="authenticator", confirmed=True)
    with pytest.raises(CommandError, match="no authenticator from seed_demo"):
        demo_code("admin")


def test_it_refuses_before_the_demo_is_seeded(roles):
    with pytest.raises(CommandError, match="no authenticator from seed_demo"):
        demo_code("secretary")
