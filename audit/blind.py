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
    # Search tokens (patients/search.py, table patients_searchtoken): sized so that one search
    # meets about 2 unrelated rows at 1,000,000 patients, counting every lookup it makes
    # (bits = round(log2(entries of that kind x lookups per search / 2)), docs/security-model.md).
    "search_last": 19,  # ~1.05M entries (the compact name, and the name without particles), 1 lookup
    "search_prefix": 21,  # ~5.7M entries (prefixes of 3 to 8 letters), 1 lookup: 2.7
    "search_deletion": 26,  # 10-12.5M entries (the name and its one-letter deletions), ~10 lookups: 1.5-2
    "search_first": 19,  # ~1M entries; only ever looked up together with a last-name token
    "search_full": 19,  # ~1.05M entries (last name + first first-name), 1 lookup
    "search_phone_suffix": 21,  # ~3.75M entries (last 4, 5 and 6 digits of 1.25M phones), 1 lookup: 1.8
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
