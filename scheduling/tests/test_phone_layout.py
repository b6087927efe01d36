"""'My day' and the waiting room on a phone: Chromium at 390 px wide, in English and French. The
page fits the screen (nothing to scroll sideways) and every action button is on screen and
clickable (static/css/phone.css)."""

import datetime

import pytest
import time_machine

from audit.context import system_context
from config.testing import DAY, at, book, boxes_overlap, browser_page, chromium, make_doctor, make_patient, make_type
from scheduling import services
from scheduling.models import AppointmentStatus

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow

PHONE = 390  # px: a common phone's CSS width
STATUSES = [
    [],
    [AppointmentStatus.ARRIVED],
    [AppointmentStatus.ARRIVED],
    [AppointmentStatus.ARRIVED, AppointmentStatus.IN_CONSULTATION],
    [AppointmentStatus.ARRIVED, AppointmentStatus.IN_CONSULTATION, AppointmentStatus.DONE],
]


@pytest.fixture
def clinic_day(transactional_db, secretary, practitioner, other_practitioner):
    """DAY at 11:00, the clock held there: Dr Martin's morning, with long names (what overflows);
    Dr Bernard has nobody (an empty list keeps its column headings)."""
    with time_machine.travel(at(DAY, 11), tick=True):
        make_doctor(other_practitioner, "Dr Paul Bernard")
        doctor = make_doctor(practitioner, "Dr Claire Martin-Dupont de la Fontaine")
        kind = make_type(doctor, name="Première consultation longue durée", minutes=20)
        for n, statuses in enumerate(STATUSES):
            patient = make_patient(
                last_name=f"Vandenberghe-Lefèvre-Saint-Aubin {n}", first_names="Anne-Marie Joséphine", nir="", email=""
            )
            appointment = book(doctor, patient, kind, at(DAY, 8) + datetime.timedelta(minutes=20 * n))
            with system_context("tests"):
                for status in statuses:
                    services.appointment_set_status(appointment=appointment, status=status, actor=None)
        yield


@pytest.fixture
def browser(clinic_day, live_server, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop shares this thread
    with chromium() as browser:
        yield browser


def _fits_a_phone(page) -> list[str]:
    """What does not fit: a page wider than the screen, an action button off screen, hidden,
    covered by something else, or over another button."""
    problems = []
    width = page.evaluate("document.scrollingElement.scrollWidth")
    if width > PHONE:
        problems.append(f"the page is {width} px wide")
    buttons = page.locator("main button, main a.button")
    boxes = []
    for n in range(buttons.count()):
        button = buttons.nth(n)
        label = button.inner_text()
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        if not button.is_visible() or box is None:
            problems.append(f"{label!r} is hidden")
            continue
        # Where it is on the page (the box is the viewport's, which may have scrolled).
        scroll_x, scroll_y = page.evaluate("[window.scrollX, window.scrollY]")
        page_box = {**box, "x": box["x"] + scroll_x, "y": box["y"] + scroll_y}
        if page_box["x"] < 0 or page_box["x"] + box["width"] > PHONE:
            problems.append(f"{label!r} is off screen ({page_box['x']:.0f} to {page_box['x'] + box['width']:.0f} px)")
        try:
            button.click(trial=True, timeout=2000)  # visible, enabled, stable, on top: not clicked
        except Exception as exc:
            problems.append(f"{label!r} cannot be clicked: {str(exc).splitlines()[0]}")
        problems.extend(f"{label!r} overlaps {other!r}" for other, seen in boxes if boxes_overlap(page_box, seen))
        boxes.append((label, page_box))
    return problems


@pytest.mark.parametrize("locale", ["en-GB", "fr-FR"])
@pytest.mark.parametrize(
    ("who", "path", "actions"),
    [
        # Booked: arrived, no-show; two arrived: start each; in consultation: done; done: none.
        # The waiting room: the two who arrived (start each), then the one expected (arrived, no-show).
        ("practitioner", "/my-day/", 5),
        ("practitioner", "/waiting-room/", 4),
        ("secretary", "/waiting-room/", 4),
        ("other_practitioner", "/my-day/", 0),
        ("other_practitioner", "/waiting-room/", 0),
    ],
)
def test_it_fits_a_phone_with_every_button_in_reach(request, browser, live_server, who, path, actions, locale):
    with time_machine.travel(at(DAY, 11), tick=True):
        page = browser_page(browser, live_server.url, request.getfixturevalue(who), width=PHONE, locale=locale)
        page.goto(f"{live_server.url}{path}")
        assert page.locator(".row-actions button").count() == actions
        assert page.locator("html").get_attribute("lang") == locale[:2]
        problems = _fits_a_phone(page)
    assert not problems, "\n".join(problems)
