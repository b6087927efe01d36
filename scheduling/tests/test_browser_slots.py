"""Finding a slot and booking from a patient's record, in a real browser (headless Debian Chromium
driven by Playwright), with the clicks and page loads counted.

What is counted: a *click* is a mouse click on a link, a button, a checkbox or a radio button,
or a choice made in a drop-down list (one click, though a mouse user opens the list first);
typing into a text or date field is not a click, and no form is sent with the Enter key. A
*page load* is a document the browser loads (a `load` event of the page), redirects included
in the load they end in. Counting starts on the agenda page (or the record), already open.

The clock is Thursday 7 March 2030, 10:00 in Paris: "next Tuesday" is 12 March. On failure the
page is saved as a screenshot under test-artifacts/.
"""

import datetime
import zoneinfo
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from playwright.sync_api import sync_playwright

from config.testing import (
    MONDAY_TO_SATURDAY,
    OFFICE_HOURS,
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
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NOW = datetime.datetime(2030, 3, 7, 10, 0, tzinfo=PARIS)  # a Thursday
NEXT_TUESDAY = datetime.date(2030, 3, 12)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=True) as traveller:
        yield traveller


@pytest.fixture
def clinic(transactional_db, clock, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    secretary = user_create("claire.secretary", SECRETARY)
    totp_device(secretary)
    martin = practitioner_create(
        user_create("dr.martin", PRACTITIONER), "Dr Claire Martin", days=MONDAY_TO_SATURDAY, hours=OFFICE_HOURS
    )
    bernard = practitioner_create(
        user_create("dr.bernard", PRACTITIONER), "Dr Paul Bernard", days=MONDAY_TO_SATURDAY, hours=OFFICE_HOURS
    )
    consultation = make_type(martin, bernard, name="Consultation", minutes=20)
    make_type(martin, name="Première consultation", minutes=40)
    patient = make_patient()  # Anne-Marie Lefèvre, born 9 March 1984
    make_patient(first_names="Paul", birth_date=datetime.date(1950, 1, 2), email="", nir="", phone_mobile="")
    # Dr Martin's Tuesday afternoon starts taken; the patient saw him last week.
    book(
        martin, make_patient(last_name="Morel", email="", nir="", phone_mobile=""), consultation, _at(NEXT_TUESDAY, 14)
    )
    book(martin, patient, consultation, _at(datetime.date(2030, 2, 26), 9))
    return {"secretary": secretary, "martin": martin, "bernard": bernard, "type": consultation, "patient": patient}


def _at(day: datetime.date, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(hour, minute), tzinfo=PARIS)


@pytest.fixture
def page(live_server, clinic, request):
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
        tab = browser.new_page(locale="en-GB")
        tab.violations = []
        tab.on(
            "console", lambda msg: tab.violations.append(msg.text) if "Content Security Policy" in msg.text else None
        )
        tab.base = live_server.url
        _log_in(tab, clinic["secretary"])
        try:
            yield tab
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise
        finally:
            browser.close()
        assert tab.violations == []


def _log_in(tab, user) -> None:
    tab.goto(f"{tab.base}/accounts/login/")
    tab.fill("#id_username", user.username)
    tab.fill("#id_password", PASSWORD)
    tab.click("main form button[type=submit]")
    tab.wait_for_load_state()
    tab.fill("#id_code", totp_code(totp_device(user)))
    tab.click("main form button[type=submit]")
    tab.wait_for_load_state()


class Counter:
    """Clicks made through it, and the pages the browser loads from now on."""

    def __init__(self, tab):
        self.tab = tab
        self.clicks = 0
        self.loads = 0
        tab.on("load", self._loaded)

    def _loaded(self, _page) -> None:
        self.loads += 1

    def click(self, locator) -> None:
        self.clicks += 1
        locator.click()
        self.tab.wait_for_load_state()

    def choose(self, selector: str, value: str) -> None:
        self.clicks += 1
        self.tab.select_option(selector, value)


def _slot_label(doctor: str, day: datetime.date, time: str, kind: str = "Consultation") -> str:
    return f"Book {kind} with {doctor} on {day:%A} {day.day} {day:%B} at {time}"


def test_dr_martin_next_tuesday_afternoon_for_an_existing_patient_from_the_agenda(page, clinic):
    page.goto(f"{page.base}/agenda/")
    assert page.locator("h1").first.inner_text().startswith("Thursday 7 March 2030")
    count = Counter(page)

    count.click(page.get_by_role("link", name="Find a slot"))
    # The finder has searched already: every practitioner's first morning and afternoon slot, day by day.
    count.click(page.get_by_role("link", name=_slot_label("Dr Claire Martin", NEXT_TUESDAY, "14:20")))
    assert "/appointments/new/" in page.url
    page.fill("input[name='find-last_name']", "Lefèvre")
    page.fill("input[name='find-birth_date']", "1984-03-09")
    count.click(page.get_by_role("button", name="Search"))
    assert page.locator("input[name=patient]:checked").count() == 1  # the only match, picked
    count.click(page.get_by_role("button", name="Book for this patient"))

    booked = Appointment.objects.get(start=_at(NEXT_TUESDAY, 14, 20))
    assert (booked.practitioner, booked.patient_id, booked.appointment_type) == (
        clinic["martin"],
        clinic["patient"].pk,
        clinic["type"],
    )
    assert "Appointment booked." in page.content()
    print(f"\nDr Martin next Tuesday afternoon, from the agenda: {count.clicks} clicks, {count.loads} page loads")
    assert count.clicks <= 5
    assert (count.clicks, count.loads) == (4, 4)


def test_the_finder_with_filters(page, clinic):
    page.goto(f"{page.base}/agenda/free-slots/")
    count = Counter(page)
    count.choose("select[name=practitioner]", str(clinic["martin"].pk))
    count.click(page.get_by_role("checkbox", name="Tuesday"))
    count.click(page.get_by_role("radio", name="Afternoon"))
    page.fill("input[name=from_date]", "2030-03-08")
    count.click(page.get_by_role("button", name="Find"))

    days = page.locator("section.slot-day h2")
    assert days.first.inner_text() == "Tuesday 12 March 2030"
    assert {text.split(" ")[0] for text in days.all_inner_texts()} == {"Tuesday"}
    assert page.locator("th", has_text="Morning").count() == 0
    first_row = page.locator("section.slot-day").first.locator("tbody tr")
    assert first_row.count() == 1  # Dr Martin alone
    assert first_row.locator("a.slot").inner_text() == "14:20"

    count.click(first_row.get_by_role("link", name="more"))
    times = page.locator("ul.slots a").all_inner_texts()
    assert times[0] == "14:20"
    assert all(time >= "12:00" for time in times)
    count.click(page.get_by_role("link", name="Book Consultation with Dr Claire Martin at 15:00"))
    assert page.locator("select[name=practitioner] option:checked").inner_text() == "Dr Claire Martin"
    assert page.locator("input[name=date]").input_value() == "2030-03-12"
    assert page.locator("input[name=time]").input_value() == "15:00"

    # Bad input comes back with an error, and the page still works.
    page.goto(f"{page.base}/agenda/free-slots/?time_from=15:00&time_to=14:00")
    assert "Enter a time after the first one." in page.content()
    print(f"\nFinder with four filters, then one day, then a slot: {count.clicks} clicks, {count.loads} page loads")


def test_it_books_from_the_patient_record_then_cancels_there(page, clinic):
    patient = clinic["patient"]
    record = f"{page.base}/patients/{patient.pk}/"
    page.goto(record)
    assert page.get_by_role("heading", name="Appointments").count() == 1
    count = Counter(page)

    count.click(page.get_by_role("link", name="Find a slot"))
    assert "the record you came from" in page.content()
    count.click(page.get_by_role("link", name=_slot_label("Dr Paul Bernard", datetime.date(2030, 3, 8), "14:00")))
    assert page.locator(f"input[name=patient][value='{patient.pk}']").is_checked()
    count.click(page.get_by_role("button", name="Book for this patient"))
    booked = Appointment.objects.get(start=_at(datetime.date(2030, 3, 8), 14))
    assert (booked.practitioner, booked.patient_id) == (clinic["bernard"], patient.pk)
    print(f"\nFrom the record, Find a slot to booked: {count.clicks} clicks, {count.loads} page loads, nothing typed")
    assert (count.clicks, count.loads) == (3, 3)

    # Back on the record: the appointment is listed; cancel it there.
    page.goto(record)
    row = page.locator("tr", has_text="Fri 8 Mar 2030, 14:00")
    assert row.locator(".status").inner_text() == "Booked"
    assert "Next appointment:" in page.content()
    row.locator("summary", has_text="Cancel").click()
    row.locator("textarea[name=reason]").fill("La patiente a appelé : empêchement")
    row.get_by_role("button", name="Cancel the appointment").click()
    page.wait_for_load_state()
    assert page.url == record
    assert "Appointment cancelled." in page.content()
    assert page.locator("tr", has_text="Fri 8 Mar 2030, 14:00").locator(".status").inner_text() == "Cancelled"
    booked.refresh_from_db()
    assert booked.status == AppointmentStatus.CANCELLED

    # "Book" starts the booking page with the patient picked.
    page.get_by_role("link", name="Book", exact=True).click()
    page.wait_for_load_state()
    assert page.locator(f"input[name=patient][value='{patient.pk}']").is_checked()
    page.select_option("select[name=practitioner]", str(clinic["martin"].pk))
    page.select_option("select[name=appointment_type]", str(clinic["type"].pk))
    page.fill("input[name=date]", "2030-03-13")
    page.fill("input[name=time]", "09:00")
    page.get_by_role("button", name="Book for this patient").click()
    page.wait_for_load_state()
    assert Appointment.objects.get(start=_at(datetime.date(2030, 3, 13), 9)).patient_id == patient.pk
