"""The Brevo e-mail backend against a real local HTTP server answering like Brevo's
transactional e-mail API, and the idempotency of the file and locmem SMS backends."""

import threading
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, get_connection

from config.testing import BREVO_API_KEY, FakeBrevo
from practice import mail, sms

ADDRESS = "anne-marie.lefevre@example.fr"
BODY = "Rappel : rendez-vous demain à 9h00."


@pytest.fixture
def brevo(settings):
    server = FakeBrevo()
    server.answer = (201, {"messageId": "<202612030815.1234@smtp-relay.mailin.fr>"})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings.EMAIL_BACKEND = "practice.mail.BrevoEmailBackend"
    settings.EMAIL_HTTP_URL = server.url.replace("/v3/transactionalSMS/send", "/v3/smtp/email")
    settings.EMAIL_HTTP_API_KEY = BREVO_API_KEY
    settings.EMAIL_TIMEOUT = 5
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _message(key: str = "") -> EmailMessage:
    message = EmailMessage(
        subject="Votre rendez-vous",
        body=BODY,
        from_email="cabinet@lilas.example",
        to=[ADDRESS],
        reply_to=["accueil@lilas.example"],
    )
    if key:
        message.idempotency_key = key
    return message


def test_it_posts_brevos_json_with_the_idempotency_key_and_keeps_the_message_id(brevo):
    key = str(uuid.uuid4())
    message = _message(key)
    assert message.send() == 1
    [request] = brevo.requests
    assert request["path"] == "/v3/smtp/email"
    assert request["headers"]["api-key"] == BREVO_API_KEY
    assert request["json"] == {
        "sender": {"email": "cabinet@lilas.example"},
        "to": [{"email": ADDRESS}],
        "subject": "Votre rendez-vous",
        "textContent": BODY,
        "replyTo": {"email": "accueil@lilas.example"},
        "headers": {"idempotencyKey": key},
    }
    assert message.provider_id == "<202612030815.1234@smtp-relay.mailin.fr>"
    assert mail.supports_idempotency()


def test_without_a_key_it_sends_no_headers(brevo):
    _message().send()
    assert "headers" not in brevo.requests[0]["json"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, mail.EmailTransientError), (503, mail.EmailTransientError), (400, mail.EmailRejected)],
)
def test_it_classifies_failures_without_naming_the_recipient(brevo, status, error):
    brevo.answer = (status, {"code": "invalid_parameter", "message": f"{ADDRESS} {BODY}"})
    with pytest.raises(error) as raised:
        _message().send()
    assert ADDRESS not in str(raised.value)
    assert "rendez-vous" not in str(raised.value)
    assert f"HTTP {status}" in str(raised.value)


def test_a_transient_failure_is_an_oserror_like_smtps(brevo):
    """scheduling.tasks retries OSErrors (SMTP's connection errors are OSErrors too)."""
    assert issubclass(mail.EmailTransientError, OSError)


def test_it_needs_its_key_and_https(settings):
    settings.EMAIL_BACKEND = "practice.mail.BrevoEmailBackend"
    settings.EMAIL_HTTP_API_KEY = ""
    with pytest.raises(ImproperlyConfigured, match="EMAIL_HTTP_API_KEY"):
        get_connection()
    settings.EMAIL_HTTP_API_KEY = BREVO_API_KEY
    settings.EMAIL_HTTP_URL = "http://api.brevo.com/v3/smtp/email"
    with pytest.raises(ImproperlyConfigured, match="https"):
        get_connection()


def test_smtp_and_brevos_sms_api_take_no_idempotency_key(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.SMS_BACKEND = "practice.sms.BrevoBackend"
    assert not mail.supports_idempotency()
    assert not sms.supports_idempotency()


def test_the_file_sms_backend_writes_one_file_per_key(settings, tmp_path):
    settings.SMS_BACKEND = "practice.sms.FileBackend"
    settings.SMS_FILE_PATH = str(tmp_path)
    key = str(uuid.uuid4())
    first = sms.send(to="+33612345678", body="Rappel", idempotency_key=key)
    again = sms.send(to="+33612345678", body="Rappel", idempotency_key=key)
    other = sms.send(to="+33612345678", body="Rappel")
    assert first == again != other
    assert len(list(tmp_path.iterdir())) == 2


def test_the_locmem_sms_backend_keeps_one_message_per_key(settings):
    settings.SMS_BACKEND = "practice.sms.LocmemBackend"
    sms.outbox.clear()
    key = str(uuid.uuid4())
    ids = {sms.send(to="+33612345678", body="Rappel", idempotency_key=key) for _ in range(3)}
    assert len(ids) == 1
    assert len(sms.outbox) == 1
    sms.outbox.clear()
