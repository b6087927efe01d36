"""The clickable agenda in a real browser (headless Debian Chromium driven by Playwright, as in
test_browser.py): book from a click on the grid, drag a block to move it (and a drag the
server refuses), one click to mark an arrival from the grid and from "my day", the whole day
printed, and the day opening at now with and without the script.

Each test counts what the user does: clicks (and drags), and full page loads (the page's
`load` events: a POST answered by a redirect is one), plus the script's requests. The counts
are asserted, so a change that adds a page load to a flow fails here; the figures are in the
report of the branch. On failure every page is saved as a screenshot under test-artifacts/.
"""

import datetime
import re
import zoneinfo
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import sync_playwright

from config.testing import (
    DAY,
    PASSWORD,
    book,
    make_patient,
    make_type,
    practitioner_create,
    totp_code,
    totp_device,
    user_create,
)
from practice.roles import PRACTITIONER, SECRETARY
from scheduling.models import Appointment, AppointmentStatus

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
]
# Today's flows need daytime now in the practice's zone: the first of these where it is.
ZONES = ["Europe/Paris", "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata", "Pacific/Auckland"]
ALL_DAY = ((0, 0, 23, 55),)


def _daytime_zone() -> str:
    now = datetime.datetime.now(datetime.UTC)
    for name in ZONES:
        if 9 <= now.astimezone(zoneinfo.ZoneInfo(name)).hour < 17:
            return name
    for name in ZONES:
        if 6 <= now.astimezone(zoneinfo.ZoneInfo(name)).hour < 19:
            return name
    raise AssertionError("no zone in ZONES has daytime now")


@pytest.fixture
def clinic(transactional_db, settings):
    """Two practitioners working every day, all day; a secretary; one type; two patients.
    The practice's zone is one where it is daytime now (so "today" has a past and a future)."""
    settings.TIME_ZONE = _daytime_zone()
    settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS = 365 * 10  # DAY lies years ahead
    secretary = user_create("claire.secretary", SECRETARY)
    leroy = practitioner_create(user_create("dr.leroy", PRACTITIONER), "Dr Paul Leroy", hours=ALL_DAY)
    moreau = practitioner_create(user_create("dr.moreau", PRACTITIONER), "Dr Lise Moreau", hours=ALL_DAY)
    kind = make_type(leroy, moreau, name="Consultation", minutes=20, colour="#2f80ed")
    vasseur = make_patient(last_name="Vasseur", first_names="Inès", email="", nir="", phone_mobile="")
    garnier = make_patient(last_name="Garnier", first_names="Hugo", email="", nir="", phone_mobile="")
    return {
        "secretary": secretary,
        "leroy": leroy,
        "moreau": moreau,
        "type": kind,
        "vasseur": vasseur,
        "garnier": garnier,
    }


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


class Tally:
    """What a user did on a page: clicks and drags (counted by the test as it does them),
    full page loads, the script's requests, and any CSP violation the console reports."""

    def __init__(self, page):
        self.clicks = 0
        self.loads = 0
        self.fetches = 0
        self.csp: list[str] = []
        page.on("load", lambda _page: self._loaded())
        page.on("request", lambda request: self._requested(request))
        page.on("console", lambda msg: self.csp.append(msg.text) if "Content Security Policy" in msg.text else None)

    def _loaded(self):
        self.loads += 1

    def _requested(self, request):
        if request.resource_type == "fetch":
            self.fetches += 1

    def reset(self):
        self.clicks = self.loads = self.fetches = 0


def _log_in(page, base: str, user) -> None:
    """The login pages, as a person uses them: password, then the authenticator's code."""
    device = totp_device(user)
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    page.fill("#id_code", totp_code(device))
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/" not in page.url, page.url


def _open(browser, base: str, user, *, javascript: bool = True):
    context = browser.new_context(
        locale="en-GB", java_script_enabled=javascript, viewport={"width": 1400, "height": 900}
    )
    page = context.new_page()
    _log_in(page, base, user)
    return page, Tally(page)


