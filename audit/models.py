import uuid
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.translation import gettext_lazy as _

from audit.fields import EncryptedQuerySet, copying_sealed


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


class Explanation(models.TextChoices):
    """Why a READ row's patient could be decrypted for its reader (audit/explain.py), written on
    the row before the plaintext leaves. The first five explain the read; the last two mean it
    was unexplained and paid from the reader's allowance."""

    APPOINTMENT = "appointment", _("appointment")
    CARE = "care", _("care relationship")
    OWN_ACTION = "own", _("own recent action")
    GRANT = "grant", _("emergency access")
    REASON = "reason", _("stated reason")
    UNEXPLAINED = "unexplained", _("unexplained (allowance)")
    MASKED = "masked", _("masked search line (allowance)")


# Codes that explain a read (the others are paid from an allowance).
EXPLAINED = frozenset(
    {Explanation.APPOINTMENT, Explanation.CARE, Explanation.OWN_ACTION, Explanation.GRANT, Explanation.REASON}
)


class EventType(models.IntegerChoices):
    READ = 1, _("Decrypted read")
    READ_EXPLAINED = 2, _("Read explained afterwards")
    WITHHELD = 3, _("Page withheld")
    CREATE = 10, _("Created")
    CHANGE = 11, _("Changed")
    ARCHIVE = 12, _("Archived")
    RESTORE = 13, _("Restored")
    MERGE = 14, _("Merged")
    EXPORT = 15, _("Exported")
    DELETE = 16, _("Deleted")
    LOGIN = 20, _("Login")
    LOGIN_FAILED = 21, _("Login failed")
    LOCKOUT = 22, _("Locked out")
    LOGOUT = 23, _("Logout")
    UNLOCK = 24, _("Unlocked")
    OTP_VERIFIED = 25, _("Second factor verified")
    OTP_FAILED = 26, _("Second factor failed")
    OTP_ENROLLED = 27, _("Second factor enrolled")
    RECOVERY_CODES = 28, _("Recovery codes generated")
    OTP_RESET = 29, _("Second factor reset")
    SESSIONS_ENDED = 32, _("Sessions ended")
    PASSWORD_CHANGED = 33, _("Password changed")
    PASSWORD_RESET = 34, _("Password reset")
    BREAK_GLASS = 30, _("Break-the-glass access")
    BUDGET_BLOCK = 31, _("Read budget exceeded")
    BREAK_GLASS_REVIEWED = 35, _("Break-the-glass access reviewed")
    BUDGET_LIFTED = 36, _("Read budget block lifted")
    REASON_ASKED = 37, _("Reason asked before a read")
    REASON_STATED = 38, _("Reason stated for a read")
    CIPHERTEXT_REFUSED = 40, _("Stored value refused")
    TRAIL_SHRANK = 41, _("Audit trail rows missing")
    KEY_CHECK_FAILED = 42, _("Key check failed")
    CHAIN_BROKEN = 43, _("Audit trail chain broken")
    NOT_FOUND = 44, _("Page not found")
    ANOMALY = 45, _("Anomaly detected")
    KEY_ROTATION = 50, _("Key rotation")
    BLIND_INDEX_REBUILD = 51, _("Blind index rebuild")


class EventTypeField(models.PositiveSmallIntegerField):
    """The event type: checked against ``EventType`` in code, stored without it in the schema.

    Rule enforced here: a new ``EventType`` needs no migration. Like Zulip's RealmAuditLog,
    the database holds a plain small integer; the choices live on the model field only, so
    ``full_clean()``, model forms and the admin still show the labels and refuse an unknown
    value. The migration state sees a plain ``PositiveSmallIntegerField`` without choices
    (``deconstruct``), which also keeps this class out of the migration files.
    """

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        kwargs.pop("choices", None)
        return name, "django.db.models.PositiveSmallIntegerField", args, kwargs


