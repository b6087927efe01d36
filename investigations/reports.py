"""Investigation reports over the audit trail: who opened a record (with why), the breach scope
and its notification list, and the unexplained reads per account.

Rules enforced here:
- The breach scope reads the trail only (one aggregate query): it never decrypts, so
  looking at a scope exposes nobody. It counts what left: the reads of a withheld page (the
  step-up page or the read limit replaced it: ``extra["withheld"]`` on its READ rows, or a
  WITHHELD event with its request id) were decrypted but not served, and are reported apart.
- A patient is *unexplained* in a scope when one of its served reads was paid from an
  allowance (unexplained, masked; or a user's read with no explanation recorded, written before
  explanations existed) and no READ_EXPLAINED event of the same user for that patient followed
  within ``EXPLAIN_AFTERWARDS_MINUTES`` (the write that explained it afterwards).
- "Opened the record" and "appeared in a list or agenda" are told apart by the page (the
  recorded purpose): ``LIST_PURPOSES`` are the lists and agendas; anything else, a purpose not
  known included, counts as opened (the conservative side).
- The notification list decrypts the contact details of every patient in the scope. Those
  reads carry the purpose the admin stated, and the list itself is one EXPORT event naming
  who, why, how many and which scope; the file says who exported it and when. The reads
  count against the exporting person's read budget like any other decryption.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, TruncHour
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit import context
from audit.describe import describe, when_text
from audit.models import EXPLAINED, AuditEvent, EventType, Explanation
from audit.services import audit_event_write
from patients.models import Patient
from practice.templatetags.cabinet import field_labels

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Events that put a patient's data in front of someone: decrypted reads and exports.
EXPOSURE_EVENTS = (EventType.READ, EventType.EXPORT)
# Explanation codes paid from an allowance (the rest explain the read).
UNPAID = (Explanation.UNEXPLAINED, Explanation.MASKED)
# A WITHHELD event is written when the request ends, a moment after its reads were stamped.
WITHHELD_SLACK = datetime.timedelta(minutes=5)
# A request's reads are stamped when it ends: this long after its own events at most.
SAME_REQUEST_SLACK = datetime.timedelta(minutes=10)

# Pages where a patient appears among others (lists, searches, agendas, day sheets): their
# reads are "appeared in a list or agenda". Every other purpose (a record, an appointment, a
# contact reveal, an edit, an export, a job, an admin page, a purpose not listed) is "opened
# the record": when in doubt, the report says more, not less.
LIST_PURPOSES = frozenset(
    {
        "patients:list",
        "scheduling:today",
        "scheduling:day",
        "scheduling:print_day",
        "scheduling:this_week",
        "scheduling:week",
        "scheduling:my_day",
        "scheduling:waiting_room",
        "scheduling:free_slots",
    }
)


def is_list_purpose(purpose: str) -> bool:
    return purpose in LIST_PURPOSES


def withheld_request_ids(*, start: datetime.datetime | None = None, end: datetime.datetime | None = None):
    """The request ids of WITHHELD events (a page refused after its reads were written), as a
    subquery on the (event type, time) index: such events are rare."""
    events = AuditEvent.objects.filter(event_type=EventType.WITHHELD)
    if start is not None:
        events = events.filter(occurred_at__gte=start)
    if end is not None:
        events = events.filter(occurred_at__lt=end + WITHHELD_SLACK)
    return events.exclude(request_id="").order_by().values("request_id")


def withheld_case(**window) -> Case:
    """True for the rows of a withheld page (decrypted, not served)."""
    return Case(
        When(Q(extra__has_key="withheld") | Q(request_id__in=withheld_request_ids(**window)), then=Value(True)),
        default=Value(False),
        output_field=BooleanField(),
    )


def explained_afterwards_exists() -> Exists:
    """A READ_EXPLAINED event of the row's user for the row's patient within
    ``EXPLAIN_AFTERWARDS_MINUTES`` after it (audit.services.reads_explained_afterwards names the
    reads of that span), or in the same request (the reads of the page that made the write are
    stamped when the request ends, after it): on the (patient, time) index."""
    until = ExpressionWrapper(
        OuterRef("occurred_at") + Value(datetime.timedelta(minutes=settings.EXPLAIN_AFTERWARDS_MINUTES, seconds=5)),
        output_field=DateTimeField(),
    )
    since = ExpressionWrapper(OuterRef("occurred_at") - Value(SAME_REQUEST_SLACK), output_field=DateTimeField())
    return Exists(
        AuditEvent.objects.filter(
            Q(occurred_at__gte=OuterRef("occurred_at")) | Q(request_id=OuterRef("request_id")),
            patient_id=OuterRef("patient_id"),
            occurred_at__gte=since,
            occurred_at__lte=until,
            event_type=EventType.READ_EXPLAINED,
            actor_user_id=OuterRef("actor_user_id"),
        )
    )


def unexplained_case() -> Case:
    """True for a user's READ row that nothing explains, then or afterwards. The subquery runs
    only for rows paid from an allowance (CASE stops at the first branch that holds)."""
    return Case(
        When(~Q(event_type=EventType.READ) | Q(actor_user_id__isnull=True), then=Value(False)),
        When(explanation__in=list(EXPLAINED), then=Value(False)),
        When(~Q(explanation__in=UNPAID), then=Value(True)),  # no explanation recorded
        When(explained_afterwards_exists(), then=Value(False)),
        default=Value(True),
        output_field=BooleanField(),
    )


# What a recorded purpose (the page's URL name or a system job) meant, in words a patient
# reads. A purpose not listed here is shown as recorded (a stated reason, a new page).
PURPOSE_LABELS = {
    "patients:list": gettext_lazy("Patient list or search"),
    "patients:detail": gettext_lazy("Patient record opened"),
    "patients:create": gettext_lazy("Patient record created"),
    "patients:edit": gettext_lazy("Patient record edited"),
    "patients:archive": gettext_lazy("Patient record archived"),
    "patients:restore": gettext_lazy("Patient record restored"),
    "patients:break_glass": gettext_lazy("Emergency access"),
    "patients:reveal": gettext_lazy("Contact details shown on request"),
    "patients:export": gettext_lazy("Export of the patient's data"),
    "patients:export_list": gettext_lazy("Export of a patient list"),
    "scheduling:today": gettext_lazy("Front-desk agenda"),
    "scheduling:day": gettext_lazy("Front-desk agenda"),
    "scheduling:print_day": gettext_lazy("Printed day sheet"),
    "scheduling:this_week": gettext_lazy("Practitioner's week"),
    "scheduling:week": gettext_lazy("Practitioner's week"),
    "scheduling:my_day": gettext_lazy("Practitioner's day"),
    "scheduling:waiting_room": gettext_lazy("Waiting room"),
    "scheduling:free_slots": gettext_lazy("Free slots"),
    "scheduling:book": gettext_lazy("Appointment booking"),
    "scheduling:appointment": gettext_lazy("Appointment opened"),
    "scheduling:move": gettext_lazy("Appointment moved"),
    "scheduling:change_type": gettext_lazy("Appointment changed"),
    "scheduling:cancel": gettext_lazy("Appointment cancelled"),
    "scheduling:status": gettext_lazy("Appointment status changed"),
    "investigations:patient_access": gettext_lazy("Access report (this report)"),
    "investigations:patient_access_print": gettext_lazy("Access report (this report)"),
    "investigations:breach_scope_csv": gettext_lazy("Breach notification list"),
    "reminders": gettext_lazy("Appointment reminder (automatic)"),
    "reminder_send": gettext_lazy("Appointment reminder (automatic)"),
    "command:dumpdata": gettext_lazy("Database export by the system administrator"),
    "command:rotate_keys": gettext_lazy("Encryption key rotation (automatic)"),
    "command:audit_breach_scope": gettext_lazy("Breach notification list"),
}


def purpose_label(purpose: str) -> str:
    """A recorded purpose in words: known pages and jobs by name, Django admin pages as
    administration, anything else (a stated reason) as recorded."""
    if purpose in PURPOSE_LABELS:
        return str(PURPOSE_LABELS[purpose])
    if purpose.startswith("admin:"):
        return _("Administration")
    return purpose or "—"


def record_label(model_label: str) -> str:
    """A record type of the trail ("patients.Patient") as its model's verbose name."""
    if not model_label:
        return ""
    try:
        return capfirst(str(apps.get_model(model_label)._meta.verbose_name))
    except (LookupError, ValueError):
        return model_label


