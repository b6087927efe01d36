"""Forms of the agenda pages. Dates and times are typed in the practice's time zone and
combined here into aware datetimes (zoneinfo), so a DST change day books what was typed."""

from __future__ import annotations

import datetime
import re
import uuid

from django import forms
from django.utils.translation import gettext_lazy as _

from patients.forms import DateInput, PatientForm
from practice.models import Practitioner, Specialty
from scheduling.availability import practice_tz
from scheduling.finder import AFTERNOON, MORNING, SEARCH_DAYS, SlotQuery
from scheduling.models import TYPE_NOT_OFFERED, AppointmentType, Weekday
from scheduling.selectors import default_appointment_type, practitioners_offering
from scheduling.services import SQUEEZE_REASON_MIN_LENGTH
from scheduling.submission_keys import submission_key_new


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


# A consent to reminders, and the contact detail its channel needs.
REMINDER_CONTACTS = {
    "consent_sms": ("phone_mobile", _("Give a mobile phone number for reminders by SMS.")),
    "consent_email": ("email", _("Give an e-mail address for reminders by e-mail.")),
}


class NewPatientForm(PatientForm):
    """A new patient created while booking: the few fields the front desk asks on the phone,
    and whether the patient wants reminders (by SMS, by e-mail) with the number or address
    they go to: a walk-in booked here gets reminders like a patient created on the patient
    form. A consent without its contact detail is refused here (it would plan nothing)."""

    class Meta(PatientForm.Meta):
        fields = [
            "last_name",
            "first_names",
            "sex",
            "birth_date",
            "phone_mobile",
            "email",
            "consent_sms",
            "consent_email",
        ]

    def clean(self):
        cleaned = super().clean()
        for consent, (contact, missing) in REMINDER_CONTACTS.items():
            if cleaned.get(consent) and not cleaned.get(contact) and not self.has_error(contact):
                self.add_error(consent, missing)
        return cleaned


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
    """The free-slot finder's filters (scheduling.finder), sent by GET so that a search is a link.

    Every filter is optional but the appointment type (it gives the slots' length); when the
    query names none, ``for_query`` takes the first type the practitioner asked for offers (or
    any practitioner offers), so the finder answers as soon as it opens. ``patient``: the record
    the finder was opened from, carried into the booking links (its id only: nothing about the
    patient is loaded here)."""

    appointment_type = forms.ModelChoiceField(
        label=_("Appointment type"),
        queryset=AppointmentType.objects.none(),
        empty_label=None,
        error_messages={"required": _("Choose an appointment type (practice admins set them up in Administration).")},
    )
    practitioner = forms.ModelChoiceField(
        label=_("Practitioner"),
        queryset=Practitioner.objects.none(),
        required=False,
        empty_label=_("Any practitioner"),
    )
    specialty = forms.ModelChoiceField(
        label=_("Specialty"), queryset=Specialty.objects.none(), required=False, empty_label=_("Any specialty")
    )
    from_date = forms.DateField(label=_("From"), required=False, widget=DateInput(format="%Y-%m-%d"))
    weekdays = forms.TypedMultipleChoiceField(
        label=_("Days"), choices=Weekday.choices, coerce=int, required=False, widget=forms.CheckboxSelectMultiple
    )
    part = forms.ChoiceField(
        label=_("Time of day"),
        choices=[("", _("Any time")), (MORNING, _("Morning")), (AFTERNOON, _("Afternoon"))],
        required=False,
        widget=forms.RadioSelect,
    )
    time_from = forms.TimeField(
        label=_("Starting from"), required=False, widget=TimeInput(format="%H:%M", attrs={"step": 300})
    )
    time_to = forms.TimeField(
        label=_("Starting before"), required=False, widget=TimeInput(format="%H:%M", attrs={"step": 300})
    )
    # The "more" view: every slot of one day (reached by a link, never typed).
    day = forms.DateField(required=False, widget=forms.HiddenInput)
    patient = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["practitioner"].queryset = _practitioners()
        self.fields["appointment_type"].queryset = _types()
        self.fields["specialty"].queryset = Specialty.objects.order_by("name")

    @classmethod
    def for_query(cls, params) -> FreeSlotsForm:
        """The form bound to a query string, with the default appointment type when it names none."""
        data = params.copy()
        if not data.get("appointment_type"):
            kind = default_appointment_type(_int_or_none(data.get("practitioner")))
            if kind is not None:
                data["appointment_type"] = str(kind.pk)
        return cls(data)

    def clean_patient(self) -> uuid.UUID | None:
        value = self.cleaned_data["patient"]
        try:
            return uuid.UUID(value) if value else None
        except ValueError:
            raise forms.ValidationError(_("This link to a patient's record is broken."), code="invalid") from None

    def clean(self):
        cleaned = super().clean()
        practitioner, kind = cleaned.get("practitioner"), cleaned.get("appointment_type")
        specialty = cleaned.get("specialty")
        if practitioner and kind and not kind.is_offered_by(practitioner):
            self.add_error("appointment_type", TYPE_NOT_OFFERED)
        if practitioner and specialty and practitioner.specialty_id != specialty.pk:
            self.add_error("practitioner", _("This practitioner is not of the specialty chosen."))
        time_from, time_to = cleaned.get("time_from"), cleaned.get("time_to")
        if time_from and time_to and time_to <= time_from:
            self.add_error("time_to", _("Enter a time after the first one."))
        for name in ("from_date", "day"):
            day = cleaned.get(name)
            if day and not FIRST_DAY <= day <= LAST_DAY - datetime.timedelta(days=SEARCH_DAYS):
                self.add_error(name, _("Enter a date the agenda covers."))
        return cleaned

    def query(self, *, today: datetime.date) -> SlotQuery:
        """The search this valid form asks for; its practitioners: the one chosen, or every
        active one offering the type (of the specialty chosen)."""
        data = self.cleaned_data
        kind = data["appointment_type"]
        chosen = data["practitioner"]
        return SlotQuery(
            appointment_type=kind,
            practitioners=[chosen] if chosen else practitioners_offering(kind, specialty=data["specialty"]),
            first=data["from_date"] or today,
            weekdays=frozenset(data["weekdays"]),
            part=data["part"],
            time_from=data["time_from"],
            time_to=data["time_to"],
            day=data["day"],
        )

    def params(self) -> dict[str, list[str]]:
        """The valid form's filters as GET parameters, normalized (the page's links re-run them)."""
        data = self.cleaned_data

        def one(value) -> list[str]:
            if value is None or value == "":
                return []
            if isinstance(value, datetime.time):
                return [value.strftime("%H:%M")]
            if isinstance(value, datetime.date):
                return [value.isoformat()]
            return [str(getattr(value, "pk", value))]

        params = {name: one(data[name]) for name in ("appointment_type", "practitioner", "specialty", "from_date")}
        params["weekdays"] = [str(day) for day in sorted(data["weekdays"])]
        params.update({name: one(data[name]) for name in ("part", "time_from", "time_to", "patient")})
        return params


def _int_or_none(value) -> int | None:
    """A primary key from a query string, or None (not a number, or past what a column holds)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**63 else None


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
