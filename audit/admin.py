from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The trail is read-only, for everyone, superusers included."""

    list_display = [
        "occurred_at",
        "event_type",
        "actor_username",
        "actor_role",
        "ip",
        "model_label",
        "patient_id",
        "fields",
        "path",
    ]
    list_filter = ["event_type", "actor_role"]
    search_fields = ["actor_username", "=patient_id", "=request_id", "=ip"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
