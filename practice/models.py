import datetime
import hashlib
import hmac
import json
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.contrib.sessions.base_session import AbstractBaseSession
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import DatabaseError, IntegrityError, models, router, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _
from django_otp.models import Device, ThrottlingMixin

colour_validator = RegexValidator(r"^#[0-9a-fA-F]{6}$", _("Enter a colour as #rrggbb."))


class Specialty(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)

    class Meta:
        verbose_name = _("specialty")
        verbose_name_plural = _("specialties")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Practitioner(models.Model):
    """A practitioner of the clinic, linked to the user account they log in with."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, verbose_name=_("user account"), on_delete=models.PROTECT, related_name="practitioner"
    )
    display_name = models.CharField(_("display name"), max_length=150)
    specialty = models.ForeignKey(
        Specialty, verbose_name=_("specialty"), on_delete=models.PROTECT, related_name="practitioners"
    )
    colour = models.CharField(_("colour"), max_length=7, default="#0b6bcb", validators=[colour_validator])
    is_active = models.BooleanField(_("active"), default=True)
    # The secretaries who work for this practitioner. A secretary assigned to no practitioner
    # works for all of them; one assigned to some works for those only. It decides which
    # appointments explain a secretary's reads (audit/explain.py, scheduling/explainers.py).
    assistants = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("secretaries assigned"),
        blank=True,
        related_name="assisted_practitioners",
        help_text=_("Leave empty when every secretary works for this practitioner."),
    )

    class Meta:
        verbose_name = _("practitioner")
        verbose_name_plural = _("practitioners")
        ordering = ["display_name"]

    def __str__(self) -> str:
        return self.display_name


def _normalize(code: str) -> str:
    return "".join(code.lower().split()).replace("-", "")


def recovery_code_digest(code: str, salt: str) -> str:
    """How a recovery code is stored (practice.twofactor makes them): salted, hashed."""
    return f"{salt}${hashlib.sha256((salt + _normalize(code)).encode()).hexdigest()}"


def recovery_code_use(device: "RecoveryCodeDevice", code: str) -> bool:
    """Spend one unused code matching ``code``; compare every digest in constant time."""
    match = None
    for stored in device.codes.select_for_update().filter(used_at__isnull=True):
        salt = stored.digest.split("$", 1)[0]
        if hmac.compare_digest(stored.digest, recovery_code_digest(code, salt)) and match is None:
            match = stored
    if match is None:
        return False
    match.used_at = timezone.now()
    match.save(update_fields=["used_at"])
    return True


class RecoveryCodeDevice(ThrottlingMixin, Device):
    """One-time recovery codes for a lost authenticator: a django-otp device of its own.

    django-otp's static device keeps its codes in clear; these are stored hashed (see
    practice.twofactor), so a copy of the database does not hand out second factors.
    """

    class Meta(Device.Meta):
        verbose_name = _("recovery codes")
        verbose_name_plural = _("recovery codes")

    def verify_token(self, token) -> bool:
        allowed, _detail = self.verify_is_allowed()
        if not allowed:
            return False
        if recovery_code_use(self, str(token)):
            self.throttle_reset()
            return True
        self.throttle_increment()
        return False

    def get_throttle_factor(self) -> int:
        return settings.OTP_TOTP_THROTTLE_FACTOR


class RecoveryCode(models.Model):
    """A recovery code's salted SHA-256 digest; the code itself is shown once and never stored."""

    device = models.ForeignKey(RecoveryCodeDevice, on_delete=models.CASCADE, related_name="codes")
    digest = models.CharField(max_length=100)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("recovery code")
        verbose_name_plural = _("recovery codes")

    def __str__(self) -> str:
        return f"{_('recovery code')} #{self.pk}"


class UserSession(AbstractBaseSession):
    """A database session that knows its user, so an admin can end all of a user's sessions.

    Django's own session table cannot be searched by user without decoding every row.
    """

    user_id = models.IntegerField(_("user id"), null=True, db_index=True)

    class Meta:
        verbose_name = _("session")
        verbose_name_plural = _("sessions")

    @classmethod
    def get_session_store_class(cls):
        return SessionStore


# How long a form's submission key answers a retry (practice.tasks.sessions_purge deletes it
# after that). A retry comes within minutes; a page left open longer just acts afresh.
FORM_SUBMISSION_KEPT_FOR = datetime.timedelta(days=1)


