"""Account security services: each writes its audit row in the transaction that does the work."""

from collections.abc import Iterable

from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.db import transaction

from audit.context import Actor
from audit.models import EventType
from audit.services import audit_event_write
from practice import lockout, twofactor
from practice.sessions import sessions_end_for_user


@transaction.atomic
def lockout_lift(*, attempts: Iterable[AccessAttempt], actor: Actor) -> int:
    """Delete these login attempts (which lifts the lock of their username from their
    address), and lift the locks of their usernames and addresses (practice/lockout.py); one
    UNLOCK row per attempt.

    The audit rows are written in the same transaction as the delete: a lift is never
    unrecorded, and a failed write lifts nothing.
    """
    rows = list(attempts)
    lockout.throttles_lift(
        usernames={attempt.username for attempt in rows if attempt.username},
        addresses={attempt.ip_address for attempt in rows if attempt.ip_address},
    )
    for attempt in rows:
        audit_event_write(
            event_type=EventType.UNLOCK,
            extra={"username": attempt.username, "ip": attempt.ip_address, "failures": attempt.failures_since_start},
            actor=actor,
        )
    AccessAttempt.objects.filter(pk__in=[attempt.pk for attempt in rows]).delete()
    return len(rows)


@transaction.atomic
def user_sessions_end(*, user: User, actor: Actor) -> int:
    """Log a user out everywhere (a lost laptop, a departure): every session of theirs ends."""
    count = sessions_end_for_user(user.pk)
    audit_event_write(
        event_type=EventType.SESSIONS_ENDED,
        model_label=User._meta.label,
        object_pk=user.pk,
        extra={"username": user.get_username(), "sessions": count},
        actor=actor,
    )
    return count


@transaction.atomic
def user_second_factor_reset(*, user: User, actor: Actor) -> int:
    """A lost phone: remove the user's authenticator and recovery codes and end their sessions.

    They enrol a new authenticator at their next login (after their password).
    """
    twofactor.second_factor_reset(user)
    count = sessions_end_for_user(user.pk)
    audit_event_write(
        event_type=EventType.OTP_RESET,
        model_label=User._meta.label,
        object_pk=user.pk,
        extra={"username": user.get_username(), "sessions": count},
        actor=actor,
    )
    return count
