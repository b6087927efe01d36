"""Read budgets (audit/budget.py): past its role's budget an account decrypts nothing more,
on every page; the page says so (429, no plaintext), the account is blocked until a practice
admin lifts it with a reason, the admins are mailed, and system jobs are not budgeted."""

import datetime
import io
import threading
import uuid

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection, connections
from django.template import Context, Template
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit import current
from audit.budget import ReadBudgetExceeded, budget_settle, read_tally_purge
from audit.chain import SQL_TAG
from audit.context import Actor, AuditContext, opened, system_context
from audit.models import AuditEvent, EventType, ReadBlock, ReadTally
from config.testing import DAY, at, book, client_for, make_doctor, make_patient, make_type
from patients.models import Patient

HOUR_BUDGET, DAY_BUDGET = 5, 8
ROLES = ("Secretary", "Practitioner", "Practice admin", "default")


@pytest.fixture
def tight(settings):
    """Every role may reach 5 new patients an hour and 8 a day."""
    settings.READ_BUDGETS = dict.fromkeys(ROLES, (HOUR_BUDGET, DAY_BUDGET))


def _patients(n: int, prefix: str = "Budget") -> list[Patient]:
    return [
        make_patient(last_name=f"{prefix}{chr(65 + i)}", first_names=f"Zélie{chr(65 + i)}", email="", nir="")
        for i in range(n)
    ]


def _names(patient: Patient) -> list[str]:
    with system_context("tests:names"):
        return [patient.last_name.casefold(), patient.first_names.casefold()]


def _shows_nothing_of(response, patients) -> bool:
    body = response.content.decode().casefold()
    return not any(name in body for p in patients for name in _names(p))


def _read_patients(user) -> set[str]:
    return set(
        AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk).values_list("patient_id", flat=True)
    )


def test_it_refuses_the_first_patient_past_the_hourly_budget_and_blocks_the_account(tight, secretary):
    patients = _patients(HOUR_BUDGET + 2)
    client = client_for(secretary)
    for patient in patients[:HOUR_BUDGET]:
        assert client.get(patient.get_absolute_url()).status_code == 200

    refused = client.get(patients[HOUR_BUDGET].get_absolute_url())
    assert refused.status_code == 429
    assert "no-store" in refused["Cache-Control"]
    assert "read limit" in refused.content.decode()
    assert _shows_nothing_of(refused, patients)

    block = ReadBlock.objects.get(user_id=secretary.pk, lifted_at__isnull=True)
    assert (block.window, block.patients_read, block.budget, block.role) == (
        "hour",
        HOUR_BUDGET,
        HOUR_BUDGET,
        "Secretary",
    )
    [event] = AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK)
    assert event.actor_user_id == secretary.pk
    assert event.extra["window"] == "hour"
    assert event.extra["budget"] == HOUR_BUDGET
    assert _read_patients(secretary) == {p.pk for p in patients[:HOUR_BUDGET]}

    # The block holds across requests and sessions, even for a patient read before it.
    assert client.get(patients[0].get_absolute_url()).status_code == 429
    assert client_for(secretary).get(patients[HOUR_BUDGET + 1].get_absolute_url()).status_code == 429
    assert ReadBlock.objects.filter(user_id=secretary.pk).count() == 1
    assert AuditEvent.objects.filter(event_type=EventType.BUDGET_BLOCK).count() == 1
    assert _read_patients(secretary) == {p.pk for p in patients[:HOUR_BUDGET]}


def test_re_reading_a_patient_costs_nothing(tight, secretary):
    patients = _patients(HOUR_BUDGET)
    client = client_for(secretary)
    for _round in range(3):
        for patient in patients:
            assert client.get(patient.get_absolute_url()).status_code == 200
    assert not ReadBlock.objects.exists()


def test_the_hour_rolls_and_the_day_holds(tight, secretary):
    patients = _patients(DAY_BUDGET + 1)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        client = client_for(secretary)
        for patient in patients[:HOUR_BUDGET]:
            assert client.get(patient.get_absolute_url()).status_code == 200

        # Two hours later (a new login: the idle session has expired meanwhile).
        clock.shift(datetime.timedelta(hours=2))
        client = client_for(secretary)
        for patient in patients[HOUR_BUDGET:DAY_BUDGET]:
            assert client.get(patient.get_absolute_url()).status_code == 200
        refused = client.get(patients[DAY_BUDGET].get_absolute_url())
        assert refused.status_code == 429
        block = ReadBlock.objects.get()
        assert (block.window, block.patients_read, block.budget) == ("day", DAY_BUDGET, DAY_BUDGET)

        # A day later the reads have left the window, but the block stays until it is lifted.
        clock.shift(datetime.timedelta(hours=25))
        assert client_for(secretary).get(patients[DAY_BUDGET].get_absolute_url()).status_code == 429


