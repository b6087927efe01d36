"""Blind indexes: searchable fingerprints of encrypted values.

HMAC-SHA256 under a per-index key derived with HKDF from BLIND_INDEX_KEY (never the
encryption key), over a normalized value, truncated to a few bits and stored as an
integer. What they leak (equality of normalized values, bucketed) is in docs/security-model.md.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import re
import unicodedata

import phonenumbers
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

# Bits kept per index, sized for about 1,000,000 patients with CipherSweet's planner as the
# reference (docs/security-model.md): between 2 and sqrt(rows) coincidences per index. At 19 bits a
# lookup meets about 1e6 / 2**19 = 1.9 unrelated rows, decrypted (audited) and discarded.
INDEX_BITS = {
    "last_name": 19,
    "full_name": 19,
    "birth_date": 16,
    "phone": 19,
    "email": 19,
}

_FOLD = re.compile(r"[\s\-\u2010-\u2015'\u2019.]+")


def normalize_name(value: str) -> str:
    """NFKD, accents stripped, casefolded, spaces, hyphens and apostrophes folded."""
    decomposed = unicodedata.normalize("NFKD", value or "")
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _FOLD.sub(" ", stripped.casefold()).strip()


def normalize_phone(value: str, region: str | None = None) -> str:
    """E.164, or '' for something that is not a phone number."""
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, region or settings.PHONENUMBER_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_possible_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    return (value or "").strip().casefold()


def normalize_date(value: datetime.date | None) -> str:
    return value.isoformat() if value else ""


@functools.lru_cache(maxsize=32)
def _index_key(master: bytes, name: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"cabinet blind index v1:" + name.encode()
    ).derive(master)


def blind_index(name: str, normalized: str) -> int | None:
    """The truncated HMAC of a normalized value, or None for an empty value (not indexed)."""
    if not normalized:
        return None
    key = _index_key(bytes(settings.BLIND_INDEX_KEY), name)
    digest = hmac.new(key, normalized.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big") >> (32 - INDEX_BITS[name])


def key_fingerprint() -> str:
    """Identifies the blind-index key and the index sizes without revealing the key:
    a change of either makes stored indexes stale."""
    sizes = ",".join(f"{name}={bits}" for name, bits in sorted(INDEX_BITS.items()))
    message = b"cabinet blind index fingerprint:" + sizes.encode()
    return hmac.new(bytes(settings.BLIND_INDEX_KEY), message, hashlib.sha256).hexdigest()[:16]
