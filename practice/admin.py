# Importing these registers axes' admins and Django's UserAdmin: first, so that ours replace them
# (practice comes before axes and auth in INSTALLED_APPS, so autodiscovery reaches us first).
import django_otp.plugins.otp_totp.admin  # noqa: F401 (registers TOTPDevice: unregistered below)
from axes.admin import AccessAttemptAdmin
from axes.helpers import get_cool_off
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import logout
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import User
from django.db.models import BooleanField, Exists, ExpressionWrapper, IntegerField, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.context import Actor
from audit.models import EventType
from audit.services import audit_event_write
from practice import lockout
from practice.models import WEEKDAY_NAMES, Clinic, Practitioner, Specialty
from practice.roles import SECRETARY
from practice.services import lockout_lift, user_second_factor_reset, user_sessions_end


@admin.register(Clinic)
class ClinicAdmin(admin.ModelAdmin):
    """The clinic's one row: its name, address and phone, as reminders show them, and its
    opening hours (reads of patient data outside them are an anomaly signal), and whether the
    front desk may squeeze an emergency in over an existing appointment."""

    fieldsets = [
        (None, {"fields": ["name", "address", "phone", "email", "reminders_show_specialty"]}),
        (_("Agenda"), {"fields": ["squeeze_in_allowed"]}),
        (
            _("Opening hours"),
            {
                "description": _(
                    "In the practice's time zone. Leave both times empty on a day the practice is closed. "
                    "Patient records read outside these hours are listed among the anomaly signals."
                ),
                "fields": [(f"{day}_opens", f"{day}_closes") for day in WEEKDAY_NAMES],
            },
        ),
    ]

    def has_add_permission(self, request) -> bool:
        return not Clinic.objects.exists() and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Specialty)
class SpecialtyAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(Practitioner)
class PractitionerAdmin(admin.ModelAdmin):
    """A practitioner with their weekly hours and coming absences on one page."""

    list_display = ["display_name", "specialty", "user", "colour", "is_active"]
    list_filter = ["is_active", "specialty"]
    list_select_related = ["specialty", "user"]
    search_fields = ["display_name"]
    autocomplete_fields = ["specialty"]
    raw_id_fields = ["user"]
    # Which secretaries work for this practitioner (their reads of its appointments' patients
    # are explained: audit/explain.py). Nobody ticked: every secretary does.
    filter_horizontal = ["assistants"]
    # scheduling/admin.py adds the working hours and absences (practice does not import it).
    inlines = []

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "assistants":
            kwargs["queryset"] = User.objects.filter(groups__name=SECRETARY).order_by("username")
        return super().formfield_for_manytomany(db_field, request, **kwargs)


# Login lockouts ---------------------------------------------------------------------------------

# Successful logins and logouts are in the audit trail (LOGIN, LOGOUT, with IP and browser):
# axes' copy of them would be a second, unchained record to keep and to purge.
admin.site.unregister(AccessLog)
# axes writes its failure log only when AXES_ENABLE_ACCESS_FAILURE_LOG is on (off here):
# an always-empty "access failures" page would read as "nobody tried". Failures are in the
# audit trail (LOGIN_FAILED, LOCKOUT).
if not getattr(settings, "AXES_ENABLE_ACCESS_FAILURE_LOG", False):
    admin.site.unregister(AccessFailureLog)
admin.site.unregister(AccessAttempt)
# django-otp's device admin shows TOTP secrets and edits devices behind the audit trail's
# back; devices are managed through enrolment and the user admin's "Reset second factor".
admin.site.unregister(TOTPDevice)


class LockedOutFilter(admin.SimpleListFilter):
    title = _("locked out")
    parameter_name = "locked"

    def lookups(self, request, model_admin):
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request, queryset):
        locked = Q(pair_locked=True) | Q(account_locked=True) | Q(address_locked=True)
        if self.value() == "yes":
            return queryset.filter(locked)
        if self.value() == "no":
            return queryset.exclude(locked)
        return queryset