def field_label(model_label: str, name: str, *, with_record: bool = True) -> str:
    """A field of the trail in words: "Appointment: reason" (or just "reason")."""
    label = field_labels([name], model_label)
    if with_record and model_label != "patients.Patient":
        return f"{record_label(model_label)}: {label}"
    return label


# --------------------------------------------------------------------------- breach scope


@dataclass
class PatientExposure:
    """One patient in a breach scope: how often their data was exposed, and which fields.

    ``fields``: (model label, field name) -> number of events that exposed it.
    """

    patient_id: uuid.UUID
    reads: int = 0
    first: datetime.datetime | None = None
    last: datetime.datetime | None = None
    fields: dict[tuple[str, str], int] = field(default_factory=dict)
    # Reads nothing explained, then or afterwards (see the module docstring).
    unexplained_reads: int = 0

    @property
    def explained(self) -> bool:
        return not self.unexplained_reads

    @property
    def field_list(self) -> list[dict]:
        """[{label, reads}] by record type and field, for display."""
        return [
            {"label": field_label(model_label, name), "reads": reads}
            for (model_label, name), reads in sorted(self.fields.items())
        ]


@dataclass
class FieldTotal:
    model_label: str
    name: str
    patients: int = 0
    reads: int = 0

    @property
    def label(self) -> str:
        return field_label(self.model_label, self.name, with_record=False)

    @property
    def record_label(self) -> str:
        return record_label(self.model_label)


