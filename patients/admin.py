from typing import ClassVar

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from patients import services
from patients.forms import PatientForm
from patients.models import BreakGlassGrant, Patient
from patients.selectors import PatientQuery, patient_names, patient_search


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    """Patients in Django admin. Reads decrypt through the same audited fields as the app;
    writes go through the services (audit rows); search uses the blind indexes; nothing is
    deleted (archive instead)."""

    form = PatientForm
    list_display = ["last_name", "first_names", "birth_date", "is_archived", "updated_at"]
    list_filter = ["is_archived"]
    list_per_page = 50
    show_full_result_count = False
    search_fields = ["last_name"]  # handled by get_search_results below (blind index)
    search_help_text = _("Last name, a comma, then the first name (accents and case ignored).")
    readonly_fields = ["created_at", "created_by", "updated_at", "updated_by", "archived_at"]

    def get_queryset(self, request):
        # The change list shows three encrypted columns: load only those.
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name == "patients_patient_changelist":
            qs = qs.only("id", "last_name", "first_names", "birth_date", "is_archived", "updated_at")
        return qs

    def get_search_results(self, request, queryset, search_term):
        # Lists are reads (audit/explain.py): the change list shows nobody until a search names
        # a last and a first name; a last name alone would list everyone of that name in full.
        last, _comma, first = search_term.partition(",")
        if not (last.strip() and first.strip()):
            if search_term.strip():
                messages.info(request, _("Search with the last name, a comma, then the first name."))
            return queryset.none(), False
        found = patient_search(PatientQuery(last_name=last.strip(), first_name=first.strip(), include_archived=True))
        return queryset.filter(pk__in=[p.pk for p in found]), False

    def save_model(self, request, obj, form, change):
        if change:
            services.patient_update(patient=obj, data=form.cleaned_data, actor=request.user)
        else:
            services.patient_create(data=form.cleaned_data, actor=request.user, patient=obj)

    def has_delete_permission(self, request, obj=None):
        return False


class ReviewedFilter(admin.SimpleListFilter):
    title = _("review")
    parameter_name = "reviewed"

    def lookups(self, request, model_admin):
        return [("no", _("Not reviewed")), ("yes", _("Reviewed"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(reviewed_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(reviewed_at__isnull=False)
        return queryset


# Each grant names its patient: a read of two fields, explained or paid from the reader's
# allowance like any other (audit/explain.py). A page of grants stays under a practice admin's
# hourly allowance of unexplained patients (30), so a page alone never asks for a reason.
GRANTS_PER_PAGE = 20


class GrantChangeList(ChangeList):
    """The page of grants, their patients' names loaded in one batch (one query, explained in
    one more), whatever the number of rows."""

    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        names = patient_names((grant.patient_id for grant in self.result_list), limit=GRANTS_PER_PAGE)
        for grant in self.result_list:
            grant.named_patient = names.get(grant.patient_id)


@admin.register(BreakGlassGrant)
class BreakGlassGrantAdmin(admin.ModelAdmin):
    """Practice admins review every emergency access. Grants are made only by the
    break-the-glass page (patients.services.break_glass_open, audited): here nothing is added
    or deleted, and the only thing written is the review, through break_glass_review (audited).

    The patient is named (and their id shown): the name is an audited read, in the request's
    audit context, explained or paid from the reader's allowance like any other. The "who
    opened this record" report (audit) says what was read under the grant.
    """

    list_display = ["username", "patient_name", "patient_ref", "reason", "granted_at", "expires_at", "reviewed"]
    list_filter = [ReviewedFilter]
    list_per_page = GRANTS_PER_PAGE
    show_full_result_count = False
    search_fields = ["username", "=patient__id"]
    date_hierarchy = "granted_at"
    actions = ["mark_reviewed"]
    fields: ClassVar[tuple[str, ...]] = (
        "username",
        "user",
        "patient_name",
        "patient_ref",
        "reason",
        "granted_at",
        "expires_at",
        "reviewed_at",
        "reviewed_by",
        "review_note",
    )
    readonly_fields = [f for f in fields if f != "review_note"]

    def get_changelist(self, request, **kwargs):
        return GrantChangeList

    @admin.display(description=_("patient"))
    def patient_name(self, obj: BreakGlassGrant) -> str:
        if hasattr(obj, "named_patient"):  # a row of the list: loaded with the page's others
            patient = obj.named_patient
        else:  # the grant's own page
            patient = patient_names([obj.patient_id]).get(obj.patient_id)
        return patient.display_name if patient is not None else "—"

    @admin.display(description=_("patient id"), ordering="patient_id")
    def patient_ref(self, obj: BreakGlassGrant) -> str:
        return str(obj.patient_id)

    @admin.display(description=_("reviewed"), boolean=True, ordering="reviewed_at")
    def reviewed(self, obj: BreakGlassGrant) -> bool:
        return obj.reviewed_at is not None

    @admin.action(description=_("Mark as reviewed"), permissions=["change"])
    def mark_reviewed(self, request, queryset):
        count = 0
        for grant in queryset.filter(reviewed_at__isnull=True):
            services.break_glass_review(grant=grant, reviewer=request.user, note="")
            count += 1
        self.message_user(
            request,
            ngettext("%(count)d access marked as reviewed.", "%(count)d accesses marked as reviewed.", count)
            % {"count": count},
            messages.SUCCESS,
        )

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if "review_note" in form.base_fields:
            form.base_fields["review_note"].help_text = _("Saving this page marks the access as reviewed.")
        return form

    def save_model(self, request, obj, form, change):
        # The review is the only change, and it goes through the service (audit row).
        if obj.reviewed_at is None or "review_note" in form.changed_data:
            services.break_glass_review(grant=obj, reviewer=request.user, note=form.cleaned_data.get("review_note", ""))

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
