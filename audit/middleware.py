"""The request's audit context, and the gates on the response: fail closed when the trail
cannot be written (503), withhold the page past the read budget (429)."""

import logging
import time
import uuid

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse

from audit import context, current
from audit.budget import ReadBudgetExceeded, budget_settle
from audit.explain import ExplanationRequired
from audit.models import EventType
from audit.services import audit_event_write

logger = logging.getLogger("audit")


def client_ip(request) -> str | None:
    """The client address: REMOTE_ADDR, or a header a trusted reverse proxy sets (configured)."""
    header = settings.AUDIT_CLIENT_IP_HEADER
    value = request.META.get(header, "") if header else ""
    if value:
        # X-Forwarded-For: the proxy appends the address it saw last.
        return value.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None


# The attribute that marks a response answering a database failure: "trail" (the trail could
# not be written: the page is withheld) or "view" (the view failed on the database).
# practice.middleware.DatabaseErrorMiddleware, just outside this middleware, says to the
# user what became of their action.
DATABASE_FAILURE = "database_failure"


def audit_unavailable_response(*, cause: str = "trail") -> HttpResponse:
    """The page withheld: "trail" when its reads could not be recorded, "database" when the
    database failed while the page was made."""
    # Rendered from a fixed template without the view's context: no plaintext can leak.
    body = render_to_string("audit/unavailable.html", {"cause": cause})
    response = HttpResponse(body, status=503)
    response["Cache-Control"] = "no-store"
    setattr(response, DATABASE_FAILURE, "trail" if cause == "trail" else "view")
    return response


def step_up_response(request, refusal: ExplanationRequired) -> HttpResponse:
    """The page that replaces one needing an explanation: why the user needs this patient's
    record, and their second factor again. A fixed template without the view's context (nothing
    decrypted for the page can leak); it names the patient by id only."""
    action = reverse(settings.STEP_UP_URL_NAME, args=[refusal.patient_id])
    following = request.get_full_path() if request.method == "GET" else ""
    body = render_to_string(
        "audit/step_up.html",
        {"refusal": refusal, "action": action, "next": following, "min_length": settings.READ_REASON_MIN_LENGTH},
        request=request,
    )
    response = HttpResponse(body, status=403)
    response["Cache-Control"] = "no-store"
    return response


def budget_exceeded_response(refusal: ReadBudgetExceeded) -> HttpResponse:
    # A fixed template, without the view's context: nothing decrypted for the page can leak.
    body = render_to_string("audit/budget_exceeded.html", {"refusal": refusal})
    response = HttpResponse(body, status=429)
    response["Cache-Control"] = "no-store"
    return response


class AuditContextMiddleware:
    """Opens an audit context per request; writes its reads before the response leaves.

    If the trail cannot be written, the response is replaced by an error page: the
    plaintext rendered into it never leaves (fail closed). Streaming responses are
    iterated after this middleware returns, outside the context, so they cannot decrypt.

    Past the account's read budget (audit.budget), the response is replaced by the 429
    page, whatever the view made of the refusal: the context remembers it, so a view or a
    template that caught ``ReadBudgetExceeded`` cannot send what it decrypted before. The
    reads made before the refusal are written (they were decrypted), then the block.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = str(uuid.uuid4())
        expired = self._session_expired(request)
        ctx = context.AuditContext(
            purpose="",
            request=request,
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
            request_id=request.request_id,
            path=request.path,  # never the query string: it may hold search terms
        )
        token = current.activate(ctx)
        try:
            if expired:
                logout(request)
            response = self.get_response(request)
            step_up = ctx.admission.refused if ctx.admission is not None else None
            refused_before = bool(ctx.withheld)
            try:
                ctx.flush()
                refusal = budget_settle(ctx)
                if refusal is not None and not refused_before:
                    # Refused only by the re-check, once the reads were written: say so in the trail.
                    audit_event_write(event_type=EventType.WITHHELD, extra={"withheld": "read-limit"})
            except Exception:
                logger.exception("Audit trail write failed; response withheld (request %s)", ctx.request_id)
                ctx.discard()
                response = audit_unavailable_response()
            else:
                if refusal is not None:
                    response = budget_exceeded_response(refusal)
                elif step_up is not None:
                    response = step_up_response(request, step_up)
            if response.status_code == 404:
                self._not_found_record(request)
        finally:
            current.deactivate(token)
        response["X-Request-ID"] = request.request_id
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        ctx = context.current()
        if ctx is not None and not ctx.purpose and request.resolver_match:
            ctx.purpose = request.resolver_match.view_name
        return None

    def process_exception(self, request, exception):
        # Raised by a decryption in the view or its template: answer instead of a 500
        # (__call__ puts the final 429 page in place once the block is recorded).
        if isinstance(exception, ReadBudgetExceeded):
            return budget_exceeded_response(exception)
        if isinstance(exception, ExplanationRequired):
            return step_up_response(request, exception)
        return None

    @staticmethod
    def _not_found_record(request) -> None:
        """A page not found, for a logged-in user: one NOT_FOUND event (path without the query
        string, with the session's audit id), so a session guessing ids shows as a 404 storm
        (investigations/anomalies.py). Written after the reads, and never at the user's expense: a
        failed write is logged and the 404 stays a 404."""
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return
        try:
            audit_event_write(event_type=EventType.NOT_FOUND)
        except Exception:
            logger.exception("Could not record a page not found in the audit trail (request %s)", request.request_id)

    @staticmethod
    def _session_expired(request) -> bool:
        """Absolute lifetime: a session ends after SESSION_ABSOLUTE_SECONDS, active or not."""
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return False
        started = request.session.get("auth_started_at")
        now = time.time()
        if started is None:
            request.session["auth_started_at"] = now
            return False
        return now - started > settings.SESSION_ABSOLUTE_SECONDS
