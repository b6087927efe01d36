"""A refused stored value is in the trail (where, never what), and still refused."""

import pytest

from audit.context import system_context
from audit.fields import CiphertextError
from audit.models import AuditEvent, EventType
from config.testing import raw_patient_set
from patients.models import Patient


def test_it_records_a_refused_value_in_the_trail(patient):
    raw_patient_set(patient.pk, "city", "Paris")
    with system_context("tests"), pytest.raises(CiphertextError):
        _ = Patient.objects.get(pk=patient.pk).city
    refusal = AuditEvent.objects.get(event_type=EventType.CIPHERTEXT_REFUSED)
    assert refusal.patient_id == patient.pk
    assert refusal.fields == ["city"]
    assert refusal.actor_username == "system:tests"
    assert "Paris" not in str(refusal.extra)
