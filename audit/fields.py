"""Encrypted model fields: our wrapper around django-encrypted-model-fields.

Rules enforced here (docs/design.md, invariant 1):

- Values are Fernet tokens (MultiFernet over ``FIELD_ENCRYPTION_KEY``: the first key
  encrypts, all decrypt), read from settings when used, never at import time.
- A token is bound to its row and column: the sealed payload starts with a digest of the
  model label, field name and primary key, and decryption refuses a token whose binding differs
  (a value copied into another patient's row is refused, not shown).
- Loading a row does not decrypt it. The column value stays a ``Sealed`` token until the
  attribute is read on a model instance; that read decrypts, inside an audit context only,
  and records (model, pk, patient, field) in the context's buffer; before decrypting, it asks
  the context to admit the patient under the account's read budget (``audit.budget``). Paths that bypass model
  instances (``values()``, ``values_list()``) get ``Sealed`` objects that refuse to become
  text, and ``EncryptedQuerySet`` refuses them up front.
- A token that does not decrypt is an error, loudly (the upstream library passes silently
  on ``InvalidToken`` and would re-encrypt the token as if it were plaintext: we don't).
- Filtering on an encrypted column raises: comparing ciphertexts is always wrong. Search
  goes through blind indexes (``audit.blind``).
- Writes go through ``Model.save()`` (which knows the row): ``update()`` and ``bulk_update()``
  with plaintext raise.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import encrypted_model_fields.fields as upstream
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, FieldError, ImproperlyConfigured
from django.db import DatabaseError, models, transaction
from django.db.models.query import ModelIterable
from django.db.models.query_utils import DeferredAttribute

from audit import current as active
from audit.models import EventType
from audit.services import audit_event_write

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Field, ForeignObjectRel
    from django.db.models.expressions import Combinable
    from django.db.models.lookups import Lookup, Transform


logger = logging.getLogger("audit.crypto")

# Sealed payload: version byte, 16 bytes of SHA-256 over "model|field|pk", then the value.
# The digest sits inside the authenticated ciphertext, so it cannot be forged or moved;
# a digest rather than the names keeps each token about 60 characters shorter.
_VERSION = b"\x02"
_BINDING_LEN = 1 + 16


class CiphertextError(Exception):
    """A stored value does not decrypt, or is bound to another row or column."""


class EncryptedLookupError(FieldError):
    """Filtering on an encrypted column would silently compare ciphertexts."""


class PlaintextRefused(TypeError):
    """A path tried to turn ciphertext into text without going through an audited read."""


class Sealed:
    """A token as loaded from the database: not decrypted, and it never becomes text."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return "<Sealed>"

    def __str__(self) -> str:
        raise PlaintextRefused(
            "This encrypted value was loaded without a model instance (values()/values_list()?). "
            "Load model instances so the read is audited."
        )

    __format__ = lambda self, spec: self.__str__()  # noqa: E731

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.token == self.token

    # Unhashable: a class that defines __eq__ and not __hash__ gets __hash__ = None from Python.


class Ciphertext(str):
    """A token ready to be written: passes through get_db_prep_save untouched."""


@functools.lru_cache(maxsize=8)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEY holds no key.")
    return MultiFernet([Fernet(k) for k in keys])


def crypter() -> MultiFernet:
    return _multifernet(tuple(settings.FIELD_ENCRYPTION_KEY))


def binding(model_label: str, field_name: str, pk: object) -> bytes:
    if pk is None:
        raise ImproperlyConfigured(
            f"{model_label}.{field_name}: encrypted models need a primary key known before insert (UUID)."
        )
    where = f"{model_label}\x1f{field_name}\x1f{pk}".encode()
    return _VERSION + hashlib.sha256(where).digest()[:16]


def seal(plaintext: str, bound_to: bytes) -> Ciphertext:
    return Ciphertext(crypter().encrypt(bound_to + plaintext.encode()).decode())


def unseal(token: str, bound_to: bytes, *, where: str | Callable[[], str]) -> str:
    """Decrypt a token and check it belongs where it was found. Never returns a wrong value.

    `where` names the place in errors and logs: a string, or a callable that makes one, so
    that the hot path builds the name only when something is refused.
    """
    try:
        payload = crypter().decrypt(token.encode())
    except (InvalidToken, UnicodeError, ValueError):
        problem = "does not decrypt with the configured keys"
    else:
        if hmac.compare_digest(payload[:_BINDING_LEN], bound_to):
            try:
                return payload[_BINDING_LEN:].decode()
            except UnicodeError:
                problem = "is not valid text"
        else:
            problem = "belongs to another row or column"
    place = where() if callable(where) else where
    logger.error("Refused the value stored at %s: it %s", place, problem)
    raise CiphertextError(f"The value stored at {place} {problem}.")


