"""Database sessions that record their user (SESSION_ENGINE = "practice.sessions").

Ending every session of a user ("log out everywhere", after a lost laptop or a departure)
is then one indexed DELETE instead of decoding the whole session table.
"""

from practice.models import SessionStore as SessionStore  # the engine's store (models.py: beside its model)
from practice.models import UserSession


def sessions_end_for_user(user_id: int) -> int:
    """Delete every session of this user; their next request lands on the login page."""
    deleted, _ = UserSession.objects.filter(user_id=user_id).delete()
    return deleted
