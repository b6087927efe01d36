"""The 2020 incident, replayed against the read budgets (docs/design.md, invariant 2): a script with
a logged-in secretary session asks for 6,128 appointment and patient pages, scraping the lists
and walking ids. It is refused after one budget of patients, the admins are mailed, and the
breach scope of that session names exactly the patients decrypted. And the other side: a
secretary's real busy day at a 10-practitioner clinic never meets the budget."""

import datetime
import re
import time

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from audit.context import SESSION_KEY
from audit.models import AuditEvent, EventType, ReadBlock
from config.testing import at, client_for, make_doctor, make_patient, make_type
from investigations.reports import breach_scope
from practice.roles import SECRETARY
from scheduling.models import Appointment

PAGES = 6_128
# After the block, one page in this many is asked (see the replay).
REFUSED_SAMPLE = 10
PATIENTS = 1_500
PRACTITIONERS = 10
PER_DAY = 30  # 20-minute appointments, 8:00-18:00 for the replay's purpose
LINK = re.compile(r'href="/(appointments|patients)/([0-9a-f-]{36})/"')


def _clinic(*, patients: int, appointments: int, first_day: datetime.date):
    """Ten practitioners and their days of appointments from `first_day` on, one patient per
    appointment drawn in turn. Patients through the service (encrypted, blind-indexed);
    appointments as raw rows in bulk on purpose (their reason is sealed to each row like any
    save): 4,700 bookings through the service would cost minutes and as many CREATE events in
    the trail the replay reads."""
    doctors = [make_doctor(User.objects.create_user(f"dr.replay{n}"), f"Dr Replay {n:02d}") for n in range(10)]
    kind = make_type(*doctors)
    people = [
        make_patient(last_name=f"Replay{n:04d}", first_names="Camille", email="", nir="", phone_mobile="")
        for n in range(patients)
    ]
    rows = []
    for n in range(appointments):
        day_index, rest = divmod(n, PRACTITIONERS * PER_DAY)
        doctor_index, slot = divmod(rest, PER_DAY)
        start = at(first_day + datetime.timedelta(days=day_index), 8) + datetime.timedelta(minutes=20 * slot)
        rows.append(
            Appointment(
                practitioner=doctors[doctor_index],
                patient=people[n % patients],
                appointment_type=kind,
                start=start,
                end=start + datetime.timedelta(minutes=20),
                reason=f"Motif {n}",
            )
        )
    Appointment.objects.bulk_create(rows, batch_size=500)
    return people, rows


def _session_reads(session: str) -> set:
    return set(
        AuditEvent.objects.filter(event_type=EventType.READ, session=session)
        .exclude(patient_id=None)
        .values_list("patient_id", flat=True)
    )


@pytest.mark.slow
def test_the_incident_replayed_is_stopped_after_one_budget(
    secretary, practice_admin, mailoutbox, eager, django_capture_on_commit_callbacks
):
    hour_budget, _day_budget = settings.READ_BUDGETS[SECRETARY]
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    first_day = timezone.localdate() + datetime.timedelta(days=1)
    days = 16
    people, appointments = _clinic(
        patients=PATIENTS, appointments=days * PRACTITIONERS * PER_DAY - 100, first_day=first_day
    )
    client = client_for(secretary)
    session = client.session[SESSION_KEY]

    # The script's plan: the lists first (the patient list, every day of the agenda), then
    # every appointment page and every patient page, by id, up to 6,128 pages.
    plan = [reverse("patients:list")]
    plan += [reverse("scheduling:day", args=[first_day + datetime.timedelta(days=d)]) for d in range(days)]
    plan += [reverse("scheduling:appointment", args=[a.pk]) for a in appointments]
    plan += [p.get_absolute_url() for p in people]
    plan = plan[:PAGES]
    assert len(plan) == PAGES

    statuses: dict[int, int] = {}
    scraped: set[str] = set()
    first_refusal = None
    tried = 0
    started = time.perf_counter()
    with django_capture_on_commit_callbacks(execute=True):
        for n, url in enumerate(plan):
            # Once blocked, every page is refused: one in REFUSED_SAMPLE of the rest of the plan,
            # and its last page, are asked (each is refused alike, and the whole 5,000 would
            # cost minutes of the suite for nothing more).
            if first_refusal is not None and (n - first_refusal) % REFUSED_SAMPLE and n != len(plan) - 1:
                continue
            tried += 1
            response = client.get(url)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                scraped.update(m.group(2) for m in LINK.finditer(response.content.decode()))
            elif response.status_code == 429 and first_refusal is None:
                first_refusal = n
            assert response.status_code in (200, 429), (url, response.status_code)
            if first_refusal is not None:
                assert response.status_code == 429, f"{url} answered after the block"
    elapsed = time.perf_counter() - started

    decrypted = _session_reads(session)
    print(
        f"\nincident replay: {tried} of the {PAGES} pages asked in {elapsed:.1f} s; refused from page "
        f"{first_refusal + 1} on; {len(decrypted)} patients decrypted; {len(scraped)} links scraped; "
        f"statuses {statuses}"
    )
    assert first_refusal is not None
    assert statuses[200] == first_refusal
    assert statuses[429] == tried - first_refusal > (PAGES - first_refusal) // REFUSED_SAMPLE
    assert 0 < len(decrypted) <= hour_budget
    assert scraped  # the lists worked until the budget ran out

    # The trail knows who did it; one block, one event, one mail.
    block = ReadBlock.objects.get(user_id=secretary.pk)
    assert block.lifted_at is None
    assert block.budget == hour_budget
    assert AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK, session=session).count() == 1
    [mail] = mailoutbox
    assert "Read budget exceeded" in mail.subject
    assert secretary.username in mail.body

    # Everything this session decrypted is in its reads: nothing decrypted elsewhere.
    assert set(AuditEvent.objects.filter(event_type=EventType.READ).values_list("session", flat=True)) == {session}

    scope = breach_scope(
        start=timezone.now() - datetime.timedelta(days=1),
        end=timezone.now() + datetime.timedelta(minutes=1),
        session=session,
    )
    assert set(scope.patient_ids) == decrypted


@pytest.mark.slow
def test_a_busy_day_at_the_front_desk_never_meets_the_budget(secretary, practitioner):
    """A 10-practitioner day (300 appointments) replayed by the front desk through its pages:
    the day view again and again, every appointment, every patient, arrivals and the waiting
    room, search for the next day's patients; then the next day's agenda to book ahead."""
    today = timezone.localdate()
    people, appointments = _clinic(patients=300 + 150, appointments=300 + 150, first_day=today)
    client = client_for(secretary)
    client.raise_request_exception = True
    day_url = reverse("scheduling:day", args=[today])
    pages = 0

    def get(url):
        nonlocal pages
        pages += 1
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return response

    todays = [a for a in appointments if timezone.localdate(a.start) == today]
    for n, appointment in enumerate(sorted(todays, key=lambda a: a.start)):
        if n % 15 == 0:
            get(day_url)
            get(reverse("scheduling:waiting_room"))
        get(reverse("scheduling:appointment", args=[appointment.pk]))
        get(appointment.patient.get_absolute_url())
        if n % 10 == 0:
            get(reverse("patients:list"))
    get(reverse("scheduling:day", args=[today + datetime.timedelta(days=1)]))
    for appointment in [a for a in appointments if a not in todays][:50]:
        get(reverse("scheduling:appointment", args=[appointment.pk]))

    assert not ReadBlock.objects.exists()
    assert not AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK).exists()
    read = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert read.values("patient_id").distinct().count() >= 300
    assert pages > 700, pages
