import io
from urllib.parse import quote

import django_otp
import segno
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audit.context import Actor
from audit.models import EventType
from audit.services import audit_event_write
from practice import twofactor
from practice.forms import EnrolForm, SecondFactorForm
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, has_role

# Wrong second-factor codes tolerated in one session before it ends (the device's own
# throttle keeps growing across sessions, so logging in again does not reset it).


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send each role to where its day starts."""
    if has_role(request.user, SECRETARY):
        return redirect("scheduling:today")
    if has_role(request.user, PRACTICE_ADMIN):
        return redirect("admin:index")
    if has_role(request.user, PRACTITIONER) and hasattr(request.user, "practitioner"):
        return redirect("scheduling:my_day")
    return render(request, "practice/home.html")


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("home")


def _second_factor_passed(request: HttpRequest, device) -> None:
    django_otp.login(request, device)
    # A new session key once the login is complete: a key seen before the second factor
    # (on a shared screen, in a proxy log) is worthless afterwards.
    request.session.cycle_key()


def _wait_message(locked_until) -> str:
    seconds = max(1, int((locked_until - timezone.now()).total_seconds()) + 1)
    return _("Too many wrong codes: wait %(seconds)s seconds before trying again.") % {"seconds": seconds}


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_verify(request: HttpRequest) -> HttpResponse:
    """Second step of every login for a user with an authenticator."""
    user = request.user
    if user.is_verified():  # type: ignore[union-attr]  # added to request.user by django-otp's OTPMiddleware
        return redirect(_next_url(request))
    if not twofactor.has_second_factor(user):
        return redirect(f"{reverse('two_factor_setup')}?next={quote(_next_url(request))}")
    form = SecondFactorForm(request.POST or None)
    locked_until = None
    if request.method == "POST" and form.is_valid():
        device, locked_until, spent = twofactor.second_factor_attempt(request, form.cleaned_data["code"])
        if device is not None:
            _second_factor_passed(request, device)
            return redirect(_next_url(request))
        if spent:
            logout(request)
            messages.error(request, _("Too many wrong codes. Log in again."))
            return redirect("login")
        if locked_until is None:
            form.add_error("code", _("This code is not valid. Check the time on your phone and try again."))
    if locked_until is not None:
        form.add_error(None, _wait_message(locked_until))
    status = 429 if locked_until is not None else 200
    context = {"form": form, "next": _next_url(request)}
    return render(request, "registration/two_factor_verify.html", context, status=status)


def _may_enrol(user) -> bool:
    # Replacing an authenticator needs the current one: a stolen password alone cannot
    # swap the second factor. A user with none may enrol (first login after creation).
    return user.is_verified() or not twofactor.has_second_factor(user)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    """Enrol an authenticator app: scan the QR code, type a first code, keep the recovery codes."""
    user = request.user
    if not _may_enrol(user):
        return redirect(f"{reverse('two_factor_verify')}?next={quote(_next_url(request))}")
    device = twofactor.totp_pending(user)
    form = EnrolForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        # The pending device backs off after a wrong code like any other: while it does, the
        # right code is refused too, so say "wait", not "not valid": the code may well be right.
        allowed, detail = device.verify_is_allowed()
        locked_until = None if allowed else (detail or {}).get("locked_until")
        if locked_until is not None:
            form.add_error(None, _wait_message(locked_until))
            status = 429
        elif twofactor.totp_confirm(device, form.cleaned_data["code"].strip()):
            device.refresh_from_db()
            audit_event_write(event_type=EventType.OTP_ENROLLED)
            codes = twofactor.recovery_codes_generate(user)
            audit_event_write(event_type=EventType.RECOVERY_CODES)
            if not user.is_verified():  # type: ignore[union-attr]  # added by django-otp's OTPMiddleware
                _second_factor_passed(request, device)
                audit_event_write(event_type=EventType.OTP_VERIFIED, extra={"device": type(device).__name__})
            return _recovery_codes_page(request, codes)
        else:
            form.add_error("code", _("This code is not valid. Check the time on your phone and try again."))
    context = {"form": form, "secret": _spaced(device.config_url), "next": _next_url(request)}
    return render(request, "registration/two_factor_setup.html", context, status=status)


def _spaced(config_url: str) -> str:
    secret = config_url.split("secret=", 1)[1].split("&", 1)[0]
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@never_cache
@login_required
@require_GET
def two_factor_qr(request: HttpRequest) -> HttpResponse:
    """The QR code of the authenticator being enrolled, as SVG (an image: no inline script)."""
    if not _may_enrol(request.user):
        return HttpResponse(status=404)
    device = twofactor.totp_pending(request.user)
    buffer = io.BytesIO()
    segno.make(device.config_url, error="m").save(buffer, kind="svg", scale=5, border=2)
    return HttpResponse(buffer.getvalue(), content_type="image/svg+xml")


def _recovery_codes_page(request: HttpRequest, codes: list[str]) -> HttpResponse:
    # Rendered once, never stored: there is no page that shows them again.
    return render(request, "registration/recovery_codes.html", {"codes": codes, "next": _next_url(request)})


@never_cache
@login_required
@require_POST
def recovery_codes_regenerate(request: HttpRequest) -> HttpResponse:
    codes = twofactor.recovery_codes_generate(request.user)
    audit_event_write(event_type=EventType.RECOVERY_CODES)
    return _recovery_codes_page(request, codes)


@never_cache
@login_required
@require_GET
def account(request: HttpRequest) -> HttpResponse:
    user = request.user
    context = {
        "has_second_factor": twofactor.has_second_factor(user),
        "codes_left": twofactor.recovery_codes_left(user),
    }
    return render(request, "registration/account.html", context)


class PasswordChangeView(auth_views.PasswordChangeView):
    success_url = reverse_lazy("password_change_done")

    def form_valid(self, form):
        response = super().form_valid(form)
        audit_event_write(event_type=EventType.PASSWORD_CHANGED)
        return response


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    def form_valid(self, form):
        response = super().form_valid(form)
        audit_event_write(event_type=EventType.PASSWORD_RESET, actor=Actor.for_user(form.user))
        return response
