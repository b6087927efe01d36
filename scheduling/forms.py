"""Forms of the agenda pages. Dates and times are typed in the practice's time zone and
combined here into aware datetimes (zoneinfo), so a DST change day books what was typed."""

from __future__ import annotations

import datetime
import re
import secrets

from django import forms
from django.utils.translation import gettext_lazy as _

from patients.forms import DateInput, PatientForm
from practice.models import Practitioner
from scheduling.availability import practice_tz
from scheduling.models import TYPE_NOT_OFFERED, AppointmentType
from scheduling.services import SQUEEZE_REASON_MIN_LENGTH


class TimeInput(forms.TimeInput):
    input_type = "time"


def local_datetime(day: datetime.date, time: datetime.time) -> datetime.datetime:
    """The aware moment for a wall-clock day and time in the practice's zone.

    Raises ValidationError for a time the clock skips (the spring DST change: 02:30 does
    not exist in Paris that night). An ambiguous autumn time takes its first occurrence.
    """
    tz = practice_tz()
    moment = datetime.datetime.combine(day, time.replace(second=0, microsecond=0), tzinfo=tz)
    round_trip = moment.astimezone(datetime.UTC).astimezone(tz)
    if round_trip.replace(tzinfo=None) != moment.replace(tzinfo=None):
        raise forms.ValidationError(
            _("This time does not exist on that day (the clocks change). Pick another time."), code="no_such_time"
        )
    return moment


def _practitioners():
    return Practitioner.objects.filter(is_active=True).order_by("display_name")


def _types():
    return AppointmentType.objects.filter(is_active=True).order_by("name")


SUBMISSION_KEY = "submission_key"
_SUBMISSION_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")


