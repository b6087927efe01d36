"""Two gates on every request.

Rules enforced here:
- The second factor is part of logging in: until it is verified, a session reaches nothing
  (``SecondFactorMiddleware``).
- A database that fails (read-only after a failover, gone, past its lock or statement
  timeout) answers a 503 page that says what became of the user's action, never Django's
  bare 500: not saved; saved, when its commit went through and something after it failed;
  for a sign-in, that it could not be completed (and the user is not half signed in). A page
  that was only to be shown is withheld with the audit trail's "cannot be shown" page. The
  page is rendered from what the request already knew, without a query
  (``DatabaseErrorMiddleware``).
"""

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import InterfaceError, InternalError, OperationalError, transaction
from django.db.models.signals import post_save
from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import Resolver404, resolve, reverse
from django.utils.functional import LazyObject, empty
from django.utils.translation import get_language

from audit.middleware import DATABASE_FAILURE, audit_unavailable_response
from audit.models import AuditEvent, EventType
from practice import twofactor
from practice.context_processors import navigation

logger = logging.getLogger(__name__)

# Views a logged-in user may reach before the second factor: the second factor itself,
# logging out, and the language switch. Nothing here shows clinic data.
OPEN_VIEWS = frozenset(
    {
        "login",
        "logout",
        "two_factor_verify",
        "two_factor_setup",
        "two_factor_qr",
        "set_language",
    }
)


class SecondFactorMiddleware:
    """After django_otp's OTPMiddleware: send an unverified session to verification or enrolment.

    A user with an authenticator must always use it. A user without one is sent to enrol
    when TWO_FACTOR_REQUIRED says so (default: everyone). Django admin also checks
    ``is_verified()`` itself (practice.admin_site), so a mistake here cannot open it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        user = request.user
        if not user.is_authenticated or user.is_verified():
            return None
        if request.resolver_match.view_name in OPEN_VIEWS:
            return None
        if twofactor.has_second_factor(user):
            target = "two_factor_verify"
        elif twofactor.second_factor_required(user):
            target = "two_factor_setup"
        else:
            return None
        return redirect(f"{reverse(target)}?next={quote(request.get_full_path())}")


# The database failing, not the code: a read-only transaction (SQLSTATE 25006, an InternalError
# with psycopg), a connection gone, a lock or statement timeout (OperationalError). Integrity,
# programming and data errors are bugs: they stay 500s, reported like any other.
DATABASE_FAILURES = (OperationalError, InterfaceError, InternalError)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Signing in: whatever these views wrote before failing, the user is not signed in.
SIGN_IN_VIEWS = frozenset({"login", "two_factor_verify", "two_factor_setup"})
# Trail events that record a change a user asked for. audit.services writes each in the
# change's own transaction, so once one commits, the change is saved.
SAVED_EVENT_TYPES = frozenset(
    {
        EventType.CREATE,
        EventType.CHANGE,
        EventType.ARCHIVE,
        EventType.RESTORE,
        EventType.MERGE,
        EventType.DELETE,
        EventType.UNLOCK,
        EventType.OTP_RESET,
        EventType.RECOVERY_CODES,
        EventType.SESSIONS_ENDED,
        EventType.PASSWORD_CHANGED,
        EventType.PASSWORD_RESET,
        EventType.BREAK_GLASS,
        EventType.BREAK_GLASS_REVIEWED,
        EventType.BUDGET_LIFTED,
        EventType.REASON_STATED,
    }
)


@dataclass
class _Outcome:
    saved: bool = False  # a change the user asked for was committed


_outcome: ContextVar[_Outcome | None] = ContextVar("database_outcome", default=None)


def _change_recorded(sender, instance, created, **kwargs) -> None:
    outcome = _outcome.get()
    if outcome is not None and created and instance.event_type in SAVED_EVENT_TYPES:
        transaction.on_commit(lambda: setattr(outcome, "saved", True))


def _failure_marker() -> HttpResponse:
    response = HttpResponse(status=503)
    setattr(response, DATABASE_FAILURE, "view")
    return response


class DatabaseErrorMiddleware:
    """Answers a failing database with a 503 page that says whether the action was saved.

    Sits just outside the audit middleware: it sees a database error raised by a view
    (``process_exception``, after the audit middleware's own), and the response the audit
    middleware withheld because the trail could not be written; both come back marked with
    ``DATABASE_FAILURE``, and ``__call__`` answers them here, in one place. Whether the action
    was saved comes from the trail: each change writes its event in its own transaction, and
    the commit of such an event during the request means the change is saved.

    The page is rendered with a context built from what the request already loaded (its
    user, their role as ``practice.roles.role_of`` cached it), never through the context
    processors, which may query: with the database failing, the page makes no query at all.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        post_save.connect(_change_recorded, sender=AuditEvent, dispatch_uid="practice.middleware.change_recorded")

    def __call__(self, request):
        outcome = _Outcome()
        token = _outcome.set(outcome)
        try:
            try:
                # The session and the user: the request's first queries. A database already
                # gone fails here, before anything ran.
                request.user.is_authenticated  # noqa: B018
            except DATABASE_FAILURES:
                logger.exception("Database failure before the view; answered 503 (%s)", request.path)
                response = _failure_marker()
            else:
                response = self.get_response(request)
        finally:
            _outcome.reset(token)
        failure = getattr(response, DATABASE_FAILURE, "")
        return self._answer(request, outcome, failure) if failure else response

    def process_exception(self, request, exception):
        if not isinstance(exception, DATABASE_FAILURES):
            return None
        logger.error("Database failure in the view; answered 503 (%s)", request.path, exc_info=exception)
        return _failure_marker()

    @staticmethod
    def _answer(request, outcome: _Outcome, failure: str) -> HttpResponse:
        if request.method in SAFE_METHODS:
            # A page to show, not a change: withheld, whatever the view had read.
            return audit_unavailable_response(cause="database" if failure == "view" else "trail")
        if _view_name(request) in SIGN_IN_VIEWS:
            return _database_error_page(request, "sign-in")
        if outcome.saved:
            return _database_error_page(request, "saved")
        if failure == "view":
            return _database_error_page(request, "not-saved")
        # The view changed nothing and answered (a search, a form sent back with its errors);
        # only the trail of what it read could not be written: the page is withheld.
        return audit_unavailable_response()


def _view_name(request) -> str:
    match = request.resolver_match
    if match is None:  # failed before the view was resolved
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return ""
    return match.view_name


def _loaded_user(request):
    """The request's user if it is already loaded, else None (loading it would query)."""
    user = getattr(request, "user", None)
    while isinstance(user, LazyObject):  # OTPMiddleware's lazy user around AuthenticationMiddleware's
        if user._wrapped is empty:
            return None
        user = user._wrapped
    return user


def _database_error_page(request, kind: str) -> HttpResponse:
    user = None if kind == "sign-in" else _loaded_user(request)
    nav = {}
    # role_of caches the role on the user: with it, the menu costs no query; without it, the
    # page goes without the menu rather than ask a failing database.
    if user is not None and user.is_authenticated and getattr(user, "_cabinet_role", None) is not None:
        nav = navigation(request)["nav"]
    context = {
        "kind": kind,
        "request": request,
        "user": user if user is not None else AnonymousUser(),
        "nav": nav,
        "csrf_token": get_token(request),
        "LANGUAGE_CODE": get_language(),
        "LANGUAGES": settings.LANGUAGES,
    }
    response = HttpResponse(render_to_string("practice/database_error.html", context), status=503)
    response["Cache-Control"] = "no-store"
    return response
