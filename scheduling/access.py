"""Who may see which agenda and appointment. Decided on plaintext columns, before any decryption.

- Secretaries and practice admins (the front desk, ``practice.roles.is_front_desk``): every
  agenda and appointment; they book, move, cancel and change any status.
- Practitioners: their own week, day and waiting room, and their own appointments; they may
  move those along the day's flow (arrived, in consultation, done, no-show), nothing else.
- Anyone else (no role): nothing (403).

Object pages answer 404 for what exists but is not yours, exactly as for what does not exist:
no existence oracle (docs/design.md, invariant 2: an account must not learn which patients
exist by trying ids).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import Http404, HttpRequest

from practice.models import Practitioner
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, has_role, is_front_desk
from scheduling.models import Appointment, AppointmentStatus

# What a practitioner may do to their own appointments: the flow of their day.
PRACTITIONER_STATUSES = frozenset(
    {
        AppointmentStatus.ARRIVED,
        AppointmentStatus.IN_CONSULTATION,
        AppointmentStatus.DONE,
        AppointmentStatus.NO_SHOW,
    }
)
# The front desk may also put an appointment back to "booked" (undo an arrival or a no-show).
# Cancelling is not a status change here: it needs a reason (its own view and service).
FRONT_DESK_STATUSES = PRACTITIONER_STATUSES | {AppointmentStatus.BOOKED}


def own_practitioner(user: User | AnonymousUser) -> Practitioner | None:
    """The practitioner profile of a user with a clinic role, or None.

    A practice admin who also consults has a profile too: their own day is theirs to see.
    """
    if not has_role(user, SECRETARY, PRACTICE_ADMIN, PRACTITIONER):
        return None
    try:
        return user.practitioner
    except Practitioner.DoesNotExist:
        return None


def treats(practitioner: Practitioner) -> Exists:
    """The patients this practitioner has or had an appointment with, as a condition on Patient
    rows: what makes a record theirs (registered with patients.access in scheduling/apps.py)."""
    return Exists(Appointment.objects.filter(patient=OuterRef("pk"), practitioner=practitioner))


def require_front_desk(request: HttpRequest) -> None:
    """Pages that span every practitioner (the day, free slots, booking): front desk only."""
    if not is_front_desk(request.user):
        raise PermissionDenied


def require_agenda_role(request: HttpRequest) -> None:
    """Any clinic role; an authenticated user without one gets 403 before anything is looked up."""
    if not has_role(request.user, SECRETARY, PRACTICE_ADMIN, PRACTITIONER):
        raise PermissionDenied


def appointment_queryset_for(user: User | AnonymousUser) -> QuerySet[Appointment]:
    if is_front_desk(user):
        return Appointment.objects.all()
    if has_role(user, PRACTITIONER):
        practitioner = own_practitioner(user)
        if practitioner is not None:
            return Appointment.objects.filter(practitioner=practitioner)
    return Appointment.objects.none()


def practitioner_queryset_for(user: User | AnonymousUser) -> QuerySet[Practitioner]:
    if is_front_desk(user):
        return Practitioner.objects.all()
    practitioner = own_practitioner(user)
    if practitioner is not None:
        return Practitioner.objects.filter(pk=practitioner.pk)
    return Practitioner.objects.none()


def get_appointment_for(
    request: HttpRequest, pk: uuid.UUID | str, *, related: Iterable[str] = (), only: Iterable[str] | None = None
) -> Appointment:
    """The appointment if this user may open it; 404 otherwise (no existence oracle).

    The access filter is part of the query, so a refused row is never loaded, let alone decrypted.
    """
    require_agenda_role(request)
    qs = appointment_queryset_for(request.user)
    if related:
        qs = qs.select_related(*related)
    if only:
        qs = qs.only(*only)
    appointment = qs.filter(pk=pk).first()
    if appointment is None:
        raise Http404
    return appointment


def get_practitioner_for(request: HttpRequest, pk: int) -> Practitioner:
    """A practitioner whose agenda this user may see; 404 otherwise."""
    require_agenda_role(request)
    practitioner = practitioner_queryset_for(request.user).select_related("specialty").filter(pk=pk).first()
    if practitioner is None:
        raise Http404
    return practitioner


def allowed_statuses(user: User | AnonymousUser, appointment: Appointment) -> list[str]:
    """The statuses this user may set on this appointment now (the flow and their role)."""
    if is_front_desk(user):
        wanted = FRONT_DESK_STATUSES
    elif has_role(user, PRACTITIONER):
        wanted = PRACTITIONER_STATUSES
    else:
        return []
    return [s for s in AppointmentStatus.values if s in wanted and appointment.can_become(s)]