@admin.register(AccessAttempt)
class LockoutAdmin(AccessAttemptAdmin):
    """Failed logins per username, address and browser; deleting rows lifts a lockout (audited).

    Three locks (practice/lockout.py): a username from one address (the failures of the rows
    of that pair add up to AXES_FAILURE_LIMIT), a username from every address, an address for
    every username (their own counters). Each row's status says which of them hold now (axes'
    own column counts one row only). Lifting deletes exactly the rows selected and lifts the
    username's and the address's locks; a pair's lock that other rows keep shows as still on.
    """

    list_display = ["attempt_time", "username", "ip_address", "failures_since_start", "locked", "user_agent"]
    list_filter = [LockedOutFilter, "attempt_time"]
    actions = ["lockout_lift_action"]

    def get_queryset(self, request):
        recent = AccessAttempt.objects.filter(attempt_time__gte=timezone.now() - get_cool_off(request))
        same_pair = recent.filter(username=OuterRef("username"), ip_address=OuterRef("ip_address"))
        total = same_pair.values("username").annotate(total=Sum("failures_since_start")).values("total")[:1]
        pair_failures = Coalesce(Subquery(total, output_field=IntegerField()), Value(0))
        # Few values (one per username or address under attack), compared in Python's terms:
        # the address column is an inet on PostgreSQL, the counters' a plain string.
        accounts = lockout.locked_values(lockout.ACCOUNT)
        addresses = lockout.locked_values(lockout.ADDRESS)
        return (
            super()
            .get_queryset(request)
            .annotate(pair_failures=pair_failures)
            .annotate(
                pair_locked=ExpressionWrapper(
                    Q(pair_failures__gte=settings.AXES_FAILURE_LIMIT), output_field=BooleanField()
                ),
                account_locked=ExpressionWrapper(Q(username__in=accounts), output_field=BooleanField()),
                address_locked=ExpressionWrapper(Q(ip_address__in=addresses), output_field=BooleanField()),
            )
        )

    @admin.display(description=_("locked out"))
    def locked(self, obj) -> str:
        labels = []
        if obj.pair_locked:
            labels.append(_("this account from this address"))
        if obj.account_locked:
            labels.append(_("account, from every address"))
        if obj.address_locked:
            labels.append(_("IP address, for every account"))
        return "; ".join(str(label) for label in labels) or str(_("no"))

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "Lift lockout" is the same, said plainly
        return actions

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description=_("Lift lockout"), permissions=["delete"])
    def lockout_lift_action(self, request, queryset):
        count = lockout_lift(attempts=queryset, actor=Actor.for_user(request.user))
        message = ngettext(
            "%(count)d failed login attempt deleted. A lock that other attempts still hold shows below.",
            "%(count)d failed login attempts deleted. A lock that other attempts still hold shows below.",
            count,
        ) % {"count": count}
        self.message_user(request, message, messages.SUCCESS)

    def delete_model(self, request, obj):
        lockout_lift(attempts=[obj], actor=Actor.for_user(request.user))

    def delete_queryset(self, request, queryset):
        lockout_lift(attempts=queryset, actor=Actor.for_user(request.user))


# Users ------------------------------------------------------------------------------------------


class SecondFactorFilter(admin.SimpleListFilter):
    title = _("second factor")
    parameter_name = "second_factor"

    def lookups(self, request, model_admin):
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(has_second_factor=self.value() == "yes")
        return queryset


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's user admin, plus who has a second factor and two security actions.

    Only a superuser grants superuser status or single permissions, and only a superuser
    changes a superuser (or their password, or their sessions and second factor): a practice
    admin manages the clinic's staff, not the people above them.
    """

    # Django's own columns, then ours (the stubs declare list_display per instance).
    list_display = [*DjangoUserAdmin.list_display, "second_factor"]  # type: ignore[misc]
    list_filter = [*DjangoUserAdmin.list_filter, SecondFactorFilter]
    actions = ["sessions_end_action", "second_factor_reset_action"]

    def get_queryset(self, request):
        confirmed = TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)
        return super().get_queryset(request).annotate(has_second_factor=Exists(confirmed))

    @admin.display(description=_("second factor"), boolean=True, ordering="has_second_factor")
    def second_factor(self, obj) -> bool:
        return obj.has_second_factor

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["is_superuser", "user_permissions"]
        return fields

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    # Account changes (roles, staff status, activation, passwords set by an admin) go to the
    # audit trail as well as to Django's admin log: names of the changed fields, never values.
    def log_addition(self, request, obj, message):
        audit_event_write(event_type=EventType.CREATE, **self._audit_subject(obj, message))
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        audit_event_write(event_type=EventType.CHANGE, **self._audit_subject(obj, message))
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            audit_event_write(event_type=EventType.DELETE, **self._audit_subject(obj, []))
        return super().log_deletions(request, queryset)

    @staticmethod
    def _audit_subject(obj, message) -> dict:
        changed = []
        for entry in message if isinstance(message, list) else []:
            for details in entry.values():
                changed.extend(details.get("fields", []))
        return {
            "model_label": User._meta.label,
            "object_pk": obj.pk,
            "fields": changed,
            "extra": {"username": obj.get_username(), "change": message if isinstance(message, list) else []},
        }

    def _targets(self, request, queryset) -> list[User]:
        users = list(queryset)
        if request.user.is_superuser:
            return users
        allowed = [user for user in users if not user.is_superuser]
        if len(allowed) < len(users):
            self.message_user(request, _("Superusers were left alone: only a superuser may do that."), messages.WARNING)
        return allowed

    def _own_session_ended(self, request, users: list[User]) -> None:
        # The acting admin's own session was deleted under this request: log them out
        # properly (the response would otherwise try to save a session that is gone).
        if any(user.pk == request.user.pk for user in users):
            logout(request)

    @admin.action(description=_("Log out everywhere"), permissions=["change"])
    def sessions_end_action(self, request, queryset):
        users = self._targets(request, queryset)
        actor = Actor.for_user(request.user)
        sessions = sum(user_sessions_end(user=user, actor=actor) for user in users)
        message = ngettext(
            "%(users)d user logged out everywhere (%(sessions)d sessions ended).",
            "%(users)d users logged out everywhere (%(sessions)d sessions ended).",
            len(users),
        ) % {"users": len(users), "sessions": sessions}
        self.message_user(request, message, messages.SUCCESS)
        self._own_session_ended(request, users)

    @admin.action(description=_("Reset second factor"), permissions=["change"])
    def second_factor_reset_action(self, request, queryset):
        users = self._targets(request, queryset)
        actor = Actor.for_user(request.user)
        for user in users:
            user_second_factor_reset(user=user, actor=actor)
        message = ngettext(
            "Second factor reset for %(users)d user: they enrol a new one at their next login.",
            "Second factor reset for %(users)d users: they enrol a new one at their next login.",
            len(users),
        ) % {"users": len(users)}
        self.message_user(request, message, messages.SUCCESS)
        self._own_session_ended(request, users)