@pytest.fixture
def clinic(practitioner):
    """Two patients with an appointment each on DAY: `seen` (read first) and `over` (past the budget)."""
    doctor = make_doctor(practitioner, "Dr Claire Martin")
    kind = make_type(doctor)
    seen, over = _patients(2, prefix="Agenda")
    seen_appt = book(doctor, seen, kind, at(DAY, 9), reason="Motif connu")
    over_appt = book(doctor, over, kind, at(DAY, 10), reason="Motif secret")
    return {"seen": seen, "over": over, "seen_appt": seen_appt, "over_appt": over_appt, "doctor": doctor, "kind": kind}


def _todays_list(c):
    """The patient list shows today's patients: give `over` an appointment today."""
    start = timezone.localtime().replace(hour=23, minute=0, second=0, microsecond=0)
    book(c["doctor"], c["over"], c["kind"], start, reason="Motif du jour", force=True)
    return "get", reverse("patients:list"), None


PAGES = {
    "patient page": ("secretary", lambda c: ("get", c["over"].get_absolute_url(), None)),
    "patient list": ("secretary", _todays_list),
    "patient search": ("secretary", lambda c: ("post", reverse("patients:list"), {"last_name": "agendab"})),
    "day view": ("secretary", lambda c: ("get", reverse("scheduling:day", args=[DAY]), None)),
    "appointment page": (
        "secretary",
        lambda c: ("get", reverse("scheduling:appointment", args=[c["over_appt"].pk]), None),
    ),
    "admin patient page": (
        "practice_admin",
        lambda c: ("get", reverse("admin:patients_patient_change", args=[c["over"].pk]), None),
    ),
    "admin patient list": (
        "practice_admin",
        lambda c: ("get", reverse("admin:patients_patient_changelist") + "?q=agendab,zelieb", None),
    ),
}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_that_decrypts_is_refused_past_the_budget(page, request, settings, clinic):
    """Budget of one patient: the account has read `seen`; any page showing `over` is refused."""
    persona, make = PAGES[page]
    user = request.getfixturevalue(persona)
    settings.READ_BUDGETS = dict.fromkeys(ROLES, (1, 1))
    client = client_for(user)
    client.raise_request_exception = True
    first = client.get(clinic["seen"].get_absolute_url())
    assert first.status_code == 200

    method, url, data = make(clinic)
    response = getattr(client, method)(url, data) if data else getattr(client, method)(url)
    assert response.status_code == 429, page
    assert _shows_nothing_of(response, [clinic["seen"], clinic["over"]])
    assert "Motif" not in response.content.decode()
    assert ReadBlock.objects.filter(user_id=user.pk, lifted_at__isnull=True).exists()
    assert str(clinic["over"].pk) not in {str(p) for p in _read_patients(user)}


def test_a_template_cannot_swallow_the_refusal(tight, secretary):
    """Django's templates turn some exceptions into empty strings; not this one."""
    patients = _patients(HOUR_BUDGET + 1)
    template = Template(
        "{% for p in patients %}{% if p.last_name %}{{ p.first_names|default:'-' }}{% endif %}{% endfor %}"
    )
    ctx = AuditContext(purpose="tests", actor=Actor.for_user(secretary))
    with pytest.raises(ReadBudgetExceeded), opened(ctx):
        template.render(Context({"patients": Patient.objects.filter(pk__in=[p.pk for p in patients])}))
    assert ReadBlock.objects.filter(user_id=secretary.pk).exists()  # written as the context closed


def test_system_jobs_are_not_budgeted(tight, secretary):
    patients = _patients(DAY_BUDGET + 2)
    with system_context("tests:export"):
        names = [p.last_name for p in Patient.objects.all()]
    assert len(names) == len(patients)
    assert not ReadBlock.objects.exists()


def test_parallel_requests_cannot_send_more_than_one_budget(tight, secretary):
    """Two requests of one account, each under budget on its own: the one that re-checks last
    sees both and is withheld (the block is opened); the other one's patients were sent."""
    patients = _patients(8)
    first = AuditContext(purpose="tests", actor=Actor.for_user(secretary))
    second = AuditContext(purpose="tests", actor=Actor.for_user(secretary))
    token = current.activate(first)
    try:
        [p.last_name for p in Patient.objects.filter(pk__in=[p.pk for p in patients[:4]])]
        inner = current.activate(second)
        try:
            [p.last_name for p in Patient.objects.filter(pk__in=[p.pk for p in patients[4:]])]
        finally:
            current.deactivate(inner)
        first.flush()
        assert budget_settle(first) is None  # the second one's reads are not written yet
    finally:
        current.deactivate(token)
    token = current.activate(second)
    try:
        second.flush()
        refusal = budget_settle(second)
    finally:
        current.deactivate(token)
    assert refusal is not None
    assert refusal.window == "hour"
    assert refusal.patients_read == 8
    assert ReadBlock.objects.get().patients_read == 8


