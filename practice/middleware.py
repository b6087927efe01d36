"""The second factor is part of logging in: until it is verified, a session reaches nothing."""

from urllib.parse import quote

from django.shortcuts import redirect
from django.urls import reverse

from practice import twofactor

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
