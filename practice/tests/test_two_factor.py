"""The second factor: nothing before it, throttled and counted wrong codes, enrolment with
recovery codes shown once and stored hashed, no swapping the factor with a password alone,
admin behind it, and no open redirect out of it."""

import datetime
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib import admin
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.db.models import F
from django.test import Client, RequestFactory
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent, EventType
from config.testing import (
    PASSWORD,
    book,
    client_for,
    log_in,
    make_patient,
    make_practitioner,
    make_type,
    paris,
    totp_code,
    totp_device,
)
from practice import twofactor
from practice.models import RecoveryCode


def _password_only(client: Client, user) -> None:
    response = client.post("/accounts/login/", {"username": user.get_username(), "password": PASSWORD})
    assert response.status_code == 302, response.status_code


def _verify(client: Client, code: str, **extra):
    return client.post("/accounts/two-factor/", {"code": code, **extra})


def _wrong_code(device) -> str:
    """Six digits that no clock drift the device tolerates would accept."""
    valid = set()
    for drift in range(-3, 4):
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift + drift)
        valid.add(f"{totp.token():06d}")
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


def _wait_over(device) -> None:
    """As if the device's back-off had run out (instead of sleeping through it)."""
    TOTPDevice.objects.filter(pk=device.pk).update(
        throttling_failure_timestamp=F("throttling_failure_timestamp") - datetime.timedelta(hours=1)
    )


def _events(event_type, user) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=event_type, actor_user_id=user.pk).order_by("id"))


def _path(response) -> str:
    return response["Location"].split("?", 1)[0]


# ---------------------------------------------------------------------------------------------
# Nothing before the second factor


def test_it_reaches_no_patient_page_before_the_second_factor(practitioner, secretary):
    doctor = make_practitioner(practitioner.username)
    patient = make_patient()
    appointment = book(doctor, patient, make_type(doctor), paris(2030, 3, 4, 9), reason="Douleur au genou")
    pages = [
        "/",
        "/patients/",
        "/patients/new/",
        f"/patients/{patient.pk}/",
        f"/patients/{patient.pk}/edit/",
        f"/patients/{patient.pk}/emergency-access/",
        f"/audit/patients/{patient.pk}/",
        "/agenda/",
        "/agenda/2030-03-04/",
        f"/agenda/practitioner/{doctor.pk}/week/",
        f"/agenda/2030-03-04/practitioner/{doctor.pk}/print/",
        "/my-day/",
        "/waiting-room/",
        "/appointments/new/",
        f"/appointments/{appointment.pk}/",
        f"/admin/patients/patient/{patient.pk}/change/",
        "/admin/scheduling/appointment/",
    ]
    posts = [
        "/patients/",  # the search
        f"/patients/{patient.pk}/archive/",
        f"/appointments/{appointment.pk}/status/",
        f"/appointments/{appointment.pk}/cancel/",
    ]
    for user in (practitioner, secretary):
        totp_device(user)
        client = Client()
        _password_only(client, user)
        for url in pages:
            response = client.get(url)
            assert response.status_code == 302, (user, url, response.status_code)
            assert _path(response) == "/accounts/two-factor/", (user, url, response["Location"])
        for url in posts:
            response = client.post(url, {"status": "arrived", "reason": "x", "last_name": "Lefèvre"})
            assert _path(response) == "/accounts/two-factor/", (user, url, response.status_code)
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exists()
    assert not AuditEvent.objects.filter(event_type__in=[EventType.CHANGE, EventType.ARCHIVE]).exists()


# ---------------------------------------------------------------------------------------------
# Wrong codes


def test_it_throttles_the_attempt_right_after_a_wrong_code(secretary, settings):
    assert settings.OTP_TOTP_THROTTLE_FACTOR > 0
    device = totp_device(secretary)
    client = Client()
    _password_only(client, secretary)

    response = _verify(client, _wrong_code(device))
    assert response.status_code == 200
    assert "This code is not valid" in response.content.decode()
    # Even the right code waits: the device backs off (1 s, then 2, 4, 8...).
    response = _verify(client, totp_code(device))
    assert response.status_code == 429
    assert "wait" in response.content.decode()
    assert client.get("/agenda/").status_code == 302

    _wait_over(device)
    response = _verify(client, totp_code(device))
    assert response.status_code == 302
    assert client.get("/agenda/").status_code == 200
    assert [e.extra for e in _events(EventType.OTP_FAILED, secretary)] == [{"attempt": 1}]
    assert [e.extra for e in _events(EventType.OTP_VERIFIED, secretary)] == [{"device": "TOTPDevice"}]


def test_it_keeps_the_back_off_across_sessions(secretary):
    """Logging in again does not reset the throttle: it is kept on the device, in the database."""
    device = totp_device(secretary)
    first = Client()
    _password_only(first, secretary)
    assert _verify(first, _wrong_code(device)).status_code == 200
    second = Client()
    _password_only(second, secretary)
    assert _verify(second, totp_code(device)).status_code == 429


