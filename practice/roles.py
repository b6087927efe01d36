"""The clinic's roles, as groups with permissions defined in code (idempotent)."""

from typing import TypeGuard

from django.contrib.auth.models import AnonymousUser, Group, Permission, User
from django.utils.translation import gettext_lazy as _

SECRETARY = "Secretary"
PRACTITIONER = "Practitioner"
PRACTICE_ADMIN = "Practice admin"

ROLE_PERMISSIONS: dict[str, list[str]] = {
    SECRETARY: [
        "patients.view_patient",
        "patients.add_patient",
        "patients.change_patient",
        "patients.search_patient",
        "scheduling.view_appointment",
        "scheduling.add_appointment",
        "scheduling.change_appointment",
        "scheduling.view_appointmenttype",
        "scheduling.view_workinghours",
        "scheduling.view_absence",
    ],
    PRACTITIONER: [
        "patients.view_patient",
        # Their own appointments only: object access is decided in scheduling.access.
        "scheduling.view_appointment",
    ],
    PRACTICE_ADMIN: [
        "patients.view_patient",
        "patients.change_patient",
        "audit.view_auditevent",
        # Read budget blocks: see them and lift them with a reason (audited: audit.budget).
        "audit.view_readblock",
        "audit.change_readblock",
        # Break-the-glass grants: review them (each review is audited: patients.services).
        "patients.view_breakglassgrant",
        "patients.change_breakglassgrant",
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.view_group",
        # Login lockouts: see them and lift them (each lift is audited: practice.admin).
        "axes.view_accessattempt",
        "axes.delete_accessattempt",
        "axes.view_accessfailurelog",
        # The clinic's structure, in Django admin. Appointments are read-only there: they
        # change through scheduling.services, which audits every change.
        "practice.view_practitioner",
        "practice.add_practitioner",
        "practice.change_practitioner",
        "practice.view_clinic",
        "practice.add_clinic",
        "practice.change_clinic",
        "practice.view_specialty",
        "practice.add_specialty",
        "practice.change_specialty",
        "scheduling.view_appointmenttype",
        "scheduling.add_appointmenttype",
        "scheduling.change_appointmenttype",
        "scheduling.view_workinghours",
        "scheduling.add_workinghours",
        "scheduling.change_workinghours",
        "scheduling.view_absence",
        "scheduling.add_absence",
        "scheduling.change_absence",
        "scheduling.view_appointment",
    ],
}

ROLE_LABELS = {
    SECRETARY: _("Secretary"),
    PRACTITIONER: _("Practitioner"),
    PRACTICE_ADMIN: _("Practice admin"),
    "superuser": _("Superuser"),
    "system": _("System job"),
    "anonymous": _("Anonymous"),
    "none": _("No role"),
}

# Checked in this order: a user holding several roles is named by the strongest.
ROLE_ORDER = [PRACTICE_ADMIN, PRACTITIONER, SECRETARY]

# The front desk: the roles that see every agenda and every patient's administrative data,
# and book, move and cancel for any practitioner (never clinical content: docs/design.md, invariant 2).
FRONT_DESK_ROLES = frozenset({SECRETARY, PRACTICE_ADMIN})


def roles_sync() -> dict[str, Group]:
    """Create the groups and set exactly their permissions. Safe to run any number of times."""
    groups = {}
    for name, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=name)
        wanted = []
        for dotted in perms:
            app_label, codename = dotted.split(".")
            wanted.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(wanted)
        groups[name] = group
    return groups


def role_of(user) -> str:
    """The user's role name; cached on the user object for the request."""
    cached = getattr(user, "_cabinet_role", None)
    if cached is None:
        cached = _role_lookup(user)
        user._cabinet_role = cached
    return cached


def _role_lookup(user) -> str:
    if user.is_superuser:
        return "superuser"
    names = set(user.groups.values_list("name", flat=True))
    for role in ROLE_ORDER:
        if role in names:
            return role
    return "none"


def has_role(user: User | AnonymousUser, *roles: str) -> TypeGuard[User]:
    return user.is_authenticated and (user.is_superuser or role_of(user) in roles)


def is_front_desk(user: User | AnonymousUser) -> TypeGuard[User]:
    """Rule enforced here, and only here: the front desk is a secretary or a practice admin
    (``FRONT_DESK_ROLES``), or a superuser. Patients' lists and records, the day of every
    practitioner and booking are theirs; practitioners and accounts without a role are not."""
    return has_role(user, *FRONT_DESK_ROLES)


def role_label(role: str) -> str:
    """Group names are database keys; this is what people read."""
    return str(ROLE_LABELS.get(role, role))
