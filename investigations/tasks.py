"""Background work of the investigations: security alert mails and the anomaly scan.

Beat names these tasks in ``CELERY_BEAT_SCHEDULE`` (config/settings.py); each runs in an
audit context of its own (config/celery.py), decrypts nothing, and calls the function that
does the work.
"""

from __future__ import annotations

import datetime
import logging

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from investigations import alerts
from investigations.anomalies import anomalies_scan_due
from practice import broker

logger = logging.getLogger(__name__)


@shared_task(bind=True)
def security_alerts_send(self) -> int:
    """Mail the security events not mailed yet, in one mail (investigations/alerts.py).

    Enqueued after an alert event commits, and run by beat every five minutes as a sweep.
    No automatic retry: a failed mail leaves the events pending for the next run.
    """
    # Eager runs happen right after the event's own commit: nothing else is committing.
    settle = datetime.timedelta(0) if self.request.is_eager else alerts.COMMIT_SETTLE
    return alerts.security_alerts_send(settle=settle)


def security_alert_schedule() -> None:
    """Have the pending alerts mailed once the current transaction commits (investigations/alerts.py, module doc)."""
    transaction.on_commit(_batch_enqueue, robust=True)


def _batch_enqueue() -> None:
    task = security_alerts_send
    eager = task.app.conf.task_always_eager
    window = datetime.timedelta(seconds=settings.SECURITY_ALERT_BATCH_SECONDS)
    if not eager:
        now = timezone.now()
        try:
            if alerts.urgent_pending(now):
                window = alerts.URGENT_WINDOW
                claimed = alerts.batch_claim(now, window, urgent=True)
            else:
                claimed = alerts.batch_claim(now, window)
            if not claimed:
                return  # a task is already due within the window; it will include this event
        except DatabaseError:
            # Soon rather than late: the cursor keeps an extra run from mailing twice.
            window = alerts.URGENT_WINDOW
            logger.exception("Could not claim a security alert batch; enqueueing anyway")
    # Eager (no broker): runs now, in this process. Otherwise: after the window and the settle
    # time, so that every event of the window is old enough to be taken. Bounded in time: a
    # hung broker must not hold the request that recorded the event.
    countdown = (window + alerts.COMMIT_SETTLE).total_seconds()
    if broker.publish_bounded(lambda: task.apply_async(countdown=countdown)):
        # The event is committed and the cursor has not moved past it: the beat sweep
        # (security_alerts_send every 5 minutes) mails it.
        logger.warning("Could not enqueue the security alert mail (broker unreachable); the sweep will send it")


@shared_task
def anomalies_scan() -> dict:
    """Look for anomaly signals in the trail written since the previous run (investigations/anomalies.py).

    Beat runs it every minute; high-severity findings are mailed at once (ANOMALY events).
    Reads the trail's counts only: decrypts nothing.
    """
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
