"""Sending SMS through a pluggable backend, like Django's e-mail backends.

``SMS_BACKEND`` names the class: ``practice.sms.ConsoleBackend`` (the default: prints),
``practice.sms.FileBackend`` (one file per message under ``SMS_FILE_PATH``),
``practice.sms.LocmemBackend`` (tests: ``practice.sms.outbox``) or a real provider's HTTP
adapter, ``practice.sms.BrevoBackend``. ``send()`` returns the provider's message id, which
the caller records with the message it claimed. Message bodies and phone numbers never go to
the logs or into exception messages: together they name a patient's appointment.
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


class SMSError(Exception):
    """Base of sending failures. ``transient`` failures are worth retrying later."""

    transient = False


class SMSTransientError(SMSError):
    """The provider could not be reached or asked us to slow down: retry with back-off."""

    transient = True


class SMSRejected(SMSError):
    """The provider refused this message (invalid number, no credit...): retrying won't help."""


@dataclass(frozen=True)
class SMS:
    to: str  # E.164
    body: str
    sender: str
    provider_id: str


class BaseBackend:
    def send(self, *, to: str, body: str, sender: str) -> str:
        raise NotImplementedError


class ConsoleBackend(BaseBackend):
    """Writes each message to stdout (the embedded default, like Django's console e-mail)."""

    stream = None

    def send(self, *, to: str, body: str, sender: str) -> str:
        provider_id = f"console-{uuid.uuid4()}"
        stream = self.stream or sys.stdout
        stream.write(f"SMS {provider_id}\nFrom: {sender}\nTo: {to}\n\n{body}\n{'-' * 72}\n")
        stream.flush()
        return provider_id


class FileBackend(BaseBackend):
    """One file per message in SMS_FILE_PATH (created if missing)."""

    def send(self, *, to: str, body: str, sender: str) -> str:
        provider_id = f"file-{uuid.uuid4()}"
        folder = Path(settings.SMS_FILE_PATH)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        path = folder / f"{stamp}-{provider_id}.txt"
        path.write_text(f"From: {sender}\nTo: {to}\n\n{body}\n", encoding="utf-8")
        path.chmod(0o600)
        return provider_id


outbox: list[SMS] = []


class LocmemBackend(BaseBackend):
    """Keeps messages in ``practice.sms.outbox`` (tests empty it between tests)."""

    def send(self, *, to: str, body: str, sender: str) -> str:
        provider_id = f"locmem-{len(outbox) + 1}"
        outbox.append(SMS(to=to, body=body, sender=sender, provider_id=provider_id))
        return provider_id


class BrevoBackend(BaseBackend):
    """Brevo's transactional SMS API (https://developers.brevo.com, "Send SMS message to a
    mobile number"): ``POST SMS_HTTP_URL`` (default ``https://api.brevo.com/v3/transactionalSMS/send``)
    with the ``api-key`` header and ``{sender, recipient, content, type: "transactional"}``;
    the answer is ``{"messageId": ...}``.

    Failures are classified for the caller: 429, 408 and 5xx, time-outs and connection errors
    are ``SMSTransientError`` (retry later); any other 4xx (bad number, no credit, bad key)
    is ``SMSRejected``. Neither message names the recipient or the text: the provider's error
    body may echo them, so only its status and short error code are kept.
    """

    transient_statuses = frozenset({408, 429})

    def __init__(self):
        self.api_key = settings.SMS_HTTP_API_KEY
        self.url = settings.SMS_HTTP_URL
        self.timeout = settings.SMS_HTTP_TIMEOUT
        if not self.api_key:
            raise ImproperlyConfigured("SMS_BACKEND is the Brevo adapter but SMS_HTTP_API_KEY is not set.")
        parts = urllib.parse.urlsplit(self.url)
        # The API key travels in a header: never in clear, except to this machine (tests, a local relay).
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ImproperlyConfigured("SMS_HTTP_URL must be an https:// URL.")

    def send(self, *, to: str, body: str, sender: str) -> str:
        payload = {
            "sender": sender,
            "recipient": to,
            "content": body,
            "type": "transactional",
            # Accented letters become their plain equivalents: 160 characters a message
            # instead of Unicode's 70, and a French reminder stays readable.
            "unicodeEnabled": False,
        }
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked in __init__)
            self.url,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={
                "api-key": self.api_key,
                "accept": "application/json",
                "content-type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = response.read()
        except urllib.error.HTTPError as exc:
            code = _error_code(exc)
            exc.close()
            if exc.code in self.transient_statuses or exc.code >= 500:
                raise SMSTransientError(f"Brevo answered HTTP {exc.code}{code}.") from None
            raise SMSRejected(f"Brevo refused the message: HTTP {exc.code}{code}.") from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SMSTransientError(f"Brevo could not be reached: {type(reason).__name__}.") from None
        try:
            message_id = json.loads(answer)["messageId"]
        except (ValueError, KeyError, TypeError):
            # Sent or not? The provider accepted the request; retrying could send it twice.
            logger.error("Brevo accepted an SMS but its answer has no messageId")
            raise SMSRejected("Brevo's answer has no messageId.") from None
        return str(message_id)


def _error_code(exc: urllib.error.HTTPError) -> str:
    """Brevo's short error code (``invalid_parameter``, ``not_enough_credits``...), never its message."""
    try:
        code = json.loads(exc.read(4096)).get("code", "")
    except (ValueError, AttributeError, OSError):
        return ""
    return f" ({code})" if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,40}", code) else ""


def get_backend(path: str | None = None) -> BaseBackend:
    return import_string(path or settings.SMS_BACKEND)()


def send(*, to: str, body: str, sender: str | None = None) -> str:
    """Send one SMS now; the provider's message id, or SMSTransientError / SMSRejected."""
    return get_backend().send(to=to, body=body, sender=sender or settings.SMS_SENDER)