def test_the_block_is_mailed_to_the_practice_admins(
    tight, secretary, practice_admin, mailoutbox, eager, django_capture_on_commit_callbacks
):
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    patients = _patients(HOUR_BUDGET + 1)
    client = client_for(secretary)
    for patient in patients[:HOUR_BUDGET]:
        client.get(patient.get_absolute_url())
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(patients[-1].get_absolute_url()).status_code == 429
    [mail] = mailoutbox
    assert mail.to == ["alice@clinic.example"]
    assert "Read budget exceeded" in mail.subject
    assert "sophie.secretary" in mail.body
    assert not any(name in mail.body.casefold() for p in patients for name in _names(p))


def _block(user, **overrides) -> ReadBlock:
    data = {
        "user_id": user.pk,
        "username": user.username,
        "role": "Secretary",
        "blocked_at": timezone.now(),
        "window": "hour",
        "patients_read": 5,
        "budget": 5,
    }
    return ReadBlock.objects.create(**{**data, **overrides})


def test_a_practice_admin_lifts_a_block_with_a_reason(tight, secretary, practice_admin):
    patients = _patients(HOUR_BUDGET + 1)
    client = client_for(secretary)
    for patient in patients[:HOUR_BUDGET]:
        client.get(patient.get_absolute_url())
    assert client.get(patients[-1].get_absolute_url()).status_code == 429
    block = ReadBlock.objects.get()

    admin = client_for(practice_admin)
    url = reverse("admin:audit_readblock_change", args=[block.pk])
    assert admin.get(reverse("admin:audit_readblock_changelist")).status_code == 200
    page = admin.get(url)
    assert page.status_code == 200
    assert 'name="lift_reason"' in page.content.decode()

    refused = admin.post(url, {"lift_reason": "   "})
    assert refused.status_code == 200  # the form again, with its error
    block.refresh_from_db()
    assert block.lifted_at is None
    assert not AuditEvent.objects.filter(event_type=EventType.BUDGET_LIFTED).exists()

    reason = "Called Sophie: she prepared the vaccination campaign mailing."
    assert admin.post(url, {"lift_reason": reason}).status_code == 302
    block.refresh_from_db()
    assert block.lifted_at is not None
    assert block.lifted_by == "alice.admin"
    assert block.lift_reason == reason
    [event] = AuditEvent.objects.filter(event_type=EventType.BUDGET_LIFTED)
    assert event.actor_user_id == practice_admin.pk
    assert event.extra["user_id"] == secretary.pk
    assert event.extra["reason"] == reason

    # The count starts again from the lift: the secretary carries on, up to a new budget.
    assert client.get(patients[-1].get_absolute_url()).status_code == 200
    assert client.get(patients[0].get_absolute_url()).status_code == 200

    # A lifted block is history: read-only.
    assert 'name="lift_reason"' not in admin.get(url).content.decode()


def test_nobody_lifts_their_own_block(practice_admin):
    block = _block(practice_admin, role="Practice admin")
    admin = client_for(practice_admin)
    url = reverse("admin:audit_readblock_change", args=[block.pk])
    assert 'name="lift_reason"' not in admin.get(url).content.decode()
    admin.post(url, {"lift_reason": "It was me, honestly."})
    block.refresh_from_db()
    assert block.lifted_at is None


def test_a_secretary_cannot_see_or_lift_blocks(secretary, practitioner):
    block = _block(practitioner)
    client = client_for(secretary)
    assert client.get(reverse("admin:audit_readblock_change", args=[block.pk])).status_code in (302, 403)


# The counter behind the check (audit.ReadTally) ------------------------------------------------


def _tally(user, patient_ids, *, first, last) -> None:
    ReadTally.objects.bulk_create(
        ReadTally(user_id=user.pk, patient_id=pk, first_read_at=first, last_read_at=last) for pk in patient_ids
    )


def _page_queries(client, url) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return [q["sql"] for q in queries.captured_queries]


def test_the_check_costs_the_same_after_a_thousand_patients_today(secretary):
    """The account's reads of the day are counted on an index, not loaded: a patient page
    makes the same queries whether the account read nobody or 1,000 patients today."""
    fresh, busy = _patients(2)
    client = client_for(secretary)
    quiet = _page_queries(client, fresh.get_absolute_url())
    now = timezone.now()
    _tally(secretary, [uuid.uuid4() for _ in range(1000)], first=now - datetime.timedelta(hours=3), last=now)
    heavy = _page_queries(client_for(secretary), busy.get_absolute_url())
    assert len(heavy) == len(quiet)
    # Nothing reads the trail to decide (the chain's own tail read aside): the tally's count does.
    reads_of_trail = [
        sql
        for sql in heavy
        if "audit_auditevent" in sql
        # The explanations read the user's own recent writes (a partial index of the trail's writes).
        and not sql.lstrip().startswith(("INSERT", SQL_TAG.strip(), "WITH", "/* read admission */"))
    ]
    assert reads_of_trail == []


