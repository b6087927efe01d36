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
import logging
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from practice import brevo

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
    idempotency_key: str = ""


class BaseBackend:
    """``send`` returns the provider's message id. A backend with ``supports_idempotency``
    sends a message once per ``idempotency_key``: a repeat returns the first message's id
    and sends nothing (the way a provider's idempotency key works)."""

    supports_idempotency = False

    def send(self, *, to: str, body: str, sender: str, idempotency_key: str = "") -> str:
        raise NotImplementedError


class ConsoleBackend(BaseBackend):
    """Writes each message to stdout (the embedded default, like Django's console e-mail)."""

    stream = None

    def send(self, *, to: str, body: str, sender: str, idempotency_key: str = "") -> str:
        provider_id = f"console-{uuid.uuid4()}"
        stream = self.stream or sys.stdout
        stream.write(f"SMS {provider_id}\nFrom: {sender}\nTo: {to}\n\n{body}\n{'-' * 72}\n")
        stream.flush()
        return provider_id


class FileBackend(BaseBackend):
    """One file per message in SMS_FILE_PATH (created if missing). With an idempotency key
    the file is named after it, and a repeat of the key writes nothing."""

    supports_idempotency = True

    def send(self, *, to: str, body: str, sender: str, idempotency_key: str = "") -> str:
        folder = Path(settings.SMS_FILE_PATH)
        folder.mkdir(parents=True, exist_ok=True)
        if idempotency_key:
            provider_id = f"file-{uuid.UUID(idempotency_key)}"  # a UUID: nothing else reaches a file name
            path = folder / f"{provider_id}.txt"
        else:
            provider_id = f"file-{uuid.uuid4()}"
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
            path = folder / f"{stamp}-{provider_id}.txt"
        try:
            # Exclusive creation: of two sends of one key, only the first writes.
            with open(path, "x", encoding="utf-8") as file:
                file.write(f"From: {sender}\nTo: {to}\n\n{body}\n")
        except FileExistsError:
            return provider_id
        path.chmod(0o600)
        return provider_id


outbox: list[SMS] = []


class LocmemBackend(BaseBackend):
    """Keeps messages in ``practice.sms.outbox`` (tests empty it between tests)."""

    supports_idempotency = True

    def send(self, *, to: str, body: str, sender: str, idempotency_key: str = "") -> str:
        for message in outbox:
            if idempotency_key and message.idempotency_key == idempotency_key:
                return message.provider_id
        provider_id = f"locmem-{len(outbox) + 1}"
        outbox.append(SMS(to=to, body=body, sender=sender, provider_id=provider_id, idempotency_key=idempotency_key))
        return provider_id


class BrevoBackend(BaseBackend):
    """Brevo's transactional SMS API (https://developers.brevo.com, "Send SMS message to a
    mobile number"): ``POST SMS_HTTP_URL`` (default ``https://api.brevo.com/v3/transactionalSMS/send``)
    with the ``api-key`` header and ``{sender, recipient, content, type: "transactional"}``;
    the answer is ``{"messageId": ...}``. Failures are classified by practice.brevo.

    Brevo documents no idempotency key for SMS: a message whose sending was interrupted is
    not sent again (see scheduling.tasks).
    """

    def __init__(self):
        self.api_key = settings.SMS_HTTP_API_KEY
        self.url = settings.SMS_HTTP_URL
        self.timeout = settings.SMS_HTTP_TIMEOUT
        if not self.api_key:
            raise ImproperlyConfigured("SMS_BACKEND is the Brevo adapter but SMS_HTTP_API_KEY is not set.")
        brevo.url_check(self.url, "SMS_HTTP_URL")

    def send(self, *, to: str, body: str, sender: str, idempotency_key: str = "") -> str:
        payload = {
            "sender": sender,
            "recipient": to,
            "content": body,
            "type": "transactional",
            # Accented letters become their plain equivalents: 160 characters a message
            # instead of Unicode's 70, and a French reminder stays readable.
            "unicodeEnabled": False,
        }
        try:
            answer = brevo.post(url=self.url, api_key=self.api_key, payload=payload, timeout=self.timeout)
        except brevo.BrevoTransient as exc:
            raise SMSTransientError(str(exc)) from None
        except brevo.BrevoRejected as exc:
            raise SMSRejected(str(exc)) from None
        message_id = answer.get("messageId")
        if message_id in (None, ""):
            # Sent or not? The provider accepted the request; retrying could send it twice.
            logger.error("Brevo accepted an SMS but its answer has no messageId")
            raise SMSRejected("Brevo's answer has no messageId.")
        return str(message_id)


def get_backend(path: str | None = None) -> BaseBackend:
    return import_string(path or settings.SMS_BACKEND)()


def send(*, to: str, body: str, sender: str | None = None, idempotency_key: str = "") -> str:
    """Send one SMS now; the provider's message id, or SMSTransientError / SMSRejected."""
    return get_backend().send(to=to, body=body, sender=sender or settings.SMS_SENDER, idempotency_key=idempotency_key)


def supports_idempotency() -> bool:
    """Does the configured backend send a message once per idempotency key?"""
    return import_string(settings.SMS_BACKEND).supports_idempotency
