"""Background work of the audit trail: security alert mails and the nightly check.

Beat names these tasks in ``CELERY_BEAT_SCHEDULE`` (practice/settings.py). Each runs in an
audit context of its own (``system:<task>``, practice/celery.py) and decrypts nothing.
"""

from __future__ import annotations

import datetime
import logging

from celery import shared_task
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from audit import alerts, chain
from audit.keys import canary_problem
from audit.models import AuditEvent, AuditHead, EventType
from audit.services import audit_event_write

logger = logging.getLogger(__name__)


@shared_task(bind=True)
def security_alerts_send(self) -> int:
    """Mail the security events not mailed yet, in one mail (audit/alerts.py).

    Enqueued after an alert event commits, and run by beat every five minutes as a sweep.
    No automatic retry: a failed mail leaves the events pending for the next run.
    """
    # Eager runs happen right after the event's own commit: nothing else is committing.
    settle = datetime.timedelta(0) if self.request.is_eager else alerts.COMMIT_SETTLE
    return alerts.security_alerts_send(settle=settle)


@shared_task
def audit_verify_nightly(full: bool = False) -> dict:
    """Check the keys and the trail; record the trail's head, log it, and alert on trouble.

    What it catches:
    - keys that no longer read the database (the key canary, as at start-up);
    - the HMAC chain broken after the previous head (audit/chain.py): a row changed, forged,
      inserted or deleted since the previous check, named; incremental, from the previous
      head on (``full=True``, or ``manage.py audit_verify``, verifies from the first row);
    - the previous head's row gone or replaced: the tail of the trail was cut (what is left
      of a cut chain is still a valid chain: only the exported head shows it);
    - rows deleted in the part verified on earlier nights: fewer rows at or below the
      previous largest id than there were. The ids come from a sequence and rolled-back
      writes leave gaps, which is why rows are counted instead of ids checked for holes.
    What it does not catch:
    - rows changed in the part verified on earlier nights, by someone who deletes nothing:
      run ``manage.py audit_verify`` (the whole chain) regularly, or ``full=True``;
    - rows written and deleted from the tail between two checks (never seen, never counted);
    - someone holding ``AUDIT_CHAIN_KEY`` (the app server's environment): they can rebuild
      the chain. And someone who also rewrites ``AuditHead``: the head is logged each night
      (one line, ``audit head: ...``, with its id and MAC) so that a copy lives outside the
      database; ``manage.py audit_verify --head-file`` compares the trail with it.
    Findings write a security event (``CHAIN_BROKEN``, ``TRAIL_SHRANK``,
    ``KEY_CHECK_FAILED``), which is mailed to the practice admins like any alert event. A
    break is reported once: the next night continues from the new head.
    """
    problem = canary_problem()
    with transaction.atomic():
        previous = AuditHead.objects.order_by("-id").first()
        start_id, start_mac = 0, chain.GENESIS
        chain_problem = None
        if previous is not None and previous.head_mac:
            chain_problem = chain.head_check(head_id=previous.max_event_id, head_mac=previous.head_mac)
            if not full:
                start_id, start_mac = previous.max_event_id, previous.head_mac
        report = chain.chain_verify(after_id=start_id, prev_mac=start_mac)
        if chain_problem is None and report.problem is not None:
            chain_problem = report.problem.describe()
        head = AuditEvent.objects.aggregate(count=Count("id"), last_at=Max("occurred_at"))
        last = AuditEvent.objects.order_by("-id").values_list("id", "mac").first() or (0, "")
        max_id, head_mac, count = last[0], last[1], head["count"]
        missing = 0
        if previous is not None:
            still_there = AuditEvent.objects.filter(id__lte=previous.max_event_id).count()
            missing = max(previous.event_count - still_there, 0)
            if max_id < previous.max_event_id:
                # The tail went; if as many forged rows with smaller ids were added, the count
                # alone would not show it. At least the previous last row is missing.
                missing = max(missing, 1)
        AuditHead.objects.create(
            checked_at=timezone.now(),
            max_event_id=max_id,
            head_mac=head_mac,
            event_count=count,
            last_occurred_at=head["last_at"],
            missing_rows=missing,
            key_problem=bool(problem),
            rows_verified=report.rows,
            chain_problem=chain_problem or "",
        )
        if chain_problem:
            audit_event_write(
                event_type=EventType.CHAIN_BROKEN,
                object_pk=report.problem.row_id if report.problem and report.problem.row_id else "",
                extra={"problem": chain_problem, "verified_from_id": start_id, "rows_verified": report.rows},
            )
            logger.error("Audit trail chain broken: %s", chain_problem)
        if missing:
            audit_event_write(
                event_type=EventType.TRAIL_SHRANK,
                extra={
                    "missing_rows": missing,
                    "previous_max_id": previous.max_event_id,
                    "previous_count": previous.event_count,
                    "max_id": max_id,
                    "count": count,
                },
            )
            logger.error(
                "Audit trail rows missing: %d since the check of %s (largest id %d -> %d, rows %d -> %d)",
                missing,
                previous.checked_at.isoformat(),
                previous.max_event_id,
                max_id,
                previous.event_count,
                count,
            )
        if problem:
            audit_event_write(event_type=EventType.KEY_CHECK_FAILED, extra={"problem": problem})
            logger.error("Key check failed: %s", problem)
    last_at = head["last_at"].isoformat() if head["last_at"] else "-"
    # The head export: one line a night, outside the database (audit_verify --head-file reads it).
    logger.info(
        "audit head: max_id=%d mac=%s count=%d last_at=%s missing=%d chain=%s verified=%d keys=%s",
        max_id,
        head_mac or "-",
        count,
        last_at,
        missing,
        "broken" if chain_problem else "ok",
        report.rows,
        "problem" if problem else "ok",
    )
    return {
        "max_id": max_id,
        "head_mac": head_mac,
        "count": count,
        "missing": missing,
        "rows_verified": report.rows,
        "chain_problem": chain_problem or "",
        "key_problem": bool(problem),
    }


@shared_task
def read_tally_purge() -> dict:
    """Delete what the read limits no longer look at, nightly: read tallies (audit/budget.py)
    whose last read left the budget's day, and allowance uses (audit/explain.py) older than a
    day. The counts deleted, logged.

    Neither looks further back than 24 hours; the trail keeps the reads themselves.
    """
    from audit.budget import read_tally_purge as tallies_purge
    from audit.explain import allowance_purge

    tallies = tallies_purge()
    allowance_uses = allowance_purge()
    logger.info("Read tallies purged: %d; allowance uses purged: %d", tallies, allowance_uses)
    return {"tallies": tallies, "allowance_uses": allowance_uses}


@shared_task
def anomalies_scan() -> dict:
    """Look for anomaly signals in the trail written since the previous run (audit/anomalies.py).

    Beat runs it every minute; high-severity findings are mailed at once (ANOMALY events).
    Reads the trail's counts only: decrypts nothing.
    """
    from audit.anomalies import anomalies_scan_due

    result = anomalies_scan_due()
    logger.info(
        "Anomaly scan %s to %s: %d hours, %d findings (%d new), %d alerts",
        result.start.isoformat(),
        result.end.isoformat(),
        result.hours,
        result.findings,
        result.created,
        result.alerts,
    )
    return {"hours": result.hours, "findings": result.findings, "created": result.created, "alerts": result.alerts}