class AuditEvent(models.Model):
    """One row of the audit trail.

    Like Zulip's RealmAuditLog: the actor and the subject are copied, never cascaded, so
    deleting a user or archiving a patient never removes history. Values are never stored:
    a read row names the fields decrypted, not what they held.
    """

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField(_("when"), db_index=True)
    event_type = EventTypeField(_("event"), choices=EventType.choices)
    actor_user_id = models.IntegerField(_("user id"), null=True, blank=True)
    actor_username = models.CharField(_("who"), max_length=150)
    actor_role = models.CharField(_("role"), max_length=40)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.CharField(_("browser"), max_length=300, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    # A random id given to a login session at login (kept across its key rotations), so a
    # breach report can scope "everything this session did"; never the session key itself.
    session = models.CharField(_("session"), max_length=32, blank=True)
    path = models.CharField(_("page"), max_length=300, blank=True)
    purpose = models.CharField(_("purpose"), max_length=120, blank=True)
    model_label = models.CharField(_("record type"), max_length=100, blank=True)
    object_pk = models.CharField(_("record id"), max_length=64, blank=True)
    patient_id = models.UUIDField(_("patient id"), null=True, blank=True)
    fields = models.JSONField(_("fields"), default=list, blank=True)
    extra = models.JSONField(_("details"), default=dict, blank=True)
    # READ rows: why the patient could be decrypted (Explanation) and the id of what explains
    # it (an appointment, a grant, a stated reason, the user's own earlier event). Empty on
    # other rows, on system jobs' reads and on rows written before explanations existed.
    explanation = models.CharField(
        _("explanation"), max_length=12, blank=True, default="", db_default="", choices=Explanation.choices
    )
    explained_by = models.CharField(_("explained by"), max_length=64, blank=True, default="", db_default="")
    # HMAC-SHA256 (hex) over the previous row's mac and this row's canonical content, keyed
    # by AUDIT_CHAIN_KEY (outside the database): audit/chain.py. Empty only before the chain.
    mac = models.CharField(_("chain MAC"), max_length=64, blank=True, editable=False)

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit trail")
        ordering = ["-occurred_at", "-id"]
        indexes = [
            # Covering: "who opened this record" summarises a much-read patient from the index
            # alone (170 -> 14 ms p50 for 21,000 rows at 10M, bench/audit_bench.py).
            models.Index(
                fields=["patient_id", "occurred_at"],
                include=["event_type", "actor_username", "actor_role"],
                name="audit_patient_time",
            ),
            models.Index(fields=["actor_user_id", "occurred_at"], name="audit_actor_time"),
            models.Index(fields=["event_type", "occurred_at"], name="audit_type_time"),
            models.Index(fields=["session", "occurred_at"], name="audit_session_time", condition=~models.Q(session="")),
            # The "own action" explanation (audit/explain.py): this user's writes of the last day,
            # one short range however old the trail (the patient is checked from the index).
            # Writes are a small part of the trail, so the partial index stays small.
            models.Index(
                fields=["actor_user_id", "occurred_at"],
                include=["patient_id"],
                name="audit_actor_writes",
                condition=models.Q(event_type__in=[10, 11, 12, 13, 14]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_event_type_display()} by {self.actor_username} at {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class KeyCanary(models.Model):
    """A known value sealed under the field keys and fingerprints of the active keys.

    Start-up decrypts it: a deploy with the wrong keys fails at start instead of showing
    garbage. It also remembers which blind-index key built the indexes.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    token = models.TextField()
    blind_index_fingerprint = models.CharField(max_length=64)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return "key canary"


class RotationProgress(models.Model):
    """Where a key rotation stopped, per model, so an interrupted run resumes."""

    job = models.CharField(max_length=20)  # "encrypt" or "blind-index"
    key_fingerprint = models.CharField(max_length=64)
    model_label = models.CharField(max_length=100)
    last_pk = models.CharField(max_length=64, blank=True)
    done = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "key_fingerprint", "model_label"], name="rotation_once_per_key")
        ]

    def __str__(self) -> str:
        return f"{self.job} {self.model_label} after {self.last_pk or 'start'}"


class AlertCursor(models.Model):
    """How far security alerts have been mailed: the id of the last event a mail covered.

    One row (id 1). The alert task locks it (SELECT ... FOR UPDATE), mails the alert events
    after ``last_event_id`` and moves it forward in the same transaction, so two workers
    never mail the same events and a failed mail is retried by the next run.
    ``batch_due_at``: when the batch task already enqueued will run; events written before
    then ride along with it instead of enqueueing one task each.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_event_id = models.BigIntegerField(default=0)
    batch_due_at = models.DateTimeField(null=True, blank=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("security alert cursor")
        verbose_name_plural = _("security alert cursor")

    def __str__(self) -> str:
        return f"alerts mailed up to event {self.last_event_id}"


class AuditHead(models.Model):
    """The trail's head as the nightly check found it: largest id and that row's chain MAC,
    row count, last event time, and what the chain verification found.

    Each night verifies the chain from the previous head on (see
    ``audit.tasks.audit_verify_nightly``): the previous head's row must still be there with
    the same MAC (else the tail was cut or replaced), and every newer row must chain onto it.
    Fewer rows at or below the previous largest id than counted then means rows were deleted
    in the part already verified. Each head is also logged (id and MAC), so a copy lives
    outside the database: ``manage.py audit_verify --head-file`` compares the trail with it.
    """

    id = models.BigAutoField(primary_key=True)
    checked_at = models.DateTimeField(_("checked at"), db_index=True)
    max_event_id = models.BigIntegerField(_("largest event id"))
    event_count = models.BigIntegerField(_("events"))
    last_occurred_at = models.DateTimeField(_("last event at"), null=True, blank=True)
    missing_rows = models.BigIntegerField(_("rows missing since the previous check"), default=0)
    key_problem = models.BooleanField(_("key check failed"), default=False)
    # The chain MAC of row ``max_event_id``: what the next check starts from, and what a
    # truncated tail is found against.
    head_mac = models.CharField(_("head MAC"), max_length=64, blank=True)
    rows_verified = models.BigIntegerField(_("rows whose chain was verified"), default=0)
    chain_problem = models.TextField(_("chain problem"), blank=True)

    class Meta:
        verbose_name = _("audit trail head")
        verbose_name_plural = _("audit trail heads")
        ordering = ["-checked_at", "-id"]

    def __str__(self) -> str:
        return f"audit head {self.max_event_id} ({self.event_count} events) at {self.checked_at:%Y-%m-%d %H:%M}"


class ReadBlock(models.Model):
    """An account stopped by its read budget: no decryption until a practice admin lifts it.

    The user id and name are copied (like the trail), so the record outlives the account.
    """

    user_id = models.IntegerField(_("user id"), db_index=True)
    username = models.CharField(_("user"), max_length=150)
    role = models.CharField(_("role"), max_length=40)
    blocked_at = models.DateTimeField(_("blocked at"))
    window = models.CharField(_("budget exceeded"), max_length=10)  # "hour" or "day"
    patients_read = models.PositiveIntegerField(_("distinct patients read"))
    budget = models.PositiveIntegerField(_("budget"))
    lifted_at = models.DateTimeField(_("lifted at"), null=True, blank=True)
    lifted_by = models.CharField(_("lifted by"), max_length=150, blank=True)
    lift_reason = models.TextField(_("reason for lifting"), blank=True)

    class Meta:
        verbose_name = _("read budget block")
        verbose_name_plural = _("read budget blocks")
        ordering = ["-blocked_at"]
        constraints = [
            # At most one block in force per account.
            models.UniqueConstraint(
                fields=["user_id"], condition=models.Q(lifted_at__isnull=True), name="one_open_block"
            )
        ]

    def __str__(self) -> str:
        return f"{self.username} blocked at {self.blocked_at:%Y-%m-%d %H:%M}"


class ReadTally(models.Model):
    """Which patients an account decrypted lately: the read budget's counter (audit/budget.py).

    One row per (account, patient), upserted in the same statement as the trail's READ rows
    (audit/services.py), so the budget check counts an index range instead of grouping the
    trail. ``first_read_at`` starts an episode: it moves to the new read when the previous
    one is more than 24 hours old (the patient is then new to the account again).
    Derived data: the trail stays the record; rows older than a day are purged nightly.
    """

    id = models.BigAutoField(primary_key=True)
    user_id = models.IntegerField(_("user id"))
    patient_id = models.UUIDField(_("patient id"))
    first_read_at = models.DateTimeField(_("first read"))
    last_read_at = models.DateTimeField(_("last read"))

    class Meta:
        verbose_name = _("read tally")
        verbose_name_plural = _("read tallies")
        constraints = [models.UniqueConstraint(fields=["user_id", "patient_id"], name="read_tally_once")]
        indexes = [
            # The budget's counts: one account's patients read since a moment, index only.
            models.Index(fields=["user_id", "last_read_at"], include=["first_read_at"], name="read_tally_recent"),
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} read patient {self.patient_id} at {self.last_read_at:%Y-%m-%d %H:%M}"


class AnomalyKind(models.TextChoices):
    VOLUME = "volume", _("Volume far above the user's own")
    WALKING = "walking", _("Records walked one after the other")
    OUT_OF_HOURS = "out_of_hours", _("Reads outside opening hours")
    NO_APPOINTMENT = "no_appointment", _("Patients without an appointment with the reader")
    LIST_PAGES = "list_pages", _("Many patients through lists or exports")
    FAILURES = "failures", _("Failed logins or pages not found")


class Severity(models.IntegerChoices):
    LOW = 1, _("low")
    MEDIUM = 2, _("medium")
    HIGH = 3, _("high")


class Anomaly(models.Model):
    """A pattern in the trail worth a practice admin's look, found by ``investigations.anomalies``.

    One row per signal, subject (an account, a login session, an address) and hour: the scan
    re-evaluates the hours it touches and updates their rows (``key`` keeps a re-run from adding
    any). The subject is copied, like the trail's actor. ``evidence`` is the filter that
    reproduces the trail events behind the finding (``investigations.anomalies.anomaly_events``); the
    summary and details hold counts and thresholds, never patient data.
    """

    key = models.CharField(_("key"), max_length=200, unique=True, editable=False)
    kind = models.CharField(_("signal"), max_length=20, choices=AnomalyKind.choices)
    severity = models.PositiveSmallIntegerField(_("severity"), choices=Severity.choices)
    user_id = models.IntegerField(_("user id"), null=True, blank=True)
    username = models.CharField(_("user"), max_length=150, blank=True)
    role = models.CharField(_("role"), max_length=40, blank=True)
    session = models.CharField(_("session"), max_length=32, blank=True)
    ip = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    window_start = models.DateTimeField(_("from"))
    window_end = models.DateTimeField(_("to"))
    detected_at = models.DateTimeField(_("detected at"))
    updated_at = models.DateTimeField(_("last updated"))
    event_count = models.PositiveIntegerField(_("events"), default=0)
    patient_count = models.PositiveIntegerField(_("patients"), default=0)
    summary = models.CharField(_("summary"), max_length=300)
    details = models.JSONField(_("details"), default=dict, blank=True)
    evidence = models.JSONField(_("events behind it"), default=dict, blank=True)
    # The ANOMALY event written when the finding reached high severity (mailed to the admins).
    alert_event_id = models.BigIntegerField(_("alert event"), null=True, blank=True)
    reviewed_at = models.DateTimeField(_("reviewed at"), null=True, blank=True)
    reviewed_by = models.CharField(_("reviewed by"), max_length=150, blank=True)
    review_note = models.TextField(_("review note"), blank=True)

    class Meta:
        verbose_name = _("anomaly")
        verbose_name_plural = _("anomalies")
        ordering = ["-window_start", "-severity", "-id"]
        indexes = [
            models.Index(fields=["-window_start"], name="anomaly_recent"),
            models.Index(fields=["severity", "-window_start"], name="anomaly_severity"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.get_severity_display()}) {self.username or self.ip or self.session}"


class AnomalyCursor(models.Model):
    """How far the anomaly scan has looked: one row (id 1), so each periodic run continues
    where the last one stopped. Not locked during a scan (that would hold a transaction, and
    with it the trail's chain lock, for the whole scan): two overlapping runs only repeat
    work, since findings are keyed (``Anomaly.key``)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    scanned_until = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("anomaly scan cursor")
        verbose_name_plural = _("anomaly scan cursor")

    def __str__(self) -> str:
        return f"anomalies scanned until {self.scanned_until}"


class AllowanceKind(models.TextChoices):
    UNEXPLAINED = "unexplained", _("unexplained patient")
    MASKED = "masked", _("masked search line")
    ASKED = "asked", _("reason asked")


class AllowanceUse(models.Model):
    """One patient paid from an account's allowance (audit/explain.py): served without an
    explanation (``unexplained``), shown as a masked search line (``masked``), or asked for with
    the step-up page (``asked``, counted against the reason limit).

    One row per (account, patient, kind); ``used_at`` starts its episode, which lasts a day (the
    same patient again within the day costs nothing). ``given_back_at`` is set when the read was
    explained afterwards (the same user booked, moved, cancelled or edited for the patient within
    ``EXPLAIN_AFTERWARDS_MINUTES``): the patient no longer counts. Derived data, like the tally:
    the trail is the record; rows older than a day are purged nightly.
    """

    id = models.BigAutoField(primary_key=True)
    user_id = models.IntegerField(_("user id"))
    patient_id = models.UUIDField(_("patient id"))
    kind = models.CharField(_("kind"), max_length=12, choices=AllowanceKind.choices)
    used_at = models.DateTimeField(_("used at"))
    given_back_at = models.DateTimeField(_("given back at"), null=True, blank=True)

    class Meta:
        verbose_name = _("allowance use")
        verbose_name_plural = _("allowance uses")
        constraints = [
            models.UniqueConstraint(fields=["user_id", "patient_id", "kind"], name="allowance_use_once"),
        ]
        indexes = [models.Index(fields=["user_id", "kind", "used_at"], name="allowance_user_recent")]

    def __str__(self) -> str:
        return f"user {self.user_id} {self.kind} patient {self.patient_id} at {self.used_at:%Y-%m-%d %H:%M}"


class ReadReason(models.Model):
    """A reason a user wrote, with their second factor, to open one patient outside any
    explanation (the step-up page). It explains that patient for that user until the end of the
    practice's day. The text is what the user typed, shown to the practice admins in reports,
    and copied into the trail's REASON_STATED event."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.IntegerField(_("user id"))
    username = models.CharField(_("user"), max_length=150)
    patient_id = models.UUIDField(_("patient id"))
    reason = models.TextField(_("reason"))
    stated_at = models.DateTimeField(_("stated at"))
    valid_until = models.DateTimeField(_("valid until"))

    class Meta:
        verbose_name = _("stated reason")
        verbose_name_plural = _("stated reasons")
        ordering = ["-stated_at"]
        indexes = [models.Index(fields=["user_id", "patient_id", "valid_until"], name="read_reason_lookup")]

    def __str__(self) -> str:
        return f"{self.username} → patient {str(self.patient_id)[:8]} at {self.stated_at:%Y-%m-%d %H:%M}"
