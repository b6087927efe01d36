"""Bidirectional control characters never make it from a form into the database:
U+202E in a last name would show it backwards on every page and CSV file."""

import inspect

import pytest
from django import forms
from django.contrib.auth import forms as auth_forms
from django.urls import reverse

from audit.context import system_context
from config.testing import client_for
from investigations import forms as investigation_forms
from patients import forms as patient_forms
from patients.models import Patient
from practice import forms as practice_forms
from scheduling import forms as scheduling_forms

CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def _form_classes():
    for module in (patient_forms, scheduling_forms, practice_forms, investigation_forms, auth_forms):
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, forms.BaseForm) and cls.__module__ == module.__name__:
                yield cls


def _text_fields():
    found = []
    for cls in _form_classes():
        for name, field in cls.base_fields.items():
            if isinstance(field, forms.CharField):
                found.append(pytest.param(field, id=f"{cls.__module__}.{cls.__name__}.{name}"))
    return found


@pytest.mark.parametrize("field", _text_fields())
def test_every_text_field_of_every_form_drops_bidi_controls(field):
    """Stripped, or (fields with their own parsing, such as an IP address) refused."""
    value = f"Du{CONTROLS}pont"
    cleaned = field.to_python(value)
    if cleaned != "Dupont":
        with pytest.raises(forms.ValidationError):
            field.clean(value)


def test_there_are_text_fields_to_check():
    assert len(_text_fields()) > 40


def test_a_last_name_with_a_right_to_left_override_is_stored_without_it(secretary):
    data = {
        "last_name": "\u202eTNOPUD",
        "first_names": "Mar\u2066ie\u2069",
        "sex": "F",
        "birth_date": "1980-01-01",
        "language": "fr",
        "notes": "Allergie \u202eenicillinép",
    }
    response = client_for(secretary).post(reverse("patients:create"), data)
    assert response.status_code == 302
    with system_context("tests"):
        patient = Patient.objects.get()
        stored = (patient.last_name, patient.first_names, patient.notes)
    assert stored == ("TNOPUD", "Marie", "Allergie enicillinép")
    page = client_for(secretary).get(patient.get_absolute_url()).content.decode()
    assert not any(c in page for c in CONTROLS)
