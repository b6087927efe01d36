"""Brevo's HTTP API (https://developers.brevo.com), shared by the SMS and e-mail adapters.

One POST of JSON with the ``api-key`` header, bounded by a timeout. Failures are classified
for the caller: 429, 408 and 5xx, time-outs and connection errors are ``BrevoTransient``
(retry later); any other 4xx (bad number or address, no credit, bad key) is
``BrevoRejected``. Neither message names the recipient or the text: Brevo's error body may
echo them, so only its status and short error code are kept.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from django.core.exceptions import ImproperlyConfigured

TRANSIENT_STATUSES = frozenset({408, 429})


class BrevoError(Exception):
    pass


class BrevoTransient(BrevoError):
    """Brevo could not be reached or asked us to slow down: worth retrying."""


class BrevoRejected(BrevoError):
    """Brevo refused the request: retrying will not help."""


def url_check(url: str, setting: str) -> None:
    """The API key travels in a header: never in clear, except to this machine (tests, a relay)."""
    parts = urllib.parse.urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ImproperlyConfigured(f"{setting} must be an https:// URL.")


def post(*, url: str, api_key: str, payload: dict, timeout: float) -> dict:
    """POST ``payload``; Brevo's JSON answer, or BrevoTransient / BrevoRejected."""
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked by url_check)
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"api-key": api_key, "accept": "application/json", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = response.read()
    except urllib.error.HTTPError as exc:
        code = _error_code(exc)
        exc.close()
        if exc.code in TRANSIENT_STATUSES or exc.code >= 500:
            raise BrevoTransient(f"Brevo answered HTTP {exc.code}{code}.") from None
        raise BrevoRejected(f"Brevo refused the message: HTTP {exc.code}{code}.") from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BrevoTransient(f"Brevo could not be reached: {type(reason).__name__}.") from None
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


def _error_code(exc: urllib.error.HTTPError) -> str:
    """Brevo's short error code (``invalid_parameter``, ``not_enough_credits``...), never its message."""
    try:
        code = json.loads(exc.read(4096)).get("code", "")
    except (ValueError, AttributeError, OSError):
        return ""
    return f" ({code})" if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,40}", code) else ""
