"""Security alerts: practice admins are mailed about the events that may mean an attack.

Rule enforced here: every alert event written to the trail reaches the admins' mailboxes,
batched, and a mail never holds patient data. The mail names when, what, who (the account
or the username tried), from which address, and the admin page of the event; never a
patient's name, a record's content, or free text typed by a user (a break-the-glass reason
may describe the patient). A block (``BUDGET_BLOCK``) and a high anomaly (``ANOMALY``) are
urgent: they are mailed within seconds, not after a batch window.

How an event becomes a mail:
1. ``audit_event_write`` writes an event whose type is in ``ALERT_EVENT_TYPES`` and runs
   the hook this app registers for them (investigations/apps.py):
   ``investigations.tasks.security_alert_schedule()``, which waits for the transaction to commit.
2. After the commit, the first alert event of a batch window enqueues the task
   ``investigations.tasks.security_alerts_send`` to run ``SECURITY_ALERT_BATCH_SECONDS`` (plus a
   two-second settle time) later; the events of the same window ride along with it
   (``AlertCursor.batch_due_at``: the last moment a commit rides along; the task runs the
   settle time after it). A burst of a hundred lockouts is one task and one mail.
3. Urgent events (``URGENT_EVENT_TYPES``) open a window of their own of only
   ``URGENT_WINDOW`` (the settle time): their task runs ``URGENT_WINDOW`` + settle (4 s)
   after the commit, and takes with it every alert event committed until then, lockouts of
   a pending 60-second window included (the window is pulled forward: the task already
   enqueued for it runs later and finds nothing, or only what came after). Blocks of several
   accounts within those 2 s are one mail; a longer burst is one mail per 2 s at most, and
   never more than one per account (a blocked account stays blocked until an admin lifts
   it; an anomaly alerts once per finding). Why these two: each means patient records are
   being read in bulk by an account that is logged in, right now (a scraping script, a
   stolen session, an insider); the admin's answer (call the person, lift or keep the block,
   disable the account, end its sessions) is worth most in the first minutes, and with a
   high anomaly the account is not even blocked yet. Their number is bounded by the
   accounts and findings, not by what an anonymous attacker sends. The other alerts keep
   batching: lockouts and login-side noise come in bursts an attacker controls (one mail
   per window whatever the rate), and the nightly checks and break-the-glass reviews are
   not minutes-sensitive. ``security_alert_schedule`` is not told the event type: the
   enqueueing asks the trail (one indexed query on ``audit_type_time``) whether an urgent
   event is pending after the cursor.
4. The task (``security_alerts_send``) mails every alert event after the cursor and moves
   the cursor, in one transaction: at least once, never twice on purpose.
5. When the broker is down, enqueueing fails (logged): beat's sweep runs the same task every
   five minutes and mails what is pending (urgent or not: nothing runs sooner without a
   broker). With no broker at all (the embedded default, eager Celery, no beat) there is
   nothing to run later, so each alert event is mailed at once, on its own.

How fast an urgent mail goes out also depends on a worker being free when its countdown
ends (a worker busy with long tasks delays it); audit/tests/test_block_alert_worker.py
measures the time from a block to its mail with a real worker on Redis.
"""

from __future__ import annotations

import datetime
import logging
import re

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import Count, Max, Min, Q, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from audit.models import AlertCursor, AuditEvent, EventType
from practice.roles import PRACTICE_ADMIN

logger = logging.getLogger(__name__)

# The event types worth waking an admin for: each may be an attack in progress, or one
# that succeeded. Logins, failed logins and second-factor failures are not: they are
# frequent and innocent one by one, and their bursts end in a lockout, which is here.
ALERT_EVENT_TYPES = frozenset(
    {
        EventType.LOCKOUT,  # brute force on an account or from an address
        EventType.BUDGET_BLOCK,  # someone reads more patients than their role allows (scraping)
        EventType.BREAK_GLASS,  # emergency access to a record: to review while it is fresh
        EventType.OTP_RESET,  # an admin removed someone's second factor (a takeover path)
        EventType.CIPHERTEXT_REFUSED,  # a stored value failed its check: tampering or a wrong key
        EventType.TRAIL_SHRANK,  # audit rows were deleted (nightly check)
        EventType.CHAIN_BROKEN,  # an audit row was changed, forged or removed (nightly check)
        EventType.KEY_CHECK_FAILED,  # the configured keys do not read the database (nightly check)
        EventType.ANOMALY,  # a high anomaly signal: scraping, id walking, a 404 storm (anomalies.py)
    }
)

