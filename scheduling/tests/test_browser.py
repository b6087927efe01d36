"""The front desk's day in a real browser: headless Debian Chromium driven by Playwright.

A secretary logs in for the first time (password, then enrolling an authenticator from the
setup page's key), finds the next free slot, books a new patient into it and sees the
appointment on the day; the practitioner logs in and sees the patient on "my day". On
failure both pages are saved as screenshots under test-artifacts/.
"""

import base64
import datetime
import zoneinfo
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from django_otp.oath import TOTP
from playwright.sync_api import sync_playwright

from config.testing import PASSWORD, make_type, practitioner_create, totp_code, totp_device, user_create
from practice.roles import PRACTITIONER, SECRETARY
from scheduling.models import Appointment

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
# The flow books "today": run it in a practice time zone where it is daytime now, so the
# test does not depend on the hour CI happens to run at (and exercises a non-Paris zone).
ZONES = ["Europe/Paris", "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata", "Pacific/Auckland"]


def _daytime_zone() -> str:
    now = datetime.datetime.now(datetime.UTC)
    for name in ZONES:
        if 6 <= now.astimezone(zoneinfo.ZoneInfo(name)).hour < 16:
            return name
    raise AssertionError("no zone in ZONES has daytime now")  # the zones cover every UTC hour


@pytest.fixture
def clinic(transactional_db, settings):
    settings.TIME_ZONE = _daytime_zone()
    secretary = user_create("claire.secretary", SECRETARY)
    doctor = practitioner_create(user_create("dr.leroy", PRACTITIONER), "Dr Paul Leroy", hours=((0, 0, 23, 55),))
    consultation = make_type(doctor, colour="#2f80ed")
    return {"secretary": secretary, "doctor": doctor, "type": consultation}


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
            ],
        )
        yield browser
        browser.close()


def _log_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("main form button[type=submit]")
    page.wait_for_load_state()


def _enrol(page) -> None:
    """What a person does with their phone: read the key off the setup page, type the code."""
    assert "/accounts/two-factor/setup/" in page.url
    assert page.locator("img.qr").evaluate("img => img.complete && img.naturalWidth > 0")
    secret = page.locator("code.secret").inner_text().replace(" ", "")
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    page.fill("#id_code", f"{TOTP(key).token():06d}")
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("ul.codes li").count() == 10  # recovery codes, shown once
    page.click("a.button")
    page.wait_for_load_state()


def _second_factor(page, device) -> None:
    assert "/accounts/two-factor/" in page.url
    page.fill("#id_code", totp_code(device))
    page.click("main form button[type=submit]")
    page.wait_for_load_state()


def _watch_csp(page, violations: list) -> None:
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)


def _screenshots_on_failure(pages: dict, name: str):
    ARTIFACTS.mkdir(exist_ok=True)
    for role, page in pages.items():
        page.screenshot(path=str(ARTIFACTS / f"{name}-{role}.png"), full_page=True)


def test_it_books_a_new_patient_into_the_next_free_slot_and_the_doctor_sees_them(
    clinic, live_server, browser, monkeypatch, request
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    base = live_server.url
    front_desk = browser.new_page(locale="en-GB")
    doctor = browser.new_page(locale="en-GB")
    pages = {"secretary": front_desk, "practitioner": doctor}
    violations: list[str] = []
    for page in pages.values():
        _watch_csp(page, violations)
    doctor_device = totp_device(clinic["doctor"].user)
    try:
        _log_in(front_desk, base, "claire.secretary")
        _enrol(front_desk)
        front_desk.goto(f"{base}/agenda/free-slots/")
        front_desk.select_option("select[name=practitioner]", str(clinic["doctor"].pk))
        front_desk.select_option("select[name=appointment_type]", str(clinic["type"].pk))
        front_desk.click("main form button[type=submit]")
        front_desk.locator("a[href*='/appointments/new/']").first.click()
        front_desk.wait_for_load_state()

        front_desk.click("details.new-patient summary")
        front_desk.fill("input[name='new-last_name']", "Vasseur")
        front_desk.fill("input[name='new-first_names']", "Inès")
        front_desk.select_option("select[name='new-sex']", "F")
        front_desk.fill("input[name='new-birth_date']", "1991-07-14")
        front_desk.fill("input[name='new-phone_mobile']", "06 45 67 89 10")
        front_desk.click("button[name=action][value=book_new]")
        front_desk.wait_for_load_state()

        today = timezone.localdate()
        front_desk.goto(f"{base}/agenda/{today.isoformat()}/")
        assert front_desk.get_by_text("VASSEUR Inès").count() >= 1

        _log_in(doctor, base, "dr.leroy")
        _second_factor(doctor, doctor_device)
        doctor.goto(f"{base}/my-day/")
        assert doctor.get_by_text("VASSEUR Inès").count() >= 1
    except Exception:
        _screenshots_on_failure(pages, request.node.name)
        raise

    assert violations == []
    appointment = Appointment.objects.get()
    assert appointment.practitioner == clinic["doctor"]
    assert timezone.localtime(appointment.start).date() == today
