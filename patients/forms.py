import uuid

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from patients.exports import EXPORT_LIST_LIMIT, EXPORT_PURPOSE_MIN_LENGTH
from patients.models import Patient
from patients.selectors import CONTACT_GROUPS
from patients.services import BREAK_GLASS_REASON_MIN_LENGTH, EDITABLE_FIELDS
from patients.validators import nir_normalize, phone_to_e164, validate_nir, validate_plausible_birth_date


class DateInput(forms.DateInput):
    input_type = "date"


class PatientForm(forms.ModelForm):
    """Create and edit a patient. Cleaned data is normalized (phones in E.164, NIR compact)."""

    confirm_duplicate = forms.BooleanField(
        required=False,
        label=_("I checked: this is a different person"),
    )

    class Meta:
        model = Patient
        fields = EDITABLE_FIELDS
        widgets = {
            "birth_date": DateInput(format="%Y-%m-%d"),
            "address": forms.Textarea(attrs={"rows": 2}),
            "notes": forms.Textarea(attrs={"rows": 4}),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["birth_date"].validators.append(validate_plausible_birth_date)
        self.duplicates = []

    def clean_phone_mobile(self):
        return phone_to_e164(self.cleaned_data.get("phone_mobile", ""))

    def clean_phone_other(self):
        return phone_to_e164(self.cleaned_data.get("phone_other", ""))

    def clean_nir(self):
        nir = nir_normalize(self.cleaned_data.get("nir", ""))
        if nir:
            validate_nir(nir)
        return nir

    def clean_email(self):
        return (self.cleaned_data.get("email") or "").strip()

    def clean(self):
        cleaned = super().clean()
        self._check_nir_matches(cleaned)
        return cleaned

    def _check_nir_matches(self, cleaned) -> None:
        nir, sex, born = cleaned.get("nir"), cleaned.get("sex"), cleaned.get("birth_date")
        if not nir or self.has_error("nir"):
            return
        if born and nir[1:3] != f"{born.year % 100:02d}":
            self.add_error("nir", _("The NIR's year of birth does not match the birth date."))
        if sex in ("F", "M") and nir[0] in "12" and nir[0] != {"M": "1", "F": "2"}[sex]:
            self.add_error("nir", _("The NIR's first digit does not match the sex."))

    def _post_clean(self):
        # Validation happens in clean(); the model is built by the service, not here,
        # so that every write goes through one place with its audit row.
        pass


class PatientSearchForm(forms.Form):
    last_name = forms.CharField(label=_("Last name"), max_length=100, required=False)
    first_name = forms.CharField(label=_("First name"), max_length=100, required=False)
    birth_date = forms.DateField(label=_("Birth date"), required=False, widget=DateInput(format="%Y-%m-%d"))
    phone = forms.CharField(label=_("Phone"), max_length=30, required=False)
    email = forms.CharField(label=_("E-mail"), max_length=254, required=False)
    include_archived = forms.BooleanField(label=_("Include archived"), required=False)

    def clean(self):
        cleaned = super().clean()
        if not any(cleaned.get(f) for f in ("last_name", "birth_date", "phone", "email")):
            raise forms.ValidationError(_("Enter a last name, a birth date, a phone number or an e-mail."))
        if cleaned.get("first_name") and not cleaned.get("last_name"):
            self.add_error("last_name", _("Give the last name with the first name."))
        return cleaned


class BreakGlassForm(forms.Form):
    reason = forms.CharField(
        label=_("Why do you need this record now?"),
        help_text=_(
            "Kept in clear in the audit trail and read by the practice admins: describe the "
            "situation, do not copy the patient's identity or health details."
        ),
        min_length=BREAK_GLASS_REASON_MIN_LENGTH,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 4}),
        error_messages={
            "required": _("Write the reason for this emergency access."),
            "min_length": _("Write at least %(limit_value)d characters (you wrote %(show_value)d)."),
        },
    )


# ---------------------------------------------------------------------------------------------
# Minimal exposure: showing contact details, and exports


