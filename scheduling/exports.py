"""The scheduling part of a patient's right-of-access export (patients/exports.py states the
rules): their appointments, cancelled ones too, and the reminders sent for them. Registered as
an export section in SchedulingConfig.ready()."""

from __future__ import annotations

from django.utils.translation import gettext as _

from patients.exports import ExportSection, csv_cell, plain
from patients.models import Patient
from scheduling.selectors import patient_export_appointments


def appointment_rows(patient: Patient, *, include_notes: bool) -> list[dict]:
    """One row per appointment, as plain values; decrypts the reason and cancellation reason
    (and the internal note when asked)."""
    appointments, reminders = patient_export_appointments(patient, include_notes=include_notes)
    rows = []
    for appointment in appointments:
        row = {
            "start": plain(appointment.start),
            "end": plain(appointment.end),
            "practitioner": appointment.practitioner.display_name,
            "type": appointment.appointment_type.name if appointment.appointment_type is not None else "",
            "status": str(appointment.get_status_display()),
            "reason": appointment.reason or "",
            "arrived_at": plain(appointment.arrived_at),
            "done_at": plain(appointment.done_at),
            "cancelled_at": plain(appointment.cancelled_at),
            "cancellation_reason": appointment.cancellation_reason or "",
        }
        if include_notes:
            row["internal_note"] = appointment.internal_note or ""
        row["reminders"] = [
            {
                "channel": str(r.get_channel_display()),
                "kind": str(r.get_kind_display()),
                "status": str(r.get_status_display()),
                "sent_at": plain(r.sent_at),
            }
            for r in reminders.get(appointment.pk, [])
        ]
        rows.append(row)
    return rows


def appointment_csv_rows(appointments: list[dict]) -> list[list[str]]:
    """A header, then one row per appointment; its reminders in one cell."""
    if not appointments:
        return []
    header = [name for name in appointments[0] if name != "reminders"]
    rows = [[*header, "reminders"]]
    for row in appointments:
        sent = "; ".join(
            f"{r['channel']} {r['kind']}: {r['status']} {r['sent_at'] or ''}".strip() for r in row["reminders"]
        )
        rows.append([*(csv_cell(row[name]) for name in header), csv_cell(sent)])
    return rows


APPOINTMENTS = ExportSection(
    name="appointments",
    title=lambda: _("Appointments"),
    rows=appointment_rows,
    csv_rows=appointment_csv_rows,
)