class FormSubmission(models.Model):
    """A form's submission key, once used: a POST sent again gets the first one's answer.

    A page renders a random key in each form that changes something; the view records the key
    when it acts. A retry of that POST (its answer lost to a worker restart, a double click)
    answers where the first went, instead of acting twice or refusing ("slot taken") what
    the user's own first request did.

    Rules enforced here:
    - A key belongs to the user who sent it (unique per user): another user sending it gets
      nothing of the first user's; their request runs as their own.
    - A key answers for one action (``"scheduling.cancel:<appointment id>"``) and the values
      sent with it, kept as a keyed hash (HMAC under SECRET_KEY: some values are patient
      data, never stored here): the same key with another action or other values is refused
      (``FormSubmission.Reused``), never answered with the first result.
    - The key is claimed first inside the transaction that acts, and commits with it: a twin
      request blocks on the unique index until the first commits, then answers with its
      result (``FormSubmission.Taken``); a refused action rolls the key back, so the form can
      be sent again once corrected.
    - ``result`` is where the first request sent the user (a path of this site); nothing is
      decrypted to answer a retry.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    action = models.CharField(max_length=100)
    fingerprint = models.CharField(max_length=64)
    result = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("form submission")
        verbose_name_plural = _("form submissions")
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="form_submission_user_key")]

    class Reused(ValidationError):
        """The key was used for another action or with other values. ``result``: where that
        went, when it was the same action (the user's own; worth a look), else ""."""

        def __init__(self, result: str = ""):
            message = _(
                "This form was already sent, with other values, and that was done. Check it before sending again."
            )
            super().__init__(message, code="submission_reused")
            self.result = result

    class Taken(Exception):
        """Another request claimed the key first (and has committed): answer with its result."""

    def __str__(self) -> str:
        return f"{self.action} ({self.created_at:%Y-%m-%d %H:%M})"

    @staticmethod
    def fingerprint_of(values) -> str:
        """A keyed hash of the values sent ({name: [values]}), in name order."""
        canonical = json.dumps(sorted((name, list(v)) for name, v in values.items()), ensure_ascii=False)
        return salted_hmac("practice.FormSubmission", canonical, algorithm="sha256").hexdigest()

    @classmethod
    def first_result(cls, *, user, key: str, action: str, fingerprint: str) -> str | None:
        """Where the first use of this user's key went; None when the key is unused.
        Raises ``FormSubmission.Reused`` when it was used for another action or other values."""
        first = cls.objects.filter(user=user, key=key).only("action", "fingerprint", "result").first()
        if first is None:
            return None
        if first.action != action or not hmac.compare_digest(first.fingerprint, fingerprint):
            raise cls.Reused(first.result if first.action == action else "")
        return first.result

    @classmethod
    def claim(cls, *, user, key: str, action: str, fingerprint: str) -> "FormSubmission":
        """Record the key as used, inside the caller's transaction and before it acts.

        Raises ``FormSubmission.Taken`` when another request holds the key; on PostgreSQL the
        insert first waits for that request's transaction to end. Read its result with
        ``first_result`` after this transaction (a snapshot taken before the other commit
        would not see it)."""
        if not transaction.get_connection().in_atomic_block:
            raise RuntimeError("A submission key is claimed inside the transaction that acts.")
        try:
            with transaction.atomic():
                return cls.objects.create(user=user, key=key, action=action, fingerprint=fingerprint)
        except IntegrityError:
            raise cls.Taken from None

    def done(self, result: str) -> None:
        """Record where the action sent the user, in the same transaction."""
        self.result = result
        self.save(update_fields=["result"])


WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Clinic(models.Model):
    """The practice's own details, edited by practice admins in Django admin (one row).

    Reminders carry exactly these and the appointment's date and time: what a patient needs
    to come or to cancel, nothing about why they come.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    name = models.CharField(_("name"), max_length=100, default="Cabinet médical")
    address = models.CharField(_("address"), max_length=200, blank=True)
    phone = models.CharField(_("phone number for patients"), max_length=30, blank=True)
    email = models.EmailField(_("e-mail shown to patients"), blank=True)
    reminders_show_specialty = models.BooleanField(
        _("name the practitioner and specialty in reminders"),
        default=False,
        help_text=_("Off by default: a specialty can say more about a patient than they would like on a phone screen."),
    )
    squeeze_in_allowed = models.BooleanField(
        _("let secretaries squeeze in emergencies"),
        default=False,
        help_text=_(
            "Off by default. When on, the front desk may book an emergency over an existing appointment, "
            "with a written reason kept in the audit trail; the agenda shows both appointments."
        ),
    )
    # Opening hours, wall-clock time in the practice's time zone (settings.TIME_ZONE), one
    # interval a day; a day without both times is closed. Reads of patient data outside them
    # are an anomaly signal (investigations/anomalies.py).
    monday_opens = models.TimeField(_("Monday: opens"), null=True, blank=True, default=datetime.time(8))
    monday_closes = models.TimeField(_("Monday: closes"), null=True, blank=True, default=datetime.time(19))
    tuesday_opens = models.TimeField(_("Tuesday: opens"), null=True, blank=True, default=datetime.time(8))
    tuesday_closes = models.TimeField(_("Tuesday: closes"), null=True, blank=True, default=datetime.time(19))
    wednesday_opens = models.TimeField(_("Wednesday: opens"), null=True, blank=True, default=datetime.time(8))
    wednesday_closes = models.TimeField(_("Wednesday: closes"), null=True, blank=True, default=datetime.time(19))
    thursday_opens = models.TimeField(_("Thursday: opens"), null=True, blank=True, default=datetime.time(8))
    thursday_closes = models.TimeField(_("Thursday: closes"), null=True, blank=True, default=datetime.time(19))
    friday_opens = models.TimeField(_("Friday: opens"), null=True, blank=True, default=datetime.time(8))
    friday_closes = models.TimeField(_("Friday: closes"), null=True, blank=True, default=datetime.time(19))
    saturday_opens = models.TimeField(_("Saturday: opens"), null=True, blank=True, default=datetime.time(8))
    saturday_closes = models.TimeField(_("Saturday: closes"), null=True, blank=True, default=datetime.time(12))
    sunday_opens = models.TimeField(_("Sunday: opens"), null=True, blank=True)
    sunday_closes = models.TimeField(_("Sunday: closes"), null=True, blank=True)

    class Meta:
        verbose_name = _("clinic")
        verbose_name_plural = _("clinic")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(**{f"{day}_opens__isnull": True})
                | models.Q(**{f"{day}_closes__isnull": True})
                | models.Q(**{f"{day}_opens__lt": models.F(f"{day}_closes")}),
                name=f"clinic_{day}_opens_before_closing",
            )
            for day in WEEKDAY_NAMES
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def current(cls) -> "Clinic":
        clinic, _created = cls.objects.get_or_create(pk=1)
        return clinic

    def opening_hours(self, weekday: int) -> tuple[datetime.time, datetime.time] | None:
        """(opens, closes) on ``weekday`` (0 = Monday), or None when closed that day."""
        day = WEEKDAY_NAMES[weekday]
        opens, closes = getattr(self, f"{day}_opens"), getattr(self, f"{day}_closes")
        if opens is None or closes is None or opens >= closes:
            return None
        return opens, closes

    def open_intervals(
        self, start: datetime.datetime, end: datetime.datetime
    ) -> list[tuple[datetime.datetime, datetime.datetime]]:
        """The moments between ``start`` and ``end`` (aware) when the practice is open, as
        aware intervals, in order. Wall-clock times are read in the practice's time zone on
        each day, so a day of a DST change keeps its 08:00 to 19:00."""
        zone = ZoneInfo(settings.TIME_ZONE)
        intervals = []
        day = start.astimezone(zone).date() - datetime.timedelta(days=1)
        last = end.astimezone(zone).date()
        while day <= last:
            hours = self.opening_hours(day.weekday())
            if hours is not None:
                opens = datetime.datetime.combine(day, hours[0], tzinfo=zone)
                closes = datetime.datetime.combine(day, hours[1], tzinfo=zone)
                lo, hi = max(opens, start), min(closes, end)
                if lo < hi:
                    intervals.append((lo, hi))
            day += datetime.timedelta(days=1)
        return intervals


class LoginThrottle(models.Model):
    """Failed logins counted for one address, or for one username, across the other half
    (practice/lockout.py holds the rules; django-axes counts each username-and-address pair).

    ``value`` is the address or the username exactly as typed: an unknown username is counted
    like a real one. Rows of a finished window are deleted as logins go by.
    """

    ADDRESS = "address"
    ACCOUNT = "account"

    scope = models.CharField(max_length=10)  # ADDRESS or ACCOUNT
    value = models.CharField(max_length=255)
    # Attempts counted in the window, including those whose password is being checked.
    failures = models.PositiveIntegerField(default=0)
    window_started_at = models.DateTimeField(db_index=True)
    # No attempt is checked before this moment: a growing delay, or a lockout.
    retry_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "value"], name="login_throttle_scope_value")]

    def __str__(self) -> str:
        return f"{self.scope} {self.value}"


# The session engine's store (SESSION_ENGINE = "practice.sessions" exposes it), beside its model
# as Django's documentation does it: each names the other.
class SessionStore(DbSessionStore):
    @classmethod
    def get_model_class(cls):
        return UserSession

    def create_model_instance(self, data):
        instance = super().create_model_instance(data)
        user_id = data.get(SESSION_KEY)
        instance.user_id = int(user_id) if user_id is not None and str(user_id).isdigit() else None
        return instance

    def save(self, must_create=False):
        """As Django's, but an update outside a transaction is one UPDATE, without the
        BEGIN/COMMIT Django wraps around it: a single statement is atomic on its own, and
        SESSION_SAVE_EVERY_REQUEST makes every page pay those two round trips otherwise."""
        if must_create or self.session_key is None:
            return super().save(must_create=must_create)
        obj = self.create_model_instance(self._get_session())
        using = router.db_for_write(self.model, instance=obj)
        if transaction.get_connection(using).in_atomic_block:
            return super().save(must_create=False)
        try:
            obj.save(force_update=True, using=using)
        except DatabaseError as exc:
            raise UpdateError from exc
