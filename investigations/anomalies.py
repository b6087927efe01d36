"""Anomaly signals: patterns in the audit trail that a practice admin should look at.

Rules enforced here:
- Computed from the trail alone, by aggregate queries on its indexes (``audit_type_time``,
  ``audit_actor_time``, ``audit_session_time``): nothing is decrypted, no trail row is loaded
  into Python, only counts per account, session or address.
- One clock hour at a time (UTC hours, which are the practice's hours too in whole-hour time
  zones). Beat runs ``anomalies_scan_due`` every minute: it re-evaluates the hours from
  where the previous run stopped, the current hour included, so a finding grows with its hour
  and each finding is one ``Anomaly`` row per (signal, subject, hour): a re-run never adds a
  row (``Anomaly.key``), and a shorter re-run never shrinks one.
- A finding that reaches high severity writes one ``ANOMALY`` event to the trail, which the
  security alert mail (investigations/alerts.py) sends to the practice admins within a minute.
- Each finding keeps the filter of the events behind it (``Anomaly.evidence``,
  ``anomaly_events``) and counts and thresholds in words (``summary``, ``details``): never
  patient data. Patients are named by id only, as the breach scope report does.

The signals (thresholds in settings, ``ANOMALY_*``, docs/read-budgets.md, "Anomaly signals"):
- volume: an account read far more distinct patients in the hour than in its usual busiest
  hours (its own 95th percentile over the last weeks);
- walking: a login session opened many patients' records (record or appointment pages), each
  once, without writing anything; high when its pages came at a machine-regular rhythm;
- out of hours: patients read outside the clinic's opening hours (practice.models.Clinic);
- no appointment: a practitioner read patients who have no appointment with them and for whom
  they hold no emergency access (the access rules should make this impossible: a finding
  means a path around them);
- list pages: many distinct patients through the patient list (paging, searches) and exports;
- failures: many failed logins, failed second factors or pages not found (id guessing) from
  one session, or from one address for the anonymous.
"""

from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, Max, Min, OuterRef, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from audit.budget import budget_for_role
from audit.models import Anomaly, AnomalyCursor, AnomalyKind, AuditEvent, EventType, Severity
from audit.services import audit_event_write
from patients.models import BreakGlassGrant
from practice.models import Clinic, Practitioner
from practice.roles import PRACTITIONER
from scheduling.models import Appointment

logger = logging.getLogger(__name__)

HOUR = datetime.timedelta(hours=1)
# Reads are stamped when a request ends and commit a moment later: each run looks back this
# far before where the previous one stopped, so a late commit at an hour's edge is not missed.
SETTLE = datetime.timedelta(minutes=2)
# After a long outage, the scan catches up at most this far back (older hours: run
# ``anomalies_scan`` over them by hand, e.g. from ``manage.py shell``).
MAX_CATCH_UP = datetime.timedelta(days=7)

# Pages that open one patient's record or appointment (their URL names: the trail's purpose).
RECORD_PURPOSES = (
    "patients:detail",
    "patients:edit",
    "patients:reveal",
    "patients:export",
    "scheduling:appointment",
)
# Pages that list many patients at once, and exports (their purpose is "export: <stated>").
LIST_PURPOSES = ("patients:list", "patients:export_list")
EXPORT_PURPOSE_PREFIX = "export: "
WRITE_EVENTS = (
    EventType.CREATE,
    EventType.CHANGE,
    EventType.ARCHIVE,
    EventType.RESTORE,
    EventType.MERGE,
    EventType.DELETE,
)
FAILURE_EVENTS = (EventType.LOGIN_FAILED, EventType.OTP_FAILED, EventType.NOT_FOUND)
# A walker opens each record once or twice (its patient page and its appointment page).
WALK_MAX_REQUESTS_PER_PATIENT = 2.0
# Gaps needed before a session's rhythm is judged.
WALK_MIN_GAPS = 10
# Patient ids kept in a finding's evidence (the count is always exact).
EVIDENCE_MAX_PATIENTS = 1000


