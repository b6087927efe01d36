"""Scheduling in Django admin, for practice admins: the clinic's structure (appointment types,
working hours, absences) is edited here; appointments are only looked at.

Appointments change through scheduling.services (book, move, cancel, status), which check
the rules and write an audit row for every change: admin never adds, changes or deletes one.
The change list loads plain columns only (no patient name, no search on encrypted fields),
so listing appointments decrypts nothing. The read-only change page shows the reason and
the notes: those reads are decrypted through the audited fields, like any other page.
"""

from __future__ import annotations

from typing import ClassVar

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from practice.admin import PractitionerAdmin
from practice.models import Practitioner
from scheduling.availability import practice_tz
from scheduling.models import Absence, Appointment, AppointmentType, Reminder, WorkingHours
from scheduling.selectors import absence_conflicts

# Working hours -----------------------------------------------------------------------------


def _hours_clash(a: dict, b: dict) -> bool:
    """Two ranges of the same day of the week whose times and validity periods both overlap."""
    if a["weekday"] != b["weekday"]:
        return False
    if not (a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]):
        return False
    a_from, a_until = a.get("valid_from"), a.get("valid_until")
    b_from, b_until = b.get("valid_from"), b.get("valid_until")
    return (a_until is None or b_from is None or b_from <= a_until) and (
        b_until is None or a_from is None or a_from <= b_until
    )


class WorkingHoursForm(forms.ModelForm):
    """End after start, validity in order. Overlaps are checked by the admin form (against
    the database) or by the inline formset (between its rows)."""

    class Meta:
        model = WorkingHours
        fields = ["practitioner", "weekday", "start_time", "end_time", "valid_from", "valid_until"]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start_time"), cleaned.get("end_time")
        if start and end and end <= start:
            self.add_error("end_time", _("The end must come after the start."))
        valid_from, valid_until = cleaned.get("valid_from"), cleaned.get("valid_until")
        if valid_from and valid_until and valid_until < valid_from:
            self.add_error("valid_until", _("The end of validity must not come before its start."))
        return cleaned

    def hours(self) -> dict | None:
        """This row's range, when it is complete and valid."""
        names = ["weekday", "start_time", "end_time"]
        if self.errors or any(self.cleaned_data.get(n) in (None, "") for n in names):
            return None
        return {n: self.cleaned_data.get(n) for n in [*names, "valid_from", "valid_until"]}


class WorkingHoursAdminForm(WorkingHoursForm):
    def clean(self):
        cleaned = super().clean()
        mine, practitioner = self.hours(), cleaned.get("practitioner")
        if mine and practitioner:
            others = WorkingHours.objects.filter(practitioner=practitioner, weekday=mine["weekday"])
            if self.instance.pk:
                others = others.exclude(pk=self.instance.pk)
            for other in others:
                if _hours_clash(mine, other.__dict__):
                    raise ValidationError(
                        _("These hours overlap %(other)s of the same practitioner."), params={"other": other}
                    )
        return cleaned


class WorkingHoursFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        ranges = [
            (form, form.hours())
            for form in self.forms
            if form.hours() and not (self.can_delete and self._should_delete_form(form))
        ]
        for n, (form, hours) in enumerate(ranges):
            for _other_form, other in ranges[:n]:
                if _hours_clash(hours, other):
                    form.add_error(None, _("These hours overlap another range of the same day."))
                    break


@admin.register(WorkingHours)
class WorkingHoursAdmin(admin.ModelAdmin):
    form = WorkingHoursAdminForm
    list_display = ["practitioner", "weekday", "start_time", "end_time", "valid_from", "valid_until"]
    list_filter = ["practitioner", "weekday"]
    list_select_related = ["practitioner"]
    ordering = ["practitioner__display_name", "weekday", "start_time"]
    autocomplete_fields = ["practitioner"]


class WorkingHoursInline(admin.TabularInline):
    model = WorkingHours
    form = WorkingHoursForm
    formset = WorkingHoursFormSet
    extra = 0
    ordering = ["weekday", "start_time"]


# Absences ----------------------------------------------------------------------------------


class AbsenceForm(forms.ModelForm):
    class Meta:
        model = Absence
        fields = ["practitioner", "start", "end", "kind", "label"]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end <= start:
            self.add_error("end", _("The end must come after the start."))
        return cleaned


