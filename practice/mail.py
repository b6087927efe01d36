"""Brevo's transactional e-mail API as a Django e-mail backend, with its idempotency key.

``EMAIL_BACKEND = "practice.mail.BrevoEmailBackend"`` sends through
``POST EMAIL_HTTP_URL`` (default ``https://api.brevo.com/v3/smtp/email``) instead of SMTP.
Why: Brevo drops a repeated ``idempotencyKey`` (a UUID, in the payload's ``headers``;
kept 15 to 30 minutes by their documentation), so a reminder whose sending a dead worker
left unfinished can be sent again without reaching the patient twice (scheduling.tasks).
SMTP has no such key: over SMTP such a reminder is not sent again.

A message carries its key as ``message.idempotency_key`` (an attribute, never a header
that would travel with the mail); Brevo's message id is left in ``message.provider_id``.
Failures raise ``EmailTransientError`` (retry later) or ``EmailRejected``, whose messages
name neither the recipient nor the text.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.base import BaseEmailBackend
from django.utils.module_loading import import_string

from practice import brevo


class EmailTransientError(OSError):
    """The provider could not be reached or asked us to slow down (an OSError, like SMTP's)."""


class EmailRejected(Exception):
    """The provider refused this message for good."""


def supports_idempotency() -> bool:
    """Does the configured e-mail backend send a message once per idempotency key?"""
    return getattr(import_string(settings.EMAIL_BACKEND), "supports_idempotency", False)


class BrevoEmailBackend(BaseEmailBackend):
    supports_idempotency = True

    def __init__(self, fail_silently: bool = False, **kwargs):
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.api_key = settings.EMAIL_HTTP_API_KEY
        self.url = settings.EMAIL_HTTP_URL
        self.timeout = settings.EMAIL_TIMEOUT
        if not self.api_key:
            raise ImproperlyConfigured("EMAIL_BACKEND is the Brevo adapter but EMAIL_HTTP_API_KEY is not set.")
        brevo.url_check(self.url, "EMAIL_HTTP_URL")

    def send_messages(self, email_messages) -> int:
        sent = 0
        for message in email_messages:
            try:
                self._send(message)
            except (EmailTransientError, EmailRejected):
                if not self.fail_silently:
                    raise
            else:
                sent += 1
        return sent

    def _send(self, message) -> None:
        payload = {
            "sender": {"email": message.from_email},
            "to": [{"email": address} for address in message.to],
            "subject": message.subject,
            "textContent": message.body,
        }
        if message.cc:
            payload["cc"] = [{"email": address} for address in message.cc]
        if message.bcc:
            payload["bcc"] = [{"email": address} for address in message.bcc]
        if message.reply_to:
            payload["replyTo"] = {"email": message.reply_to[0]}
        key = getattr(message, "idempotency_key", "")
        if key:
            payload["headers"] = {"idempotencyKey": str(key)}
        try:
            answer = brevo.post(url=self.url, api_key=self.api_key, payload=payload, timeout=self.timeout)
        except brevo.BrevoTransient as exc:
            raise EmailTransientError(str(exc)) from None
        except brevo.BrevoRejected as exc:
            raise EmailRejected(str(exc)) from None
        message.provider_id = str(answer.get("messageId") or "")
