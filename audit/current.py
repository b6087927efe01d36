"""The audit context in force, and who acts in it: the bottom of the audit core.

Encrypted fields (audit/fields.py) and the trail's writers (audit/services.py) ask this module
for the context in force; audit/context.py opens and closes contexts (and imports the read
rules that run in them), so the modules it stands on never import it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from audit.context import AuditContext

# The session's audit id (audit.signals sets it at login; see AuditEvent.session).
SESSION_KEY = "audit_session"


_current: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


class NoAuditContext(RuntimeError):
    """Raised when something tries to decrypt patient data outside an audit context."""


@dataclass(frozen=True)
class Actor:
    user_id: int | None
    username: str
    role: str

    @classmethod
    def system(cls, job: str) -> Actor:
        return cls(user_id=None, username=f"system:{job}", role="system")

    @classmethod
    def for_user(cls, user: Any) -> Actor:
        """``user``: a request's user (any user model, or anonymous), or None."""
        if user is None or not user.is_authenticated:
            return cls(user_id=None, username="anonymous", role="anonymous")
        if _role_source is None:
            # Fail closed: a read attributed to no role would escape the role's read limits.
            raise ImproperlyConfigured("No role source is registered (audit.current.role_source_register).")
        return cls(user_id=user.pk, username=user.get_username(), role=_role_source(user))


# What names a user's role: the practice app registers practice.roles.role_of in its
# AppConfig.ready(). The core knows no roles of its own (it only keeps the name on each row).
_role_source: Callable[[Any], str] | None = None


def role_source_register(source: Callable[[Any], str]) -> None:
    global _role_source
    _role_source = source


def activate(ctx: AuditContext) -> contextvars.Token:
    """Make ``ctx`` the context in force; ``deactivate(token)`` restores the previous one."""
    return _current.set(ctx)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)


def current() -> AuditContext | None:
    return _current.get()


def require() -> AuditContext:
    ctx = _current.get()
    if ctx is None:
        raise NoAuditContext(
            "Patient data can only be decrypted inside an audit context "
            "(a request, a Celery task, a management command or `audit.context.system_context`)."
        )
    return ctx
