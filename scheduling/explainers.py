"""The explanations scheduling owns (audit/explain.py), registered in ``SchedulingConfig.ready``.

- *appointment*: the patient has an appointment that is not cancelled, starting from
  ``EXPLAIN_APPOINTMENT_PAST_DAYS`` ago to ``EXPLAIN_APPOINTMENT_FUTURE_DAYS`` ahead, with a
  practitioner the user works for. A practitioner works for themself; a secretary or a practice
  admin for every practitioner, or only for those they are assigned to
  (``Practitioner.assistants``) when they are assigned to any.
- *care*: a practitioner reads a patient they saw (an appointment marked done) in the last
  ``EXPLAIN_CARE_MONTHS`` months.

Both filter on plaintext columns, on the (patient, start) index of appointments.
"""

from __future__ import annotations

import datetime

from django.conf import settings
from django.utils.translation import gettext as _

from audit.describe import describer_register, uuid_refs, when_text
from audit.explain import Reader, explainer_register, sql_time
from audit.models import Explanation
from practice.models import Practitioner
from practice.roles import FRONT_DESK_ROLES
from scheduling.models import Appointment, AppointmentStatus


def _practitioner_ids_sql(reader: Reader) -> str:
    """The practitioners whose appointments explain this reader's reads, as a subquery over
    ``{appointment}.practitioner_id`` (evaluated in the explanation query itself)."""
    practitioners = Practitioner._meta.db_table
    own = f"a.practitioner_id IN (SELECT p.id FROM {practitioners} p WHERE p.user_id = %(user)s)"  # noqa: S608
    if reader.role not in FRONT_DESK_ROLES:
        return own
    assigned = Practitioner.assistants.through._meta.db_table
    return (
        f"({own} OR a.practitioner_id IN (SELECT s.practitioner_id FROM {assigned} s WHERE s.user_id = %(user)s) "  # noqa: S608
        f"OR NOT EXISTS (SELECT 1 FROM {assigned} s WHERE s.user_id = %(user)s))"
    )


def _appointment(reader: Reader, now: datetime.datetime):
    start = now - datetime.timedelta(days=settings.EXPLAIN_APPOINTMENT_PAST_DAYS)
    end = now + datetime.timedelta(days=settings.EXPLAIN_APPOINTMENT_FUTURE_DAYS)
    sql = (
        f"SELECT a.patient_id AS patient, CAST(a.id AS TEXT) AS ref FROM {Appointment._meta.db_table} a "  # noqa: S608
        "WHERE a.patient_id {patients} AND a.start >= %(appointment_from)s AND a.start < %(appointment_until)s "
        f"AND a.status <> %(appointment_cancelled)s AND {_practitioner_ids_sql(reader)}"
    )
    return sql, {
        "appointment_from": sql_time(start),
        "appointment_until": sql_time(end),
        "appointment_cancelled": AppointmentStatus.CANCELLED.value,
    }


def _care(reader: Reader, now: datetime.datetime):
    since = now - datetime.timedelta(days=round(settings.EXPLAIN_CARE_MONTHS * 30.44))
    sql = (
        f"SELECT a.patient_id AS patient, CAST(a.id AS TEXT) AS ref FROM {Appointment._meta.db_table} a "  # noqa: S608
        f"WHERE a.patient_id {{patients}} AND a.practitioner_id IN "
        f"(SELECT p.id FROM {Practitioner._meta.db_table} p WHERE p.user_id = %(user)s) "
        "AND a.status = %(care_done)s AND a.start >= %(care_since)s AND a.start < %(now)s"
    )
    return sql, {"care_since": sql_time(since), "care_done": AppointmentStatus.DONE.value}


def register() -> None:
    explainer_register(Explanation.APPOINTMENT, _appointment, order=10)
    explainer_register(Explanation.CARE, _care, order=20)


# --------------------------------------------------------------------------- in words (reports)


def _appointment_words(refs: list[str]) -> dict[str, tuple]:
    """{reference: (start, practitioner, type)} from plaintext columns only (nothing decrypted)."""
    ids = uuid_refs(refs)
    rows = Appointment.objects.filter(pk__in=list(ids)).values_list(
        "id", "start", "practitioner__display_name", "appointment_type__name"
    )
    return {ref: (start, who, kind) for pk, start, who, kind in rows for ref in ids[pk]}


def _describe_appointment(refs: list[str]) -> dict[str, str]:
    return {
        ref: _("appointment of %(when)s with %(practitioner)s (%(type)s)")
        % {"when": when_text(start), "practitioner": who, "type": kind}
        for ref, (start, who, kind) in _appointment_words(refs).items()
    }


def _describe_care(refs: list[str]) -> dict[str, str]:
    return {
        ref: _("care relationship: seen on %(when)s by %(practitioner)s")
        % {"when": when_text(start, with_time=False), "practitioner": who}
        for ref, (start, who, _kind) in _appointment_words(refs).items()
    }


def describers_register() -> None:
    """The words the reports use for these explanations (audit/describe.py)."""
    describer_register(Explanation.APPOINTMENT, _describe_appointment)
    describer_register(Explanation.CARE, _describe_care)


describers_register()
