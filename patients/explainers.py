"""The explanation patients owns (audit/explain.py), registered in ``PatientsConfig.ready``:
*grant*, an unexpired emergency-access (break-the-glass) grant of this user for the patient."""

from __future__ import annotations

import datetime

from audit.explain import Reader, explainer_register
from audit.models import Explanation
from patients.models import BreakGlassGrant


def _grant(reader: Reader, patient_ids: list, now: datetime.datetime):
    grants = BreakGlassGrant.objects.filter(user_id=reader.user_id, patient_id__in=patient_ids, expires_at__gt=now)
    return grants, "patient_id", "id"


def register() -> None:
    explainer_register(Explanation.GRANT, _grant, order=40)
