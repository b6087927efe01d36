"""Audit contexts: who is reading, from where, and why.

Rule enforced here: patient plaintext only exists inside an audit context. The request
middleware, the Celery task base and the management command base each open one; encrypted
fields refuse to decrypt when none is open (see `audit.fields`).

Each decrypted row is buffered as (model, primary key) -> (patient, field names) and the
buffer is written in one bulk insert when the context closes (or early when it grows large).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from audit.budget import ReadBudget, budget_settle, counts_from_row
from audit.current import SESSION_KEY as SESSION_KEY
from audit.current import Actor as Actor
from audit.current import NoAuditContext as NoAuditContext
from audit.current import activate, deactivate
from audit.current import current as current
from audit.current import require as require
from audit.current import role_source_register as role_source_register
from audit.explain import Admission, Reader
from audit.services import audit_reads_write

logger = logging.getLogger(__name__)


@dataclass
class _Read:
    model_label: str
    object_pk: str
    patient_id: object
    fields: set[str]
    explanation: str = ""
    explained_by: str = ""


@dataclass
class AuditContext:
    """Who reads, from where, for what; plus the buffer of rows decrypted so far."""

    purpose: str
    actor: Actor | None = None
    request: object | None = None
    ip: str | None = None
    user_agent: str = ""
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    flush_threshold: int | None = None
    # The acting account's read budget (audit.budget), made at its first decryption.
    budget: ReadBudget | None = None
    # The acting account's explanations and allowance (audit.explain), made like the budget.
    admission: Admission | None = None
    # Inside ``audit.explain.masked_lines``: decryptions serve masked search lines.
    masked: bool = False
    _reads: dict[tuple[str, str], _Read] = field(default_factory=dict)

    def current_actor(self) -> Actor:
        # A request's actor is read late: a login view changes the user mid-request.
        if self.request is not None:
            return Actor.for_user(getattr(self.request, "user", None))
        return self.actor or Actor.system("unknown")

    @property
    def session(self) -> str:
        # Read late, like the actor: the login view starts the session mid-request.
        session = getattr(self.request, "session", None)
        return session.get(SESSION_KEY, "") if session is not None else ""

    def _user_id(self) -> int | None:
        if self.request is not None:
            user = getattr(self.request, "user", None)
            return user.pk if user is not None and user.is_authenticated else None
        return self.actor.user_id if self.actor is not None else None

    def _admission(self, user_id: int) -> Admission:
        admission = self.admission
        if admission is None or admission.reader.user_id != user_id:  # first read, or a login mid-request
            actor = self.current_actor()
            admission = self.admission = Admission(reader=Reader(user_id=user_id, role=actor.role))
        return admission

    def prepare(self, patient_ids: Iterable[uuid.UUID | None]) -> None:
        """Explain a batch of patients about to be read (``EncryptedQuerySet`` calls it when it
        loads rows): one query for all of them, before anything is decrypted. At the context's
        first batch the read budget's load rides in the same query (one round trip for both)."""
        user_id = self._user_id()
        if user_id is None:
            return
        budget = self._budget(user_id)
        if budget.is_loaded or budget.refused is not None:
            self._admission(user_id).prepare(patient_ids)
            return
        sql, params, now = budget.counts_query()
        row = self._admission(user_id).prepare(patient_ids, counts=(sql, params))
        budget.loaded(counts_from_row(row), now)

    def _budget(self, user_id: int) -> ReadBudget:
        budget = self.budget
        if budget is None or budget.user_id != user_id:  # first decryption, or a login mid-request
            budget = self.budget = ReadBudget.for_actor(self.current_actor())
        return budget

    def admit(self, patient_id: uuid.UUID | None) -> None:
        """Called before each decryption: refuses it past the account's read budget, or when
        nothing explains the patient and the allowance is used up (audit.explain).

        Raises ``audit.budget.ReadBudgetExceeded`` or ``audit.explain.ExplanationRequired``.
        Data that belongs to no patient, and system jobs (no user behind the actor), are not
        budgeted nor explained.
        """
        if patient_id is None:
            return
        user_id = self._user_id()
        if user_id is None:
            return
        budget = self._budget(user_id)
        budget.admit(patient_id)
        self._admission(user_id).admit(patient_id, masked=self.masked, on_block=budget.block_for_reasons)

    @property
    def withheld(self) -> str:
        """Why this context's page must not leave ("" when it may): a refusal happened in it."""
        if self.budget is not None and self.budget.refused is not None:
            return "read-limit"
        if self.admission is not None and self.admission.refused is not None:
            return "step-up"
        return ""

    def record_read(self, *, model_label: str, object_pk: object, patient_id: object, field_name: str) -> None:
        pk = str(object_pk)
        key = (model_label, pk)
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = _Read(model_label, pk, patient_id, set())
        read.fields.add(field_name)
        threshold = self.flush_threshold or settings.AUDIT_FLUSH_THRESHOLD
        if len(self._reads) >= threshold and not transaction.get_connection().in_atomic_block:
            # Outside a transaction only: a rolled-back transaction must not take the trail with it.
            self.flush()

    @property
    def pending(self) -> int:
        return len(self._reads)

    def flush(self) -> int:
        """Write every buffered read in one insert. Raises if the trail cannot be written."""
        if not self._reads:
            return 0
        reads = list(self._reads.values())
        if self.admission is not None:
            for read in reads:
                if read.patient_id is not None:
                    read.explanation, read.explained_by = self.admission.explanation_of(read.patient_id)
        if self.withheld and "withheld" not in self.extra:
            # A refusal happened: the page these reads were for does not leave (reports tell them
            # apart from what was served).
            self.extra = {**self.extra, "withheld": self.withheld}
        written = audit_reads_write(context=self, reads=reads)
        if self.budget is not None:
            self.budget.written(written.new_patients, written.before)
        self._reads.clear()
        return len(reads)

    def discard(self) -> None:
        self._reads.clear()


@contextlib.contextmanager
def opened(ctx: AuditContext) -> Iterator[AuditContext]:
    """Make `ctx` current; write its buffer when the block ends, even on error.

    A read budget refusal inside the block (a context acting for a user, outside a request)
    propagates to the caller once the block is recorded (``audit.budget.budget_settle``).
    """
    token = activate(ctx)
    try:
        yield ctx
    finally:
        try:
            ctx.flush()
            if ctx.budget is not None:
                budget_settle(ctx)
        finally:
            deactivate(token)


def system_context(
    job: str, *, purpose: str | None = None, flush_threshold: int | None = None, **extra: Any
) -> contextlib.AbstractContextManager[AuditContext]:
    """An audit context for a system job: `system:<job>` is the actor."""
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):
        os_user = "unknown"
    ctx = AuditContext(
        purpose=purpose or job,
        actor=Actor.system(job),
        path=f"job:{job}",
        extra={"os_user": os_user, **extra},
        flush_threshold=flush_threshold,
    )
    return opened(ctx)