@dataclass
class BreachScope:
    """Exactly which patients and fields were exposed within a scope (an actor, an IP, a
    login session, all of them combined, or everyone) and a time window [start, end).

    ``patients``: those whose data left (served reads and exports), each marked explained or
    not; ``withheld``: those decrypted only for pages that were withheld (not served)."""

    start: datetime.datetime
    end: datetime.datetime
    actor_user_id: int | None = None
    actor_username: str | None = None
    ip: str | None = None
    session: str | None = None
    patients: list[PatientExposure] = field(default_factory=list)
    field_totals: list[FieldTotal] = field(default_factory=list)
    withheld: list[PatientExposure] = field(default_factory=list)

    @property
    def patient_count(self) -> int:
        return len(self.patients)

    @property
    def unexplained_patients(self) -> list[PatientExposure]:
        return [p for p in self.patients if not p.explained]

    @property
    def explained_patients(self) -> list[PatientExposure]:
        return [p for p in self.patients if p.explained]

    @property
    def unexplained_count(self) -> int:
        return len(self.unexplained_patients)

    @property
    def explained_count(self) -> int:
        return len(self.explained_patients)

    @property
    def unexplained_ids(self) -> list[uuid.UUID]:
        return [p.patient_id for p in self.unexplained_patients]

    @property
    def withheld_count(self) -> int:
        return len(self.withheld)

    @property
    def withheld_ids(self) -> list[uuid.UUID]:
        return [p.patient_id for p in self.withheld]

    @property
    def withheld_reads(self) -> int:
        return sum(p.reads for p in self.withheld)

    @property
    def total_reads(self) -> int:
        return sum(p.reads for p in self.patients)

    @property
    def patient_ids(self) -> list[uuid.UUID]:
        return [p.patient_id for p in self.patients]

    def parameters(self) -> dict:
        """The scope as plain values (for the EXPORT event and the command's output)."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "actor_user_id": self.actor_user_id,
            "actor_username": self.actor_username,
            "ip": self.ip,
            "session": self.session,
        }


def actor_filter(username: str) -> dict:
    """The breach_scope argument for a username: an existing account is searched by its id
    (indexed, and the id survives a rename); any other name as the trail recorded it
    (deleted accounts, system jobs such as ``system:reminders``)."""
    user_id = get_user_model().objects.filter(username=username).values_list("pk", flat=True).first()
    return {"actor_username": username} if user_id is None else {"actor_user_id": user_id}


def _exposures(*, start, end, actor_user_id, actor_username, ip, session) -> QuerySet[AuditEvent]:
    """The trail's exposure events in [start, end) that match every filter given."""
    events = AuditEvent.objects.filter(
        event_type__in=EXPOSURE_EVENTS, occurred_at__gte=start, occurred_at__lt=end, patient_id__isnull=False
    )
    if actor_user_id is not None:
        events = events.filter(actor_user_id=actor_user_id)
    if actor_username:
        events = events.filter(actor_username=actor_username)
    if ip:
        events = events.filter(ip=ip)
    if session:
        # The session index is partial (non-empty sessions): say so, for the planner.
        events = events.filter(Q(session=session) & ~Q(session=""))
    return events


