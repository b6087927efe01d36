"""Verify the audit trail's HMAC chain (audit/chain.py) and name the first bad row.

    manage.py audit_verify [--from-id N] [--head-file PATH]

Streams the trail in id order in constant memory, recomputes every row's MAC under
``AUDIT_CHAIN_KEY`` and stops at the first row that does not match: changed, inserted, or
right after removed rows. Then compares the trail with an exported head (the ``audit head:``
line the nightly check logs, read from ``--head-file``; else the last head recorded in the
database): a tail cut off leaves a valid chain, only the head shows it. Exit status 1 when
anything is wrong. Decrypts nothing and writes nothing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from audit import chain
from audit.models import AuditEvent, AuditHead

# What the nightly task logs: "audit head: max_id=123 mac=<64 hex> ...".
HEAD_LINE = re.compile(r"audit head: max_id=(?P<id>\d+) mac=(?P<mac>[0-9a-f]{64})")


def head_read(path: Path) -> tuple[int, str]:
    """The last exported head in a file (a log file, or lines copied from it)."""
    found = None
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            match = HEAD_LINE.search(line)
            if match:
                found = int(match["id"]), match["mac"]
    if found is None:
        raise CommandError(_("No 'audit head: max_id=... mac=...' line in %(path)s.") % {"path": path})
    return found


class Command(BaseCommand):
    help = "Verify the audit trail's HMAC chain and compare it with the exported head; names the first bad row."

    def add_arguments(self, parser):
        parser.add_argument(
            "--from-id",
            type=int,
            default=None,
            help="start at this row, trusting the row before it (default: the first row)",
        )
        parser.add_argument(
            "--head-file",
            type=Path,
            default=None,
            help="a file holding the nightly 'audit head:' log lines (the last one is used); "
            "default: the last head recorded in the database",
        )

    def handle(self, *args, from_id, head_file, **options):
        started = time.perf_counter()
        after_id, prev_mac = 0, chain.GENESIS
        if from_id is not None and from_id > 1:
            before = AuditEvent.objects.filter(id__lt=from_id).order_by("-id").values_list("id", "mac").first()
            if before is not None:
                after_id, prev_mac = before
        report = chain.chain_verify(after_id=after_id, prev_mac=prev_mac)
        elapsed = time.perf_counter() - started
        rate = report.rows / elapsed if elapsed else 0.0
        self.stdout.write(
            _("Verified %(rows)d rows (ids %(first)s to %(last)s) in %(seconds).1f s (%(rate).0f rows/s).")
            % {
                "rows": report.rows,
                "first": report.first_id or "-",
                "last": report.last_id or "-",
                "seconds": elapsed,
                "rate": rate,
            }
        )
        problems = []
        if report.problem is not None:
            problems.append(_("First bad row: %(problem)s") % {"problem": report.problem.describe()})

        if head_file is not None:
            head_id, head_mac = head_read(head_file)
            source = str(head_file)
        else:
            head = AuditHead.objects.exclude(head_mac="").order_by("-id").first()
            head_id, head_mac = (head.max_event_id, head.head_mac) if head else (0, "")
            source = _("the database (AuditHead)")
        if head_id:
            head_problem = chain.head_check(head_id=head_id, head_mac=head_mac)
            if head_problem:
                problems.append(_("Exported head: %(problem)s") % {"problem": head_problem})
            else:
                self.stdout.write(
                    _("Row %(id)d matches the exported head (from %(source)s).") % {"id": head_id, "source": source}
                )
        else:
            self.stdout.write(_("No exported head to compare with: a cut-off tail would not show."))

        if problems:
            for line in problems:
                self.stderr.write(line)
            raise CommandError(_("The audit trail failed verification."))
        self.stdout.write(self.style.SUCCESS(_("The audit trail's chain is intact.")))
