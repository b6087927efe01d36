"""Second factor: TOTP (django-otp) and hashed one-time recovery codes.

Rules enforced here and in practice.middleware.SecondFactorMiddleware:
- a user who has a confirmed device must use it at every login, whatever the settings say;
- TWO_FACTOR_REQUIRED = "everyone" (default) sends users without one to enrolment; "admins"
  only practice admins, staff and superusers;
- there is no bypass: no setting, header or account flag skips the check;
- every verification, failure and enrolment is in the audit trail; devices throttle
  (exponential back-off kept in the database, so a new session does not reset it);
- a session has TWO_FACTOR_MAX_FAILURES wrong codes, then it is logged out and checks no more
  codes, however many requests it sends at once: the count is the trail's (the session's
  wrong codes since its last right one), and one user's attempts run one at a time, under a
  lock on the user's row, each seeing what the previous ones recorded.
"""

import datetime
import secrets

import django_otp
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.context import SESSION_KEY as AUDIT_SESSION_KEY
from audit.models import AuditEvent, EventType
from audit.services import audit_event_write
from practice.models import RecoveryCode, RecoveryCodeDevice, recovery_code_digest
from practice.roles import PRACTICE_ADMIN, has_role

RECOVERY_CODE_COUNT = 10
# 10 characters from a 32-letter alphabet: 50 bits. One use each, and throttled online, so a
# fast salted hash is enough; a slow password hash would cost 0.3 s per code tried.
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_CODE_LENGTH = 10


def second_factor_required(user) -> bool:
    if settings.TWO_FACTOR_REQUIRED == "everyone":
        return True
    return user.is_staff or user.is_superuser or has_role(user, PRACTICE_ADMIN)


def confirmed_totp(user) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


def has_second_factor(user) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def totp_pending(user) -> TOTPDevice:
    """The unconfirmed authenticator being enrolled (a fresh secret on first call)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    return device


def _pretty(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


@transaction.atomic
def recovery_codes_generate(user) -> list[str]:
    """Replace the user's recovery codes; the plaintext codes are returned once, never stored."""
    device, _ = RecoveryCodeDevice.objects.get_or_create(user=user, defaults={"name": "recovery codes"})
    device.codes.all().delete()
    codes = ["".join(secrets.choice(_ALPHABET) for _ in range(_CODE_LENGTH)) for _ in range(RECOVERY_CODE_COUNT)]
    rows = [RecoveryCode(device=device, digest=recovery_code_digest(code, secrets.token_hex(8))) for code in codes]
    RecoveryCode.objects.bulk_create(rows)
    if not device.confirmed:
        device.confirmed = True
        device.save(update_fields=["confirmed"])
    return [_pretty(c) for c in codes]


def recovery_codes_left(user) -> int:
    return RecoveryCode.objects.filter(device__user=user, used_at__isnull=True).count()


@transaction.atomic
def totp_confirm(device: TOTPDevice, token: str) -> bool:
    """Confirm an enrolment with a first code; any older authenticator of the user is removed."""
    device = TOTPDevice.objects.select_for_update().get(pk=device.pk)
    if not device.verify_token(token):
        return False
    TOTPDevice.objects.filter(user_id=device.user_id).exclude(pk=device.pk).delete()
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    return True


@transaction.atomic
def second_factor_reset(user) -> None:
    """Remove every device (a lost phone): the user enrols again at the next login."""
    TOTPDevice.objects.filter(user=user).delete()
    RecoveryCodeDevice.objects.filter(user=user).delete()


def _device_check(user, token: str):
    token = "".join(token.split())
    model = TOTPDevice if token.isdigit() else RecoveryCodeDevice
    device = model.objects.select_for_update().filter(user=user, confirmed=True).first()
    if device is None:
        return None, None
    allowed, detail = device.verify_is_allowed()
    if not allowed:
        return None, (detail or {}).get("locked_until")
    return django_otp.verify_token(user, device.persistent_id, token), None


def second_factor_check(user, token: str):
    """Verify a TOTP code (6 digits) or a recovery code against the user's own device.

    Returns ``(device, None)`` on success, ``(None, locked_until)`` while throttled, and
    ``(None, None)`` for a wrong code (which extends the throttle).
    """
    # The device row is locked for the whole check: parallel attempts are checked one after the
    # other, each seeing the failures (and the throttle) the previous ones recorded. Without it,
    # 24 parallel wrong codes were all checked while the stored count rose by 4 (each read the
    # same count, then wrote count + 1).
    with transaction.atomic():
        return _device_check(user, token)


def _session_failures(user, session: str) -> int:
    """Wrong codes this session has typed since its last right one, as the trail records them.

    Not in the session's own data: parallel requests each load it and save it back, so a
    count kept there lost updates (24 parallel wrong codes left it at 1).
    """
    since = timezone.now() - datetime.timedelta(seconds=settings.SESSION_ABSOLUTE_SECONDS)
    recent = (
        AuditEvent.objects.filter(
            actor_user_id=user.pk,
            session=session,
            occurred_at__gte=since,
            event_type__in=[EventType.OTP_FAILED, EventType.OTP_VERIFIED],
        )
        .order_by("-occurred_at", "-id")
        .values_list("event_type", flat=True)[: settings.TWO_FACTOR_MAX_FAILURES]
    )
    failures = 0
    for event_type in recent:
        if event_type != EventType.OTP_FAILED:
            break
        failures += 1
    return failures


def second_factor_attempt(request, token: str):
    """One code typed in ``request``'s session, at login or on the step-up page (audited).

    Returns ``(device, None, False)`` for a right code, ``(None, locked_until, False)`` while
    the device is throttled (nothing checked, nothing counted), and ``(None, None, spent)`` for
    a wrong code, ``spent`` when the session has used up its attempts: the caller logs it out.
    A session that had already used them up gets ``(None, None, True)`` without a check.
    """
    user = request.user
    session = request.session.get(AUDIT_SESSION_KEY, "")
    with transaction.atomic():
        # One attempt of this user at a time, TOTP and recovery codes alike: the count read
        # below is the one the previous attempt left, and this one's event is committed before
        # the next attempt reads it. (Audit writes come last: they hold the chain lock.)
        list(User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        failures = _session_failures(user, session)
        if failures >= settings.TWO_FACTOR_MAX_FAILURES:
            return None, None, True
        device, locked_until = _device_check(user, token)
        if device is not None:
            audit_event_write(event_type=EventType.OTP_VERIFIED, extra={"device": type(device).__name__})
            return device, None, False
        if locked_until is not None:
            return None, locked_until, False
        failures += 1
        audit_event_write(event_type=EventType.OTP_FAILED, extra={"attempt": failures})
        return None, None, failures >= settings.TWO_FACTOR_MAX_FAILURES
