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

from audit import alerts
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
def audit_verify_nightly() -> dict:
    """Check the keys and the trail's head; record the head, log it, and alert on trouble.

    What it catches, until the HMAC chain exists:
    - keys that no longer read the database (the key canary, as at start-up);
    - rows deleted from the trail since the previous check: fewer rows at or below the
      previous largest id than there were (deletions anywhere in the old part of the trail,
      even when newer rows were added since), or a largest id below the previous one (the
      tail truncated). The largest id is a sequence: rolled-back inserts leave gaps, which
      is why rows are counted instead of ids checked for holes.
    What it does not catch:
    - changed rows (an UPDATE of who, what or when): only the HMAC chain will;
    - rows deleted before they were ever counted (written and removed between two checks);
    - deleted rows replaced by forged ones with the same ids;
    - someone who also rewrites ``AuditHead``: the head is logged each night (one line,
      ``audit head: ...``) so that a copy lives outside the database, in the logs; compare it.
    Either finding writes a security event (``TRAIL_SHRANK``, ``KEY_CHECK_FAILED``), which is
    mailed to the practice admins like any alert event.
    """
    problem = canary_problem()
    with transaction.atomic():
        previous = AuditHead.objects.order_by("-id").first()
        head = AuditEvent.objects.aggregate(max_id=Max("id"), count=Count("id"), last_at=Max("occurred_at"))
        max_id, count = head["max_id"] or 0, head["count"]
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
            event_count=count,
            last_occurred_at=head["last_at"],
            missing_rows=missing,
            key_problem=bool(problem),
        )
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
    # The head export: one line a night, outside the database.
    logger.info(
        "audit head: max_id=%d count=%d last_at=%s missing=%d keys=%s",
        max_id,
        count,
        last_at,
        missing,
        "problem" if problem else "ok",
    )
    return {"max_id": max_id, "count": count, "missing": missing, "key_problem": bool(problem)}