def test_near_the_budget_known_patients_stay_free_and_new_ones_count_once(tight, secretary):
    """Four patients read, then pages that mix them with new ones: the account reaches
    exactly its hourly budget of five new patients, whatever it re-opens."""
    known, new = _patients(4), _patients(3, prefix="Nouveau")
    client = client_for(secretary)
    for patient in known:
        assert client.get(patient.get_absolute_url()).status_code == 200
    ctx = AuditContext(purpose="tests", actor=Actor.for_user(secretary))
    with opened(ctx):
        assert len([p.last_name for p in Patient.objects.filter(pk__in=[p.pk for p in [*known, new[0]]])]) == 5
    assert client.get(known[2].get_absolute_url()).status_code == 200
    assert client.get(new[1].get_absolute_url()).status_code == 429
    assert ReadBlock.objects.get().window == "hour"
    assert _read_patients(secretary) == {p.pk for p in [*known, new[0]]}


def test_a_patient_last_read_over_a_day_ago_is_new_again(tight, secretary):
    """Day-old reads leave both windows: the patient counts as new (a fresh episode)."""
    old, *others = _patients(HOUR_BUDGET + 1)
    now = timezone.now()
    _tally(secretary, [old.pk], first=now - datetime.timedelta(hours=30), last=now - datetime.timedelta(hours=25))
    client = client_for(secretary)
    for patient in others[: HOUR_BUDGET - 1]:
        assert client.get(patient.get_absolute_url()).status_code == 200
    assert client.get(old.get_absolute_url()).status_code == 200  # the fifth new patient of the hour
    tally = ReadTally.objects.get(user_id=secretary.pk, patient_id=old.pk)
    assert tally.first_read_at == tally.last_read_at > now
    assert client.get(others[-1].get_absolute_url()).status_code == 429


def test_the_nightly_purge_keeps_the_last_day(secretary):
    now = timezone.now()
    recent, stale = uuid.uuid4(), uuid.uuid4()
    _tally(secretary, [recent], first=now - datetime.timedelta(hours=30), last=now - datetime.timedelta(hours=23))
    _tally(secretary, [stale], first=now - datetime.timedelta(hours=30), last=now - datetime.timedelta(hours=25))
    assert read_tally_purge() == 1
    assert set(ReadTally.objects.values_list("patient_id", flat=True)) == {recent}


@pytest.mark.django_db(transaction=True)
def test_parallel_readers_of_one_account_are_counted_once_each(secretary):
    """Eight requests of one account at once, outside any transaction as in production, over
    overlapping patients: each patient is in the tally once, and the chain verifies."""
    patients = _patients(12)
    barrier = threading.Barrier(8)
    errors = []

    def reader(n: int) -> None:
        try:
            barrier.wait()
            for start in range(0, 12, 3):
                ctx = AuditContext(purpose="tests", actor=Actor.for_user(secretary))
                with opened(ctx):
                    chosen = patients[(start + n) % 12 : (start + n) % 12 + 3]
                    assert all(p.last_name for p in Patient.objects.filter(pk__in=[p.pk for p in chosen]))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    tallied = list(ReadTally.objects.filter(user_id=secretary.pk).values_list("patient_id", flat=True))
    assert sorted(tallied) == sorted(_read_patients(secretary))
    assert len(tallied) == len(set(tallied))
    assert not ReadBlock.objects.exists()
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "chain is intact" in out.getvalue()


def test_a_re_read_keeps_the_patient_counted_for_another_day(secretary):
    """A patient read 23 h 50 ago and again now stays in the day's count a day from now; a
    patient read a few minutes ago is not rewritten (the tally moves in TALLY_STEP steps)."""
    yesterday, lately = _patients(2)
    now = timezone.now()
    old = now - datetime.timedelta(hours=23, minutes=50)
    recent = now - datetime.timedelta(minutes=5)
    _tally(secretary, [yesterday.pk], first=old, last=old)
    _tally(secretary, [lately.pk], first=recent, last=recent)
    client = client_for(secretary)
    for patient in (yesterday, lately):
        assert client.get(patient.get_absolute_url()).status_code == 200
    moved = ReadTally.objects.get(patient_id=yesterday.pk)
    assert moved.first_read_at == old
    assert moved.last_read_at > now
    assert ReadTally.objects.get(patient_id=lately.pk).last_read_at == recent
