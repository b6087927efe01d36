from django import forms
from django.utils.translation import gettext_lazy as _

from audit.models import AnomalyKind, Severity
from investigations.reports import actor_filter

# Values arrive as <input type="datetime-local">, read in the practice's time zone.
DATETIME_INPUT_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]


class _LocalDateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self):
        super().__init__(format="%Y-%m-%dT%H:%M")


class BreachScopeForm(forms.Form):
    """Who (a username, an IP, a login session: any combination, or none for everyone) and
    when: from `start` (included) to `end` (excluded), in the practice's time zone."""

    actor = forms.CharField(
        label=_("User"),
        max_length=150,
        required=False,
        help_text=_("A username, as the trail records it (accounts since deleted too)."),
    )
    ip = forms.GenericIPAddressField(label=_("IP address"), required=False)
    session = forms.CharField(
        label=_("Login session"),
        max_length=32,
        required=False,
        help_text=_("The session id shown in the audit trail."),
    )
    start = forms.DateTimeField(label=_("From"), input_formats=DATETIME_INPUT_FORMATS, widget=_LocalDateTimeInput())
    end = forms.DateTimeField(
        label=_("To"),
        input_formats=DATETIME_INPUT_FORMATS,
        widget=_LocalDateTimeInput(),
        help_text=_("Excluded: events up to this moment."),
    )

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            self.add_error("end", _("The end must come after the start."))
        return data

    def scope_arguments(self) -> dict:
        """Keyword arguments of investigations.reports.breach_scope (a username: see actor_filter)."""
        data = self.cleaned_data
        arguments = {"start": data["start"], "end": data["end"], "ip": data["ip"] or None}
        arguments["session"] = data["session"].strip() or None
        if data["actor"].strip():
            arguments.update(actor_filter(data["actor"].strip()))
        return arguments


class NotificationExportForm(BreachScopeForm):
    """The scope again (hidden fields), plus why the notification list is needed."""

    purpose = forms.CharField(
        label=_("Purpose"),
        min_length=10,
        max_length=120,
        help_text=_(
            "Why you need the patients' names and contact details, e.g. “notify patients of incident 2026-03”."
        ),
    )


class AnomalyFilterForm(forms.Form):
    """The anomaly list's filters; all optional."""

    severity = forms.TypedChoiceField(
        label=_("Severity"), required=False, coerce=int, empty_value=None, choices=[("", _("Any"))]
    )
    kind = forms.ChoiceField(label=_("Signal"), required=False, choices=[("", _("Any"))])
    reviewed = forms.ChoiceField(
        label=_("Reviewed"),
        required=False,
        choices=[("", _("Any")), ("no", _("Not reviewed yet")), ("yes", _("Reviewed"))],
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["severity"].choices = [("", _("Any")), *Severity.choices]
        self.fields["kind"].choices = [("", _("Any")), *AnomalyKind.choices]

    def filter(self, anomalies):
        data = self.cleaned_data
        if data.get("severity"):
            anomalies = anomalies.filter(severity=data["severity"])
        if data.get("kind"):
            anomalies = anomalies.filter(kind=data["kind"])
        if data.get("reviewed") == "no":
            anomalies = anomalies.filter(reviewed_at__isnull=True)
        elif data.get("reviewed") == "yes":
            anomalies = anomalies.filter(reviewed_at__isnull=False)
        return anomalies


class AnomalyReviewForm(forms.Form):
    note = forms.CharField(
        label=_("What you found"),
        min_length=3,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_(
            "E.g. “Asked Sophie: she was preparing the vaccination campaign.” Recorded in the audit trail. "
            "Do not write patient data here."
        ),
    )


class ReadChartForm(forms.Form):
    # ISO format: a date input shows nothing for a value in the locale's format.
    day = forms.DateField(
        label=_("Day"), required=False, widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )


class AccessFilterForm(forms.Form):
    """The patient access report's filters: one person (as the trail records them), and the
    reads nothing explained only."""

    who = forms.CharField(label=_("User"), max_length=150, required=False)
    unexplained = forms.BooleanField(label=_("Unexplained reads only"), required=False)

    def filters(self) -> dict:
        if not self.is_valid():
            return {}
        return {"who": self.cleaned_data["who"].strip(), "unexplained_only": self.cleaned_data["unexplained"]}
