"""Nightly housekeeping: expired sessions, used form keys and old login-failure records.

Beat names these tasks in ``CELERY_BEAT_SCHEDULE`` (config/settings.py). Both only delete
rows whose purpose is over; the audit trail keeps its own record of logins, failures and
lockouts, and is never purged here.
"""

from __future__ import annotations

import datetime
import logging

from axes.helpers import get_cool_off
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from practice.models import FORM_SUBMISSION_KEPT_FOR, FormSubmission, UserSession

logger = logging.getLogger(__name__)


@shared_task
def sessions_purge() -> int:
    """Delete the sessions past their expiry; the number deleted.

    The same rows ``SessionStore.clear_expired()`` deletes (``manage.py clearsessions``),
    counted. A session past its expiry is already refused; the row only lingers.

    Form submission keys older than FORM_SUBMISSION_KEPT_FOR go too (logged, not counted in
    the result): they only answered retries of a form sent minutes before.
    """
    now = timezone.now()
    deleted, _ = UserSession.objects.filter(expire_date__lt=now).delete()
    keys, _ = FormSubmission.objects.filter(created_at__lt=now - FORM_SUBMISSION_KEPT_FOR).delete()
    logger.info("Expired sessions purged: %d; used form keys purged: %d", deleted, keys)
    return deleted


@shared_task
def lockouts_purge() -> dict:
    """Delete django-axes records older than LOCKOUT_RECORDS_RETENTION_DAYS; counts per kind.

    Failed-login attempts (``AccessAttempt``) that still lock someone out are kept, whatever
    their age: purging them would lift a lockout. The login log (``AccessLog``, successful
    logins with address and browser) and the failure log (``AccessFailureLog``, when enabled)
    follow the same retention.
    """
    now = timezone.now()
    cutoff = now - datetime.timedelta(days=settings.LOCKOUT_RECORDS_RETENTION_DAYS)
    with transaction.atomic():
        attempts = AccessAttempt.objects.filter(attempt_time__lt=cutoff)
        cool_off = get_cool_off()
        if cool_off is not None:
            # Attempts inside the cool-off still count towards a lockout.
            attempts = attempts.filter(attempt_time__lt=now - cool_off)
        else:
            # No cool-off: attempts count for ever; keep those of every locked username and address.
            attempts = attempts.exclude(username__in=_locked("username")).exclude(ip_address__in=_locked("ip_address"))
        purged = {
            "attempts": _deleted(attempts),
            "logins": _deleted(AccessLog.objects.filter(attempt_time__lt=cutoff)),
            "failures": _deleted(AccessFailureLog.objects.filter(attempt_time__lt=cutoff)),
        }
    logger.info(
        "Login records older than %d days purged: %d attempts, %d logins, %d failures",
        settings.LOCKOUT_RECORDS_RETENTION_DAYS,
        purged["attempts"],
        purged["logins"],
        purged["failures"],
    )
    return purged


def _locked(column: str):
    """Values of ``column`` whose attempts add up to a lockout (NULLs left out: NOT IN with a
    NULL would exclude every row)."""
    return (
        AccessAttempt.objects.filter(**{f"{column}__isnull": False})
        .values(column)
        .annotate(failures=Sum("failures_since_start"))
        .filter(failures__gte=settings.AXES_FAILURE_LIMIT)
        .values(column)
    )


def _deleted(queryset) -> int:
    """Rows of the queryset's own model deleted (not the cascaded ones, e.g. attempt expirations)."""
    _total, per_model = queryset.delete()
    return per_model.get(queryset.model._meta.label, 0)