def rotate_token(token: str) -> Ciphertext:
    """Re-encrypt a token under the first key without the plaintext leaving the crypter."""
    return Ciphertext(crypter().rotate(token.encode()).decode())


# Set while Model.refresh_from_db() copies values from a fresh instance with getattr():
# the copy moves sealed tokens, it does not read them (see EncryptedModel.refresh_from_db).
_copying_sealed = contextvars.ContextVar("copying_sealed", default=False)


@contextlib.contextmanager
def copying_sealed() -> Iterator[None]:
    token = _copying_sealed.set(True)
    try:
        yield
    finally:
        _copying_sealed.reset(token)


class AuditedAttribute(DeferredAttribute):
    """Decrypts on first read of the attribute, records the read, then caches the plaintext.

    A data descriptor (it defines __set__), so that reads go through __get__ even when the
    value sits in the instance __dict__, where Django's loaders put it.
    """

    def __set__(self, instance: EncryptedModel, value: object) -> None:
        instance.__dict__[self.field.attname] = value

    # Narrower than DeferredAttribute's Model: encrypted fields live on EncryptedModel only.
    def __get__(  # type: ignore[override]
        self, instance: EncryptedModel | None, cls: type[EncryptedModel] | None = None
    ) -> Any:
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if isinstance(value, Sealed) and not _copying_sealed.get():
            # Only EncryptedMixin fields have this descriptor class.
            value = cast("EncryptedMixin", self.field).decrypt_for(instance, value)
            instance.__dict__[self.field.attname] = value
        return value


class EncryptedMixin(upstream.EncryptedMixin):
    descriptor_class: type = AuditedAttribute

    def from_db_value(self, value: str | None, expression: object, connection: BaseDatabaseWrapper) -> Sealed | None:
        if value is None:
            return None
        return Sealed(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, Sealed):
            return value
        # Skip upstream's to_python: it tries to decrypt anything and swallows failures.
        return super(upstream.EncryptedMixin, self).to_python(value)

    # Narrower than Field's Model: encrypted fields live on EncryptedModel only.
    def pre_save(self, model_instance: EncryptedModel, add: bool) -> Ciphertext | None:  # type: ignore[override]
        raw = model_instance.__dict__.get(self.attname)
        if isinstance(raw, Sealed):
            # Unchanged since load: keep the stored token, no decryption needed.
            return Ciphertext(raw.token)
        value = super().pre_save(model_instance, add)
        if value is None:
            return None
        return seal(self.plain_text(value), self.bound_to(model_instance))

    def get_db_prep_save(self, value: Any, connection: BaseDatabaseWrapper) -> str | None:
        if value is None or isinstance(value, Ciphertext):
            return None if value is None else str(value)
        raise PlaintextRefused(
            f"{self.model._meta.label}.{self.name}: encrypted values are written through "
            "Model.save(), which binds them to their row; update()/bulk_update() cannot."
        )

    def get_lookup(self, lookup_name: str) -> type[Lookup[Any]] | None:
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)
        raise EncryptedLookupError(
            f"{self.model._meta.label}.{self.name} is encrypted: `{lookup_name}` would compare "
            "ciphertexts. Search through its blind index instead."
        )

    def get_transform(self, lookup_name: str) -> type[Transform] | None:
        raise EncryptedLookupError(f"{self.model._meta.label}.{self.name} is encrypted: no `{lookup_name}`.")

    @property
    def label(self) -> str:
        return f"{self.model._meta.label}.{self.name}"

    def bound_to(self, instance: EncryptedModel) -> bytes:
        return binding(self.model._meta.label, self.name, instance.pk)

    def plain_text(self, value: object) -> str:
        return str(value)

    def plain_value(self, text: str) -> Any:
        return text

    def decrypt_for(self, instance: EncryptedModel, sealed: Sealed) -> Any:
        """The one place a stored value becomes plaintext: audited or refused."""
        ctx = active.require()
        pk = instance.pk
        patient_id = instance.audit_patient_id()
        ctx.admit(patient_id)  # the read budget (audit.budget): refused before anything is decrypted
        try:
            token = unseal(sealed.token, self.bound_to(instance), where=lambda: f"{self.label} pk={pk}")
            plaintext = self.plain_value(token)
        except CiphertextError:
            self._record_refusal(instance)
            raise
        ctx.record_read(
            model_label=self.model._meta.label,
            object_pk=pk,
            patient_id=patient_id,
            field_name=self.name,
        )
        return plaintext

    def _record_refusal(self, instance: EncryptedModel) -> None:
        """Put the refusal in the trail (never the value). The error itself still propagates."""

        try:
            with transaction.atomic():
                audit_event_write(
                    event_type=EventType.CIPHERTEXT_REFUSED,
                    patient_id=instance.audit_patient_id(),
                    model_label=self.model._meta.label,
                    object_pk=instance.pk,
                    fields=[self.name],
                )
        except DatabaseError:
            logger.exception("Could not record a refused value in the audit trail")


