"""Verify the audit trail: its HMAC chain, the gaps in its ids, and the exported heads.

    manage.py audit_verify [--from-id N] [--head-file PATH]

Streams the trail in id order in constant memory, recomputes every row's MAC under
``AUDIT_CHAIN_KEY`` and names the first row that does not match: changed, inserted, or
right after removed rows. Names every range of missing ids: the ids have no gaps (the chain
draws them, audit/chain.py), so a gap is a removal, including a tail cut off with or
without rows written after it. Then compares the trail with every exported head: the
``audit head:`` lines of ``--head-file`` (what the five-minute export and the nightly check
log), else the heads the nightly check recorded in the database. A head's row must still be
there with the same MAC; that catches an owner who cut the tail and rewound the chain's tip
as well. Exit status 1 when anything is wrong. Decrypts nothing and writes nothing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from audit import chain
from audit.models import AuditEvent, AuditHead

# What the head export and the nightly task log: "audit head: max_id=123 mac=<64 hex> ...".
HEAD_LINE = re.compile(r"audit head: max_id=(?P<id>\d+) mac=(?P<mac>[0-9a-f]{64})")


def heads_read(path: Path) -> list[chain.Head]:
    """Every exported head in a file (a log file, or lines copied from it), in file order."""
    heads = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            match = HEAD_LINE.search(line)
            if match:
                source = _("line %(line)d of %(path)s") % {"line": number, "path": path}
                heads.append(chain.Head(row_id=int(match["id"]), mac=match["mac"], source=source))
    if not heads:
        raise CommandError(_("No 'audit head: max_id=... mac=...' line in %(path)s.") % {"path": path})
    return heads


def heads_recorded() -> list[chain.Head]:
    """The heads the nightly check recorded in the database (audit.AuditHead)."""
    return [
        chain.Head(
            row_id=head.max_event_id,
            mac=head.head_mac,
            source=_("the check of %(when)s") % {"when": head.checked_at.isoformat()},
        )
        for head in AuditHead.objects.exclude(head_mac="").order_by("id")
    ]


class Command(BaseCommand):
    help = (
        "Verify the audit trail's HMAC chain, the gaps in its ids and the exported heads; "
        "names the first bad row and the missing ids."
    )

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
            help="a file holding the 'audit head:' log lines (every one is compared); "
            "default: the heads recorded in the database by the nightly check",
        )

    def handle(self, *args, from_id, head_file, **options):
        started = time.perf_counter()
        after_id, prev_mac = 0, chain.GENESIS
        if from_id is not None and from_id > 1:
            before = AuditEvent.objects.filter(id__lt=from_id).order_by("-id").values_list("id", "mac").first()
            if before is not None:
                after_id, prev_mac = before
        if head_file is not None:
            heads, source = heads_read(head_file), str(head_file)
        else:
            heads, source = heads_recorded(), _("the database (AuditHead)")
        report = chain.trail_verify(after_id=after_id, prev_mac=prev_mac, heads=heads)
        elapsed = time.perf_counter() - started
        rate = report.chain.rows / elapsed if elapsed else 0.0
        self.stdout.write(
            _("Verified %(rows)d rows (ids %(first)s to %(last)s) in %(seconds).1f s (%(rate).0f rows/s).")
            % {
                "rows": report.chain.rows,
                "first": report.chain.first_id or "-",
                "last": report.chain.last_id or "-",
                "seconds": elapsed,
                "rate": rate,
            }
        )
        if report.heads_compared and not report.head_problems:
            self.stdout.write(
                _("%(n)d exported heads match (from %(source)s).") % {"n": report.heads_compared, "source": source}
            )
        elif not report.heads_compared:
            self.stdout.write(
                _(
                    "No exported head to compare with: a tail cut off by someone who also rewinds "
                    "the chain's tip would not show."
                )
            )
        if report.problems:
            for line in report.problems:
                self.stderr.write(line)
            raise CommandError(_("The audit trail failed verification."))
        self.stdout.write(self.style.SUCCESS(_("The audit trail's chain is intact.")))
