"""SMS backends: console, file, locmem, and the Brevo adapter against a real local HTTP server
that answers like Brevo (success, refusals, throttling, errors, silence)."""

import io
import logging
import socket
import stat
import threading
import time

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from config.testing import BREVO_API_KEY, FakeBrevo
from practice import sms

NUMBER = "+33612345678"
BODY = "Rappel : rendez-vous demain à 9h00 avec le Dr Martin."


@pytest.fixture
def brevo(settings):
    server = FakeBrevo()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings.SMS_BACKEND = "practice.sms.BrevoBackend"
    settings.SMS_HTTP_URL = server.url
    settings.SMS_HTTP_API_KEY = BREVO_API_KEY
    settings.SMS_HTTP_TIMEOUT = 5
    settings.SMS_SENDER = "CabinetLilas"[:11]
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def assert_no_patient_data(*texts: str) -> None:
    for text in texts:
        assert NUMBER not in text
        assert NUMBER.lstrip("+") not in text
        assert "rendez-vous" not in text


def test_it_posts_brevos_json_with_the_api_key_and_returns_the_message_id(brevo):
    assert sms.send(to=NUMBER, body=BODY) == "1511882900176220"

    [request] = brevo.requests
    assert request["path"] == "/v3/transactionalSMS/send"
    assert request["headers"]["api-key"] == BREVO_API_KEY
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["accept"] == "application/json"
    assert request["json"] == {
        "sender": "CabinetLila",
        "recipient": NUMBER,
        "content": BODY,
        "type": "transactional",
        "unicodeEnabled": False,
    }


def test_it_sends_from_the_sender_it_is_given(brevo):
    sms.send(to=NUMBER, body=BODY, sender="DrMartin")
    assert brevo.requests[0]["json"]["sender"] == "DrMartin"


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_parameter"), (401, "unauthorized"), (402, "not_enough_credits"), (404, "document_not_found")],
)
def test_it_reports_a_refusal_without_the_number_or_the_text(brevo, caplog, status, code):
    # Brevo's messages may quote the request: they must not reach our exception or logs.
    brevo.answer = (status, {"code": code, "message": f"Invalid recipient {NUMBER}: {BODY}"})
    caplog.set_level(logging.DEBUG)

    with pytest.raises(sms.SMSRejected) as raised:
        sms.send(to=NUMBER, body=BODY)

    assert not raised.value.transient
    assert str(raised.value) == f"Brevo refused the message: HTTP {status} ({code})."
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert_no_patient_data(str(raised.value), caplog.text)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_it_reports_throttling_and_server_errors_as_worth_retrying(brevo, caplog, status):
    brevo.answer = (status, {"code": "internal_error", "message": f"Could not send to {NUMBER}"})
    caplog.set_level(logging.DEBUG)

    with pytest.raises(sms.SMSTransientError) as raised:
        sms.send(to=NUMBER, body=BODY)

    assert raised.value.transient
    assert f"HTTP {status}" in str(raised.value)
    assert_no_patient_data(str(raised.value), caplog.text)


def test_it_ignores_an_error_code_that_is_not_a_short_identifier(brevo):
    brevo.answer = (400, {"code": f"bad recipient {NUMBER}", "message": "x"})
    with pytest.raises(sms.SMSRejected) as raised:
        sms.send(to=NUMBER, body=BODY)
    assert str(raised.value) == "Brevo refused the message: HTTP 400."


def test_it_gives_up_on_a_silent_provider_after_the_timeout(brevo, settings, caplog):
    settings.SMS_HTTP_TIMEOUT = 0.5
    brevo.answer = ("slow", 10)
    caplog.set_level(logging.DEBUG)

    started = time.monotonic()
    with pytest.raises(sms.SMSTransientError) as raised:
        sms.send(to=NUMBER, body=BODY)

    assert time.monotonic() - started < 3
    assert str(raised.value) == "Brevo could not be reached: TimeoutError."
    assert len(brevo.requests) == 1
    assert_no_patient_data(str(raised.value), caplog.text)


def test_it_reports_a_refused_connection_as_worth_retrying(brevo, settings):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.SMS_HTTP_URL = f"http://127.0.0.1:{port}/v3/transactionalSMS/send"

    with pytest.raises(sms.SMSTransientError) as raised:
        sms.send(to=NUMBER, body=BODY)

    assert str(raised.value) == "Brevo could not be reached: ConnectionRefusedError."


def test_it_does_not_retry_an_accepted_message_whose_answer_it_cannot_read(brevo, caplog):
    # Retrying could send the reminder twice: the provider took the request.
    brevo.answer = (201, {"reference": "abc"})
    with pytest.raises(sms.SMSRejected):
        sms.send(to=NUMBER, body=BODY)
    assert "no messageId" in caplog.text
    assert_no_patient_data(caplog.text)


def test_it_refuses_to_start_without_an_api_key(brevo, settings):
    settings.SMS_HTTP_API_KEY = ""
    with pytest.raises(ImproperlyConfigured, match="SMS_HTTP_API_KEY"):
        sms.send(to=NUMBER, body=BODY)
    assert brevo.requests == []


def test_it_refuses_to_send_the_api_key_in_clear_to_another_host(brevo, settings):
    settings.SMS_HTTP_URL = "http://api.brevo.com/v3/transactionalSMS/send"
    with pytest.raises(ImproperlyConfigured, match="https"):
        sms.send(to=NUMBER, body=BODY)


def test_it_defaults_to_brevos_endpoint():
    assert django_settings.SMS_HTTP_URL == "https://api.brevo.com/v3/transactionalSMS/send"


def test_it_prints_to_the_console_by_default(settings, monkeypatch):
    settings.SMS_BACKEND = "practice.sms.ConsoleBackend"
    stream = io.StringIO()
    monkeypatch.setattr(sms.ConsoleBackend, "stream", stream)

    provider_id = sms.send(to=NUMBER, body=BODY, sender="Cabinet")

    assert provider_id.startswith("console-")
    printed = stream.getvalue()
    assert f"SMS {provider_id}\nFrom: Cabinet\nTo: {NUMBER}\n\n{BODY}\n" in printed


def test_it_writes_one_private_file_per_message(settings, tmp_path):
    settings.SMS_BACKEND = "practice.sms.FileBackend"
    settings.SMS_FILE_PATH = str(tmp_path / "sms")

    first = sms.send(to=NUMBER, body=BODY, sender="Cabinet")
    second = sms.send(to="+33698765432", body="Autre message", sender="Cabinet")

    files = sorted((tmp_path / "sms").iterdir())
    assert len(files) == 2
    assert first != second
    [mine] = [f for f in files if first in f.name]
    assert mine.read_text(encoding="utf-8") == f"From: Cabinet\nTo: {NUMBER}\n\n{BODY}\n"
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600


def test_it_keeps_messages_in_the_outbox_in_memory(settings, monkeypatch):
    settings.SMS_BACKEND = "practice.sms.LocmemBackend"
    settings.SMS_SENDER = "Cabinet"
    monkeypatch.setattr(sms, "outbox", [])

    ids = [sms.send(to=NUMBER, body=BODY), sms.send(to=NUMBER, body="Deux")]

    assert len(set(ids)) == 2
    assert sms.outbox == [
        sms.SMS(to=NUMBER, body=BODY, sender="Cabinet", provider_id=ids[0]),
        sms.SMS(to=NUMBER, body="Deux", sender="Cabinet", provider_id=ids[1]),
    ]
