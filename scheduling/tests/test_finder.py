"""The free-slot finder (scheduling.finder, /agenda/free-slots/): each filter, filters combined,
DST change days, empty results, the 8-week window and its query bound, bad input that comes
back with errors, and links that open the booking page filled in. The page decrypts nothing.
Who may open it is in the access table (practice/tests/test_url_access.py)."""

import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import DAY, PARIS, at, book, client_for, make_patient, make_type, practitioner_create, user_create
from practice.models import Specialty
from practice.roles import PRACTITIONER
from scheduling import finder, services
from scheduling.forms import LAST_DAY
from scheduling.models import Absence, AppointmentType

URL = reverse("scheduling:free_slots")
TUESDAY = DAY + datetime.timedelta(days=1)  # DAY is a Monday
AUTUMN = datetime.date(2030, 10, 27)  # a Sunday: 03:00 CEST -> 02:00 CET
SPRING = datetime.date(2030, 3, 31)  # a Sunday: 02:00 CET -> 03:00 CEST


@pytest.fixture(autouse=True)
def clock():
    """Monday DAY, 07:00 in Paris: the practitioners' day starts at 8:00."""
    with time_machine.travel(at(DAY, 7), tick=False) as traveller:
        yield traveller


@pytest.fixture
def desk(secretary):
    return client_for(secretary)


def _find(client, **params):
    response = client.get(URL, params)
    assert response.status_code == 200
    return response


def _local(moment: datetime.datetime) -> str:
    return moment.astimezone(PARIS).strftime("%Y-%m-%d %H:%M")


def _firsts(response) -> list[tuple[datetime.date, str, str | None, str | None]]:
    """(day, practitioner, first morning slot, first afternoon slot), as the page lists them."""
    found = []
    for group in response.context["days"]:
        for row in group["rows"]:
            morning = row["morning"] and row["morning"]["slot"].start.astimezone(PARIS).strftime("%H:%M")
            afternoon = row["afternoon"] and row["afternoon"]["slot"].start.astimezone(PARIS).strftime("%H:%M")
            found.append((group["day"], row["practitioner"].display_name, morning, afternoon))
    return found


def _no_reads():
    assert not AuditEvent.objects.filter(event_type=EventType.READ).exists()


# ---------------------------------------------------------------------------------------------
# Opening it, and each filter


def test_it_searches_as_soon_as_it_opens_with_the_first_type_for_everyone(desk, doctor, other_doctor, consultation):
    response = _find(desk)
    form = response.context["form"]
    assert form.is_valid()
    assert form.cleaned_data["appointment_type"] == consultation  # the first active type offered
    firsts = _firsts(response)
    assert len(response.context["days"]) == finder.DAYS_SHOWN
    assert firsts[:2] == [
        (DAY, "Dr Claire Martin", "08:00", "13:00"),
        (DAY, "Dr Paul Bernard", "08:00", "13:00"),
    ]
    assert response.context["later_url"]
    _no_reads()


def test_it_starts_today_after_now_and_around_bookings(secretary, clock, doctor, consultation, patient):
    book(doctor, patient, consultation, at(DAY, 10))
    book(doctor, patient, consultation, at(DAY, 13))
    clock.move_to(at(DAY, 9, 22))
    response = _find(client_for(secretary), practitioner=doctor.pk, day=DAY.isoformat())
    (row,) = response.context["days"][0]["rows"]
    times = [entry["slot"].start.astimezone(PARIS).strftime("%H:%M") for entry in row["slots"]]
    assert times[:4] == ["09:25", "10:20", "10:40", "11:00"]  # 9:22 rounded up to the grid; 10:00 taken
    assert "13:00" not in times
    assert times[times.index("11:40") + 1] == "13:20"


def test_it_starts_from_the_date_given(desk, doctor, consultation):
    response = _find(desk, from_date="2030-03-14")
    assert response.context["days"][0]["day"] == datetime.date(2030, 3, 14)


