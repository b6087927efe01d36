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


# --------------------------------------------------------------------------- in words (reports)


def _describe_grant(refs: list[str]) -> dict[str, str]:
    """{reference: "emergency access: <reason>"}: the reason is plain by design (reviewers read it)."""
    from django.utils.translation import gettext as _

    from audit.describe import uuid_refs

    ids = uuid_refs(refs)
    words = {}
    for pk, reason in BreakGlassGrant.objects.filter(pk__in=list(ids)).values_list("id", "reason"):
        for ref in ids[pk]:
            words[ref] = _("emergency access: %(reason)s") % {"reason": reason}
    return words


def describers_register() -> None:
    """The words the reports use for this explanation (audit/describe.py)."""
    from audit.describe import describer_register

    describer_register(Explanation.GRANT, _describe_grant)


describers_register()
