"""Anomaly signals (investigations/anomalies.py): what a practice admin sees when someone walks through
records, reads out of hours or outside their patients, scrapes lists or guesses ids; and what
they do not see on a normal busy day.

Scripted attacks go through the real pages (their timeline is now). Days that need a clock
(opening hours, baselines, a day of the front desk) are written to the trail as the pages
would write them, at chosen moments, and scanned over those moments."""

import datetime
import random
import uuid

import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import DatabaseError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit import middleware
from audit.context import SESSION_KEY
from audit.models import Anomaly, AnomalyCursor, AnomalyKind, AuditEvent, EventType, Severity
from config.testing import book, client_for, make_patient, make_practitioner, make_type, paris
from investigations import alerts, anomalies
from investigations.anomalies import anomalies_scan, anomaly_events
from investigations.tasks import anomalies_scan as anomalies_scan_task
from patients.models import BreakGlassGrant
from practice.models import Clinic

MONDAY = datetime.date(2026, 11, 16)
SUNDAY = datetime.date(2026, 11, 15)


@pytest.fixture(autouse=True)
def _no_cached_baselines():
    """Volume baselines are cached per account and day; ids repeat between tests."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def mailed_admin(practice_admin):
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    return practice_admin


def at(day: datetime.date, hour: int, minute: int = 0, second: float = 0) -> datetime.datetime:
    return paris(day.year, day.month, day.day, hour, minute) + datetime.timedelta(seconds=second)


class Trail:
    """Writes trail rows as the pages write them (context columns, purpose = the page's URL
    name), at chosen moments. Each call is one request."""

    def __init__(self):
        self.rows: list[AuditEvent] = []

    def page(self, user, when, patients, *, purpose="patients:detail", session=None, ip="192.0.2.10", kind=None):
        role = user.groups.values_list("name", flat=True).first() or "none"
        request_id = str(uuid.uuid4())
        for patient in patients:
            self.rows.append(
                AuditEvent(
                    occurred_at=when,
                    event_type=int(kind or EventType.READ),
                    actor_user_id=user.pk,
                    actor_username=user.username,
                    actor_role=role,
                    ip=ip,
                    request_id=request_id,
                    session=session if session is not None else f"s-{user.pk}",
                    path="/patients/x/",
                    purpose=purpose,
                    model_label="patients.Patient" if patient is not None else "scheduling.Appointment",
                    object_pk=str(getattr(patient, "pk", patient)) if patient is not None else "",
                    patient_id=getattr(patient, "pk", patient),
                    fields=["last_name"],
                )
            )
        return self

    def write(self, user, when, *, session=None, kind=EventType.CHANGE):
        self.page(user, when, [None], kind=kind, session=session, purpose="scheduling:status")
        return self

    def save(self):
        AuditEvent.objects.bulk_create(self.rows)
        self.rows = []


def scan_day(day: datetime.date, first_hour: int = 0, last_hour: int = 24):
    end = at(day, 0) + datetime.timedelta(hours=last_hour)
    return anomalies_scan(start=at(day, first_hour), end=end)


def found(**filters):
    return list(Anomaly.objects.filter(**filters).order_by("window_start", "kind"))


# ---------------------------------------------------------------------------------------------
# The attacker's side: through the real pages


def test_it_flags_a_script_walking_patient_pages_and_mails_the_admins_once(
    secretary, mailed_admin, eager, mailoutbox, django_capture_on_commit_callbacks, settings
):
    # The walk signal watches what the explanations let through: here, an allowance that does not
    # stop the walk first (audit/explain.py stops it at 20 unexplained patients by default).
    settings.READ_ALLOWANCES = {**settings.READ_ALLOWANCES, "Secretary": (100, 100)}

    clinic = Clinic.current()  # open around the clock: this test is about the walk, whatever the hour
    for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"):
        setattr(clinic, f"{day}_opens", datetime.time(0))
        setattr(clinic, f"{day}_closes", datetime.time(23, 59))
    clinic.save()
    people = [make_patient(last_name=f"Walk{n:03d}", email="", nir="", phone_mobile="") for n in range(64)]
    client = client_for(secretary)
    session = client.session[SESSION_KEY]
    # A script: one page after the other, at its own steady pace. The clock is moved, not
    # waited on, so the pace is the script's whatever the machine's load; the walk starts on
    # the minute, a minute or two ago, so its 5 seconds are in one clock hour of the scan.
    walk_start = timezone.now().replace(second=0, microsecond=0) - datetime.timedelta(minutes=1)
    with time_machine.travel(walk_start, tick=False) as clock:
        for person in people:
            assert client.get(person.get_absolute_url()).status_code == 200
            clock.shift(datetime.timedelta(milliseconds=80))

    with django_capture_on_commit_callbacks(execute=True):
        result = anomalies_scan_task.delay().get()
    assert result["alerts"] >= 1

    walks = found(kind=AnomalyKind.WALKING, session=session)
    assert walks
    assert max(a.severity for a in walks) == Severity.HIGH
    walk = max(walks, key=lambda a: a.patient_count)
    assert walk.username == secretary.username
    assert walk.details["writes"] == 0
    assert walk.details["gap_variation"] <= 0.5
    # The events behind it: this session's reads, of exactly the patients it walked.
    behind = {e.patient_id for w in walks for e in anomaly_events(w)}
    assert behind == {p.pk for p in people}
    assert {e.session for w in walks for e in anomaly_events(w)} == {session}

    [mail] = mailoutbox
    assert "Anomaly detected" in mail.subject
    assert mail.to == ["alice@clinic.example"]
    high = next(w for w in walks if w.severity == Severity.HIGH)
    assert reverse("investigations:anomaly", args=[high.pk]) in mail.body
    assert secretary.username in mail.body
    assert "Walk0" not in mail.body
    alert = AuditEvent.objects.get(event_type=EventType.ANOMALY)
    assert alert.pk == high.alert_event_id
    assert alert.actor_username == "system:anomalies_scan"

    page = client_for(mailed_admin).get(reverse("investigations:anomaly", args=[high.pk])).content.decode()
    assert "Variation of the gaps (0: machine-regular)" in page
    assert "Writes in the hour" in page

    # The next runs find the same: no new row, no second mail.
    rows = Anomaly.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        anomalies_scan_task.delay().get()
        anomalies.anomalies_scan(start=timezone.now() - datetime.timedelta(hours=2), end=timezone.now())
    assert Anomaly.objects.count() == rows
    assert len(mailoutbox) == 1
    assert AuditEvent.objects.filter(event_type=EventType.ANOMALY).count() == 1

    # The admin's page lists the events behind it, by patient id.
    page = client_for(mailed_admin).get(reverse("investigations:anomaly", args=[high.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert str(next(iter(anomaly_events(high))).patient_id) in body
    assert "Walk0" not in body  # ids only: the page decrypts nothing


def test_it_flags_a_session_guessing_ids_and_records_each_404_without_the_query(practitioner, practice_admin):
    make_practitioner(practitioner.username)
    client = client_for(practitioner)
    session = client.session[SESSION_KEY]
    for _n in range(50):
        assert client.get(f"/patients/{uuid.uuid4()}/?q=secret").status_code == 404

    misses = AuditEvent.objects.filter(event_type=EventType.NOT_FOUND)
    assert misses.count() == 50
    assert set(misses.values_list("session", flat=True)) == {session}
    assert all(path.startswith("/patients/") and "?" not in path for path in misses.values_list("path", flat=True))
    assert set(misses.values_list("actor_username", flat=True)) == {practitioner.username}

    anomalies_scan(start=timezone.now() - datetime.timedelta(hours=1), end=timezone.now())
    storms = found(kind=AnomalyKind.FAILURES, session=session)
    assert storms
    assert sum(a.event_count for a in storms) == 50
    assert max(a.severity for a in storms) >= Severity.MEDIUM
    storm = max(storms, key=lambda a: a.event_count)
    page = client_for(practice_admin).get(reverse("investigations:anomaly", args=[storm.pk])).content.decode()
    assert "Page not found: " in page
    assert {e.pk for a in storms for e in anomaly_events(a)} == set(misses.values_list("pk", flat=True))


def test_a_404_whose_record_fails_stays_a_404(practitioner, monkeypatch, caplog):
    def broken(**kwargs):
        raise DatabaseError("trail unavailable")

    monkeypatch.setattr(middleware, "audit_event_write", broken)
    client = client_for(practitioner)
    assert client.get(f"/patients/{uuid.uuid4()}/").status_code == 404
    assert "Could not record a page not found" in caplog.text


def test_anonymous_404s_are_not_recorded(db):
    assert Client().get("/no-such-page/").status_code == 404
    assert not AuditEvent.objects.filter(event_type=EventType.NOT_FOUND).exists()


# ---------------------------------------------------------------------------------------------
# The signals, on a clock


def test_a_normal_busy_day_gives_no_high_anomaly(secretary, roles):
    """Six practitioners and 120 appointments on a Monday; the front desk opens the day view
    at 8:00 and every hour, each appointment and patient at arrival, with status changes; the
    practitioners open their patients at their appointment times. Human pace, seeded."""
    rng = random.Random(6)
    doctors = [make_practitioner(f"dr.busy{n}", hours=((8, 0, 19, 0),)) for n in range(6)]
    kind = make_type(*doctors)
    people = [make_patient(last_name=f"Busy{n:03d}", email="", nir="", phone_mobile="") for n in range(120)]
    appointments = []
    for n, person in enumerate(people):
        doctor = doctors[n % 6]
        start = at(MONDAY, 8, 20 * (n // 6) % 60) + datetime.timedelta(hours=(20 * (n // 6)) // 60)
        appointments.append(book(doctor, person, kind, start, reason="Consultation"))
    trail = Trail()
    for hour in range(8, 19):
        trail.page(secretary, at(MONDAY, hour, 1), people, purpose="scheduling:day")
    for appointment in appointments:
        arrival = appointment.start - datetime.timedelta(minutes=rng.uniform(1, 12))
        trail.page(secretary, arrival, [appointment.patient], purpose="scheduling:appointment")
        trail.write(secretary, arrival + datetime.timedelta(seconds=rng.uniform(5, 40)))
        if rng.random() < 0.5:
            trail.page(secretary, arrival + datetime.timedelta(seconds=rng.uniform(40, 200)), [appointment.patient])
        doctor = appointment.practitioner.user
        trail.page(doctor, appointment.start + datetime.timedelta(seconds=rng.uniform(0, 90)), [appointment.patient])
        trail.page(doctor, appointment.start + datetime.timedelta(minutes=rng.uniform(2, 15)), [appointment.patient])
    trail.page(secretary, at(MONDAY, 19, 10), people[:5], purpose="patients:list")  # closing up, in the grace
    trail.save()

    result = scan_day(MONDAY)
    assert result.hours == 24
    assert not Anomaly.objects.filter(severity=Severity.HIGH).exists(), list(Anomaly.objects.values("kind", "summary"))
    assert not Anomaly.objects.exists(), list(Anomaly.objects.values("kind", "summary"))
    assert not AuditEvent.objects.filter(event_type=EventType.ANOMALY).exists()


def test_reads_outside_opening_hours_are_flagged_and_reads_inside_are_not(practitioner, secretary):
    patients = [uuid.uuid4() for _n in range(3)]
    Trail().page(secretary, at(MONDAY, 10, 5), patients).page(secretary, at(MONDAY, 22, 30), patients[:2]).page(
        secretary, at(SUNDAY, 10, 0), patients[2:]
    ).page(secretary, at(MONDAY, 7, 45), patients[:1]).save()  # 7:45: within the 30 minutes' grace

    scan_day(SUNDAY)
    scan_day(MONDAY)

    flagged = found(kind=AnomalyKind.OUT_OF_HOURS)
    assert [(a.window_start, a.patient_count, a.severity) for a in flagged] == [
        (at(SUNDAY, 10), 1, Severity.LOW),
        (at(MONDAY, 22), 2, Severity.LOW),
    ]
    assert {e.patient_id for e in anomaly_events(flagged[1])} == set(patients[:2])

    # The clinic's hours are the practice's to set: open on Monday evenings, nothing to see.
    clinic = Clinic.current()
    clinic.monday_closes = datetime.time(23)
    clinic.save()
    Anomaly.objects.all().delete()
    scan_day(MONDAY)
    assert not found(kind=AnomalyKind.OUT_OF_HOURS)


def test_a_practitioner_reading_a_patient_without_appointment_is_flagged(practitioner, secretary):
    doctor = make_practitioner(practitioner.username)
    kind = make_type(doctor)
    own, stranger, emergency = (make_patient(last_name=n, email="", nir="") for n in ("Own", "Stranger", "Urgent"))
    book(doctor, own, kind, at(MONDAY, 9), reason="Suivi")
    BreakGlassGrant.objects.create(
        user=practitioner,
        username=practitioner.username,
        patient=emergency,
        reason="Called by the emergency department",
        granted_at=at(MONDAY, 10),
        expires_at=at(MONDAY, 11),
    )
    Trail().page(practitioner, at(MONDAY, 10, 15), [own]).page(practitioner, at(MONDAY, 10, 20), [stranger]).page(
        practitioner, at(MONDAY, 10, 30), [emergency]
    ).page(secretary, at(MONDAY, 10, 40), [own, stranger, emergency]).save()

    scan_day(MONDAY, 8, 19)

    [anomaly] = found(kind=AnomalyKind.NO_APPOINTMENT)
    assert anomaly.username == practitioner.username
    assert anomaly.patient_count == 1
    assert anomaly.evidence["patient_ids"] == [str(stranger.pk)]
    assert [e.patient_id for e in anomaly_events(anomaly)] == [stranger.pk]
    assert not found(kind=AnomalyKind.NO_APPOINTMENT, user_id=secretary.pk)  # the front desk reads everyone


def test_many_patients_through_the_list_pages_are_flagged(secretary):
    patients = [uuid.uuid4() for _n in range(260)]
    trail = Trail()
    for page in range(0, 260, 50):  # paging through the patient list
        trail.page(secretary, at(MONDAY, 11, page // 10), patients[page : page + 50], purpose="patients:list")
    trail.save()

    scan_day(MONDAY, 8, 19)

    [anomaly] = found(kind=AnomalyKind.LIST_PAGES)
    assert anomaly.patient_count == 260
    assert anomaly.severity == Severity.MEDIUM


def test_volume_is_judged_against_the_users_own_busiest_hours(secretary):
    trail = Trail()
    for day in range(1, 15):  # two weeks of about 40 patients an hour, 9:00 to 11:00
        for hour in (9, 10, 11):
            when = at(MONDAY - datetime.timedelta(days=day), hour, 10)
            trail.page(secretary, when, [uuid.uuid4() for _n in range(40)], purpose="scheduling:day")
    trail.page(secretary, at(MONDAY, 10, 10), [uuid.uuid4() for _n in range(130)], purpose="scheduling:day")
    trail.page(secretary, at(MONDAY, 15, 10), [uuid.uuid4() for _n in range(45)], purpose="scheduling:day")
    trail.save()

    scan_day(MONDAY, 8, 19)

    [anomaly] = found(kind=AnomalyKind.VOLUME)
    assert anomaly.window_start == at(MONDAY, 10)
    assert anomaly.details["baseline_p95"] == 40
    assert anomaly.details["baseline_hours"] == 42
    assert anomaly.patient_count == 130
    assert anomaly.severity == Severity.MEDIUM


def test_the_scan_is_idempotent_and_a_shorter_rerun_shrinks_nothing(secretary):
    Trail().page(secretary, at(MONDAY, 22, 5), [uuid.uuid4()]).page(
        secretary, at(MONDAY, 22, 40), [uuid.uuid4(), uuid.uuid4()]
    ).save()

    anomalies_scan(start=at(MONDAY, 22), end=at(MONDAY, 22, 30))
    [first] = found()
    assert first.patient_count == 1
    anomalies_scan(start=at(MONDAY, 22, 25), end=at(MONDAY, 23))
    anomalies_scan(start=at(MONDAY, 22), end=at(MONDAY, 23))
    [grown] = found()
    assert grown.pk == first.pk
    assert grown.patient_count == 3
    anomalies_scan(start=at(MONDAY, 22), end=at(MONDAY, 22, 30))
    [same] = found()
    assert same.patient_count == 3
    assert Anomaly.objects.count() == 1


def test_the_periodic_run_continues_from_its_cursor(secretary):
    now = timezone.now()
    first = anomalies.anomalies_scan_due(now=now)
    assert first.start == now - datetime.timedelta(hours=1)
    later = now + datetime.timedelta(minutes=5)
    second = anomalies.anomalies_scan_due(now=later)
    assert second.start == now - anomalies.SETTLE
    assert second.end == later
    assert AnomalyCursor.objects.get().scanned_until == later


# ---------------------------------------------------------------------------------------------
# The pages


def _some_anomaly(secretary) -> Anomaly:
    Trail().page(secretary, at(MONDAY, 22, 5), [uuid.uuid4()]).save()
    scan_day(MONDAY)
    return Anomaly.objects.get()


@pytest.mark.parametrize("persona", ["secretary", "practitioner"])
def test_only_practice_admins_open_the_pages_or_review(persona, request, secretary):
    anomaly = _some_anomaly(secretary)
    client = client_for(request.getfixturevalue(persona))
    for url in (
        reverse("investigations:anomalies"),
        reverse("investigations:anomaly", args=[anomaly.pk]),
        reverse("investigations:read_chart"),
    ):
        assert client.get(url).status_code == 403, url
    response = client.post(reverse("investigations:anomaly_review", args=[anomaly.pk]), {"note": "Nothing to see here"})
    assert response.status_code == 403
    assert client.post(reverse("investigations:anomalies_scan")).status_code == 403
    anomaly.refresh_from_db()
    assert anomaly.reviewed_at is None


def test_a_practice_admin_filters_and_reviews_an_anomaly(practice_admin, secretary):
    anomaly = _some_anomaly(secretary)
    client = client_for(practice_admin)

    listed = client.get(reverse("investigations:anomalies"), {"kind": "out_of_hours", "reviewed": "no"})
    assert listed.status_code == 200
    assert reverse("investigations:anomaly", args=[anomaly.pk]) in listed.content.decode()
    assert (
        reverse("investigations:anomaly", args=[anomaly.pk])
        not in client.get(reverse("investigations:anomalies"), {"kind": "walking"}).content.decode()
    )

    refused = client.post(reverse("investigations:anomaly_review", args=[anomaly.pk]), {"note": ""})
    assert refused.status_code == 400
    response = client.post(
        reverse("investigations:anomaly_review", args=[anomaly.pk]), {"note": "Late call to the lab"}
    )
    assert response.status_code == 302
    anomaly.refresh_from_db()
    assert anomaly.reviewed_by == practice_admin.username
    assert anomaly.review_note == "Late call to the lab"
    event = AuditEvent.objects.get(event_type=EventType.CHANGE, model_label="audit.Anomaly")
    assert event.actor_username == practice_admin.username
    assert event.object_pk == str(anomaly.pk)
    assert (
        reverse("investigations:anomaly", args=[anomaly.pk])
        not in client.get(reverse("investigations:anomalies"), {"reviewed": "no"}).content.decode()
    )


def test_a_practice_admin_runs_the_scan_from_the_list(practice_admin, secretary):
    client = client_for(practice_admin)
    moment = timezone.now() - datetime.timedelta(minutes=1)
    Trail().page(secretary, moment, [uuid.uuid4() for _n in range(120)], purpose="patients:list").save()

    response = client.post(reverse("investigations:anomalies_scan"), follow=True)

    assert response.status_code == 200
    assert "Scan done" in response.content.decode()
    [anomaly] = found(kind=AnomalyKind.LIST_PAGES)
    assert anomaly.user_id == secretary.pk
    assert anomaly.patient_count == 120
    assert AnomalyCursor.objects.get().scanned_until is not None


def test_the_chart_shows_distinct_patients_per_user_and_hour(practice_admin, secretary, practitioner):
    shared = [uuid.uuid4() for _n in range(5)]
    trail = Trail()
    trail.page(secretary, at(MONDAY, 9, 5), shared).page(secretary, at(MONDAY, 9, 40), shared)  # 5, not 10
    trail.page(secretary, at(MONDAY, 14, 0), [uuid.uuid4() for _n in range(12)])
    trail.page(practitioner, at(MONDAY, 9, 30), shared[:3])
    trail.page(secretary, at(MONDAY - datetime.timedelta(days=3), 10), [uuid.uuid4() for _n in range(30)])
    trail.page(secretary, at(MONDAY + datetime.timedelta(days=1), 10), [uuid.uuid4() for _n in range(99)])
    trail.save()

    response = client_for(practice_admin).get(reverse("investigations:read_chart"), {"day": MONDAY.isoformat()})

    assert response.status_code == 200
    body = response.content.decode()
    assert "<svg" in body
    assert "<polyline" in body
    chart = response.context["chart"]
    rows = {s["username"]: s["counts"] for s in chart["series"]}
    assert [tick["label"] for tick in chart["x_ticks"]] == [f"{h:02d}" for h in range(24)]
    assert rows[secretary.username][9] == 5
    assert rows[secretary.username][14] == 12
    assert sum(rows[secretary.username]) == 17
    assert rows[practitioner.username][9] == 3
    assert sum(rows[practitioner.username]) == 3
    assert f'<th scope="row">{secretary.username}</th>' in body
    assert f"{secretary.username}, 14:00: 12" in body  # the point's tooltip
    distribution = {u["username"]: u for u in response.context["distribution"]}
    assert distribution[secretary.username]["max"] == 30
    assert distribution[secretary.username]["days"] == 2
    assert distribution[secretary.username]["median"] == 23.5
    assert distribution[practitioner.username]["max"] == 3
    assert f'type="date" name="day" value="{MONDAY.isoformat()}"' in body  # the day picker shows the day
    # Today by default, in the day picker too.
    today = client_for(practice_admin).get(reverse("investigations:read_chart"))
    assert today.context["day"] == timezone.localdate()
    assert f'value="{timezone.localdate().isoformat()}"' in today.content.decode()


def test_the_mail_describes_a_high_anomaly_without_patient_data(mailed_admin, secretary, mailoutbox):
    trail = Trail()
    for n in range(60):  # a script at 03:00 on Sunday, a page every two seconds
        trail.page(secretary, at(SUNDAY, 3, 0, 2 * n), [uuid.uuid4()], session="night-session")
    trail.save()
    anomalies_scan(start=at(SUNDAY, 3), end=at(SUNDAY, 4))

    assert alerts.security_alerts_send(settle=datetime.timedelta(0)) >= 1
    [mail] = mailoutbox
    assert "Anomaly detected" in mail.subject
    walk = Anomaly.objects.get(kind=AnomalyKind.WALKING)
    ooh = Anomaly.objects.get(kind=AnomalyKind.OUT_OF_HOURS)
    assert walk.severity == ooh.severity == Severity.HIGH
    for anomaly in (walk, ooh):
        assert reverse("investigations:anomaly", args=[anomaly.pk]) in mail.body
        assert anomaly.summary in mail.body
    assert User.objects.get(pk=secretary.pk).username in mail.body


def test_each_reader_sees_what_was_seen_in_their_language(practice_admin, secretary, settings):
    """The scan stores its words in the practice's language (as the alert mail said them); the
    pages say them again in the reader's language."""
    Trail().page(secretary, at(MONDAY, 22, 30), [uuid.uuid4(), uuid.uuid4()]).save()
    scan_day(MONDAY)
    [anomaly] = found(kind=AnomalyKind.OUT_OF_HOURS)
    english = f"{secretary.username} read 2 patients outside the opening hours."
    assert anomaly.summary == english

    client = client_for(practice_admin)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "fr"
    for url in (reverse("investigations:anomalies"), reverse("investigations:anomaly", args=[anomaly.pk])):
        page = client.get(url).content.decode()
        assert f"{secretary.username} a consulté 2 patients hors des heures d’ouverture." in page
        assert english not in page