def test_a_date_in_the_past_starts_today(desk, doctor, consultation):
    response = _find(desk, from_date="2030-01-02")
    assert response.context["days"][0]["day"] == DAY
    assert _firsts(response)[0][2] == "08:00"  # after now (07:00)


def test_it_keeps_the_days_of_the_week_asked_for(desk, doctor, consultation):
    response = _find(desk, weekdays=["1", "3"])  # Tuesdays and Thursdays
    days = [group["day"] for group in response.context["days"]]
    assert {day.weekday() for day in days} == {1, 3}
    assert days[0] == TUESDAY


@pytest.mark.parametrize(
    ("part", "shown", "hidden"),
    [("morning", "Morning", "Afternoon"), ("afternoon", "Afternoon", "Morning")],
)
def test_it_keeps_the_time_of_day_asked_for(desk, doctor, consultation, part, shown, hidden):
    response = _find(desk, part=part, practitioner=doctor.pk, day=TUESDAY.isoformat())
    starts = [entry["slot"].start.astimezone(PARIS).time() for entry in response.context["days"][0]["rows"][0]["slots"]]
    if part == "morning":
        assert starts[0] == datetime.time(8)
        assert max(starts) == datetime.time(11, 40)
    else:
        assert starts[0] == datetime.time(13)
        assert min(starts) >= finder.NOON
    body = _find(desk, part=part).content.decode()
    assert f'<th scope="col">{shown}</th>' in body
    assert f'<th scope="col">{hidden}</th>' not in body


def test_it_keeps_the_starts_within_the_times_given(desk, doctor, consultation):
    response = _find(desk, practitioner=doctor.pk, day=TUESDAY.isoformat(), time_from="14:10", time_to="15:00")
    slots = response.context["days"][0]["rows"][0]["slots"]
    assert [_local(e["slot"].start)[-5:] for e in slots] == ["14:10", "14:30", "14:50"]  # the last ends at 15:10


def test_it_searches_one_practitioner(desk, doctor, other_doctor, consultation):
    response = _find(desk, practitioner=other_doctor.pk)
    assert {name for _day, name, _m, _a in _firsts(response)} == {"Dr Paul Bernard"}


def test_it_searches_the_practitioners_of_a_specialty(desk, doctor, other_doctor, consultation):
    physio = Specialty.objects.create(name="Kinésithérapie")
    third = practitioner_create(user_create("kine.roux", PRACTITIONER), "Marc Roux")
    third.specialty = physio
    third.save()
    consultation.practitioners.add(third)
    response = _find(desk, specialty=physio.pk)
    assert {name for _day, name, _m, _a in _firsts(response)} == {"Marc Roux"}
    everyone = _find(desk)
    assert {name for _day, name, _m, _a in _firsts(everyone)} == {"Dr Claire Martin", "Dr Paul Bernard", "Marc Roux"}


def test_it_searches_those_who_offer_the_type(desk, doctor, other_doctor, consultation, long_visit):
    response = _find(desk, appointment_type=long_visit.pk)
    assert {name for _day, name, _m, _a in _firsts(response)} == {"Dr Claire Martin"}
    slots = response.context["days"][0]["rows"][0]
    assert slots["morning"]["slot"].end - slots["morning"]["slot"].start == datetime.timedelta(minutes=40)


def test_it_takes_the_practitioners_first_type_when_none_is_given(desk, doctor, other_doctor, consultation):
    only_bernard = make_type(other_doctor, name="Acupuncture", minutes=30)
    assert _find(desk, practitioner=other_doctor.pk).context["form"].cleaned_data["appointment_type"] == only_bernard
    assert _find(desk, practitioner=doctor.pk).context["form"].cleaned_data["appointment_type"] == consultation


