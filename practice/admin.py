from django.contrib import admin

from practice.models import Practitioner, Specialty


@admin.register(Specialty)
class SpecialtyAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(Practitioner)
class PractitionerAdmin(admin.ModelAdmin):
    list_display = ["display_name", "specialty", "user", "is_active"]
    list_filter = ["is_active", "specialty"]
    autocomplete_fields = ["specialty"]
    raw_id_fields = ["user"]
