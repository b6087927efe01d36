"""Login lockout: which login attempts get their password checked, after failed logins.

Rules enforced here (django-axes runs this module's handler, ``AXES_HANDLER``):
- **A username from one address**: ``AXES_FAILURE_LIMIT`` (5) failures lock that pair for
  the cool-off (``AXES_COOLOFF_MINUTES``, 15); each attempt while locked starts the wait
  again. This is axes itself, with ``AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]``:
  one person's mistakes never lock a colleague out, even behind the clinic's one address.
- **An address, whatever the username**: after ``LOGIN_ADDRESS_FREE_FAILURES`` (10) failures
  counted in the window, each attempt comes at least 1 s, 2 s, 4 s... (at most
  ``LOGIN_ADDRESS_DELAY_MAX_SECONDS``, 15) after the previous one; an attempt that comes
  sooner is answered at once "try again in N seconds", its password unchecked (nothing
  sleeps in a request). ``LOGIN_ADDRESS_FAILURE_LIMIT`` (50) lock the address for the cool-off.
- **A username, whatever the address**: ``LOGIN_ACCOUNT_FAILURE_LIMIT`` (20) failures lock it
  for the cool-off, everywhere. An attacker rotating addresses checks at most 20 passwords in
  a window, at most 100 in any hour (5 windows: ASVS 2.2.1's ceiling); locking a colleague's
  account this way takes 4 addresses, each pair locked at 5.
- A window starts at the first failure counted and lasts the cool-off; a lock by address or
  username lasts the cool-off from the failure that set it, and trying meanwhile does not
  start it again. With no cool-off at all (``AXES_COOLOFF_TIME = None``), every lock lasts
  until a practice admin lifts it.
- **Race-safe**: an attempt is counted before its password is checked, under row locks on its
  address's and its username's counters (always taken in the same order), and given back if
  the password was right. Parallel attempts cannot get more passwords checked than the limits.
- **No enumeration**: the counters are keyed by the address and by the username as typed; an
  unknown username is counted, slowed, locked and answered exactly like a real one.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_cool_off
from axes.signals import user_locked_out
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from practice.models import LoginThrottle

# Why an attempt was refused (the lockout page words each one).
PAIR = "pair"  # this username from this address (axes)
ADDRESS = LoginThrottle.ADDRESS  # this address, every username
ACCOUNT = LoginThrottle.ACCOUNT  # this username, every address
WAIT = "wait"  # this address is slowed down: too early for the next attempt

# "Until a practice admin lifts it", when there is no cool-off.
FOREVER = datetime.timedelta(days=36500)

# A counter's retry_at when no wait is pending: before any attempt's clock.
NO_WAIT = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Refusal:
    """An attempt refused before its password was checked, or the lock a failure has just set."""

    reason: str
    wait: datetime.timedelta | None  # None: until a practice admin lifts it


@dataclass
class Reservation:
    """The counts one admitted attempt added, to give back if its password is right."""

    # (row id, window start, the retry_at this attempt set, if it set one) per counter.
    rows: list[tuple[int, datetime.datetime, datetime.datetime | None]] = field(default_factory=list)
    # The lock this attempt's failure sets (its count reached a limit), if any.
    locks: Refusal | None = None


@dataclass(frozen=True)
class _Rule:
    limit: int
    free: int  # failures before the growing delay starts
    max_delay: int  # seconds


def _rule(scope: str) -> _Rule:
    if scope == ADDRESS:
        return _Rule(
            limit=settings.LOGIN_ADDRESS_FAILURE_LIMIT,
            free=settings.LOGIN_ADDRESS_FREE_FAILURES,
            max_delay=settings.LOGIN_ADDRESS_DELAY_MAX_SECONDS,
        )
    limit = settings.LOGIN_ACCOUNT_FAILURE_LIMIT
    return _Rule(limit=limit, free=limit, max_delay=0)


def _wait_after(rule: _Rule, failures: int, cool_off: datetime.timedelta | None) -> datetime.timedelta:
    """How long the next attempt waits after the ``failures``-th of a window."""
    if failures >= rule.limit:
        return cool_off or FOREVER
    if failures > rule.free:
        # 1 s after the first failure past the free ones, doubling, capped (an exponent
        # bounded first: the limit may be set high).
        return datetime.timedelta(seconds=min(2 ** min(failures - rule.free - 1, 30), rule.max_delay))
    return datetime.timedelta(0)


def _keys(address: str | None, username: str) -> list[tuple[str, str]]:
    # Sorted: every attempt locks the rows in the same order (no deadlock between two).
    return sorted([(ADDRESS, (address or "")[:255]), (ACCOUNT, username[:255])])


def attempt_admit(*, address: str | None, username: str) -> Refusal | Reservation:
    """Count a login attempt against its address and its username before its password is
    checked, or refuse it (a wait, or a lock) without counting it. One transaction, both
    counters locked: two attempts racing see each other's count.

    The clock is read once both rows are locked, so it is never older than what the attempt
    that held them last wrote; and a counter with no wait pending has its ``retry_at`` at
    ``NO_WAIT``, in the past for every attempt, whatever its clock."""
    cool_off = get_cool_off()
    if cool_off is not None:
        # Counters of a finished window with nothing pending are worth the same as none.
        purge_before = timezone.now()
        LoginThrottle.objects.filter(window_started_at__lt=purge_before - cool_off, retry_at__lt=purge_before).delete()
    with transaction.atomic():
        rows = [
            LoginThrottle.objects.select_for_update().get_or_create(
                scope=scope, value=value, defaults={"window_started_at": timezone.now(), "retry_at": NO_WAIT}
            )[0]
            for scope, value in _keys(address, username)
        ]
        now = timezone.now()
        refusals = []
        for row in rows:
            if now < row.retry_at:
                reason = row.scope if row.failures >= _rule(row.scope).limit else WAIT
                refusals.append(Refusal(reason, None if row.retry_at - now > FOREVER / 2 else row.retry_at - now))
        if refusals:
            # The longer wait is the one that matters; a lock before a wait of the same length.
            return max(refusals, key=lambda r: (r.wait is None, r.wait or datetime.timedelta(0), r.reason != WAIT))
        reservation = Reservation()
        for row in rows:
            rule = _rule(row.scope)
            if cool_off is not None and now >= row.window_started_at + cool_off:
                row.failures, row.window_started_at = 0, now
            row.failures += 1
            wait = _wait_after(rule, row.failures, cool_off)
            if wait:
                row.retry_at = now + wait
            row.save(update_fields=["failures", "window_started_at", "retry_at"])
            reservation.rows.append((row.pk, row.window_started_at, row.retry_at if wait else None))
            if row.failures >= rule.limit and reservation.locks is None:
                reservation.locks = Refusal(row.scope, cool_off)
        return reservation


def attempt_succeeded(reservation: Reservation) -> None:
    """The password was right: give back what the attempt counted, and release the wait it
    set, unless another attempt has counted since (then the wait is that attempt's)."""
    with transaction.atomic():
        for pk, window_started_at, retry_at in reservation.rows:
            same_window = LoginThrottle.objects.filter(pk=pk, window_started_at=window_started_at)
            same_window.filter(failures__gt=0).update(failures=F("failures") - 1)
            if retry_at is not None:
                same_window.filter(retry_at=retry_at).update(retry_at=NO_WAIT)


def locked_values(scope: str, *, now: datetime.datetime | None = None) -> list[str]:
    """Addresses (or usernames) locked now, for every username (or address)."""
    now = now or timezone.now()
    return list(
        LoginThrottle.objects.filter(scope=scope, failures__gte=_rule(scope).limit, retry_at__gt=now).values_list(
            "value", flat=True
        )
    )


def throttles_lift(*, usernames: set[str], addresses: set[str]) -> int:
    """Forget the counts (and locks) of these usernames and addresses; the number of counters."""
    rows = LoginThrottle.objects.filter(
        Q(scope=ACCOUNT, value__in=[u[:255] for u in usernames])
        | Q(scope=ADDRESS, value__in=[a[:255] for a in addresses])
    )
    deleted, _ = rows.delete()
    return deleted


class LockoutHandler(AxesDatabaseHandler):
    """axes' database handler (the pair of username and address), plus the limits per address
    and per username above, checked after the pair's and counted before the password."""

    def is_allowed(self, request, credentials: dict | None = None) -> bool:
        if not super().is_allowed(request, credentials):
            return False  # the pair is locked: axes counts the attempt and answers
        if self.is_whitelisted(request, credentials) or getattr(request, "login_reservation", None):
            return True
        outcome = attempt_admit(
            address=request.axes_ip_address, username=str(get_client_username(request, credentials) or "")
        )
        if isinstance(outcome, Refusal):
            request.login_refusal = outcome
            return False
        request.login_reservation = outcome
        return True

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs):
        if request is not None and getattr(request, "login_refusal", None) is not None:
            # Refused by the address or the username: nothing was checked, nothing is counted
            # (not even for the pair); the answer says how long to wait.
            request.axes_locked_out = True
            request.axes_credentials = credentials
            return
        super().user_login_failed(sender, credentials, request, **kwargs)
        reservation = getattr(request, "login_reservation", None)
        if reservation is None:
            return
        request.login_reservation = None
        if reservation.locks is not None and not request.axes_locked_out:
            # This failure reached the address's or the username's limit: answered with the
            # lockout page, and recorded like axes' own lockouts (audit/signals.py).
            request.login_refusal = reservation.locks
            request.axes_locked_out = True
            request.axes_credentials = credentials
            user_locked_out.send(
                "axes",
                request=request,
                username=get_client_username(request, credentials),
                ip_address=request.axes_ip_address,
            )

    def user_logged_in(self, sender, request, user, **kwargs):
        super().user_logged_in(sender, request, user, **kwargs)
        reservation = getattr(request, "login_reservation", None)
        if reservation is not None:
            request.login_reservation = None
            attempt_succeeded(reservation)


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """The answer to a refused attempt (``AXES_LOCKOUT_CALLABLE``): which rule refused it and
    when to try again, in the page and in ``Retry-After``; never the username, nor whether it
    exists."""
    refusal = getattr(request, "login_refusal", None) or Refusal(PAIR, get_cool_off(request))
    seconds = None if refusal.wait is None else max(1, math.ceil(refusal.wait.total_seconds()))
    context = {
        "reason": refusal.reason,
        "wait_seconds": seconds,
        "wait_minutes": None if seconds is None else math.ceil(seconds / 60),
    }
    # A default of django-axes (axes.conf), not set in config/settings.py: the stubs do not know it.
    status = settings.AXES_HTTP_RESPONSE_CODE  # type: ignore[misc]
    response = render(request, settings.AXES_LOCKOUT_TEMPLATE, context, status=status)
    if seconds is not None:
        response["Retry-After"] = str(seconds)
    return response
