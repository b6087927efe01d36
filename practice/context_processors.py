from practice.roles import FRONT_DESK_ROLES, PRACTICE_ADMIN, PRACTITIONER, role_of


def navigation(request) -> dict:
    """Which menu entries this user sees. Menus are a convenience: views check access themselves."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}}
    role = role_of(user)
    if not user.is_verified():
        return {"nav": {"role": role}}  # until the second factor: only the way out
    return {
        "nav": {
            "role": role,
            "patients": role in FRONT_DESK_ROLES or role == "superuser",
            "admin": role in (PRACTICE_ADMIN, "superuser") and user.is_staff,
            "practitioner": role == PRACTITIONER,
        }
    }
