from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme


class CabinetAdminSite(admin.AdminSite):
    """Django admin behind the same login as the app: password, then a verified second factor."""

    site_header = "Cabinet"
    site_title = "Cabinet"

    def has_permission(self, request) -> bool:
        user = request.user
        return user.is_active and user.is_staff and getattr(user, "is_verified", lambda: False)()

    def login(self, request, extra_context=None):
        # One login page (with lockout and the second factor), not a second form here.
        target = request.GET.get("next", "")
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            target = reverse("admin:index")
        if self.has_permission(request):
            return redirect(target)
        if request.user.is_authenticated:
            raise PermissionDenied  # logged in, verified, but not staff
        return redirect_to_login(target)

    def password_change(self, request, extra_context=None):
        # One password change page, the app's: it writes the audit row (PASSWORD_CHANGED);
        # Django admin's own would change the password without one.
        return redirect("password_change")