def _exposures_by_patient(groups) -> tuple[dict[uuid.UUID, PatientExposure], dict[uuid.UUID, PatientExposure]]:
    """The grouped rows summed per patient: (served, withheld), each patient's reads, unexplained
    reads, first and last read, and reads per (record type, field)."""
    keys_of: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    served: dict[uuid.UUID, PatientExposure] = {}
    held_back: dict[uuid.UUID, PatientExposure] = {}
    for patient_id, model_label, fields_text, held, unexplained, n, first, last in groups:
        keys = keys_of.get((model_label, fields_text))
        if keys is None:
            names = json.loads(fields_text) if fields_text else []
            keys = keys_of[(model_label, fields_text)] = tuple((model_label, name) for name in names)
        by_patient = held_back if held else served
        exposure = by_patient.get(patient_id)
        if exposure is None:
            exposure = by_patient[patient_id] = PatientExposure(patient_id=patient_id, first=first, last=last)
        else:
            exposure.first = min(exposure.first, first)
            exposure.last = max(exposure.last, last)
        exposure.reads += n
        if unexplained and not held:
            exposure.unexplained_reads += n
        for key in keys:
            exposure.fields[key] = exposure.fields.get(key, 0) + n
    return served, held_back


def _field_totals(served: dict[uuid.UUID, PatientExposure]) -> dict[tuple[str, str], FieldTotal]:
    """Per (record type, field): how many patients it left for, in how many reads."""
    totals: dict[tuple[str, str], FieldTotal] = {}
    for exposure in served.values():
        for key, reads in exposure.fields.items():
            total = totals.get(key)
            if total is None:
                total = totals[key] = FieldTotal(model_label=key[0], name=key[1])
            total.patients += 1
            total.reads += reads
    return totals


def breach_scope(
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    actor_user_id: int | None = None,
    actor_username: str | None = None,
    ip: str | None = None,
    session: str | None = None,
) -> BreachScope:
    """Patients whose data was exposed (decrypted reads, exports) in [start, end) by the
    given actor, IP and/or login session (all given filters apply; none means everyone).

    One aggregate query grouped by patient, record type, field list, withheld or served, and
    unexplained or not (the trail stores each row's fields as a sorted list, so the groups are
    few); the per-field counts are summed here. It uses the (actor_user_id, occurred_at),
    (session, occurred_at) or occurred_at index, whichever the filters allow; its two
    subqueries use the (event type, time) index (WITHHELD events, rare) and the (patient,
    time) index (READ_EXPLAINED, only for reads paid from an allowance). Nothing is decrypted.
    """
    events = _exposures(
        start=start, end=end, actor_user_id=actor_user_id, actor_username=actor_username, ip=ip, session=session
    )
    # The field list is grouped on as text: a few distinct lists, each parsed once below,
    # instead of one JSON decode per group.
    groups = (
        events.order_by()
        .annotate(
            fields_text=Cast("fields", TextField()),
            held=withheld_case(start=start, end=end),
            unexplained=unexplained_case(),
        )
        .values_list("patient_id", "model_label", "fields_text", "held", "unexplained")
        .annotate(n=Count("id"), first=Min("occurred_at"), last=Max("occurred_at"))
    )
    served, held_back = _exposures_by_patient(groups)
    totals = _field_totals(served)
    # Decrypted and withheld: patients whose data did not leave in this scope at all.
    withheld = [exposure for pk, exposure in held_back.items() if pk not in served]

    def order(p):
        return (-p.reads, str(p.patient_id))

    return BreachScope(
        start=start,
        end=end,
        actor_user_id=actor_user_id,
        actor_username=actor_username or None,
        ip=ip or None,
        session=session or None,
        patients=sorted(served.values(), key=order),
        field_totals=sorted(totals.values(), key=lambda t: (-t.patients, t.model_label, t.name)),
        withheld=sorted(withheld, key=order),
    )


# --------------------------------------------------------------------------- notification list

