"""Sending SMS through a pluggable backend, like Django's e-mail backends.

``SMS_BACKEND`` names the class: ``practice.sms.ConsoleBackend`` (the default: prints),
``practice.sms.FileBackend`` (one file per message under ``SMS_FILE_PATH``),
``practice.sms.LocmemBackend`` (tests: ``practice.sms.outbox``) or a real provider's HTTP
adapter. ``send()`` returns the provider's message id, which the caller records with the
message it claimed. Message bodies never go to the logs: they name a patient's appointment.
"""

from __future__ import annotations

import datetime
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string


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


def get_backend(path: str | None = None) -> BaseBackend:
    return import_string(path or settings.SMS_BACKEND)()


def send(*, to: str, body: str, sender: str | None = None) -> str:
    """Send one SMS now; the provider's message id, or SMSTransientError / SMSRejected."""
    return get_backend().send(to=to, body=body, sender=sender or settings.SMS_SENDER)