# Mailed within seconds instead of after a batch window (module doc, step 3): an account
# blocked for reading too many patients, and a high anomaly signal (only high ones are events).
URGENT_EVENT_TYPES = frozenset({EventType.BUDGET_BLOCK, EventType.ANOMALY})

# How long an event may take to commit after it was stamped (see security_alerts_send).
COMMIT_SETTLE = datetime.timedelta(seconds=2)

# An urgent event's window: the alert events committed this long after it ride in its mail.
URGENT_WINDOW = COMMIT_SETTLE

# How far back the enqueueing looks for an urgent event pending after the cursor: the event of
# the transaction that just committed was stamped during that transaction.
URGENT_LOOKBACK = datetime.timedelta(minutes=10)

# One mail lists at most this many events, then counts the rest per type.
MAIL_MAX_EVENTS = 200

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def urgent_pending(now: datetime.datetime) -> bool:
    """Is an urgent alert event (a block, a high anomaly) committed and not mailed yet? One
    query, on the trail's (event_type, occurred_at) index."""
    mailed_up_to = AlertCursor.objects.filter(pk=1).values("last_event_id")[:1]
    return AuditEvent.objects.filter(
        event_type__in=URGENT_EVENT_TYPES,
        occurred_at__gte=now - URGENT_LOOKBACK,
        id__gt=Coalesce(Subquery(mailed_up_to), 0),
    ).exists()


def batch_claim(now: datetime.datetime, window: datetime.timedelta, *, urgent: bool = False) -> bool:
    """True if this caller opens a new batch window (and must enqueue its task).

    ``batch_due_at`` is the last moment a commit rides along with the task already enqueued
    (which runs the settle time after it). An urgent caller also opens a window when the one
    pending ends later than its own would: it pulls the batch forward.
    """
    due = now + window
    open_anew = Q(batch_due_at__isnull=True) | Q(batch_due_at__lt=now)
    if urgent:
        open_anew |= Q(batch_due_at__gt=due)
    claimed = AlertCursor.objects.filter(open_anew, pk=1).update(batch_due_at=due)
    if claimed:
        return True
    _cursor, created = AlertCursor.objects.get_or_create(pk=1, defaults={"batch_due_at": due})
    return created


def alert_recipients() -> list[str]:
    """Active practice admins with an e-mail address, then ADMINS, without duplicates."""
    users = (
        get_user_model()
        .objects.filter(is_active=True, groups__name=PRACTICE_ADMIN)
        .exclude(email="")
        .order_by("pk")
        .values_list("email", flat=True)
        .distinct()
    )
    seen: set[str] = set()
    recipients: list[str] = []
    for address in [*users, *(address for _name, address in settings.ADMINS)]:
        if address and address.casefold() not in seen:
            seen.add(address.casefold())
            recipients.append(address)
    return recipients