NOTIFICATION_FIELDS = (
    "last_name",
    "first_names",
    "birth_date",
    "phone_mobile",
    "phone_other",
    "email",
    "address",
    "postal_code",
    "city",
)
_BATCH = 500
# Cells a spreadsheet would run as a formula. A leading + or - is kept on phone numbers and
# figures (E.164 phones start with +), quoted on anything else.
_FORMULA_START = ("=", "@", "\t", "\r")
_NUMBER = re.compile(r"[+\-]?[\d .()]*")


def _cell(value) -> str:
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) or (text[:1] in "+-" and text and not _NUMBER.fullmatch(text)):
        return "'" + text
    return text


def breach_notification_export(*, scope: BreachScope, purpose: str) -> tuple[str, int]:
    """The notification list of a scope as CSV text, and the number of patients in it.

    Decrypts each patient's name, birth date and contact details (audited reads carrying
    ``purpose``) and records one EXPORT event with the purpose, the count and the scope.
    The first line is a watermark: who exported the list, when, why. Must run inside an
    audit context (a request or a command); the caller sends the text only after the
    context has written its reads (the middleware and the command do).
    """
    ctx = context.require()
    ctx.purpose = purpose[:120]
    actor = ctx.current_actor()
    now = timezone.localtime()
    ids = scope.patient_ids
    found: dict[uuid.UUID, Patient] = {}
    for i in range(0, len(ids), _BATCH):
        batch = Patient.objects.filter(pk__in=ids[i : i + _BATCH]).only("id", "language", *NOTIFICATION_FIELDS)
        found.update((p.pk, p) for p in batch)

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            _(
                "Breach notification list exported by %(user)s (%(role)s) on %(when)s for: %(purpose)s. "
                "%(count)s patients. Confidential: patient data."
            )
            % {
                "user": actor.username,
                "role": actor.role,
                "when": now.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "purpose": purpose,
                "count": len(ids),
            }
        ]
    )
    writer.writerow(
        [
            _("patient id"),
            _("last name"),
            _("first names"),
            _("birth date"),
            _("mobile phone"),
            _("other phone"),
            _("e-mail"),
            _("street address"),
            _("postal code"),
            _("city"),
            _("language"),
            _("times exposed"),
            _("fields exposed"),
            _("unexplained reads"),
        ]
    )
    exposures = {p.patient_id: p for p in scope.patients}
    for pk in ids:
        patient = found.get(pk)
        exposure = exposures[pk]
        exposed = "; ".join(f"{model}.{name}" for model, name in sorted(exposure.fields))
        if patient is None:  # the trail outlives records; patients are archived, not deleted
            writer.writerow(
                [str(pk), _("(no such record)"), *[""] * 9, exposure.reads, exposed, exposure.unexplained_reads]
            )
            continue
        writer.writerow(
            [
                str(pk),
                *(_cell(getattr(patient, name)) for name in NOTIFICATION_FIELDS),
                patient.language,
                exposure.reads,
                exposed,
                exposure.unexplained_reads,
            ]
        )
    audit_event_write(
        event_type=EventType.EXPORT,
        extra={"purpose": purpose, "count": len(ids), "export": "breach_notification", "scope": scope.parameters()},
    )
    return out.getvalue(), len(ids)


# --------------------------------------------------------------------------- who opened this record


def access_opened(*, patient_id, who: str = "", unexplained_only: bool = False):
    """One patient's events except its list and agenda appearances, newest first: records,
    appointments and contact details opened, changes, exports, security events (index
    audit_patient_time). Each row says whether it was withheld (``held``)."""
    events = AuditEvent.objects.filter(patient_id=patient_id).exclude(
        event_type=EventType.READ, purpose__in=LIST_PURPOSES
    )
    if who:
        events = events.filter(actor_username=who)
    if unexplained_only:
        events = events.filter(event_type=EventType.READ, explanation__in=UNPAID)
    return events.annotate(held=withheld_case()).defer("extra", "mac", "user_agent").order_by("-occurred_at", "-id")