def _screenshots_on_failure(pages, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for n, page in enumerate(pages):
        page.screenshot(path=str(ARTIFACTS / f"{name}-{n}.png"), full_page=True)


def _row_y(page, column, moment: datetime.datetime) -> float:
    """The y offset, in `column`, of the grid row `moment` (practice time) falls on, + 2 px."""
    rows = int(page.get_attribute(".agenda", "data-rows"))
    first = int(page.get_attribute(".agenda", "data-first"))
    slot = int(page.get_attribute(".agenda", "data-slot"))
    local = timezone.localtime(moment)
    row = (local.hour * 60 + local.minute - first) // slot
    return column.bounding_box()["height"] / rows * row + 2


# ---------------------------------------------------------------------------------------------


def test_it_books_from_a_click_on_the_grid(clinic, live_server, browser, monkeypatch, request):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    base, leroy = live_server.url, clinic["leroy"]
    page, tally = _open(browser, base, clinic["secretary"])
    try:
        page.goto(f"{base}/agenda/{DAY.isoformat()}/")
        tally.reset()
        # A free quarter of an hour, clicked a third of the way down: the script books the row under the pointer.
        link = page.locator(f".col[data-prac='{leroy.pk}'] a.free[href$='T10:00']")
        box = link.bounding_box()
        link.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
        tally.clicks += 1
        page.wait_for_load_state()
        assert "/appointments/new/" in page.url
        assert page.input_value("select[name=practitioner]") == str(leroy.pk)
        assert page.input_value("input[name=date]") == DAY.isoformat()
        assert page.input_value("input[name=time]") == "10:05"  # the middle row of 10:00-10:15

        page.select_option("select[name=appointment_type]", str(clinic["type"].pk))
        page.fill("input[name='find-last_name']", "Vasseur")
        page.click("button[name=action][value=search]")
        tally.clicks += 1
        page.wait_for_load_state()
        page.click("button[name=action][value=book_existing]")  # the one match is picked already
        tally.clicks += 1
        page.wait_for_load_state()
        assert "Appointment booked." in page.inner_text(".messages")
    except Exception:
        _screenshots_on_failure([page], request.node.name)
        raise

    appointment = Appointment.objects.get()
    ten_five = datetime.datetime.combine(DAY, datetime.time(10, 5), tzinfo=zoneinfo.ZoneInfo(settings.TIME_ZONE))
    assert (appointment.practitioner, appointment.patient, appointment.start) == (leroy, clinic["vasseur"], ten_five)
    # A click on the grid, a search, "Book": 3 clicks, 3 page loads (booking page, results, booked).
    assert (tally.clicks, tally.loads, tally.fetches) == (3, 3, 0)
    assert tally.csp == []


def test_it_books_from_the_grid_without_the_script(clinic, live_server, browser, monkeypatch, request):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    base, leroy = live_server.url, clinic["leroy"]
    page, tally = _open(browser, base, clinic["secretary"], javascript=False)
    try:
        page.goto(f"{base}/agenda/{DAY.isoformat()}/")
        link = page.locator(f".col[data-prac='{leroy.pk}'] a.free[href$='T10:00']")
        box = link.bounding_box()
        link.click(position={"x": box["width"] / 2, "y": box["height"] - 2})
        page.wait_for_load_state()
        assert page.input_value("input[name=time]") == "10:00"  # the link's own time: its piece's start
        assert page.input_value("select[name=practitioner]") == str(leroy.pk)
    except Exception:
        _screenshots_on_failure([page], request.node.name)
        raise


def test_it_moves_a_dragged_block_and_puts_back_a_refused_one(clinic, live_server, browser, monkeypatch, request):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    base, leroy, moreau = live_server.url, clinic["leroy"], clinic["moreau"]
    tz = zoneinfo.ZoneInfo(settings.TIME_ZONE)
    nine = datetime.datetime.combine(DAY, datetime.time(9), tzinfo=tz)
    moved = book(leroy, clinic["vasseur"], clinic["type"], nine)
    holder = book(moreau, clinic["garnier"], clinic["type"], nine + datetime.timedelta(hours=2))
    page, tally = _open(browser, base, clinic["secretary"])
    try:
        page.goto(f"{base}/agenda/{DAY.isoformat()}/")
        tally.reset()
        block = page.locator(f"a.appt[href='/appointments/{moved.pk}/']")
        target = page.locator(f".col[data-prac='{moreau.pk}']")
        ten_forty = nine + datetime.timedelta(hours=1, minutes=40)
        block.drag_to(
            target, source_position={"x": 20, "y": 2}, target_position={"x": 20, "y": _row_y(page, target, ten_forty)}
        )
        tally.clicks += 1  # the drag
        dialog = page.locator("dialog.move-dialog")
        assert dialog.is_visible()
        assert dialog.locator(".move-question").inner_text() == "Move VASSEUR Inès to 10:40, Dr Lise Moreau?"
        with page.expect_navigation():
            dialog.locator("button[type=submit]").click()
            tally.clicks += 1
        page.wait_for_load_state()
        assert "Appointment moved." in page.inner_text(".messages")
        moved.refresh_from_db()
        assert (moved.practitioner, moved.start) == (moreau, ten_forty)
        # A drag, "Move": 2 clicks, 1 request of the script, 1 page load (the grid, reloaded).
        assert (tally.clicks, tally.fetches, tally.loads) == (2, 1, 1)

        # Dropped on the 11:00 appointment: refused, said, and the block goes back.
        tally.reset()
        block = page.locator(f"a.appt[href='/appointments/{moved.pk}/']")
        before = block.get_attribute("class")
        eleven_ten = nine + datetime.timedelta(hours=2, minutes=10)
        block.drag_to(
            target, source_position={"x": 20, "y": 2}, target_position={"x": 20, "y": _row_y(page, target, eleven_ten)}
        )
        tally.clicks += 1
        dialog.locator("button[type=submit]").click()
        tally.clicks += 1
        alert = page.locator(".grid-alert")
        alert.wait_for(state="visible")
        text = alert.locator(".grid-alert-text").inner_text()
        assert "This slot is already taken." in text
        assert "11:00–11:20, with Dr Lise Moreau (GARNIER Hugo)" in text
        assert "Next free time:" in text
        page.wait_for_function(
            "([id, cls]) => document.querySelector(`a.appt[href='/appointments/${id}/']`).className === cls",
            arg=[str(moved.pk), before],
        )
        assert block.evaluate("b => b.closest('.col').dataset.prac") == str(moreau.pk)
        assert (tally.clicks, tally.fetches, tally.loads) == (2, 1, 0)  # no page load: the block is back
    except Exception:
        _screenshots_on_failure([page], request.node.name)
        raise

    moved.refresh_from_db()
    holder.refresh_from_db()
    assert (moved.practitioner, moved.start) == (moreau, ten_forty)
    assert holder.start == nine + datetime.timedelta(hours=2)
    assert tally.csp == []


def test_it_marks_arrivals_in_one_click_from_the_grid_and_from_my_day(
    clinic, live_server, browser, monkeypatch, request
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    base, leroy = live_server.url, clinic["leroy"]
    soon = (timezone.now() + datetime.timedelta(minutes=30)).replace(second=0, microsecond=0)
    soon -= datetime.timedelta(minutes=soon.minute % 5)
    first = book(leroy, clinic["vasseur"], clinic["type"], soon)
    second = book(leroy, clinic["garnier"], clinic["type"], soon + datetime.timedelta(minutes=20))
    desk, desk_tally = _open(browser, base, clinic["secretary"])
    doctor, doctor_tally = _open(browser, base, leroy.user)
    try:
        desk.goto(f"{base}/agenda/")
        # Opened at now: the grid is scrolled down to the hour before now.
        assert desk.evaluate("document.querySelector('.agenda').scrollTop") > 0
        desk_tally.reset()
        with desk.expect_navigation():
            desk.click(f"button.go[formaction='/appointments/{first.pk}/status/']")
            desk_tally.clicks += 1
        desk.wait_for_load_state()
        assert desk.url.endswith("/agenda/#now")
        assert "Status changed to “Arrived”." in desk.inner_text(".messages")
        assert desk.locator(f"button.go.to-in_consultation[formaction='/appointments/{first.pk}/status/']").count() == 1
        assert (desk_tally.clicks, desk_tally.loads) == (1, 1)

        doctor.goto(f"{base}/my-day/")
        doctor_tally.reset()
        row = doctor.locator("tr", has_text="GARNIER Hugo")
        with doctor.expect_navigation():
            row.get_by_role("button", name="Mark arrived").click()
            doctor_tally.clicks += 1
        doctor.wait_for_load_state()
        assert doctor.url.endswith("/my-day/")
        assert (doctor_tally.clicks, doctor_tally.loads) == (1, 1)
    except Exception:
        _screenshots_on_failure([desk, doctor], request.node.name)
        raise

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (AppointmentStatus.ARRIVED, AppointmentStatus.ARRIVED)
    assert desk_tally.csp == doctor_tally.csp == []


def test_it_opens_the_day_at_now_without_the_script(clinic, live_server, browser, monkeypatch, request):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    page, _tally = _open(browser, live_server.url, clinic["secretary"], javascript=False)
    try:
        page.goto(f"{live_server.url}/waiting-room/")
        page.click("nav a[href='/agenda/#now']")  # the menu's link to the agenda carries the anchor
        page.wait_for_load_state()
        anchor = page.locator("#now").bounding_box()
        grid = page.locator(".agenda").bounding_box()
        head = page.locator(".agenda-head").bounding_box()
        assert head["y"] + head["height"] - 2 <= anchor["y"] < grid["y"] + grid["height"]  # in view, not under the head
        assert page.locator(".agenda-body").bounding_box()["y"] < head["y"] + head["height"] - 1  # the grid scrolled
    except Exception:
        _screenshots_on_failure([page], request.node.name)
        raise


def test_it_prints_the_whole_day(clinic, live_server, browser, monkeypatch, request):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    base, leroy, moreau = live_server.url, clinic["leroy"], clinic["moreau"]
    tz = zoneinfo.ZoneInfo(settings.TIME_ZONE)
    nine = datetime.datetime.combine(DAY, datetime.time(9), tzinfo=tz)
    book(leroy, clinic["vasseur"], clinic["type"], nine)
    book(moreau, clinic["garnier"], clinic["type"], nine)
    page, tally = _open(browser, base, clinic["secretary"])
    try:
        page.goto(f"{base}/agenda/{DAY.isoformat()}/")
        tally.reset()
        page.click("a.button[href$='/print/']")
        tally.clicks += 1
        page.wait_for_load_state()
        assert page.url.endswith(f"/agenda/{DAY.isoformat()}/print/")
        sheets = page.locator("section.sheet-all")
        assert sheets.count() == 2
        assert "GARNIER Hugo" in sheets.nth(0).inner_text()  # Dr Lise Moreau, then Dr Paul Leroy
        assert "VASSEUR Inès" in sheets.nth(1).inner_text()
        page.emulate_media(media="print")
        assert not page.locator(".topbar").is_visible()
        assert not page.locator(".screen-only").is_visible()
        assert sheets.nth(0).evaluate("s => getComputedStyle(s).breakAfter") == "page"
        pdf = page.pdf(format="A4")  # what "Print" makes of it: a page for each practitioner
        assert re.findall(rb"/Count (\d+)", pdf) == [b"2"]
        assert (tally.clicks, tally.loads) == (1, 1)
    except Exception:
        _screenshots_on_failure([page], request.node.name)
        raise
    assert tally.csp == []
