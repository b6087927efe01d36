"""Security events go to the same trail as reads and writes."""

import secrets
import time

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit.context import SESSION_KEY, Actor
from audit.models import EventType
from audit.services import audit_event_write


@receiver(user_logged_in, dispatch_uid="audit.login")
def _logged_in(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        # Start of the absolute session lifetime (see AuditContextMiddleware).
        request.session["auth_started_at"] = time.time()
        request.session[SESSION_KEY] = secrets.token_hex(8)
    audit_event_write(event_type=EventType.LOGIN, actor=Actor.for_user(user))


@receiver(user_logged_out, dispatch_uid="audit.logout")
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        audit_event_write(event_type=EventType.LOGOUT, actor=Actor.for_user(user))


@receiver(user_login_failed, dispatch_uid="audit.login_failed")
def _login_failed(sender, credentials, request=None, **kwargs):
    audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": str(credentials.get("username", ""))[:150]})


@receiver(user_locked_out, dispatch_uid="audit.lockout")
def _locked_out(sender, request, username, ip_address, **kwargs):
    audit_event_write(event_type=EventType.LOCKOUT, extra={"username": str(username or "")[:150], "ip": ip_address})
