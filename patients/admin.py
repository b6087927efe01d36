from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from patients import services
from patients.forms import PatientForm
from patients.models import Patient
from patients.selectors import PatientQuery, patient_search


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
    search_help_text = _("Exact last name (accents and case ignored), optionally followed by “, first name”.")
    readonly_fields = ["created_at", "created_by", "updated_at", "updated_by", "archived_at"]

    def get_queryset(self, request):
        # The change list shows three encrypted columns: load only those.
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name == "patients_patient_changelist":
            qs = qs.only("id", "last_name", "first_names", "birth_date", "is_archived", "updated_at")
        return qs

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        last, _, first = search_term.partition(",")
        found = patient_search(PatientQuery(last_name=last.strip(), first_name=first.strip(), include_archived=True))
        return queryset.filter(pk__in=[p.pk for p in found]), False

    def save_model(self, request, obj, form, change):
        if change:
            services.patient_update(patient=obj, data=form.cleaned_data, actor=request.user)
        else:
            services.patient_create(data=form.cleaned_data, actor=request.user, patient=obj)

    def has_delete_permission(self, request, obj=None):
        return False