class ReadReasonForm(forms.Form):
    """The step-up page: why the user needs one patient's record, and their second factor."""

    reason = forms.CharField(
        label=_("Reason"),
        max_length=500,
        error_messages={
            "required": _("Write why you need this record."),
            "max_length": _("Write at most %(limit_value)d characters (you wrote %(show_value)d)."),
        },
    )
    code = forms.CharField(
        label=_("Code from your authenticator app"),
        max_length=20,
        error_messages={"required": _("Type the code your authenticator app shows.")},
    )

    def clean_reason(self) -> str:
        reason = " ".join(self.cleaned_data["reason"].split())
        minimum = settings.READ_REASON_MIN_LENGTH
        if len(reason) < minimum:
            raise forms.ValidationError(
                _("Write at least %(minimum)d characters (you wrote %(length)d)."),
                params={"minimum": minimum, "length": len(reason)},
            )
        return reason


class RevealForm(forms.Form):
    """Which contact details to show: one group, or all of them (the default)."""

    show = forms.ChoiceField(
        choices=[(group, group) for group in CONTACT_GROUPS] + [("all", "all")],
        required=False,
    )

    def groups(self) -> list[str]:
        wanted = self.cleaned_data.get("show") or "all"
        return list(CONTACT_GROUPS) if wanted == "all" else [wanted]


CONTACT_GROUP_LABELS = {
    "phone": _("Phone numbers"),
    "email": _("E-mail"),
    "address": _("Address"),
    "nir": _("Social security number (NIR)"),
}


class _PurposeForm(forms.Form):
    purpose = forms.CharField(
        label=_("Purpose of this export"),
        help_text=_(
            "Required. Kept in clear in the audit trail and printed on the file: say why "
            "(for example “right of access request received 12 May”), without patient names "
            "or health details."
        ),
        min_length=EXPORT_PURPOSE_MIN_LENGTH,
        max_length=200,
        error_messages={
            "required": _("State the purpose of this export."),
            "min_length": _("Write at least %(limit_value)d characters (you wrote %(show_value)d)."),
        },
    )

    def clean_purpose(self) -> str:
        # One line: it goes into a file's first line and the audit trail.
        return " ".join(self.cleaned_data["purpose"].split())


class UUIDListField(forms.Field):
    """Patient ids posted back by the list page (hidden inputs), at most ``max_count``."""

    widget = forms.MultipleHiddenInput

    def __init__(self, *, max_count: int, **kwargs):
        self.max_count = max_count
        super().__init__(**kwargs)

    def to_python(self, value) -> list[uuid.UUID]:
        if not value:
            return []
        if not isinstance(value, list | tuple):
            value = [value]
        try:
            ids = list(dict.fromkeys(uuid.UUID(str(v)) for v in value))
        except ValueError as exc:
            raise forms.ValidationError(_("The list of patients is not valid: search again.")) from exc
        if len(ids) > self.max_count:
            raise forms.ValidationError(_("Export at most %(count)d patients at a time.") % {"count": self.max_count})
        return ids


class PatientListExportForm(_PurposeForm):
    patient = UUIDListField(
        max_count=EXPORT_LIST_LIMIT,
        error_messages={"required": _("There is no patient in the list to export.")},
    )
    columns = forms.MultipleChoiceField(
        label=_("Also export"),
        choices=list(CONTACT_GROUP_LABELS.items()),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("The list's columns (names, birth name, birth date) are always exported."),
    )


class PatientExportForm(_PurposeForm):
    file_format = forms.ChoiceField(
        label=_("Format"),
        choices=[("json", _("JSON (machine-readable)")), ("csv", _("CSV (spreadsheet)"))],
        initial="json",
    )
    include_notes = forms.BooleanField(
        label=_("Include the staff's notes (record notes and appointments' internal notes)"),
        required=False,
        help_text=_(
            "Notes written by the practice may name other people: read them before sending "
            "the file, and leave them out when they would disclose someone else's data."
        ),
    )