def submission_key_new() -> str:
    """A fresh key for a form (192 random bits, 32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def submission_key_from(data) -> str | None:
    """The well-formed key in posted data, or None (missing, or malformed: the form says so)."""
    value = data.get(SUBMISSION_KEY) if data else None
    return value if isinstance(value, str) and _SUBMISSION_KEY.fullmatch(value) else None


def submission_key_malformed(data) -> bool:
    """A key was sent, but not one a page of ours renders (too long, other characters)."""
    value = data.get(SUBMISSION_KEY) if data else None
    return bool(value) and submission_key_from(data) is None


MALFORMED_KEY = _("This form could not be checked (it is incomplete or out of date). Check it and send it again.")


class SubmissionKeyMixin(forms.Form):
    """A form that acts once: a random key rendered in it (hidden) lets a POST sent again
    (the answer lost to a restart, a double click) get the first one's answer instead of
    acting twice (practice.models.FormSubmission; scheduling.views._once).

    No key (an old page, a script): the form works as before, without that protection. A
    malformed key is a form error, and the form comes back with a fresh key, as it does once
    the view says the key was used for something else (``submission_key_renew``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rendered_key = None
        self.first_result = ""  # set when the key went with other values: where that went
        # Set by the view after a "slot taken" refusal (scheduling.conflicts): what holds the
        # time, in words, and (booking) a link to book the next free time instead.
        self.conflict = None
        self.conflict_sentences = []
        self.next_free_url = ""

    @property
    def submission_key(self) -> str | None:
        """The key sent with the form, when well-formed."""
        return submission_key_from(self.data) if self.is_bound else None

    @property
    def submission_key_value(self) -> str:
        """The key to render: the one sent (or carried in `initial`) while it is unused, else a fresh one."""
        if self._rendered_key is None:
            self._rendered_key = submission_key_from(self.data if self.is_bound else self.initial)
            self._rendered_key = self._rendered_key or submission_key_new()
        return self._rendered_key

    def submission_key_renew(self) -> None:
        self._rendered_key = submission_key_new()

    def clean(self):
        cleaned = super().clean()
        if submission_key_malformed(self.data):
            self.add_error(None, forms.ValidationError(MALFORMED_KEY, code="malformed_key"))
            self.submission_key_renew()
        return cleaned


class ForceMixin(forms.Form):
    """`force`: a secretary books anyway outside working hours or during an absence (recorded).

    Rendered only after the service refused with a forceable error (`offer_force`)."""

    force = forms.BooleanField(
        label=_("Book anyway (outside working hours or during an absence; this is recorded)"), required=False
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.offer_force = bool(self.data.get(self.add_prefix("force")))


class SqueezeMixin(forms.Form):
    """`squeeze`: book an emergency over the appointment that holds the time, saying why
    (scheduling.services: the clinic must allow it, and only the front desk may; the reason
    goes to the audit trail). Rendered only after a "slot taken" refusal that may be
    overridden so (`offer_squeeze`, set by the view)."""

    squeeze = forms.BooleanField(
        label=_("Squeeze in anyway: an emergency, booked over the appointment that holds this time"),
        required=False,
    )
    squeeze_reason = forms.CharField(
        label=_("Why it cannot wait"),
        required=False,
        max_length=200,
        help_text=_("Kept in the audit trail as written: no name and no health details."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.offer_squeeze = bool(self.data.get(self.add_prefix("squeeze")))

    def clean(self):
        cleaned = super().clean()
        reason = " ".join((cleaned.get("squeeze_reason") or "").split())
        cleaned["squeeze_reason"] = reason
        if cleaned.get("squeeze") and len(reason) < SQUEEZE_REASON_MIN_LENGTH:
            self.add_error(
                "squeeze_reason",
                forms.ValidationError(
                    _("Say why this cannot wait (at least %(min)d characters)."),
                    code="squeeze_reason",
                    params={"min": SQUEEZE_REASON_MIN_LENGTH},
                ),
            )
        return cleaned


class WhenMixin(forms.Form):
    date = forms.DateField(label=_("Date"), widget=DateInput(format="%Y-%m-%d"))
    time = forms.TimeField(label=_("Time"), widget=TimeInput(format="%H:%M", attrs={"step": 300}))

    def clean(self):
        cleaned = super().clean()
        day = cleaned.get("date")
        if day and not FIRST_DAY <= day <= LAST_DAY:
            self.add_error("date", _("Enter a date the agenda covers."))
        elif day and cleaned.get("time"):
            try:
                cleaned["start"] = local_datetime(cleaned["date"], cleaned["time"])
            except forms.ValidationError as exc:
                self.add_error("time", exc)
        return cleaned


class BookingForm(SubmissionKeyMixin, SqueezeMixin, ForceMixin, WhenMixin, forms.Form):
    """The slot part of booking: who, what, when, and the (encrypted) reason and note.

    `confirm_duplicate`: book although the patient already has an appointment with this
    practitioner within a few days (scheduling.views._booked_nearby); rendered with that warning."""

    practitioner = forms.ModelChoiceField(label=_("Practitioner"), queryset=Practitioner.objects.none())
    appointment_type = forms.ModelChoiceField(label=_("Appointment type"), queryset=AppointmentType.objects.none())
    reason = forms.CharField(
        label=_("Reason"),
        required=False,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("Seen by the practitioner; the patient's own words are fine."),
    )
    internal_note = forms.CharField(
        label=_("Internal note"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("For the practice only."),
    )
    confirm_duplicate = forms.BooleanField(
        label=_("Book anyway: this is another appointment, not the same one twice"), required=False
    )

    field_order = [
        "practitioner",
        "appointment_type",
        "date",
        "time",
        "reason",
        "internal_note",
        "force",
        "squeeze",
        "squeeze_reason",
        "confirm_duplicate",
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["practitioner"].queryset = _practitioners()
        self.fields["appointment_type"].queryset = _types()

    def clean(self):
        cleaned = super().clean()
        practitioner, kind = cleaned.get("practitioner"), cleaned.get("appointment_type")
        if practitioner and kind and not kind.is_offered_by(practitioner):
            self.add_error("appointment_type", TYPE_NOT_OFFERED)
        return cleaned


class PatientFindForm(forms.Form):
    """Find the patient to book for: last name and/or birth date, by blind index (POSTed)."""

    last_name = forms.CharField(label=_("Last name"), max_length=100, required=False)
    birth_date = forms.DateField(label=_("Birth date"), required=False, widget=DateInput(format="%Y-%m-%d"))

    def clean(self):
        cleaned = super().clean()
        empty = not (cleaned.get("last_name") or "").strip() and not cleaned.get("birth_date")
        if empty and not self.has_error("birth_date"):
            raise forms.ValidationError(_("Enter a last name or a birth date."), code="empty")
        return cleaned


class NewPatientForm(PatientForm):
    """A new patient created while booking: the few fields the front desk asks on the phone."""

    class Meta(PatientForm.Meta):
        fields = ["last_name", "first_names", "sex", "birth_date", "phone_mobile"]


class MoveForm(SubmissionKeyMixin, ForceMixin, WhenMixin, forms.Form):
    practitioner = forms.ModelChoiceField(
        label=_("Practitioner"),
        queryset=Practitioner.objects.none(),
        required=False,
        empty_label=_("(same practitioner)"),
    )

    field_order = ["date", "time", "practitioner", "force"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["practitioner"].queryset = _practitioners()


class ChangeTypeForm(SubmissionKeyMixin, ForceMixin, forms.Form):
    appointment_type = forms.ModelChoiceField(label=_("Appointment type"), queryset=AppointmentType.objects.none())

    def __init__(self, *args, practitioner_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["appointment_type"]
        assert isinstance(field, forms.ModelChoiceField)  # declared above
        field.queryset = _types().offered_by(practitioner_id)


class CancelForm(SubmissionKeyMixin, forms.Form):
    reason = forms.CharField(
        label=_("Why is it cancelled?"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": _("Say why the appointment is cancelled.")},
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError(_("Say why the appointment is cancelled."), code="required")
        return reason


class FreeSlotsForm(forms.Form):
    practitioner = forms.ModelChoiceField(label=_("Practitioner"), queryset=Practitioner.objects.none())
    appointment_type = forms.ModelChoiceField(label=_("Appointment type"), queryset=AppointmentType.objects.none())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["practitioner"].queryset = _practitioners()
        self.fields["appointment_type"].queryset = _types()

    def clean(self):
        cleaned = super().clean()
        practitioner, kind = cleaned.get("practitioner"), cleaned.get("appointment_type")
        if practitioner and kind and not kind.is_offered_by(practitioner):
            self.add_error("appointment_type", TYPE_NOT_OFFERED)
        return cleaned


# The agenda's reach: far enough for any real booking, near enough that day arithmetic
# (previous/next day and week) never overflows. Outside it, a date in a URL is a 404.
FIRST_DAY = datetime.date(1900, 1, 8)
LAST_DAY = datetime.date(2199, 12, 24)


def parse_day(value: str) -> datetime.date:
    """A yyyy-mm-dd date within the agenda's reach; ValueError otherwise."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("not a yyyy-mm-dd date")
    day = datetime.date.fromisoformat(value)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError("date outside the agenda")
    return day