def access_list_appearances(*, patient_id, who: str = "", unexplained_only: bool = False):
    """One patient's appearances in lists and agendas, summarised per person, clock hour
    (practice time), page, explanation and served or withheld: a list the front desk opened
    forty times in an hour is one line. Newest hour first."""
    reads = AuditEvent.objects.filter(patient_id=patient_id, event_type=EventType.READ, purpose__in=LIST_PURPOSES)
    if who:
        reads = reads.filter(actor_username=who)
    if unexplained_only:
        reads = reads.filter(explanation__in=UNPAID)
    return (
        reads.annotate(hour=TruncHour("occurred_at", tzinfo=timezone.get_current_timezone()), held=withheld_case())
        .values("actor_username", "actor_role", "hour", "purpose", "explanation", "explained_by", "held")
        .annotate(reads=Count("id"), first=Min("occurred_at"), last=Max("occurred_at"))
        .order_by("-hour", "actor_username", "purpose", "explanation", "explained_by", "held")
    )


# The write that explained reads afterwards, in words: (record type, event type) -> phrase.
_AFTERWARDS_WRITES: dict[tuple[str, EventType | None], StrOrPromise] = {
    ("scheduling.Appointment", EventType.CREATE): gettext_lazy("a booking"),
    ("scheduling.Appointment", EventType.CHANGE): gettext_lazy("a change to an appointment"),
    ("patients.Patient", EventType.CREATE): gettext_lazy("the record's creation"),
    ("patients.Patient", EventType.CHANGE): gettext_lazy("a change to the record"),
    ("patients.Patient", EventType.ARCHIVE): gettext_lazy("archiving the record"),
    ("patients.Patient", EventType.RESTORE): gettext_lazy("restoring the record"),
    ("patients.Patient", EventType.MERGE): gettext_lazy("a merge of records"),
}


def _afterwards_words(model_label: str, event_type, occurred_at) -> str:
    try:
        kind = EventType(event_type)
    except ValueError:
        kind = None
    what: StrOrPromise | None = _AFTERWARDS_WRITES.get((model_label, kind))
    if what is None:
        what = f"{kind.label if kind is not None else event_type} ({record_label(model_label)})"
    return _("explained afterwards by %(what)s at %(when)s") % {"what": what, "when": when_text(occurred_at)}


@dataclass
class Afterwards:
    """One patient's reads explained afterwards, in words: by READ event id (the reads a
    READ_EXPLAINED event names) and by request (the reads of the page that made the write,
    stamped after it), with the user who wrote."""

    reads: dict[int, str] = field(default_factory=dict)
    requests: dict[tuple[str, int | None], str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.reads)

    def words_for(self, pk: int, request_id: str = "", user_id: int | None = None) -> str:
        if pk in self.reads:
            return self.reads[pk]
        return self.requests.get((request_id, user_id), "") if request_id else ""


def explained_afterwards(*, patient_id) -> Afterwards:
    """One patient's reads explained afterwards ("explained afterwards by a booking at …"), from
    its READ_EXPLAINED events (one query on the patient's index)."""
    found = Afterwards()
    rows = (
        AuditEvent.objects.filter(patient_id=patient_id, event_type=EventType.READ_EXPLAINED)
        .order_by("occurred_at", "id")
        .values_list("extra", "model_label", "occurred_at", "request_id", "actor_user_id")
    )
    for extra, model_label, occurred_at, request_id, user_id in rows:
        extra = extra or {}
        words = _afterwards_words(model_label, extra.get("event_type"), occurred_at)
        for read_id in extra.get("reads") or ():
            found.reads.setdefault(int(read_id), words)
        if request_id:
            found.requests.setdefault((request_id, user_id), words)
    return found


def _group_key(actor_username, hour, purpose, explanation, explained_by) -> tuple:
    return (actor_username, hour.astimezone(datetime.UTC), purpose, explanation or "", explained_by or "")


def explain_opened(events, afterwards: Afterwards) -> None:
    """Give each event of ``access_opened`` its words: ``why_words`` (what explained the read),
    ``afterwards`` (what explained it later), ``purpose_label`` and ``record_label``. One query
    per explanation code on the page; nothing is decrypted."""
    events = list(events)
    words = describe((e.explanation, e.explained_by) for e in events if e.explanation)
    for event in events:
        event.purpose_label = purpose_label(event.purpose)
        event.record_label = record_label(event.model_label)
        event.why_words = words.get((event.explanation, event.explained_by), "") if event.explanation else ""
        event.is_read = event.event_type == EventType.READ
        unpaid = event.is_read and event.explanation in UNPAID
        event.afterwards = afterwards.words_for(event.pk, event.request_id, event.actor_user_id) if unpaid else ""