class EncryptedCharField(EncryptedMixin, upstream.EncryptedCharField):
    pass


class EncryptedTextField(EncryptedMixin, upstream.EncryptedTextField):
    pass


class EncryptedEmailField(EncryptedMixin, upstream.EncryptedEmailField):
    pass


class EncryptedDateField(EncryptedMixin, upstream.EncryptedDateField):
    def plain_text(self, value: object) -> str:
        if isinstance(value, datetime.date):
            return value.isoformat()
        return str(value)

    def plain_value(self, text: str) -> datetime.date | None:
        return datetime.date.fromisoformat(text) if text else None


def encrypted_fields(model: type[models.Model] | models.Model) -> list[EncryptedMixin]:
    return [f for f in model._meta.concrete_fields if isinstance(f, EncryptedMixin)]


def _sealed_loaded(instance: models.Model) -> bool:
    """Did this row (or a row loaded with it by select_related) bring an encrypted value?"""
    if any(isinstance(value, Sealed) for value in instance.__dict__.values()):
        return True
    related = instance._state.fields_cache.values()
    return any(r is not None and any(isinstance(v, Sealed) for v in r.__dict__.values()) for r in related)


class EncryptedQuerySet(models.QuerySet[Any]):
    """Refuses values()/values_list() over encrypted columns: they bypass audited reads.

    When it loads rows that carry encrypted values, it hands their patients to the audit
    context (``AuditContext.prepare``) so that they are explained in one query for the whole
    batch, before the first of them is decrypted (audit.explain).
    """

    def _fetch_all(self) -> None:
        fresh = self._result_cache is None
        super()._fetch_all()
        if not fresh or self._iterable_class is not ModelIterable or not self._result_cache:
            return
        ctx = active.current()
        if ctx is None or not _sealed_loaded(self._result_cache[0]):
            return
        ctx.prepare(row.audit_patient_id() for row in self._result_cache)

    def _refuse_encrypted(self, names: Iterable[object]) -> None:
        opts = self.model._meta
        wanted = names or [f.attname for f in opts.concrete_fields]
        for name in wanted:
            if not isinstance(name, str):
                continue
            target = self._resolve_field(name)
            if isinstance(target, EncryptedMixin):
                raise PlaintextRefused(
                    f"values()/values_list() over {target.model._meta.label}.{target.name} "
                    "cannot be audited per patient: load model instances instead."
                )

    def _resolve_field(self, path: str) -> Field[Any, Any] | ForeignObjectRel | None:
        model = self.model
        field = None
        for part in path.split("__"):
            try:
                field = model._meta.get_field(part)
            except FieldDoesNotExist:  # a lookup or an annotation: not a column we own
                return None
            if field.is_relation and field.related_model is not None:
                model = field.related_model
        return field

    def values(self, *fields: str | Combinable, **expressions: Any) -> Any:
        self._refuse_encrypted(fields)
        return super().values(*fields, **expressions)

    def values_list(self, *fields: str | Combinable, flat: bool = False, named: bool = False) -> Any:
        self._refuse_encrypted(fields)
        return super().values_list(*fields, flat=flat, named=named)


class EncryptedModel(models.Model):
    """Base for models with encrypted fields.

    UUID primary keys: known before insert (ciphertexts are bound to them) and not guessable.
    Subclasses say which patient a row belongs to with ``audit_patient_id()`` so that every
    decrypted read names the patient. ``__str__`` never decrypts: Django writes ``str(obj)``
    into admin logs, messages and error reports, none of which may hold plaintext.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)

    objects = EncryptedQuerySet.as_manager()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self._meta.verbose_name} {str(self.pk)[:8]}"

    def refresh_from_db(
        self,
        using: str | None = None,
        fields: Iterable[str] | None = None,
        from_queryset: models.QuerySet[Any] | None = None,
    ) -> None:
        # Django copies each refreshed value with getattr(), which would decrypt (and audit)
        # every field; copy the sealed tokens instead: nothing is read until it is used.
        with copying_sealed():
            super().refresh_from_db(using=using, fields=fields, from_queryset=from_queryset)

    def audit_patient_id(self) -> uuid.UUID | None:
        raise ImproperlyConfigured(f"{type(self).__name__} must say which patient its rows belong to.")
