"""Exports of patient data: a CSV of a patient list, and one patient's own data for a GDPR
right-of-access request.

Rules enforced here (minimal exposure: data leaves only for a stated purpose, and says so;
docs/design.md, invariants 1 and 2):

- An export states its purpose. The request's audit context takes it as its purpose
  (``export: <purpose>``) before anything is decrypted, so every READ row the export makes
  names it; each row also carries the export's id in ``extra["export_id"]`` and one EXPORT event per
  export ties them together (who, when, how many patients, which fields, the full purpose).
- Only the columns asked for are loaded (``.only()``), so only they are decrypted and
  audited; reads go through the audited fields, so exports count against the read budget
  like any page (a refused read fails the whole export: no partial file leaves).
- The file is built in memory inside the request, never streamed: a streaming response is
  iterated after the audit middleware has closed the context, where decryption refuses.
- Every file is watermarked (first and last line) with who exported it, when and why.
- CSV cells that a spreadsheet would run as a formula are neutralized.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext as _

from audit import context
from audit.models import EventType
from audit.services import audit_event_write
from patients.models import Patient
from patients.selectors import CONTACT_GROUPS
from patients.services import EDITABLE_FIELDS

# The front desk's list shows 50 recent patients or 25 search results: an export is of
# what a page showed, never of the whole table.
EXPORT_LIST_LIMIT = 50
LIST_BASE_COLUMNS = ("last_name", "first_names", "birth_name", "birth_date")
# Staff's own notes: exported on request only (see PatientExportForm.include_notes).
STAFF_NOTE_FIELDS = ("notes",)
# Every encrypted and plain field of the record a right-of-access export holds, in order.
PATIENT_EXPORT_FIELDS = (*EDITABLE_FIELDS, "is_archived", "archived_at", "created_at", "updated_at")
# A stated purpose, not a click-through ("gdpr" is not one; "right of access, letter of 12 May" is).
EXPORT_PURPOSE_MIN_LENGTH = 10
PURPOSE_COLUMN_LENGTH = 120  # audit.models.AuditEvent.purpose


@dataclass(frozen=True)
class Export:
    """One export in progress: who, when, why, and the id its audit rows share."""

    id: str
    username: str
    at: datetime.datetime
    purpose: str

    def watermark(self) -> str:
        when = timezone.localtime(self.at).strftime("%Y-%m-%d %H:%M %Z")
        return _("Exported by %(user)s on %(when)s for: %(purpose)s. Confidential: patient data.") % {
            "user": self.username,
            "when": when,
            "purpose": self.purpose,
        }

    def filename(self, stem: str, extension: str) -> str:
        return f"{stem}-{timezone.localtime(self.at):%Y%m%d-%H%M}.{extension}"


def export_begin(*, user, purpose: str) -> Export:
    """Open an export: the request's audit context takes its purpose and id from here on.

    Call it before anything is decrypted: reads are recorded with the context's purpose.
    """
    export = Export(id=str(uuid.uuid4()), username=user.get_username(), at=timezone.now(), purpose=purpose)
    ctx = context.require()
    ctx.purpose = f"export: {purpose}"[:PURPOSE_COLUMN_LENGTH]
    ctx.extra = {**ctx.extra, "export_id": export.id}
    return export


def export_record(
    *, export: Export, kind: str, file_format: str, count: int, fields, patient: Patient | None = None, **extra
) -> None:
    """The EXPORT event: one per file, after every read it needed has succeeded."""
    audit_event_write(
        event_type=EventType.EXPORT,
        patient_id=patient.pk if patient is not None else None,
        model_label=Patient._meta.label if patient is not None else "",
        object_pk=patient.pk if patient is not None else "",
        fields=fields,
        extra={"kind": kind, "format": file_format, "count": count, "purpose": export.purpose, **extra},
    )


# ---------------------------------------------------------------------------------------------
# Cells

# A cell a spreadsheet would evaluate: =, +, -, @ (and tab or carriage return) in front.
_FORMULA = re.compile(r"^[=+\-@\t\r]")
# Numbers such as an E.164 phone (+33612345678) or a negative amount are safe to leave as they are.
_NUMBER = re.compile(r"^[+-]?[0-9][0-9 .]*$")


def csv_cell(value) -> str:
    """A value as a CSV cell that no spreadsheet runs as a formula (CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if isinstance(value, datetime.datetime):
        return timezone.localtime(value).isoformat(timespec="minutes")
    if isinstance(value, datetime.date):
        return value.isoformat()
    text = str(value)
    if _FORMULA.match(text) and not _NUMBER.match(text):
        return "'" + text
    return text


def _csv_text(rows) -> str:
    out = io.StringIO()
    # A byte order mark: spreadsheets then read the accents right.
    out.write("\ufeff")
    csv.writer(out).writerows(rows)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# A patient list


def list_columns(groups) -> list[str]:
    """The fields of a list export: the list's own columns plus the contact groups chosen."""
    return [
        *LIST_BASE_COLUMNS,
        *(name for group in CONTACT_GROUPS if group in groups for name in CONTACT_GROUPS[group]),
    ]


def _column(name: str) -> models.Field[Any, Any]:
    """A field of the patient record: a column, never the far side of a relation."""
    field = Patient._meta.get_field(name)
    if not isinstance(field, models.Field):
        raise TypeError(f"{name} is not a column of the patient record.")
    return field


def patient_list_csv(patients, *, columns: list[str], export: Export) -> str:
    """The CSV of a patient list: a watermark line, a header, a row per patient, the watermark."""
    labels = [str(_column(name).verbose_name) for name in columns]
    rows = [[csv_cell(export.watermark())], [*labels, str(_("archived"))]]
    rows += [[*(csv_cell(getattr(p, name)) for name in columns), csv_cell(p.is_archived)] for p in patients]
    rows.append([csv_cell(export.watermark())])
    return _csv_text(rows)


# ---------------------------------------------------------------------------------------------
# One patient's own data (GDPR right of access, article 15; portability, article 20)


def plain(value):
    if isinstance(value, datetime.datetime):
        return timezone.localtime(value).isoformat(timespec="minutes")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def patient_export_fields(include_notes: bool) -> list[str]:
    return [name for name in PATIENT_EXPORT_FIELDS if include_notes or name not in STAFF_NOTE_FIELDS]


@dataclass(frozen=True)
class ExportSection:
    """A part of a right-of-access export that another app holds (scheduling: the patient's
    appointments and the reminders sent for them). ``rows`` loads and decrypts (as the export
    reads them) and returns plain values; ``csv_rows`` lays them out as CSV rows."""

    name: str
    title: Callable[[], str]
    rows: Callable[..., list[dict]]  # (patient, *, include_notes) -> rows
    csv_rows: Callable[[list[dict]], list[list[str]]]


# Registered by the apps that hold them, in their AppConfig.ready(): patients imports none.
_SECTIONS: dict[str, ExportSection] = {}


def export_section_register(section: ExportSection) -> None:
    _SECTIONS[section.name] = section


def patient_data(patient: Patient, *, include_notes: bool) -> dict:
    """What the practice holds about the patient, as plain values (decrypts what it reads):
    the record, then each registered section (``ExportSection``)."""
    record = {}
    for name in patient_export_fields(include_notes):
        value = getattr(patient, name)
        field = _column(name)
        if field.choices and value:
            value = str(dict(field.flatchoices).get(value, value))
        record[name] = plain(value)
    sections = {name: section.rows(patient, include_notes=include_notes) for name, section in _SECTIONS.items()}
    return {"patient": record, **sections}


def patient_data_json(data: dict, *, export: Export) -> str:
    document = {
        "export": {
            "notice": export.watermark(),
            "exported_by": export.username,
            "exported_at": plain(export.at),
            "purpose": export.purpose,
            "id": export.id,
        },
        **data,
        "end": export.watermark(),
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def patient_data_csv(data: dict, *, export: Export) -> str:
    """Tables in one file: the record (field, value), then each section (the appointments)."""
    labels = {name: str(_column(name).verbose_name) for name in PATIENT_EXPORT_FIELDS}
    rows = [[csv_cell(export.watermark())], [], [str(_("Patient record"))], [str(_("field")), str(_("value"))]]
    rows += [[csv_cell(labels[name]), csv_cell(value)] for name, value in data["patient"].items()]
    for name, section in _SECTIONS.items():
        rows += [[], [str(section.title())], *section.csv_rows(data[name])]
    rows += [[], [csv_cell(export.watermark())]]
    return _csv_text(rows)