def test_it_leaves_out_inactive_practitioners_and_absences(desk, doctor, other_doctor, consultation):
    other_doctor.is_active = False
    other_doctor.save()
    Absence.objects.create(practitioner=doctor, start=at(DAY, 0), end=at(TUESDAY, 12))
    Absence.objects.create(practitioner=None, start=at(TUESDAY, 16), end=at(TUESDAY, 19), kind="closure")
    response = _find(desk)
    assert _firsts(response)[0] == (TUESDAY, "Dr Claire Martin", None, "13:00")
    day = _find(desk, day=TUESDAY.isoformat()).context["days"][0]["rows"][0]["slots"]
    assert _local(day[-1]["slot"].start) == "2030-03-05 15:40"  # the practice closes at 16:00


def test_a_cancelled_appointment_frees_its_slot(desk, doctor, consultation, patient):
    appointment = book(doctor, patient, consultation, at(DAY, 8))
    assert _firsts(_find(desk, practitioner=doctor.pk))[0][2] == "08:20"
    with system_context("tests"):
        services.appointment_cancel(appointment=appointment, reason="Empêchement", actor=None)
    assert _firsts(_find(desk, practitioner=doctor.pk))[0][2] == "08:00"


# ---------------------------------------------------------------------------------------------
# Filters combined: "a follow-up with Dr Martin next Tuesday afternoon"


def test_it_answers_dr_martin_next_tuesday_afternoon(desk, doctor, other_doctor, consultation, patient):
    book(doctor, patient, consultation, at(TUESDAY + datetime.timedelta(days=7), 13))
    next_tuesday = TUESDAY + datetime.timedelta(days=7)
    response = _find(
        desk,
        practitioner=doctor.pk,
        weekdays="1",
        part="afternoon",
        from_date=(DAY + datetime.timedelta(3)).isoformat(),
    )
    firsts = _firsts(response)
    assert firsts[0] == (next_tuesday, "Dr Claire Martin", None, "13:20")
    assert all(day.weekday() == 1 for day, *_rest in firsts)
    link = response.context["days"][0]["rows"][0]["afternoon"]["url"]
    query = parse_qs(urlsplit(link).query)
    assert query == {
        "practitioner": [str(doctor.pk)],
        "type": [str(consultation.pk)],
        "start": ["2030-03-12T13:20:00+01:00"],
    }


def test_a_slot_opens_the_booking_page_filled_in_with_the_patient(desk, doctor, consultation, patient):
    response = _find(desk, practitioner=doctor.pk, part="afternoon", patient=str(patient.pk))
    link = response.context["days"][0]["rows"][0]["afternoon"]["url"]
    assert parse_qs(urlsplit(link).query)["patient"] == [str(patient.pk)]
    assert "the record you came from" in response.content.decode()
    page = desk.get(link)
    body = page.content.decode()
    assert f'<option value="{doctor.pk}" selected>' in body
    assert f'<option value="{consultation.pk}" selected>' in body
    assert 'value="2030-03-04"' in body
    assert 'value="13:00"' in body
    assert f'value="{patient.pk}" checked' in body
    # The finder carried the id only; the booking page shows (and so decrypts) who is picked.
    assert {(e.path, tuple(e.fields)) for e in AuditEvent.objects.filter(event_type=EventType.READ)} == {
        (reverse("scheduling:book"), ("birth_date", "first_names", "last_name"))
    }


def test_the_more_link_shows_every_slot_of_that_day(desk, doctor, other_doctor, consultation):
    response = _find(desk, part="morning")
    row = response.context["days"][0]["rows"][0]
    assert row["more"] == 11  # 12 morning slots from 8:00 to 11:40, the first shown
    day = desk.get(row["more_url"])
    slots = day.context["days"][0]["rows"][0]["slots"]
    assert len(slots) == 12
    assert len(day.context["days"][0]["rows"]) == 1  # that practitioner
    assert day.context["days_url"]
    body = day.content.decode()
    assert "Back to the following days" in body


