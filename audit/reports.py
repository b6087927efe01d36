"""Investigation reports over the audit trail: the breach scope and its notification list.

Rules enforced here:
- The breach scope reads the trail only (one aggregate query): it never decrypts, so
  looking at a scope exposes nobody.
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

from django.db.models import Count, Max, Min, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audit import context
from audit.models import AuditEvent, EventType

# Events that put a patient's data in front of someone: decrypted reads and exports.
EXPOSURE_EVENTS = (EventType.READ, EventType.EXPORT)

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
    "audit:patient_access": gettext_lazy("Access report (this report)"),
    "audit:patient_access_print": gettext_lazy("Access report (this report)"),
    "audit:breach_scope_csv": gettext_lazy("Breach notification list"),
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
    from django.apps import apps

    if not model_label:
        return ""
    try:
        return capfirst(str(apps.get_model(model_label)._meta.verbose_name))
    except (LookupError, ValueError):
        return model_label


def field_label(model_label: str, name: str, *, with_record: bool = True) -> str:
    """A field of the trail in words: "Appointment: reason" (or just "reason")."""
    from practice.templatetags.cabinet import field_labels

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
    login session, all of them combined, or everyone) and a time window [start, end)."""

    start: datetime.datetime
    end: datetime.datetime
    actor_user_id: int | None = None
    actor_username: str | None = None
    ip: str | None = None
    session: str | None = None
    patients: list[PatientExposure] = field(default_factory=list)
    field_totals: list[FieldTotal] = field(default_factory=list)

    @property
    def patient_count(self) -> int:
        return len(self.patients)

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
    from django.contrib.auth import get_user_model

    user_id = get_user_model().objects.filter(username=username).values_list("pk", flat=True).first()
    return {"actor_username": username} if user_id is None else {"actor_user_id": user_id}


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

    One aggregate query grouped by patient, record type and field list (the trail stores
    each row's fields as a sorted list, so the groups are few); the per-field counts are
    summed here. It uses the (actor_user_id, occurred_at), (session, occurred_at) or
    occurred_at index, whichever the filters allow. Nothing is decrypted.
    """
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
    # The field list is grouped on as text: a few distinct lists, each parsed once below,
    # instead of one JSON decode per group.
    groups = (
        events.order_by()
        .annotate(fields_text=Cast("fields", TextField()))
        .values_list("patient_id", "model_label", "fields_text")
        .annotate(n=Count("id"), first=Min("occurred_at"), last=Max("occurred_at"))
    )
    keys_of: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    by_patient: dict[uuid.UUID, PatientExposure] = {}
    for patient_id, model_label, fields_text, n, first, last in groups:
        keys = keys_of.get((model_label, fields_text))
        if keys is None:
            names = json.loads(fields_text) if fields_text else []
            keys = keys_of[(model_label, fields_text)] = tuple((model_label, name) for name in names)
        exposure = by_patient.get(patient_id)
        if exposure is None:
            exposure = by_patient[patient_id] = PatientExposure(patient_id=patient_id, first=first, last=last)
        else:
            exposure.first = min(exposure.first, first)
            exposure.last = max(exposure.last, last)
        exposure.reads += n
        counts = exposure.fields
        for key in keys:
            counts[key] = counts.get(key, 0) + n
    totals: dict[tuple[str, str], FieldTotal] = {}
    for exposure in by_patient.values():
        for key, reads in exposure.fields.items():
            total = totals.get(key)
            if total is None:
                total = totals[key] = FieldTotal(model_label=key[0], name=key[1])
            total.patients += 1
            total.reads += reads
    return BreachScope(
        start=start,
        end=end,
        actor_user_id=actor_user_id,
        actor_username=actor_username or None,
        ip=ip or None,
        session=session or None,
        patients=sorted(by_patient.values(), key=lambda p: (-p.reads, str(p.patient_id))),
        field_totals=sorted(totals.values(), key=lambda t: (-t.patients, t.model_label, t.name)),
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
    from audit.services import audit_event_write
    from patients.models import Patient

    ctx = context.require()
    ctx.purpose = purpose[:120]
    actor = ctx.current_actor()
    now = timezone.localtime()
    ids = scope.patient_ids
    found = {}
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
        ]
    )
    exposures = {p.patient_id: p for p in scope.patients}
    for pk in ids:
        patient = found.get(pk)
        exposure = exposures[pk]
        exposed = "; ".join(f"{model}.{name}" for model, name in sorted(exposure.fields))
        if patient is None:  # the trail outlives records; patients are archived, not deleted
            writer.writerow([str(pk), _("(no such record)"), *[""] * 9, exposure.reads, exposed])
            continue
        writer.writerow(
            [
                str(pk),
                *(_cell(getattr(patient, name)) for name in NOTIFICATION_FIELDS),
                patient.language,
                exposure.reads,
                exposed,
            ]
        )
    audit_event_write(
        event_type=EventType.EXPORT,
        extra={"purpose": purpose, "count": len(ids), "export": "breach_notification", "scope": scope.parameters()},
    )
    return out.getvalue(), len(ids)
