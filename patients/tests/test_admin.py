"""Patients in Django admin (practice admins): a change made there goes through the patient
service like one made on the pages, so it is saved, audited (field names, not values) and
re-plans the patient's reminders."""

from django.urls import reverse

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import client_for, make_patient
from patients.models import Patient


def _form_data(client, url) -> dict:
    """The change form's current values, as the browser would post them back."""
    form = client.get(url).context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else field.prepare_value(value)
    return data


def test_a_change_in_admin_is_saved_and_audited_with_the_fields_changed(practice_admin):
    patient = make_patient(consent_sms=False)
    client = client_for(practice_admin)
    url = reverse("admin:patients_patient_change", args=[patient.pk])
    data = {**_form_data(client, url), "last_name": "Lefebvre", "consent_sms": "on"}

    response = client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    with system_context("tests"):
        saved = Patient.objects.get(pk=patient.pk)
        assert saved.last_name == "Lefebvre"
        assert saved.consent_sms
    [change] = AuditEvent.objects.filter(event_type=EventType.CHANGE, patient_id=patient.pk)
    assert sorted(change.fields) == ["consent_sms", "last_name"]
    assert change.actor_user_id == practice_admin.pk