def security_alerts_send(*, settle: datetime.timedelta = COMMIT_SETTLE) -> int:
    """Mail the alert events written since the last mail, in one mail; the number of events.

    One transaction: lock the cursor, read the events after it, send, move the cursor. A mail
    that fails to send raises and leaves the cursor where it was: the next run retries. With
    no one to mail, the events are skipped with a warning (they stay in the trail): a backlog
    kept for a recipient who may never be configured would arrive as one stale, huge mail.

    Events younger than ``settle`` wait for the next run, and so does every event with a
    larger id: ids are handed out at insert, not at commit, so an event with a smaller id may
    still be committing. The cursor moves past an event only once everything before it had
    ``settle`` to commit. (An alert event whose transaction stays open longer than that
    after a later one commits would be skipped: the trail still has it.)
    """
    with transaction.atomic():
        AlertCursor.objects.get_or_create(pk=1)
        cursor = AlertCursor.objects.select_for_update().get(pk=1)
        pending = AuditEvent.objects.filter(id__gt=cursor.last_event_id, event_type__in=ALERT_EVENT_TYPES)
        if settle:
            young = pending.filter(occurred_at__gt=timezone.now() - settle).aggregate(first=Min("id"))["first"]
            if young is not None:
                pending = pending.filter(id__lt=young)
        events = list(
            pending.order_by("id").only("id", "occurred_at", "event_type", "actor_username", "ip", "extra")[
                :MAIL_MAX_EVENTS
            ]
        )
        if not events:
            return 0
        counts = dict(pending.values_list("event_type").annotate(n=Count("id")).order_by())
        total = sum(counts.values())
        last_id = pending.aggregate(last=Max("id"))["last"]
        recipients = alert_recipients()
        if recipients:
            subject, body = _mail_render(events, counts, total)
            EmailMessage(subject=subject, body=body, from_email=settings.DEFAULT_FROM_EMAIL, to=recipients).send()
            logger.info("Security alert mailed: %d events to %d recipients", total, len(recipients))
        else:
            logger.warning(
                "%d security events not mailed: no practice admin has an e-mail address and ADMINS is empty", total
            )
        cursor.last_event_id = last_id
        cursor.last_sent_at = timezone.now()
        cursor.save(update_fields=["last_event_id", "last_sent_at"])
        return total


def _mail_render(events: list[AuditEvent], counts: dict[int, int], total: int) -> tuple[str, str]:
    """Subject and plain-text body, in the practice's language and time zone."""
    with translation.override(settings.LANGUAGE_CODE):
        summary = ", ".join(f"{EventType(t).label} × {n}" for t, n in sorted(counts.items()))
        subject = ngettext(
            "[Cabinet] Security alert: %(count)d event (%(summary)s)",
            "[Cabinet] Security alert: %(count)d events (%(summary)s)",
            total,
        ) % {"count": total, "summary": summary}
        lines = [
            _("Security events were recorded in the audit trail. Check that you expected them."),
            "",
        ]
        for event in events:
            when = timezone.localtime(event.occurred_at).strftime("%Y-%m-%d %H:%M:%S %Z")
            lines.append(
                _("%(when)s  %(event)s  user: %(user)s  IP: %(ip)s  %(link)s")
                % {
                    "when": when,
                    "event": event.get_event_type_display(),
                    "user": _who(event),
                    "ip": _where(event),
                    "link": _link(event),
                }
            )
            if event.event_type == EventType.ANOMALY and event.extra.get("summary"):
                # Counts and a username, written by the scan (investigations/anomalies.py): no patient data.
                lines.append("    " + _CONTROL_CHARACTERS.sub("?", str(event.extra["summary"]))[:300])
        if total > len(events):
            lines += ["", _("… and %(count)d more, in the audit trail.") % {"count": total - len(events)}]
        lines += [
            "",
            _(
                "Each line ends with the event's page in the administration (the audit trail), or for an "
                "anomaly, its page with the events behind it."
            ),
            _("This mail never contains patient data."),
        ]
    return subject, "\n".join(lines) + "\n"


def _link(event: AuditEvent) -> str:
    anomaly_id = event.extra.get("anomaly_id") if event.event_type == EventType.ANOMALY else None
    if isinstance(anomaly_id, int):
        return reverse("investigations:anomaly", args=[anomaly_id])
    return reverse("admin:audit_auditevent_change", args=[event.pk])


def _who(event: AuditEvent) -> str:
    # A lockout's actor is anonymous: the username that was tried is in ``extra``. It was typed
    # by whoever attacked, so no control characters reach the mail (no forged lines). An
    # anomaly's actor is the scan: the account it is about is in ``extra``.
    name = event.extra.get("username") if event.event_type in (EventType.LOCKOUT, EventType.ANOMALY) else None
    return _CONTROL_CHARACTERS.sub("?", str(name or event.actor_username))[:150] or "-"


def _where(event: AuditEvent) -> str:
    return str(event.ip or event.extra.get("ip") or "-")