def test_later_days_go_on_from_the_day_after_the_page(desk, doctor, consultation):
    response = _find(desk, practitioner=doctor.pk)
    last = response.context["days"][-1]["day"]
    assert last == DAY + datetime.timedelta(days=finder.DAYS_SHOWN - 1)
    later = desk.get(response.context["later_url"])
    assert later.context["days"][0]["day"] == last + datetime.timedelta(days=1)


# ---------------------------------------------------------------------------------------------
# Nothing found, the 8-week window, bounded work


def test_it_says_so_when_nothing_is_free_in_eight_weeks(desk, doctor, consultation):
    Absence.objects.create(practitioner=doctor, start=at(DAY, 0), end=at(DAY + datetime.timedelta(days=70), 0))
    response = _find(desk, practitioner=doctor.pk)
    results = response.context["results"]
    assert results.days == []
    assert results.searched_until == DAY + datetime.timedelta(days=finder.SEARCH_DAYS - 1)
    body = response.content.decode()
    assert "No free slot from" in body
    assert "Search the next 8 weeks" in body
    later = desk.get(response.context["later_url"])
    assert later.context["results"].first == DAY + datetime.timedelta(days=finder.SEARCH_DAYS)


def test_a_practitioner_of_no_specialty_searched_finds_nothing_without_error(desk, doctor, consultation):
    empty = Specialty.objects.create(name="Dermatologie")
    response = _find(desk, specialty=empty.pk)
    assert response.context["form"].is_valid()
    assert response.context["days"] == []
    assert "0 practitioners offer it" in response.content.decode()


