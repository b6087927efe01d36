"""The key canary: proof at start-up that the configured keys read what is stored."""

from __future__ import annotations

import hashlib
import sys

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.db import DatabaseError, connection

from audit import blind
from audit.fields import crypter
from audit.models import KeyCanary

CANARY_TEXT = b"cabinet key canary v1"


def field_key_fingerprint() -> str:
    """Identifies the encrypting (first) key without revealing it."""
    return hashlib.sha256(b"cabinet field key:" + settings.FIELD_ENCRYPTION_KEY[0].encode()).hexdigest()[:16]


def canary_write(*, field_key: bool = True, blind_index_key: bool = True) -> None:
    """Vouch for the keys a job has actually applied to the data, and only those.

    A field-key rotation re-seals the canary; a blind-index rebuild records the new index
    key's fingerprint. Neither vouches for the other's key.
    """
    canary = KeyCanary.objects.filter(pk=1).first()
    if canary is None:
        canary, field_key, blind_index_key = KeyCanary(pk=1), True, True
    if field_key:
        canary.token = crypter().encrypt(CANARY_TEXT).decode()
    if blind_index_key:
        canary.blind_index_fingerprint = blind.key_fingerprint()
    canary.save()


def canary_problem() -> str | None:
    """Why the configured keys cannot be trusted with this database, or None."""
    try:
        if KeyCanary._meta.db_table not in connection.introspection.table_names():
            return None  # not migrated yet: nothing stored to protect
    except DatabaseError as exc:
        return f"The database cannot be reached to check the keys: {exc.__class__.__name__}."
    canary = KeyCanary.objects.filter(pk=1).first()
    if canary is None:
        return None
    try:
        ok = crypter().decrypt(canary.token.encode()) == CANARY_TEXT
    except InvalidToken:
        ok = False
    if not ok:
        return (
            "FIELD_ENCRYPTION_KEY cannot decrypt the data in this database (the key canary does not "
            "decrypt). Deploy the keys this database was encrypted with; during a rotation list the "
            "new key first and keep the old ones after it."
        )
    if canary.blind_index_fingerprint != blind.key_fingerprint():
        return (
            "BLIND_INDEX_KEY (or the index sizes in audit/blind.py) differ from those that built the "
            "search indexes: searches would find nothing. Restore the previous key, or run "
            "`manage.py rotate_keys --blind-index` to rebuild."
        )
    return None


def verify_keys_or_exit() -> None:
    problem = canary_problem()
    if problem:
        sys.stderr.write(f"Cabinet refuses to start: {problem}\n")
        raise SystemExit(3)
