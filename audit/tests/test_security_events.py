"""Logins, failures, lockouts and logouts are in the same trail as reads and writes."""

from django.test import Client

from audit.models import AuditEvent, EventType
from config.testing import PASSWORD


def _login(client, username, password):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR="198.51.100.7")


def test_it_records_a_login_and_a_logout(secretary):
    client = Client()
    assert _login(client, secretary.username, PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    login = AuditEvent.objects.get(event_type=EventType.LOGIN)
    assert login.actor_user_id == secretary.pk
    assert login.actor_role == "Secretary"
    assert login.ip == "198.51.100.7"
    assert AuditEvent.objects.filter(event_type=EventType.LOGOUT, actor_user_id=secretary.pk).exists()


def test_it_records_failures_then_the_lockout_without_the_password(secretary):
    client = Client()
    for _ in range(5):
        _login(client, secretary.username, "wrong password")
    response = _login(client, secretary.username, PASSWORD)
    assert response.status_code == 429
    failures = AuditEvent.objects.filter(event_type=EventType.LOGIN_FAILED)
    assert failures.count() >= 5
    assert failures.first().extra["username"] == secretary.username
    assert AuditEvent.objects.filter(event_type=EventType.LOCKOUT).exists()
    assert not AuditEvent.objects.filter(event_type=EventType.LOGIN).exists()
    assert all("wrong password" not in str(e.extra) for e in AuditEvent.objects.all())
