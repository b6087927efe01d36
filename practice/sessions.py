"""Database sessions that record their user (SESSION_ENGINE = "practice.sessions").

Ending every session of a user ("log out everywhere", after a lost laptop or a departure)
is then one indexed DELETE instead of decoding the whole session table.
"""

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.db import DatabaseError, router, transaction


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

    def save(self, must_create=False):
        """As Django's, but an update outside a transaction is one UPDATE, without the
        BEGIN/COMMIT Django wraps around it: a single statement is atomic on its own, and
        SESSION_SAVE_EVERY_REQUEST makes every page pay those two round trips otherwise."""
        if must_create or self.session_key is None:
            return super().save(must_create=must_create)
        obj = self.create_model_instance(self._get_session())
        using = router.db_for_write(self.model, instance=obj)
        if transaction.get_connection(using).in_atomic_block:
            return super().save(must_create=False)
        try:
            obj.save(force_update=True, using=using)
        except DatabaseError as exc:
            raise UpdateError from exc


def sessions_end_for_user(user_id: int) -> int:
    """Delete every session of this user; their next request lands on the login page."""
    from practice.models import UserSession

    deleted, _ = UserSession.objects.filter(user_id=user_id).delete()
    return deleted
