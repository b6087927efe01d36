"""Django admin in Chromium: the index fits a 1280 px screen in English and French without boxes
over each other (static/css/admin.css), and the time-zone note of the date and time fields shows
once per page, not under each of them (static/js/admin_timezone_note.js)."""

import datetime
import itertools

import pytest

from config.testing import at, boxes_overlap, browser_page, chromium, make_doctor, today
from scheduling.models import Absence

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow

SCREEN = 1280  # px: a small laptop


@pytest.fixture
def browser(transactional_db, practice_admin, live_server, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    with chromium() as browser:
        yield browser


def _boxes(page, selector: str) -> list[tuple[str, dict]]:
    found = page.locator(selector)
    return [(found.nth(n).inner_text().split("\n")[0], found.nth(n).bounding_box()) for n in range(found.count())]


@pytest.mark.parametrize("locale", ["en-GB", "fr-FR"])
def test_the_index_fits_the_screen_and_no_box_covers_another(browser, live_server, practice_admin, locale):
    page = browser_page(browser, live_server.url, practice_admin, width=SCREEN, locale=locale)
    page.goto(f"{live_server.url}/admin/")
    assert page.locator("html").get_attribute("lang") == locale[:2]
    assert page.locator("#investigations-module tr").count() == 4

    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= SCREEN, f"the page is {width} px wide"
    modules = _boxes(page, "#content-main > .module, #content-related .module")
    assert len(modules) >= 5
    for (one, a), (other, b) in itertools.combinations(modules, 2):
        assert not boxes_overlap(a, b), f"{one!r} covers {other!r}"
    for one, box in modules:
        assert box["x"] >= 0, f"{one!r} leaves the screen"
        assert box["x"] + box["width"] <= SCREEN, f"{one!r} leaves the screen"
    rows = page.locator("#investigations-module tr")
    for n in range(rows.count()):
        link, text = rows.nth(n).locator("th a"), rows.nth(n).locator("td")
        name, box = link.inner_text(), link.bounding_box()
        assert not boxes_overlap(box, text.bounding_box()), f"{name!r} and its description overlap"
        # A report's name on one or two lines, not a letter per line.
        line = float(link.evaluate("a => parseFloat(getComputedStyle(a).fontSize) * 1.6"))
        assert box["height"] <= 2 * line, f"{name!r} is {box['height']:.0f} px tall"


@pytest.fixture
def doctor(practitioner):
    """Dr Martin: two ranges of hours every day (fourteen rows of two time fields) and an absence
    to come (two date and time fields)."""
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    Absence.objects.create(
        practitioner=doctor,
        start=at(today() + datetime.timedelta(days=30), 8),
        end=at(today() + datetime.timedelta(days=31), 19),
    )
    return doctor


@pytest.mark.parametrize(
    ("page_of", "fields"),
    [
        ("practitioner", 30),  # 14 working-hours rows x 2 time fields, and the absence's 2 date-times
        ("absence", 2),
        ("working_hours", 2),
    ],
)
def test_the_time_zone_note_shows_once_per_page(
    browser, live_server, practice_admin, doctor, settings, page_of, fields
):
    """A browser in Tokyo, the practice in Paris: Django's note under every date and time field
    ("You are 8 hours ahead of server time"), forty times on a practitioner's page, is there once."""
    settings.TIME_ZONE = "Europe/Paris"
    url = {
        "practitioner": f"/admin/practice/practitioner/{doctor.pk}/change/",
        "absence": "/admin/scheduling/absence/add/",
        "working_hours": "/admin/scheduling/workinghours/add/",
    }[page_of]
    page = browser_page(browser, live_server.url, practice_admin, width=SCREEN, timezone_id="Asia/Tokyo")
    page.goto(f"{live_server.url}{url}", wait_until="load")
    page.wait_for_function("document.querySelectorAll('.datetimeshortcuts').length > 0")  # the widgets' script ran

    assert page.locator("input.vTimeField").count() >= fields
    notes = page.locator(".timezonewarning")
    assert notes.count() == 1
    assert "ahead of server time" in notes.inner_text()
    assert notes.is_visible()
    form = page.locator("#content-main form").bounding_box()
    first_field = page.locator("#content-main form fieldset, #content-main form .inline-group").first.bounding_box()
    assert form["y"] <= notes.bounding_box()["y"] < first_field["y"]  # above the form's fields