def test_it_logs_the_session_out_after_too_many_wrong_codes(secretary, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # no waiting between attempts: only the count is tested
    device = totp_device(secretary)
    client = Client()
    _password_only(client, secretary)
    for _attempt in range(settings.TWO_FACTOR_MAX_FAILURES - 1):
        assert _verify(client, _wrong_code(device)).status_code == 200
    response = _verify(client, _wrong_code(device))
    assert response.status_code == 302
    assert _path(response) == "/accounts/login/"
    assert _path(client.get("/agenda/")) == "/accounts/login/"
    # Not even the right code helps now: the password comes first again.
    assert _path(_verify(client, totp_code(device))) == "/accounts/login/"
    attempts = [e.extra["attempt"] for e in _events(EventType.OTP_FAILED, secretary)]
    assert attempts == list(range(1, settings.TWO_FACTOR_MAX_FAILURES + 1))
    assert _events(EventType.LOGOUT, secretary)
    assert not _events(EventType.OTP_VERIFIED, secretary)


# ---------------------------------------------------------------------------------------------
# Enrolment and recovery codes


def _codes(response) -> list[str]:
    return re.findall(r"<code>([a-z0-9]{5}-[a-z0-9]{5})</code>", response.content.decode())


def test_it_enrols_an_authenticator_and_shows_the_recovery_codes_once(secretary):
    client = Client()
    _password_only(client, secretary)
    response = client.get("/agenda/")
    assert _path(response) == "/accounts/two-factor/setup/"
    response = client.get(response["Location"])
    assert response.status_code == 200
    qr = client.get("/accounts/two-factor/setup/qr.svg")
    assert qr.status_code == 200
    assert qr["Content-Type"] == "image/svg+xml"
    assert b"<svg" in qr.content

    pending = TOTPDevice.objects.get(user=secretary, confirmed=False)
    response = client.post("/accounts/two-factor/setup/", {"code": _wrong_code(pending)})
    assert response.status_code == 200
    assert "This code is not valid" in response.content.decode()
    assert not twofactor.has_second_factor(secretary)
    assert _path(client.get("/agenda/")) == "/accounts/two-factor/setup/"

    _wait_over(pending)
    response = client.post("/accounts/two-factor/setup/", {"code": totp_code(pending), "next": "/agenda/"})
    assert response.status_code == 200
    codes = _codes(response)
    assert len(codes) == len(set(codes)) == twofactor.RECOVERY_CODE_COUNT == 10
    assert twofactor.confirmed_totp(secretary).pk == pending.pk
    assert client.get("/agenda/").status_code == 200  # enrolling was the second factor
    assert _events(EventType.OTP_ENROLLED, secretary)
    assert len(_events(EventType.RECOVERY_CODES, secretary)) == 1
    assert _events(EventType.OTP_VERIFIED, secretary)

    # Never shown again: not on the account page, not when opening setup again.
    for url in ("/accounts/", "/accounts/two-factor/setup/"):
        page = client.get(url).content.decode()
        assert not any(code in page for code in codes), url


def test_it_waits_out_the_back_off_during_enrolment_too(secretary):
    client = Client()
    _password_only(client, secretary)
    client.get("/accounts/two-factor/setup/")
    pending = TOTPDevice.objects.get(user=secretary, confirmed=False)
    client.post("/accounts/two-factor/setup/", {"code": _wrong_code(pending)})
    response = client.post("/accounts/two-factor/setup/", {"code": totp_code(pending)})
    assert response.status_code == 429
    assert "wait" in response.content.decode()  # not "not valid": the code was right
    _wait_over(pending)
    assert len(_codes(client.post("/accounts/two-factor/setup/", {"code": totp_code(pending)}))) == 10


def test_it_accepts_a_recovery_code_once(secretary):
    totp_device(secretary)
    codes = twofactor.recovery_codes_generate(secretary)
    client = Client()
    _password_only(client, secretary)
    response = _verify(client, codes[3])
    assert response.status_code == 302
    assert client.get("/agenda/").status_code == 200
    assert twofactor.recovery_codes_left(secretary) == 9
    assert _events(EventType.OTP_VERIFIED, secretary)[-1].extra == {"device": "RecoveryCodeDevice"}
    client.post("/accounts/logout/")

    again = Client()
    _password_only(again, secretary)
    response = _verify(again, codes[3])
    assert response.status_code == 200
    assert "This code is not valid" in response.content.decode()
    assert _path(again.get("/agenda/")) == "/accounts/two-factor/"


def test_it_stores_recovery_codes_hashed(secretary):
    codes = twofactor.recovery_codes_generate(secretary)
    plain = set(codes) | {code.replace("-", "") for code in codes}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {RecoveryCode._meta.db_table}")
        rows = cursor.fetchall()
    assert len(rows) == 10
    stored = " ".join(str(value) for row in rows for value in row).lower()
    assert not any(code in stored for code in plain)


def test_it_does_not_let_a_password_alone_replace_the_second_factor(practitioner):
    device = totp_device(practitioner)
    key = device.key
    client = Client()
    _password_only(client, practitioner)

    response = client.get("/accounts/two-factor/setup/")
    assert _path(response) == "/accounts/two-factor/"
    response = client.post("/accounts/two-factor/setup/", {"code": "123456"})
    assert _path(response) == "/accounts/two-factor/"
    assert client.get("/accounts/two-factor/setup/qr.svg").status_code == 404
    assert list(TOTPDevice.objects.filter(user=practitioner).values_list("pk", "key", "confirmed")) == [
        (device.pk, key, True)
    ]
    assert client.post("/accounts/two-factor/recovery-codes/").status_code == 302  # to verify
    assert twofactor.recovery_codes_left(practitioner) == 0
    assert not _events(EventType.OTP_ENROLLED, practitioner)


# ---------------------------------------------------------------------------------------------
# Admin, policy, redirects


def test_it_keeps_django_admin_behind_the_second_factor(practice_admin):
    totp_device(practice_admin)
    client = Client()
    _password_only(client, practice_admin)
    response = client.get("/admin/")
    assert _path(response) == "/accounts/two-factor/"
    assert "next=/admin/" in response["Location"]
    assert _path(client.get("/admin/auth/user/")) == "/accounts/two-factor/"

    # The admin site checks it too, whatever the middleware does.
    request = RequestFactory().get("/admin/")
    request.user = practice_admin  # no is_verified(): as without django_otp's middleware
    assert not admin.site.has_permission(request)
    practice_admin.is_verified = lambda: False
    assert not admin.site.has_permission(request)
    practice_admin.is_verified = lambda: True
    assert admin.site.has_permission(request)
    request.user = AnonymousUser()
    assert not admin.site.has_permission(request)


def test_it_sends_the_admin_login_to_the_one_login_page(client, practice_admin):
    response = client.get("/admin/login/")
    assert _path(response) == "/accounts/login/"
    assert "next=/admin/" in response["Location"]
    verified = client_for(practice_admin)
    assert verified.get("/admin/login/?next=https://evil.example/")["Location"] == "/admin/"
    assert verified.get("/admin/login/?next=/admin/auth/user/")["Location"] == "/admin/auth/user/"


def test_it_lets_users_without_a_device_in_when_only_admins_must_have_one(secretary, practice_admin, settings):
    settings.TWO_FACTOR_REQUIRED = "admins"
    client = Client()
    _password_only(client, secretary)
    assert client.get("/agenda/").status_code == 200

    admin_client = Client()
    _password_only(admin_client, practice_admin)
    assert _path(admin_client.get("/admin/")) == "/accounts/two-factor/setup/"
    assert _path(admin_client.get("/")) == "/accounts/two-factor/setup/"


def test_it_still_asks_for_the_device_a_user_has_when_only_admins_must_have_one(secretary, settings):
    settings.TWO_FACTOR_REQUIRED = "admins"
    totp_device(secretary)
    client = Client()
    _password_only(client, secretary)
    assert _path(client.get("/agenda/")) == "/accounts/two-factor/"


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/agenda/", "http:/evil.example", "\\\\evil.example"]
)
def test_it_refuses_to_send_anyone_away_after_the_second_factor(secretary, target):
    device = totp_device(secretary)
    client = Client()
    _password_only(client, secretary)
    page = client.get("/accounts/two-factor/", {"next": target}).content.decode()
    assert "evil.example" not in page
    response = _verify(client, totp_code(device), next=target)
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_it_goes_on_to_the_page_asked_for_after_the_second_factor(secretary):
    device = totp_device(secretary)
    client = Client()
    _password_only(client, secretary)
    response = client.get("/patients/")
    assert response["Location"] == "/accounts/two-factor/?next=/patients/"
    response = _verify(client, totp_code(device), next="/patients/")
    assert response["Location"] == "/patients/"


def test_it_keeps_the_whole_page_asked_for_between_verification_and_enrolment(secretary, practice_admin):
    """A free-slot link carries several parameters: none is lost on the way through the second factor."""
    wanted = "/appointments/new/?practitioner=1&type=2&start=2030-03-04T09:00:00+01:00"
    totp_device(practice_admin)
    for user, url, target in (
        (practice_admin, "/accounts/two-factor/setup/", "/accounts/two-factor/"),
        (secretary, "/accounts/two-factor/", "/accounts/two-factor/setup/"),
    ):
        client = Client()
        _password_only(client, user)
        response = client.get(url, {"next": wanted})
        assert _path(response) == target
        assert parse_qs(urlsplit(response["Location"]).query) == {"next": [wanted]}


def test_it_logs_in_through_the_real_pages(secretary):
    client = Client()
    log_in(client, secretary)
    assert client.get("/agenda/").status_code == 200
    assert [e.event_type for e in AuditEvent.objects.filter(actor_user_id=secretary.pk).order_by("id")][:2] == [
        EventType.LOGIN,
        EventType.OTP_VERIFIED,
    ]