@dataclass
class Finding:
    """What a detector found for one subject and hour, before it is stored."""

    kind: str
    severity: int
    window_start: datetime.datetime
    window_end: datetime.datetime
    user_id: int | None = None
    username: str = ""
    role: str = ""
    session: str = ""
    ip: str | None = None
    event_count: int = 0
    patient_count: int = 0
    details: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)

    @classmethod
    def for_account(cls, row: dict, start, end, **values) -> Finding:
        """A finding about one account over [start, end), from a per-account row of counts
        (``actor_user_id``, ``username``, ``role``, ``events``, ``patients``)."""
        return cls(
            window_start=start,
            window_end=end,
            user_id=row["actor_user_id"],
            username=row["username"],
            role=row["role"],
            event_count=row["events"],
            patient_count=row["patients"],
            **values,
        )

    @property
    def summary(self) -> str:
        return anomaly_summary(self)

    @property
    def key(self) -> str:
        """Signal, subject and hour. The subject is what the detector groups by: a login
        session, else an account, else an address (the other columns describe it)."""
        if self.session:
            subject = f"session:{self.session}"
        elif self.user_id is not None:
            subject = f"user:{self.user_id}"
        else:
            subject = f"ip:{self.ip or '-'}"
        return f"{self.kind}|{subject}|{self.window_start.astimezone(datetime.UTC):%Y-%m-%dT%H}"


def anomaly_summary(anomaly) -> str:
    """What was seen, in words, in the active language: from a finding or a stored ``Anomaly``
    (kind, subject and the counts in ``details``), so a page shows it in its reader's language.
    Counts and names of accounts only, never patient data."""
    details, user, count = anomaly.details, anomaly.username, anomaly.patient_count
    if anomaly.kind == AnomalyKind.VOLUME:
        return _(
            "%(user)s read %(count)d patients in an hour, %(ratio).1f times their usual busiest hours (%(reference)d)."
        ) % {"user": user, "count": count, "ratio": details.get("ratio", 0), "reference": details.get("reference", 0)}
    if anomaly.kind == AnomalyKind.WALKING:
        variation = details.get("gap_variation")
        if variation is not None and variation <= details.get("max_variation", 0):
            return _(
                "%(user)s opened %(count)d patients' records one after the other in one session, each once, "
                "at a regular rhythm (variation %(variation).2f), writing nothing."
            ) % {"user": user, "count": count, "variation": variation}
        return _("%(user)s opened %(count)d patients' records in one session, each once, writing nothing.") % {
            "user": user,
            "count": count,
        }
    if anomaly.kind == AnomalyKind.OUT_OF_HOURS:
        return ngettext(
            "%(user)s read %(count)d patient outside the opening hours.",
            "%(user)s read %(count)d patients outside the opening hours.",
            count,
        ) % {"user": user, "count": count}
    if anomaly.kind == AnomalyKind.NO_APPOINTMENT:
        return ngettext(
            "%(user)s read %(count)d patient who has no appointment with them and no emergency access.",
            "%(user)s read %(count)d patients who have no appointment with them and no emergency access.",
            count,
        ) % {"user": user, "count": count}
    if anomaly.kind == AnomalyKind.LIST_PAGES:
        return _("%(user)s saw %(count)d patients through the patient list and exports in an hour.") % {
            "user": user,
            "count": count,
        }
    who = user if anomaly.session and user else (anomaly.ip or anomaly.session)
    return _("%(count)d failed logins, failed second factors or pages not found in an hour from %(who)s.") % {
        "count": anomaly.event_count,
        "who": who,
    }


@dataclass
class ScanResult:
    start: datetime.datetime
    end: datetime.datetime
    hours: int = 0
    findings: int = 0
    created: int = 0
    alerts: int = 0


def _level(value: float, levels: tuple[float, float, float]) -> int | None:
    """The severity ``value`` reaches on ``(low, medium, high)``, or None below low."""
    low, medium, high = levels
    if value >= high:
        return Severity.HIGH
    if value >= medium:
        return Severity.MEDIUM
    if value >= low:
        return Severity.LOW
    return None


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat()


def _evidence(start, end, event_types, **filters) -> dict:
    return {"start": _iso(start), "end": _iso(end), "event_types": [int(t) for t in event_types], **filters}


