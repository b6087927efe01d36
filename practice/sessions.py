"""Database sessions that record their user (SESSION_ENGINE = "practice.sessions").

Ending every session of a user ("log out everywhere", after a lost laptop or a departure)
is then one indexed DELETE instead of decoding the whole session table.
"""

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore


class SessionStore(DbSessionStore):
    @classmethod
    def get_model_class(cls):
        from practice.models import UserSession

        return UserSession

    def create_model_instance(self, data):
        instance = super().create_model_instance(data)
        user_id = data.get(SESSION_KEY)
        instance.user_id = int(user_id) if user_id is not None and str(user_id).isdigit() else None
        return instance


def sessions_end_for_user(user_id: int) -> int:
    """Delete every session of this user; their next request lands on the login page."""
    from practice.models import UserSession

    deleted, _ = UserSession.objects.filter(user_id=user_id).delete()
    return deleted
