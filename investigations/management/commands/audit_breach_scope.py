"""Breach scope from the command line: which patients and fields a user, an IP or a login
session (or everyone) exposed in a window, which of them nothing explained, and which were
decrypted for withheld pages only (not served); with --csv, the notification list (audited).

    manage.py audit_breach_scope --from 2026-03-04 --to 2026-03-04 --user sophie
    manage.py audit_breach_scope --from "2026-03-04 08:00" --to "2026-03-04 12:30" --ip 192.0.2.7 \\
        --csv notify.csv --purpose "notify patients of incident 2026-03"

Dates and times are read in the practice's time zone. A bare date for --to means the end of
that day; a time means up to that moment (excluded).
"""

import datetime
import os

from django.core.management.base import CommandError
from django.utils import timezone

from audit import context
from audit.management.audited import AuditedCommand
from investigations.reports import actor_filter, breach_notification_export, breach_scope, field_label

_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")


def _moment(value: str, *, end: bool) -> datetime.datetime:
    """A date or date and time in the practice's zone; a bare date as --to is the next midnight."""
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        day = None
    if day is not None:
        if end:
            day += datetime.timedelta(days=1)
        return timezone.make_aware(datetime.datetime.combine(day, datetime.time()))
    for fmt in _FORMATS:
        try:
            # A wall-clock time of the practice (the current time zone), made aware here.
            return timezone.make_aware(datetime.datetime.strptime(value, fmt))  # noqa: DTZ007
        except ValueError:
            continue
    raise CommandError(f"Not a date or date and time (YYYY-MM-DD or YYYY-MM-DD HH:MM): {value!r}")


class Command(AuditedCommand):
    help = "Which patients and fields were exposed in a window, by a user, an IP or a session (or everyone)."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="start", required=True, help="start (practice time, included)")
        parser.add_argument("--to", dest="end", required=True, help="end (a date: that whole day)")
        parser.add_argument("--user", help="username, as the trail records it")
        parser.add_argument("--ip", help="client IP address")
        parser.add_argument("--session", help="login session id, as the trail records it")
        parser.add_argument("--csv", help="write the notification list (decrypts contact details) to this file")
        parser.add_argument("--purpose", help="why the notification list is needed (required with --csv)")

    def handle(self, *args, start, end, user, ip, session, csv, purpose, **options):
        start_at, end_at = _moment(start, end=False), _moment(end, end=True)
        if end_at <= start_at:
            raise CommandError("--to must come after --from.")
        if csv and len((purpose or "").strip()) < 10:
            raise CommandError("--csv needs --purpose: why the names and contact details are needed (10+ characters).")
        arguments = {"start": start_at, "end": end_at, "ip": ip or None, "session": session or None}
        if user:
            arguments.update(actor_filter(user))
        scope = breach_scope(**arguments)

        self._report(scope, user=user, ip=ip, session=session)
        if csv:
            text, count = breach_notification_export(scope=scope, purpose=purpose.strip())
            # Written only once the reads are in the trail (raises if they cannot be written).
            context.require().flush()
            fd = os.open(csv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                out.write(text)
            self.stdout.write(f"Notification list of {count} patients written to {csv} (audited).")

    def _report(self, scope, *, user, ip, session) -> None:
        """The scope as text: counts, fields, then the patients' ids (nothing decrypted)."""
        who = ", ".join(f"{k} {v}" for k, v in (("user", user), ("IP", ip), ("session", session)) if v) or "everyone"
        self.stdout.write(
            f"Breach scope: {who}, {timezone.localtime(scope.start):%Y-%m-%d %H:%M} to "
            f"{timezone.localtime(scope.end):%Y-%m-%d %H:%M} ({timezone.get_current_timezone_name()})"
        )
        self.stdout.write(f"{scope.patient_count} patients exposed, {scope.total_reads} reads")
        self.stdout.write(
            f"  explained: {scope.explained_count} patients; unexplained: {scope.unexplained_count} patients "
            "(read from the allowance, never explained afterwards)"
        )
        if scope.withheld:
            self.stdout.write(
                f"Decrypted and withheld (not served, not in the list): {scope.withheld_count} patients, "
                f"{scope.withheld_reads} reads"
            )
        if scope.field_totals:
            self.stdout.write("Fields (patients, reads):")
            for total in scope.field_totals:
                label = field_label(total.model_label, total.name)
                self.stdout.write(f"  {total.model_label}.{total.name} ({label}): {total.patients}, {total.reads}")
            self.stdout.write("Patients (id, reads, unexplained reads):")
            for exposure in scope.patients:
                self.stdout.write(f"  {exposure.patient_id} {exposure.reads} {exposure.unexplained_reads}")
        if scope.withheld:
            self.stdout.write("Decrypted and withheld (id, reads):")
            for exposure in scope.withheld:
                self.stdout.write(f"  {exposure.patient_id} {exposure.reads}")