@admin.register(Absence)
class AbsenceAdmin(admin.ModelAdmin):
    form = AbsenceForm
    list_display = ["start", "end", "who", "kind", "label"]
    list_filter = ["kind", "practitioner"]
    list_select_related = ["practitioner"]
    date_hierarchy = "start"
    ordering = ["-start"]
    autocomplete_fields = ["practitioner"]
    search_fields = ["label"]

    @admin.display(description=_("practitioner"), ordering="practitioner__display_name")
    def who(self, obj: Absence) -> str:
        return str(obj.practitioner) if obj.practitioner_id else str(_("Whole practice"))

    def get_readonly_fields(self, request, obj=None):
        # An absence's own page lists what it leaves to move (nothing to list before it exists).
        return ["booked_during"] if obj is not None else []

    @admin.display(description=_("booked during this absence"))
    def booked_during(self, obj: Absence) -> str:
        """The appointments to move, each linked to its page, with the patient's name: an audited
        read, explained (or paid from the allowance) in one batch for the list."""
        appointments, count = absence_conflicts(obj, names=True)
        return _booked_list(appointments, count, names=True) or "—"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # Existing bookings stay where they are: tell the admin which, so the front desk moves
        # them. The message goes through the session: times and practitioners only (plain
        # columns, nothing decrypted); the absence's page names the patients.
        appointments, count = absence_conflicts(obj)
        if count:
            said = ngettext(
                "%(count)d appointment is booked during this absence: the front desk should move it.",
                "%(count)d appointments are booked during this absence: the front desk should move them.",
                count,
            ) % {"count": count}
            listed = _booked_list(appointments, count, names=False)
            self.message_user(request, format_html("{}{}", said, listed), messages.WARNING)


def _booked_list(appointments: list[Appointment], count: int, *, names: bool) -> str:
    """Appointments booked during an absence (scheduling.selectors.absence_conflicts) as a list
    of links to their pages, then how many more of the ``count``; "" when there are none."""
    if not appointments:
        return ""
    context = {
        "appointments": appointments,
        "names": names,
        "more": count - len(appointments),
        "day": timezone.localtime(appointments[-1].start, practice_tz()).date(),
    }
    return render_to_string("admin/scheduling/absence_booked.html", context)


class AbsenceInline(admin.TabularInline):
    """Current and coming absences; past ones are in the absence list."""

    model = Absence
    form = AbsenceForm
    extra = 0
    fields = ["start", "end", "kind", "label"]
    ordering = ["start"]
    verbose_name_plural = _("current and coming absences")

    def get_queryset(self, request):
        return super().get_queryset(request).filter(end__gt=timezone.now())


# Appointment types -------------------------------------------------------------------------


@admin.register(AppointmentType)
class AppointmentTypeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "duration_minutes",
        "colour",
        "offered_by",
        "reminder_hours",
        "second_reminder_hours",
        "is_active",
    ]
    list_filter = ["is_active", "practitioners"]
    search_fields = ["name"]
    filter_horizontal = ["practitioners"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("practitioners")

    @admin.display(description=_("offered by"))
    def offered_by(self, obj: AppointmentType) -> str:
        return ", ".join(p.display_name for p in obj.practitioners.all()) or "—"


# Appointments: read-only -------------------------------------------------------------------

# What the change list shows, and all it loads: plain columns (docs/design.md, invariant 1).
APPOINTMENT_LIST_COLUMNS = [
    "start",
    "end",
    "status",
    "practitioner__display_name",
    "appointment_type__name",
    "appointment_type__duration_minutes",
]


class ReminderInline(admin.TabularInline):
    """Whether and when each reminder went out: plain columns, nothing to decrypt."""

    model = Reminder
    extra = 0
    fields: ClassVar[tuple[str, ...]] = (
        "channel",
        "kind",
        "planned_for",
        "due_at",
        "status",
        "attempts",
        "claimed_at",
        "sent_at",
        "provider_id",
        "error",
    )
    readonly_fields = fields
    ordering = ["due_at", "id"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Appointment)
class AppointmentAdmin(admin.ModelAdmin):
    list_display = ["start", "end", "practitioner", "status", "appointment_type"]
    list_filter = ["status", "practitioner", "appointment_type", "forced"]
    list_select_related = ["practitioner", "appointment_type"]
    date_hierarchy = "start"
    ordering = ["-start"]
    list_per_page = 100
    show_full_result_count = False
    raw_id_fields = ["patient"]
    inlines = [ReminderInline]
    fieldsets = [
        (None, {"fields": ["practitioner", "patient", "appointment_type", "start", "end", "status", "forced"]}),
        (_("Details"), {"fields": ["reason", "internal_note"]}),
        (
            _("Day"),
            {"fields": ["arrived_at", "consultation_started_at", "done_at"]},
        ),
        (_("Cancellation"), {"fields": ["cancelled_at", "cancelled_by", "cancellation_reason"]}),
        (_("History"), {"fields": ["created_at", "created_by", "updated_at", "updated_by"]}),
    ]

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name == "scheduling_appointment_changelist":
            qs = qs.only(*APPOINTMENT_LIST_COLUMNS)
        return qs

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class PractitionerAgendaAdmin(PractitionerAdmin):
    """The practitioner's page (practice/admin.py) with their working hours and absences."""

    inlines = [*PractitionerAdmin.inlines, WorkingHoursInline, AbsenceInline]


admin.site.unregister(Practitioner)
admin.site.register(Practitioner, PractitionerAgendaAdmin)
