from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from audit.context import Actor
from audit.models import AuditEvent, ReadBlock
from audit.services import read_block_lift


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


class ReadBlockLiftForm(forms.ModelForm):
    class Meta:
        model = ReadBlock
        fields = ["lift_reason"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "lift_reason" in self.fields:
            field = self.fields["lift_reason"]
            field.required = True
            field.help_text = _(
                "Saving lifts the block: the account reads patient records again, with its budget counted "
                "from now. Say what you checked, e.g. “Called Sophie: she was preparing the vaccination "
                "campaign mailing.” Recorded in the audit trail."
            )

    def clean_lift_reason(self):
        reason = self.cleaned_data["lift_reason"].strip()
        if not reason:
            raise forms.ValidationError(_("Say why you lift the block."))
        return reason


@admin.register(ReadBlock)
class ReadBlockAdmin(admin.ModelAdmin):
    """Accounts stopped by their read budget (audit.budget). A practice admin lifts a block by
    saving its page with a reason; nothing else changes, nothing is added or deleted here, and
    nobody lifts their own block (a stolen session must not unblock itself)."""

    form = ReadBlockLiftForm
    list_display = ["username", "role", "window", "patients_read", "budget", "blocked_at", "is_open", "lifted_by"]
    list_filter = [("lifted_at", admin.EmptyFieldListFilter), "window", "role"]
    search_fields = ["username"]
    date_hierarchy = "blocked_at"
    fields = [
        "username",
        "user_id",
        "role",
        "blocked_at",
        "window",
        "patients_read",
        "budget",
        "lift_reason",
        "lifted_at",
        "lifted_by",
    ]

    @admin.display(boolean=True, description=_("in force"))
    def is_open(self, obj: ReadBlock) -> bool:
        return obj.lifted_at is None

    def get_readonly_fields(self, request, obj=None):
        readonly = [name for name in self.fields if name != "lift_reason"]
        if obj is None or obj.lifted_at is not None or not self.has_change_permission(request, obj):
            readonly.append("lift_reason")
        return readonly

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or (obj.lifted_at is None and obj.user_id != request.user.pk)

    def save_model(self, request, obj, form, change):
        read_block_lift(block=obj, actor=Actor.for_user(request.user), reason=form.cleaned_data["lift_reason"])
        obj.refresh_from_db()
