from django.contrib import admin

from practice.models import Practitioner, Specialty
from scheduling.admin import AbsenceInline, WorkingHoursInline


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
    inlines = [WorkingHoursInline, AbsenceInline]
