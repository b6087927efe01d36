import datetime
import re

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext as _

_NIR = re.compile(r"^[1-478]\d{2}(0[1-9]|1[0-2]|[2-9]\d)(\d{2}|2A|2B)\d{6}\d{2}$")


def nir_normalize(value: str) -> str:
    return re.sub(r"[\s.\-]", "", value or "").upper()


def validate_nir(value: str) -> None:
    """French social security number: 13 characters and a 2-digit key (97 - n mod 97).

    Corsica's departments 2A and 2B count as 19 and 18 for the key.
    """
    nir = nir_normalize(value)
    if not _NIR.match(nir):
        raise ValidationError(_("Enter the 15 characters of the social security number (NIR)."), code="nir_format")
    body, key = nir[:13], int(nir[13:])
    number = int(body.replace("2A", "19").replace("2B", "18"))
    if 97 - number % 97 != key:
        raise ValidationError(_("This social security number's key does not match: check each digit."), code="nir_key")


def nir_key(body: str) -> str:
    number = int(body.replace("2A", "19").replace("2B", "18"))
    return f"{97 - number % 97:02d}"


def phone_to_e164(value: str) -> str:
    """Parse and validate a phone number (region from settings); returns E.164."""
    value = (value or "").strip()
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, settings.PHONENUMBER_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        raise ValidationError(_("Enter a valid phone number."), code="phone") from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(_("Enter a valid phone number."), code="phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def validate_not_future(value: datetime.date) -> None:
    if value and value > timezone.localdate():
        raise ValidationError(_("This date is in the future."), code="future")


def validate_plausible_birth_date(value: datetime.date) -> None:
    validate_not_future(value)
    if value and value.year < 1890:
        raise ValidationError(_("This birth date is too far in the past."), code="too_old")
