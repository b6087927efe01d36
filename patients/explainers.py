"""The explanation patients owns (audit/explain.py), registered in ``PatientsConfig.ready``:
*grant*, an unexpired emergency-access (break-the-glass) grant of this user for the patient."""

from __future__ import annotations

import datetime

from django.utils.translation import gettext as _

from audit.describe import describer_register, uuid_refs
from audit.explain import Reader, explainer_register
from audit.models import Explanation
from patients.models import BreakGlassGrant


def _grant(reader: Reader, now: datetime.datetime):
    sql = (
        f"SELECT g.patient_id AS patient, CAST(g.id AS TEXT) AS ref FROM {BreakGlassGrant._meta.db_table} g "  # noqa: S608
        "WHERE g.user_id = %(user)s AND g.patient_id {patients} AND g.expires_at > %(now)s"
    )
    return sql, {}


def register() -> None:
    explainer_register(Explanation.GRANT, _grant, order=40)


# --------------------------------------------------------------------------- in words (reports)


def _describe_grant(refs: list[str]) -> dict[str, str]:
    """{reference: "emergency access: <reason>"}: the reason is plain by design (reviewers read it)."""
    ids = uuid_refs(refs)
    words = {}
    for pk, reason in BreakGlassGrant.objects.filter(pk__in=list(ids)).values_list("id", "reason"):
        for ref in ids[pk]:
            words[ref] = _("emergency access: %(reason)s") % {"reason": reason}
    return words


def describers_register() -> None:
    """The words the reports use for this explanation (audit/describe.py)."""
    describer_register(Explanation.GRANT, _describe_grant)


describers_register()