def reads_between(start: datetime.datetime, end: datetime.datetime) -> QuerySet[AuditEvent]:
    """A user's decrypted reads of patient data in [start, end): the (event type, time) index."""
    return AuditEvent.objects.filter(
        event_type=EventType.READ,
        occurred_at__gte=start,
        occurred_at__lt=end,
        actor_user_id__isnull=False,
        patient_id__isnull=False,
    )


def _per_user(queryset: QuerySet[AuditEvent]) -> QuerySet:
    return (
        queryset.values("actor_user_id")
        .annotate(
            patients=Count("patient_id", distinct=True),
            events=Count("id"),
            username=Max("actor_username"),
            role=Max("actor_role"),
        )
        .order_by("actor_user_id")
    )


def p95(values: list[int]) -> int:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def volume_baseline(*, user_id: int, before: datetime.datetime) -> tuple[int | None, int]:
    """(95th percentile of the account's distinct patients per active clock hour over the last
    ``ANOMALY_BASELINE_DAYS`` before the UTC day of ``before``, number of active hours); None
    when the account has fewer than ``ANOMALY_BASELINE_MIN_HOURS`` of them.

    A range of the (user, time) index, but a month of a busy account's reads (about 80 ms
    for 40,000 rows on a 10,000,000-row trail, bench/anomalies_bench.py): it ends at the start
    of the day, so it is the same all day and cached for the day (Django's cache: per process
    by default, shared when CACHES names a shared one). Today's own hours never raise it."""
    day = before.astimezone(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days, min_hours = settings.ANOMALY_BASELINE_DAYS, settings.ANOMALY_BASELINE_MIN_HOURS
    key = f"anomalies:baseline:{user_id}:{day:%Y-%m-%d}:{days}:{min_hours}"
    cached = cache.get(key)
    if cached is None:
        cached = _volume_baseline(user_id=user_id, before=day)
        cache.set(key, cached, timeout=24 * 3600)
    return tuple(cached)


def _volume_baseline(*, user_id: int, before: datetime.datetime) -> tuple[int | None, int]:
    since = before - datetime.timedelta(days=settings.ANOMALY_BASELINE_DAYS)
    counts = list(
        AuditEvent.objects.filter(
            actor_user_id=user_id,
            occurred_at__gte=since,
            occurred_at__lt=before,
            event_type=EventType.READ,
            patient_id__isnull=False,
        )
        .annotate(hour=TruncHour("occurred_at", tzinfo=datetime.UTC))
        .values("hour")
        .annotate(n=Count("patient_id", distinct=True))
        .order_by()
        .values_list("n", flat=True)
    )
    if len(counts) < settings.ANOMALY_BASELINE_MIN_HOURS:
        return None, len(counts)
    return p95(counts), len(counts)


def detect_volume(start, end, clinic) -> list[Finding]:
    floor = settings.ANOMALY_VOLUME_MIN_PATIENTS
    findings = []
    for row in _per_user(reads_between(start, end)).filter(patients__gte=floor):
        baseline, hours = volume_baseline(user_id=row["actor_user_id"], before=start)
        # Until the account has a history, half its role's hourly budget stands in for it.
        reference = baseline if baseline is not None else budget_for_role(row["role"])[0] // 2
        reference = max(reference, floor)
        ratio = row["patients"] / reference
        severity = _level(ratio, settings.ANOMALY_VOLUME_RATIO)
        if severity is None:
            continue
        findings.append(
            Finding.for_account(
                row,
                start,
                end,
                kind=AnomalyKind.VOLUME,
                severity=severity,
                details={
                    "patients": row["patients"],
                    "reads": row["events"],
                    "baseline_p95": baseline,
                    "baseline_hours": hours,
                    "baseline_days": settings.ANOMALY_BASELINE_DAYS,
                    "reference": reference,
                    "ratio": round(ratio, 2),
                    "levels": list(settings.ANOMALY_VOLUME_RATIO),
                    "floor": floor,
                },
                evidence=_evidence(start, end, [EventType.READ], actor_user_id=row["actor_user_id"], has_patient=True),
            )
        )
    return findings


def _epoch_seconds(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM {column})"
    return f"(julianday({column}) * 86400.0)"


def _rhythm(record_reads: QuerySet[AuditEvent], sessions: list[str]) -> dict[str, tuple[int, float | None]]:
    """Per session: (gaps, coefficient of variation of the gaps between its record pages).

    One request is one page: its first read's time. The gaps come from a window function over
    the session's requests, their mean and spread from two averages (SQLite has no stddev).
    """
    pages = (
        record_reads.filter(session__in=sessions)
        .values("session", "request_id")
        .annotate(t=Min("occurred_at"))
        .order_by()
    )
    inner, params = pages.query.sql_with_params()
    gap = f"{_epoch_seconds('p.t')} - {_epoch_seconds('LAG(p.t) OVER (PARTITION BY p.session ORDER BY p.t)')}"
    sql = (
        f"SELECT g.session, COUNT(g.gap), AVG(g.gap), AVG(g.gap * g.gap) "  # noqa: S608 (no user input)
        f"FROM (SELECT p.session AS session, {gap} AS gap FROM ({inner}) p) g "
        f"WHERE g.gap IS NOT NULL GROUP BY g.session"
    )
    result: dict[str, tuple[int, float | None]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for session, gaps, mean, mean_square in cursor.fetchall():
            if gaps < WALK_MIN_GAPS or not mean:
                result[session] = (gaps, None)
                continue
            variance = max(float(mean_square) - float(mean) ** 2, 0.0)
            result[session] = (gaps, math.sqrt(variance) / float(mean))
    return result


def detect_walking(start, end, clinic) -> list[Finding]:
    minimum = settings.ANOMALY_WALK_MIN_PATIENTS
    record_reads = AuditEvent.objects.filter(
        event_type=EventType.READ,
        occurred_at__gte=start,
        occurred_at__lt=end,
        patient_id__isnull=False,
        purpose__in=RECORD_PURPOSES,
    ).exclude(session="")
    candidates = list(
        record_reads.values("session")
        .annotate(
            patients=Count("patient_id", distinct=True),
            pages=Count("request_id", distinct=True),
            events=Count("id"),
            user_id=Max("actor_user_id"),
            username=Max("actor_username"),
            role=Max("actor_role"),
        )
        .filter(patients__gte=minimum)
        .order_by("session")
    )
    if not candidates:
        return []
    sessions = [row["session"] for row in candidates]
    writes = dict(
        AuditEvent.objects.filter(
            session__in=sessions, occurred_at__gte=start, occurred_at__lt=end, event_type__in=WRITE_EVENTS
        )
        .values("session")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("session", "n")
    )
    rhythm = _rhythm(record_reads, sessions)
    max_variation = settings.ANOMALY_WALK_MAX_VARIATION
    findings = []
    for row in candidates:
        if writes.get(row["session"]) or row["pages"] > WALK_MAX_REQUESTS_PER_PATIENT * row["patients"]:
            continue  # someone at work: they wrote something, or came back to records
        gaps, variation = rhythm.get(row["session"], (0, None))
        regular = variation is not None and variation <= max_variation
        if regular:
            severity = Severity.HIGH
        elif row["patients"] >= 3 * minimum:
            severity = Severity.MEDIUM
        else:
            severity = Severity.LOW
        # The address of the session's first record page (one row).
        ip = record_reads.filter(session=row["session"]).exclude(ip=None).values_list("ip", flat=True).first()
        findings.append(
            Finding(
                kind=AnomalyKind.WALKING,
                severity=severity,
                window_start=start,
                window_end=end,
                user_id=row["user_id"],
                username=row["username"],
                role=row["role"],
                session=row["session"],
                ip=ip,
                event_count=row["events"],
                patient_count=row["patients"],
                details={
                    "patients": row["patients"],
                    "pages": row["pages"],
                    "reads": row["events"],
                    "gaps": gaps,
                    "gap_variation": None if variation is None else round(variation, 3),
                    "max_variation": max_variation,
                    "min_patients": minimum,
                    "writes": 0,
                },
                evidence=_evidence(
                    start,
                    end,
                    [EventType.READ],
                    session=row["session"],
                    purposes=list(RECORD_PURPOSES),
                    has_patient=True,
                ),
            )
        )
    return findings


def closed_ranges(clinic: Clinic, start, end) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """The parts of [start, end) outside the opening hours widened by the grace minutes."""
    grace = datetime.timedelta(minutes=settings.ANOMALY_OUT_OF_HOURS_GRACE_MINUTES)
    closed, cursor = [], start
    for opens, closes in clinic.open_intervals(start - datetime.timedelta(days=1), end + datetime.timedelta(days=1)):
        opens, closes = opens - grace, closes + grace
        if closes <= cursor:
            continue
        if opens >= end:
            break
        if cursor < opens:
            closed.append((cursor, opens))
        cursor = max(cursor, closes)
    if cursor < end:
        closed.append((cursor, end))
    return closed


def detect_out_of_hours(start, end, clinic) -> list[Finding]:
    ranges = closed_ranges(clinic, start, end)
    if not ranges:
        return []
    outside = Q()
    for lo, hi in ranges:
        outside |= Q(occurred_at__gte=lo, occurred_at__lt=hi)
    levels = settings.ANOMALY_OUT_OF_HOURS
    findings = []
    for row in _per_user(reads_between(start, end).filter(outside)).filter(patients__gte=levels[0]):
        severity = _level(row["patients"], levels)
        findings.append(
            Finding.for_account(
                row,
                start,
                end,
                kind=AnomalyKind.OUT_OF_HOURS,
                severity=severity,
                details={
                    "patients": row["patients"],
                    "reads": row["events"],
                    "closed": [[_iso(lo), _iso(hi)] for lo, hi in ranges],
                    "grace_minutes": settings.ANOMALY_OUT_OF_HOURS_GRACE_MINUTES,
                    "levels": list(levels),
                },
                evidence=_evidence(
                    start,
                    end,
                    [EventType.READ],
                    actor_user_id=row["actor_user_id"],
                    has_patient=True,
                    ranges=[[_iso(lo), _iso(hi)] for lo, hi in ranges],
                ),
            )
        )
    return findings


def detect_no_appointment(start, end, clinic) -> list[Finding]:
    appointment = Appointment.objects.filter(
        patient_id=OuterRef("patient_id"),
        practitioner__user_id=OuterRef("actor_user_id"),
        start__gte=start - datetime.timedelta(days=settings.ANOMALY_APPOINTMENT_PAST_DAYS),
        start__lt=end + datetime.timedelta(days=settings.ANOMALY_APPOINTMENT_AHEAD_DAYS),
    )
    grant = BreakGlassGrant.objects.filter(
        user_id=OuterRef("actor_user_id"), patient_id=OuterRef("patient_id"), granted_at__lt=end, expires_at__gt=start
    )
    unexplained = (
        reads_between(start, end)
        .filter(actor_role=PRACTITIONER, actor_user_id__in=Practitioner.objects.values("user_id"))
        .filter(~Exists(appointment), ~Exists(grant))
    )
    levels = settings.ANOMALY_NO_APPOINTMENT
    findings = []
    for row in _per_user(unexplained).filter(patients__gte=levels[0]):
        patients = list(
            unexplained.filter(actor_user_id=row["actor_user_id"])
            .values_list("patient_id", flat=True)
            .distinct()
            .order_by("patient_id")[:EVIDENCE_MAX_PATIENTS]
        )
        findings.append(
            Finding.for_account(
                row,
                start,
                end,
                kind=AnomalyKind.NO_APPOINTMENT,
                severity=_level(row["patients"], levels),
                details={
                    "patients": row["patients"],
                    "reads": row["events"],
                    "appointment_past_days": settings.ANOMALY_APPOINTMENT_PAST_DAYS,
                    "appointment_ahead_days": settings.ANOMALY_APPOINTMENT_AHEAD_DAYS,
                    "levels": list(levels),
                },
                evidence=_evidence(
                    start,
                    end,
                    [EventType.READ],
                    actor_user_id=row["actor_user_id"],
                    patient_ids=[str(p) for p in patients],
                ),
            )
        )
    return findings


def detect_list_pages(start, end, clinic) -> list[Finding]:
    levels = settings.ANOMALY_LIST_PATIENTS
    through_lists = reads_between(start, end).filter(
        Q(purpose__in=LIST_PURPOSES) | Q(purpose__startswith=EXPORT_PURPOSE_PREFIX)
    )
    findings = []
    for row in _per_user(through_lists).filter(patients__gte=levels[0]):
        findings.append(
            Finding.for_account(
                row,
                start,
                end,
                kind=AnomalyKind.LIST_PAGES,
                severity=_level(row["patients"], levels),
                details={"patients": row["patients"], "reads": row["events"], "levels": list(levels)},
                evidence=_evidence(
                    start,
                    end,
                    [EventType.READ],
                    actor_user_id=row["actor_user_id"],
                    has_patient=True,
                    purposes=list(LIST_PURPOSES),
                    purpose_prefix=EXPORT_PURPOSE_PREFIX,
                ),
            )
        )
    return findings


def detect_failures(start, end, clinic) -> list[Finding]:
    levels = settings.ANOMALY_FAILURES
    rows = (
        AuditEvent.objects.filter(event_type__in=FAILURE_EVENTS, occurred_at__gte=start, occurred_at__lt=end)
        .values("session", "ip", "event_type")
        .annotate(n=Count("id"), user_id=Max("actor_user_id"), username=Max("actor_username"), role=Max("actor_role"))
        .order_by()
    )
    # One subject per session; the anonymous (failed logins) per address.
    subjects: dict[tuple[str, str | None], dict] = {}
    for row in rows:
        key = (row["session"], None) if row["session"] else ("", row["ip"])
        if key == ("", None):
            continue
        subject = subjects.setdefault(key, {"n": 0, "types": {}, "user_id": None, "username": "", "role": ""})
        subject["n"] += row["n"]
        label = EventType(row["event_type"]).name.lower()
        subject["types"][label] = subject["types"].get(label, 0) + row["n"]
        if row["user_id"] is not None:
            subject.update(user_id=row["user_id"], username=row["username"], role=row["role"])
        subject.setdefault("ip", row["ip"])
    findings = []
    for (session, ip), subject in sorted(subjects.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        severity = _level(subject["n"], levels)
        if severity is None:
            continue
        filters = {"session": session} if session else {"ip": ip, "session": ""}
        findings.append(
            Finding(
                kind=AnomalyKind.FAILURES,
                severity=severity,
                window_start=start,
                window_end=end,
                user_id=subject["user_id"] if session else None,
                username=subject["username"] if session else "",
                role=subject["role"] if session else "",
                session=session,
                ip=ip if not session else subject.get("ip"),
                event_count=subject["n"],
                details={"events": subject["n"], "by_type": subject["types"], "levels": list(levels)},
                evidence=_evidence(start, end, FAILURE_EVENTS, **filters),
            )
        )
    return findings


DETECTORS = (
    detect_volume,
    detect_walking,
    detect_out_of_hours,
    detect_no_appointment,
    detect_list_pages,
    detect_failures,
)


def _hour_floor(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.UTC).replace(minute=0, second=0, microsecond=0)


def anomalies_scan(*, start: datetime.datetime, end: datetime.datetime) -> ScanResult:
    """Evaluate every clock hour that [start, end) touches, from the hour's start to ``end``
    at most, and store the findings (``anomaly_store``). Idempotent: running it again over the
    same moments finds the same rows and changes nothing."""
    result = ScanResult(start=start, end=end)
    clinic = Clinic.current()
    with translation.override(settings.LANGUAGE_CODE):  # summaries in the practice's language
        hour = _hour_floor(start)
        while hour < end:
            hour_end = min(hour + HOUR, end)
            result.hours += 1
            for detector in DETECTORS:
                for finding in detector(hour, hour_end, clinic):
                    result.findings += 1
                    _anomaly, created, alerted = anomaly_store(finding)
                    result.created += created
                    result.alerts += alerted
            hour += HOUR
    return result


def anomaly_store(finding: Finding) -> tuple[Anomaly, bool, bool]:
    """Create or update the finding's row; (row, created, alert written).

    A row is only updated by an evaluation of its hour that reaches at least as far (a shorter
    re-run leaves it). When it first reaches high severity, one ANOMALY event is written in the
    same transaction (mailed to the practice admins, investigations/alerts.py). A reviewed finding that
    grows more severe is shown as not reviewed again.
    """
    now = timezone.now()
    values: dict[str, Any] = {
        "kind": finding.kind,
        "severity": finding.severity,
        "user_id": finding.user_id,
        "username": finding.username[:150],
        "role": finding.role[:40],
        "session": finding.session,
        "ip": finding.ip,
        "window_start": finding.window_start,
        "window_end": finding.window_end,
        "event_count": finding.event_count,
        "patient_count": finding.patient_count,
        "summary": finding.summary[:300],
        "details": finding.details,
        "evidence": finding.evidence,
        "updated_at": now,
    }
    created = False
    with transaction.atomic():
        anomaly = Anomaly.objects.select_for_update().filter(key=finding.key).first()
        if anomaly is None:
            try:
                with transaction.atomic():
                    anomaly = Anomaly.objects.create(key=finding.key, detected_at=now, **values)
                created = True
            except IntegrityError:  # another scan stored it first
                anomaly = Anomaly.objects.select_for_update().get(key=finding.key)
        if not created:
            if anomaly.window_end > finding.window_end:
                return anomaly, False, False
            if finding.severity > anomaly.severity and anomaly.reviewed_at is not None:
                anomaly.reviewed_at = None
            for name, value in values.items():
                if name == "severity":
                    value = max(value, anomaly.severity)
                setattr(anomaly, name, value)
            anomaly.save()
        alerted = False
        if anomaly.severity == Severity.HIGH and anomaly.alert_event_id is None:
            event = audit_event_write(
                event_type=EventType.ANOMALY,
                model_label=Anomaly._meta.label,
                object_pk=anomaly.pk,
                extra={
                    "anomaly_id": anomaly.pk,
                    "kind": anomaly.kind,
                    "severity": "high",
                    "username": anomaly.username,
                    "ip": anomaly.ip,
                    "session": anomaly.session,
                    "summary": anomaly.summary,
                },
            )
            anomaly.alert_event_id = event.pk
            anomaly.save(update_fields=["alert_event_id"])
            alerted = True
    return anomaly, created, alerted


def anomalies_scan_due(*, now: datetime.datetime | None = None) -> ScanResult:
    """The periodic run: scan from where the previous run stopped (less the settle time) to
    now, then move the cursor. Runs that overlap only repeat work: rows are keyed."""
    now = now or timezone.now()
    cursor, _created = AnomalyCursor.objects.get_or_create(pk=1)
    start = cursor.scanned_until - SETTLE if cursor.scanned_until else now - HOUR
    start = max(min(start, now), now - MAX_CATCH_UP)
    result = anomalies_scan(start=start, end=now)
    AnomalyCursor.objects.filter(Q(scanned_until__isnull=True) | Q(scanned_until__lt=now), pk=1).update(
        scanned_until=now, last_run_at=timezone.now()
    )
    return result


def anomaly_events(anomaly: Anomaly) -> QuerySet[AuditEvent]:
    """The trail events behind a finding, oldest first, from its stored filter."""
    evidence = anomaly.evidence
    events = AuditEvent.objects.filter(
        occurred_at__gte=datetime.datetime.fromisoformat(evidence["start"]),
        occurred_at__lt=datetime.datetime.fromisoformat(evidence["end"]),
        event_type__in=evidence["event_types"],
    )
    if "actor_user_id" in evidence:
        events = events.filter(actor_user_id=evidence["actor_user_id"])
    if "session" in evidence:
        events = events.filter(session=evidence["session"])
    if "ip" in evidence:
        events = events.filter(ip=evidence["ip"])
    if evidence.get("has_patient"):
        events = events.filter(patient_id__isnull=False)
    if "patient_ids" in evidence:
        events = events.filter(patient_id__in=evidence["patient_ids"])
    if "purposes" in evidence:
        through = Q(purpose__in=evidence["purposes"])
        if evidence.get("purpose_prefix"):
            through |= Q(purpose__startswith=evidence["purpose_prefix"])
        events = events.filter(through)
    if "ranges" in evidence:
        within = Q()
        for lo, hi in evidence["ranges"]:
            lo, hi = datetime.datetime.fromisoformat(lo), datetime.datetime.fromisoformat(hi)
            within |= Q(occurred_at__gte=lo, occurred_at__lt=hi)
        events = events.filter(within)
    return events.order_by("occurred_at", "id")
