"""Behind a proxy, the lockout and the trail agree on who the client is."""

from django.test import Client

from audit.models import AuditEvent, EventType
from config.testing import PASSWORD


def _login(client, username, password, client_ip):
    return client.post(
        "/accounts/login/",
        {"username": username, "password": password},
        REMOTE_ADDR="10.0.0.2",  # the proxy
        HTTP_X_FORWARDED_FOR=f"203.0.113.250, {client_ip}",
    )


def test_it_locks_out_the_attacker_not_everyone_behind_the_proxy(settings, secretary, practitioner):
    """The lock holds the username from the address the proxy names (a lockout holds a
    username and an address together), not from the proxy's own address."""
    settings.AUDIT_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    for _ in range(5):
        _login(Client(), secretary.username, "wrong", client_ip="198.51.100.66")
    assert _login(Client(), secretary.username, PASSWORD, client_ip="198.51.100.66").status_code == 429
    assert _login(Client(), secretary.username, PASSWORD, client_ip="192.0.2.20").status_code == 302
    assert _login(Client(), practitioner.username, PASSWORD, client_ip="192.0.2.20").status_code == 302
    failure = AuditEvent.objects.filter(event_type=EventType.LOGIN_FAILED).first()
    assert failure.ip == "198.51.100.66"


def test_it_ignores_the_header_without_a_configured_proxy(settings, secretary):
    settings.AUDIT_CLIENT_IP_HEADER = ""
    _login(Client(), secretary.username, PASSWORD, client_ip="198.51.100.1")
    assert AuditEvent.objects.get(event_type=EventType.LOGIN).ip == "10.0.0.2"
