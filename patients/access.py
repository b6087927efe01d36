"""Who may open which patient record. Decided on plaintext columns, before any decryption.

- Secretaries and practice admins (the front desk, ``practice.roles.is_front_desk``): every
  patient of the practice.
- Practitioners: the patients they have or had an appointment with, plus the records they
  hold an unexpired break-the-glass grant for (one record each, for a limited time).
- Anyone else: nothing. Unknown and forbidden records look the same (404).
"""

import functools
import operator
from collections.abc import Callable
from typing import TypeGuard

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from patients.models import BreakGlassGrant, Patient
from practice.models import Practitioner
from practice.roles import PRACTITIONER, has_role, is_front_desk, role_of


def patient_queryset_for(user: User | AnonymousUser) -> QuerySet[Patient]:
    if is_front_desk(user):
        return Patient.objects.all()
    if has_role(user, PRACTITIONER):
        allowed = Exists(_grants_of(user).filter(patient=OuterRef("pk")))
        seen = _seen_by(user)
        return Patient.objects.filter(allowed if seen is None else seen | allowed)
    return Patient.objects.none()


# What makes a patient a practitioner's own: the scheduling app registers "has an appointment
# with them" in its AppConfig.ready(). Each source maps a practitioner to a condition on Patient
# rows; patients imports none of them. With none registered, a practitioner's own patients are
# none (fail closed): only break-the-glass grants open records.
_CARE_SOURCES: list[Callable[[Practitioner], Exists]] = []


def care_source_register(source: Callable[[Practitioner], Exists]) -> None:
    if source not in _CARE_SOURCES:
        _CARE_SOURCES.append(source)


def _seen_by(user: User) -> Exists | Q | None:
    """Patients this user treats (None: the user is no practitioner)."""
    if not hasattr(user, "practitioner"):
        return None
    conditions = [source(user.practitioner) for source in _CARE_SOURCES]
    if not conditions:
        return Q(pk__in=[])
    return functools.reduce(operator.or_, conditions)


def _grants_of(user: User) -> QuerySet[BreakGlassGrant]:
    return BreakGlassGrant.objects.filter(user=user, expires_at__gt=timezone.now())


def may_break_glass(user: User | AnonymousUser) -> TypeGuard[User]:
    """Break-the-glass is for practitioners: the only role whose access is limited to some
    records. The front desk and superusers already open every record; others get none."""
    return user.is_authenticated and not user.is_superuser and role_of(user) == PRACTITIONER


def break_glass_grant_for(user: User | AnonymousUser, patient: Patient) -> BreakGlassGrant | None:
    """The unexpired grant this user opens ``patient`` under, or None when they may open it
    anyway (their own patient, or the front desk). Plain columns only."""
    if not may_break_glass(user):
        return None
    grant = _grants_of(user).filter(patient=patient).order_by("-expires_at").first()
    seen = _seen_by(user)
    if grant is None or (seen is not None and Patient.objects.filter(seen, pk=patient.pk).exists()):
        return None
    return grant