def test_the_search_is_bounded_in_queries_whatever_it_finds(db, doctor, other_doctor, consultation):
    query = finder.SlotQuery(appointment_type=consultation, practitioners=[doctor, other_doctor], first=DAY)
    now = at(DAY, 7)
    with CaptureQueriesContext(connection) as full_page:
        found = finder.slot_search(query, now=now, last_day=LAST_DAY)
    assert found.full
    assert len(full_page.captured_queries) == 3  # hours, absences, appointments
    for practitioner in (doctor, other_doctor):
        Absence.objects.create(practitioner=practitioner, start=at(DAY, 0), end=at(DAY + datetime.timedelta(90), 0))
    with CaptureQueriesContext(connection) as nothing:
        found = finder.slot_search(query, now=now, last_day=LAST_DAY)
    assert found.days == []
    assert (found.searched_until - found.first).days == finder.SEARCH_DAYS - 1
    assert len(nothing.captured_queries) == 1 + 2 * (finder.SEARCH_DAYS // finder.CHUNK_DAYS)


def test_the_page_costs_the_same_queries_for_two_or_six_practitioners(desk, doctor, other_doctor, consultation):
    patient = make_patient(email="", nir="")
    with CaptureQueriesContext(connection) as two:
        _find(desk)
    for number in range(4):
        extra = practitioner_create(user_create(f"dr.extra{number}", PRACTITIONER), f"Dr Extra {number}")
        consultation.practitioners.add(extra)
        for hour in (8, 9, 10, 14, 15):
            book(extra, patient, consultation, at(DAY, hour))
    with CaptureQueriesContext(connection) as six:
        response = _find(desk)
    assert len({row["practitioner"].pk for group in response.context["days"] for row in group["rows"]}) == 6
    assert len(six.captured_queries) == len(two.captured_queries)
    _no_reads()


# ---------------------------------------------------------------------------------------------
# DST change days: slots of real length, shown at wall-clock time


@pytest.mark.parametrize(("day", "slots"), [(AUTUMN, 12), (SPRING, 6)], ids=["autumn", "spring"])
def test_slots_on_a_dst_night_last_their_duration(desk, practitioner, day, slots):
    """A practitioner on call 01:00-04:00 on the night of the change: 4 real hours in autumn, 2 in spring."""
    doctor = practitioner_create(practitioner, "Dr Claire Martin", days=(6,), hours=((1, 0, 4, 0),))
    make_type(doctor, minutes=20)
    response = _find(desk, practitioner=doctor.pk, day=day.isoformat())
    found = [entry["slot"] for entry in response.context["days"][0]["rows"][0]["slots"]]
    assert len(found) == slots
    assert all(s.end - s.start == datetime.timedelta(minutes=20) for s in found)
    assert all(b.start == a.end for a, b in zip(found, found[1:], strict=False))
    offsets = [
        parse_qs(urlsplit(entry["url"]).query)["start"][0][-6:]
        for entry in response.context["days"][0]["rows"][0]["slots"]
    ]
    if day == AUTUMN:
        assert offsets[0] == "+02:00"
        assert offsets[-1] == "+01:00"
    else:
        assert _local(found[0].start)[-5:] == "01:00"
        assert _local(found[3].start)[-5:] == "03:00"


@pytest.mark.parametrize("day", [AUTUMN, SPRING], ids=["autumn", "spring"])
def test_the_afternoon_of_a_dst_day_starts_at_noon_wall_clock(secretary, doctor, consultation, day, clock):
    clock.move_to(at(day - datetime.timedelta(days=1), 7))
    response = _find(client_for(secretary), practitioner=doctor.pk, part="afternoon", from_date=day.isoformat())
    group = response.context["days"][0]
    slot = group["rows"][0]["afternoon"]["slot"]
    assert group["day"] == day
    assert _local(slot.start) == f"{day.isoformat()} 13:00"
    assert slot.start.utcoffset() == datetime.timedelta(0)  # stored and stepped in UTC
    assert slot.start.astimezone(datetime.UTC).hour == (12 if day == AUTUMN else 11)


# ---------------------------------------------------------------------------------------------
# Bad input comes back with errors, never a 500


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from_date": "2030-02-31"}, "from_date"),
        ({"from_date": "9999-01-01"}, "from_date"),
        ({"weekdays": "9"}, "weekdays"),
        ({"weekdays": "monday"}, "weekdays"),
        ({"part": "evening"}, "part"),
        ({"time_from": "25:00"}, "time_from"),
        ({"time_from": "15:00", "time_to": "14:00"}, "time_to"),
        ({"practitioner": "x"}, "practitioner"),
        ({"practitioner": "9" * 30}, "practitioner"),
        ({"appointment_type": "x"}, "appointment_type"),
        ({"specialty": "0"}, "specialty"),
        ({"patient": "not-a-uuid"}, "patient"),
        ({"day": "tomorrow"}, "day"),
    ],
)
def test_it_comes_back_with_an_error_for_bad_input(desk, doctor, consultation, params, field):
    response = _find(desk, **params)
    assert field in response.context["form"].errors
    assert response.context["days"] == []
    assert 'class="errorlist' in response.content.decode()


def test_it_refuses_a_practitioner_outside_the_specialty_chosen(desk, doctor, consultation):
    other = Specialty.objects.create(name="Pédiatrie")
    response = _find(desk, practitioner=doctor.pk, specialty=other.pk)
    assert response.context["form"].errors["practitioner"] == ["This practitioner is not of the specialty chosen."]


def test_it_refuses_a_type_the_practitioner_does_not_offer(desk, other_doctor, long_visit):
    response = _find(desk, practitioner=other_doctor.pk, appointment_type=long_visit.pk)
    assert "does not offer" in response.content.decode()
    assert response.context["days"] == []


def test_it_says_when_no_type_is_set_up(desk, doctor):
    AppointmentType.objects.all().delete()
    response = _find(desk)
    assert response.context["form"].errors["appointment_type"] == [
        "Choose an appointment type (practice admins set them up in Administration)."
    ]


def test_the_booking_page_finds_a_slot_for_the_patient_picked(desk, doctor, consultation, patient):
    body = desk.get(f"{reverse('scheduling:book')}?patient={patient.pk}").content.decode()
    assert f'href="{URL}?patient={patient.pk}"' in body
    assert f'href="{URL}"' in desk.get(reverse("scheduling:book")).content.decode()
