from django import forms
from django.utils.translation import gettext_lazy as _

from patients.models import Patient
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