def explain_appearances(rows, afterwards: Afterwards) -> list[dict]:
    """The same for the rows of ``access_list_appearances`` (dicts). A row paid from an
    allowance says what explained it afterwards when a READ_EXPLAINED event named one of its
    reads (one query for the named reads)."""
    rows = list(rows)
    words = describe((r["explanation"], r["explained_by"]) for r in rows if r["explanation"])
    later: dict[tuple, str] = {}
    if afterwards and any(r["explanation"] in UNPAID for r in rows):
        zone = timezone.get_current_timezone()
        named = AuditEvent.objects.filter(pk__in=list(afterwards.reads), purpose__in=LIST_PURPOSES).values_list(
            "id", "actor_username", "occurred_at", "purpose", "explanation", "explained_by"
        )
        for pk, username, occurred_at, purpose, explanation, explained_by in named:
            hour = occurred_at.astimezone(zone).replace(minute=0, second=0, microsecond=0)
            later.setdefault(_group_key(username, hour, purpose, explanation, explained_by), afterwards.reads[pk])
    for row in rows:
        row["purpose_label"] = purpose_label(row["purpose"])
        row["why_words"] = words.get((row["explanation"], row["explained_by"]), "") if row["explanation"] else ""
        key = _group_key(row["actor_username"], row["hour"], row["purpose"], row["explanation"], row["explained_by"])
        row["afterwards"] = later.get(key, "") if row["explanation"] in UNPAID else ""
        row["hour_end"] = row["hour"] + datetime.timedelta(hours=1)
    return rows


# --------------------------------------------------------------------------- unexplained reads


def _unexplained_reads(start: datetime.datetime, end: datetime.datetime):
    """Users' served reads paid from an allowance in [start, end), each marked ``later`` when
    the same user explained them afterwards: the (event type, time) index."""
    return (
        AuditEvent.objects.filter(
            event_type=EventType.READ,
            occurred_at__gte=start,
            occurred_at__lt=end,
            actor_user_id__isnull=False,
            patient_id__isnull=False,
            explanation__in=UNPAID,
        )
        .exclude(extra__has_key="withheld")
        .exclude(request_id__in=withheld_request_ids(start=start, end=end))
        .annotate(later=explained_afterwards_exists())
    )


def unexplained_per_account(*, start: datetime.datetime, end: datetime.datetime) -> list[dict]:
    """Per account, the distinct patients it read unexplained (paid from its allowance, served)
    in [start, end): still unexplained, and explained afterwards. Most unexplained first."""
    rows = (
        _unexplained_reads(start, end)
        .values("actor_user_id")
        .annotate(
            unexplained=Count("patient_id", distinct=True, filter=Q(later=False)),
            afterwards=Count("patient_id", distinct=True, filter=Q(later=True)),
            masked=Count("patient_id", distinct=True, filter=Q(later=False, explanation=Explanation.MASKED)),
            username=Max("actor_username"),
            role=Max("actor_role"),
        )
        .order_by()
    )
    return sorted(rows, key=lambda row: (-row["unexplained"], -row["afterwards"], row["username"]))


def unexplained_per_hour(*, hours: list[datetime.datetime]) -> dict[int, list[int]]:
    """{account id: distinct patients read unexplained (and not explained afterwards) in each
    of ``hours`` (aware clock hours, as the reads chart has them)}."""
    if not hours:
        return {}
    index = {hour.astimezone(datetime.UTC): n for n, hour in enumerate(hours)}
    rows = (
        _unexplained_reads(hours[0], hours[-1] + datetime.timedelta(hours=1))
        .filter(later=False)
        .annotate(hour=TruncHour("occurred_at", tzinfo=datetime.UTC))
        .values("actor_user_id", "hour")
        .annotate(n=Count("patient_id", distinct=True))
        .order_by()
    )
    counts: dict[int, list[int]] = {}
    for row in rows:
        position = index.get(row["hour"].astimezone(datetime.UTC))
        if position is not None:
            counts.setdefault(row["actor_user_id"], [0] * len(hours))[position] = row["n"]
    return counts
