"""The nightly check of the keys and the trail, and the head it records.

``trail_check_nightly`` is what the nightly task runs (audit/tasks.py); ``manage.py
audit_verify`` runs the whole chain's check (``audit.chain.trail_verify``) on demand.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone
from django.utils.translation import gettext as _

from audit import chain
from audit.keys import canary_problem
from audit.models import AuditEvent, AuditHead, EventType
from audit.services import audit_event_write

logger = logging.getLogger("audit.tasks")


def trail_check_nightly(*, full: bool = False) -> dict:
    """Check the keys and the trail; record the trail's head, log it, and alert on trouble.

    The trail's check is ``audit.chain.trail_verify`` (what ``manage.py audit_verify`` runs),
    incremental here. What it catches:
    - keys that no longer read the database (the key canary, as at start-up);
    - the HMAC chain broken after the previous head (audit/chain.py): a row changed, forged,
      inserted or deleted since the previous check, named; incremental, from the previous
      head on (``full=True``, or ``manage.py audit_verify``, verifies from the first row);
    - ids missing after the previous head: the ids have no gaps, so a gap is a removal, even
      when the rows written after it chain onto what was left, and a tail cut short of the
      chain's tip;
    - the previous head's row gone or replaced: the tail of the trail was cut (what is left
      of a cut chain is still a valid chain);
    - rows deleted in the part verified on earlier nights: fewer rows at or below the
      previous largest id than there were.
    What it does not catch:
    - rows changed in the part verified on earlier nights, by someone who deletes nothing:
      run ``manage.py audit_verify`` (the whole chain) regularly, or ``full=True``;
    - someone holding ``AUDIT_CHAIN_KEY`` (the app server's environment): they can rebuild
      the chain. And the table's owner, who can also rewind the tip and rewrite
      ``AuditHead``: the head is logged each night and every five minutes
      (``audit_head_export``) so that copies live outside the database;
      ``manage.py audit_verify --head-file`` compares the trail with them.
    Findings write a security event (``CHAIN_BROKEN``, ``TRAIL_SHRANK`` with the missing
    ids, ``KEY_CHECK_FAILED``), which is mailed to the practice admins like any alert
    event. A finding is reported once: the next night continues from the new head.
    """
    problem = canary_problem()
    with transaction.atomic():
        previous = AuditHead.objects.order_by("-id").first()
        start_id, start_mac = 0, chain.GENESIS
        heads = []
        if previous is not None and previous.head_mac:
            heads = [
                chain.Head(
                    row_id=previous.max_event_id,
                    mac=previous.head_mac,
                    source=_("the check of %(when)s") % {"when": previous.checked_at.isoformat()},
                )
            ]
            if not full:
                start_id, start_mac = previous.max_event_id, previous.head_mac
        report = chain.trail_verify(after_id=start_id, prev_mac=start_mac, heads=heads)
        chain_problem = "; ".join(
            [*report.head_problems, *([report.chain.problem.describe()] if report.chain.problem else [])]
        )
        gaps = [list(gap) for gap in report.gaps.all]
        head = AuditEvent.objects.aggregate(count=Count("id"), last_at=Max("occurred_at"))
        max_id, head_mac = chain.head_current()
        count = head["count"]
        missing = 0
        if previous is not None:
            still_there = AuditEvent.objects.filter(id__lte=previous.max_event_id).count()
            missing = max(previous.event_count - still_there, 0)
            if max_id < previous.max_event_id:
                # The tail went; if as many forged rows with smaller ids were added, the count
                # alone would not show it. At least the previous last row is missing.
                missing = max(missing, 1)
        # The ids missing after the previous head (those at or below it are counted above).
        floor = previous.max_event_id if previous is not None else 0
        missing += sum(last - max(first, floor + 1) + 1 for first, last in gaps if last > floor)
        AuditHead.objects.create(
            checked_at=timezone.now(),
            max_event_id=max_id,
            head_mac=head_mac,
            event_count=count,
            last_occurred_at=head["last_at"],
            missing_rows=missing,
            key_problem=bool(problem),
            rows_verified=report.chain.rows,
            chain_problem=chain_problem,
        )
        if chain_problem:
            audit_event_write(
                event_type=EventType.CHAIN_BROKEN,
                object_pk=report.chain.problem.row_id if report.chain.problem and report.chain.problem.row_id else "",
                extra={"problem": chain_problem, "verified_from_id": start_id, "rows_verified": report.chain.rows},
            )
            logger.error("Audit trail chain broken: %s", chain_problem)
        if missing or gaps:
            audit_event_write(
                event_type=EventType.TRAIL_SHRANK,
                extra={
                    "missing_rows": missing,
                    "missing_ids": gaps,
                    "previous_max_id": previous.max_event_id if previous is not None else 0,
                    "previous_count": previous.event_count if previous is not None else 0,
                    "max_id": max_id,
                    "count": count,
                },
            )
            logger.error(
                "Audit trail rows missing: %d since the check of %s "
                "(largest id %d -> %d, rows %d -> %d; ids missing: %s)",
                missing,
                previous.checked_at.isoformat() if previous is not None else "-",
                previous.max_event_id if previous is not None else 0,
                max_id,
                previous.event_count if previous is not None else 0,
                count,
                ", ".join(f"{first}-{last}" for first, last in gaps) or "-",
            )
        if problem:
            audit_event_write(event_type=EventType.KEY_CHECK_FAILED, extra={"problem": problem})
            logger.error("Key check failed: %s", problem)
    last_at = head["last_at"].isoformat() if head["last_at"] else "-"
    # The head export (as every five minutes, audit_head_export), with the night's findings:
    # audit_verify --head-file reads it back.
    chain.heads_logger.info(
        "audit head: max_id=%d mac=%s count=%d last_at=%s missing=%d chain=%s verified=%d keys=%s",
        max_id,
        head_mac or "-",
        count,
        last_at,
        missing,
        "broken" if chain_problem else "ok",
        report.chain.rows,
        "problem" if problem else "ok",
    )
    return {
        "max_id": max_id,
        "head_mac": head_mac,
        "count": count,
        "missing": missing,
        "gaps": gaps,
        "rows_verified": report.chain.rows,
        "chain_problem": chain_problem,
        "key_problem": bool(problem),
    }
