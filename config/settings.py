"""Cabinet settings: every knob comes from the environment (or an untracked `.env`).

A missing or malformed secret stops start-up with a message saying how to make one:
a wrong deploy must fail at start, never show garbage at 3 a.m.
"""

import base64
import binascii
import datetime
import os
import tempfile
from pathlib import Path

import environ
from celery.schedules import crontab
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# Real environment variables win over the file (read_env only sets missing ones).
environ.Env.read_env(BASE_DIR / ".env")

KEYGEN_HINT = "Generate fresh keys with `python -m practice.keygen` (or run `make run`, which writes .env)."


def _required(name: str) -> str:
    value = env.str(name, default="").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} is not set. {KEYGEN_HINT}")
    return value


def _fernet_keys(name: str) -> list[str]:
    """A comma-separated list of Fernet keys: the first encrypts, all decrypt."""
    keys = [k.strip() for k in _required(name).split(",") if k.strip()]
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, binascii.Error):
            raise ImproperlyConfigured(
                f"{name}: key #{position} is not a valid Fernet key (32 url-safe base64-encoded bytes). {KEYGEN_HINT}"
            ) from None
    return keys


def _secret_bytes(name: str) -> bytes:
    """A 32-byte (or longer) secret, url-safe base64 encoded."""
    raw = _required(name)
    try:
        decoded = base64.b64decode(raw.encode() + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (ValueError, binascii.Error):
        decoded = b""
    if len(decoded) < 32:
        raise ImproperlyConfigured(f"{name} must be at least 32 random bytes, url-safe base64 encoded. {KEYGEN_HINT}")
    return decoded


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _required("SECRET_KEY")
FIELD_ENCRYPTION_KEY = _fernet_keys("FIELD_ENCRYPTION_KEY")
BLIND_INDEX_KEY = _secret_bytes("BLIND_INDEX_KEY")
AUDIT_CHAIN_KEY = _secret_bytes("AUDIT_CHAIN_KEY")
_all_field_keys = {base64.urlsafe_b64decode(k) for k in FIELD_ENCRYPTION_KEY}
if BLIND_INDEX_KEY in _all_field_keys or AUDIT_CHAIN_KEY in _all_field_keys or BLIND_INDEX_KEY == AUDIT_CHAIN_KEY:
    raise ImproperlyConfigured(
        f"FIELD_ENCRYPTION_KEY, BLIND_INDEX_KEY and AUDIT_CHAIN_KEY must be three different secrets. {KEYGEN_HINT}"
    )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # audit first: its dumpdata and shell commands replace Django's with audited ones.
    "audit",
    "practice",
    "patients",
    "scheduling",
    "investigations",
    "practice.admin_config.CabinetAdminConfig",  # django.contrib.admin behind the second factor
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "csp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    # A failing database answers a 503 page that says whether the action was saved; outside
    # the audit context, so it also answers the pages the audit middleware withholds.
    "practice.middleware.DatabaseErrorMiddleware",
    # Everything below runs inside the request's audit context.
    "audit.middleware.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "practice.middleware.SecondFactorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "practice.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
# The database's owner (PostgreSQL), for `manage.py migrate` and `manage.py db_app_role` only:
# the app connects as DATABASE_URL's role, which must not own the audit trail (it cannot
# delete rows or turn the trail's triggers off). Set it in the deploy step's environment,
# never in the app's or the workers'. Its user, password, host and port are used, on
# DATABASE_URL's database (a database name in it is not used). docs/operations.md.
DATABASE_OWNER = env.db("DATABASE_OWNER_URL") if env.str("DATABASE_OWNER_URL", default="") else None
# Seconds a statement waits for a lock, and runs at most, on PostgreSQL: a lock held on the
# trail (or anything else) makes a page fail within seconds with the 503 page instead of
# holding every worker past gunicorn's 30-second timeout. Set at connect time, so every
# process gets them (web, Celery workers, commands: they all work in short statements);
# 0 turns one off, e.g. for a one-off maintenance command. docs/configuration.md.
DATABASE_LOCK_TIMEOUT = env.float("DATABASE_LOCK_TIMEOUT", default=5.0)
DATABASE_STATEMENT_TIMEOUT = env.float("DATABASE_STATEMENT_TIMEOUT", default=20.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    # Options given in DATABASE_URL (?options=...) come last, so they win.
    _options["options"] = " ".join(
        [
            f"-c lock_timeout={round(DATABASE_LOCK_TIMEOUT * 1000)}",
            f"-c statement_timeout={round(DATABASE_STATEMENT_TIMEOUT * 1000)}",
            _options.get("options", ""),
        ]
    ).strip()
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Immediate transactions serialize writers (no double booking on the embedded default).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # Tests use a file, not shared-cache memory: concurrent bookings then meet SQLite's real
    # locking (an in-memory shared cache fails fast with "table is locked" instead of waiting).
    # One file per test process, so two runs side by side do not share it.
    _test_db = Path(tempfile.gettempdir()) / f"cabinet-test-{os.getpid()}.sqlite3"
    DATABASES["default"]["TEST"] = {"NAME": env.str("SQLITE_TEST_DB", default=str(_test_db))}
    # The trail's covering indexes (INCLUDE columns) are a PostgreSQL speed-up; SQLite builds
    # them without the extra columns, which is fine for the embedded default.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Reset links are good for one hour (Django's default is three days).
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT", default=3600)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = env.str("LANGUAGE_CODE", default="fr")
LANGUAGES = [("fr", "Français"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="Europe/Paris")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Second factor (django-otp TOTP, practice.twofactor): "everyone" (default) or "admins"
# (practice admins, staff and superusers). A user with an authenticator always uses it.
TWO_FACTOR_REQUIRED = env.str("TWO_FACTOR_REQUIRED", default="everyone")
if TWO_FACTOR_REQUIRED not in ("everyone", "admins"):
    raise ImproperlyConfigured('TWO_FACTOR_REQUIRED must be "everyone" or "admins".')
TWO_FACTOR_MAX_FAILURES = env.int("TWO_FACTOR_MAX_FAILURES", default=5)  # per session, then log in again
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="Cabinet")
OTP_TOTP_THROTTLE_FACTOR = 1  # seconds, doubled after each wrong code (kept in the database)

# Sessions: 15 minutes idle (refreshed on every request), 12 hours in all (audit middleware).
SESSION_ENGINE = "practice.sessions"  # database sessions that know their user (log out everywhere)
SESSION_COOKIE_AGE = env.int("SESSION_IDLE_SECONDS", default=15 * 60)
SESSION_SAVE_EVERY_REQUEST = True
SESSION_ABSOLUTE_SECONDS = env.int("SESSION_ABSOLUTE_SECONDS", default=12 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# Production security: on unless DEBUG.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = 0 if DEBUG else env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content Security Policy (django-csp): scripts, styles and images from this site only, no
# inline script or style anywhere (templates/ has none: practice/tests/test_templates.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Behind a reverse proxy: the META name of the header it sets (e.g. HTTP_X_FORWARDED_FOR),
# whose last address is the client. Unset: REMOTE_ADDR. Never set it without such a proxy.
AUDIT_CLIENT_IP_HEADER = env.str("CLIENT_IP_HEADER", default="")

# Login lockout (practice/lockout.py states the rules). django-axes locks a username from one
# address (never a colleague behind the same address); our handler adds a limit per address,
# slowed down before it, and a limit per username across addresses. Each counted over the
# cool-off, race-safe, the same for a username that does not exist.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_MINUTES", default=15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "practice.lockout.LockoutHandler"
AXES_LOCKOUT_CALLABLE = "practice.lockout.lockout_response"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# No "AXES: BEGIN ..." banner on every command; failures and lockouts are still logged.
AXES_VERBOSE = False
LOGIN_ADDRESS_FAILURE_LIMIT = env.int("LOGIN_ADDRESS_FAILURE_LIMIT", default=50)
LOGIN_ADDRESS_FREE_FAILURES = env.int("LOGIN_ADDRESS_FREE_FAILURES", default=10)
LOGIN_ADDRESS_DELAY_MAX_SECONDS = env.int("LOGIN_ADDRESS_DELAY_MAX_SECONDS", default=15)
# At most 100 failures an hour on one account (ASVS 2.2.1): 5 cool-off windows x 20.
LOGIN_ACCOUNT_FAILURE_LIMIT = env.int("LOGIN_ACCOUNT_FAILURE_LIMIT", default=20)
# The lockout and the audit trail agree on the client address (CLIENT_IP_HEADER below).
AXES_CLIENT_IP_CALLABLE = "audit.middleware.client_ip"

# Celery: no broker means eager execution (the embedded default).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE

# Beat (one per deployment) starts the periodic jobs; workers on any number of hosts run them.
CELERY_BEAT_SCHEDULE = {
    # Sends what is due, including reminders whose enqueueing failed (broker down at booking).
    "reminders-sweep": {"task": "scheduling.tasks.reminders_sweep", "schedule": 300.0},
    # Security alerts not mailed yet (the batch task is normally enqueued by the event itself).
    "security-alerts-sweep": {"task": "investigations.tasks.security_alerts_send", "schedule": 300.0},
    # The trail's head (last id and MAC) logged to the audit.heads logger, shipped off the
    # machine: a tail cut in the database shows against it (docs/operations.md).
    "audit-head-export": {"task": "audit.tasks.audit_head_export", "schedule": 300.0},
    "audit-verify-nightly": {"task": "audit.tasks.audit_verify_nightly", "schedule": crontab(hour=3, minute=0)},
    "sessions-purge-nightly": {"task": "practice.tasks.sessions_purge", "schedule": crontab(hour=3, minute=30)},
    "lockouts-purge-nightly": {"task": "practice.tasks.lockouts_purge", "schedule": crontab(hour=3, minute=45)},
    "read-tally-purge-nightly": {"task": "audit.tasks.read_tally_purge", "schedule": crontab(hour=3, minute=50)},
    # Anomaly signals from the trail (investigations/anomalies.py); high ones are mailed at once.
    # Every minute (a run costs tens of ms on a 10M-row trail), so a high finding is mailed
    # within about a minute of the reads behind it (a high finding is urgent: investigations/alerts.py).
    "anomalies-scan": {"task": "investigations.tasks.anomalies_scan", "schedule": 60.0},
}
# A task is acknowledged when it has run, not when it was received: a worker that dies
# mid-task leaves it to another (tasks are idempotent). One task at a time per process.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Publishing while the broker is down fails fast (the sweep catches up) instead of hanging
# the request that booked the appointment.
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_TASK_PUBLISH_RETRY = False
# A broker that accepts the connection and then hangs (Redis paused): every read on its
# socket gives up after this (workers included: kombu's BRPOP waits 1 s, well below it).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=5.0),
    "socket_connect_timeout": CELERY_BROKER_CONNECTION_TIMEOUT,
}
# A request waits at most this long (seconds) for its publishes (practice/broker.py); what is
# not published by then is sent by the periodic sweeps.
BROKER_PUBLISH_BUDGET = env.float("BROKER_PUBLISH_BUDGET", default=0.5)

# Reminders (scheduling/reminders.py). Hours before the appointment are set per appointment
# type; an appointment starting sooner than this gets no reminder at all.
REMINDERS_ENABLED = env.bool("REMINDERS_ENABLED", default=True)
REMINDER_MIN_LEAD_MINUTES = env.int("REMINDER_MIN_LEAD_MINUTES", default=120)
# SMS backends (practice/sms.py), like Django's e-mail backends: console (default), file,
# locmem (tests) and the HTTP adapter of a real provider.
SMS_BACKEND = env.str("SMS_BACKEND", default="practice.sms.ConsoleBackend")
SMS_FILE_PATH = env.str("SMS_FILE_PATH", default=str(BASE_DIR / "sent-sms"))
SMS_SENDER = env.str("SMS_SENDER", default="Cabinet")
SMS_HTTP_API_KEY = env.str("SMS_HTTP_API_KEY", default="")
SMS_HTTP_TIMEOUT = env.float("SMS_HTTP_TIMEOUT", default=10.0)
SMS_HTTP_URL = env.str("SMS_HTTP_URL", default="https://api.brevo.com/v3/transactionalSMS/send")

# Security alerts (investigations/alerts.py): events of a burst are mailed together, at most one
# mail per this many seconds, to practice admins with an e-mail address and ADMINS. Blocks
# and high anomalies do not wait for this window: they are mailed within seconds.
SECURITY_ALERT_BATCH_SECONDS = env.int("SECURITY_ALERT_BATCH_SECONDS", default=60)
# Housekeeping: failed-login records are kept this long (the audit trail keeps its own).
LOCKOUT_RECORDS_RETENTION_DAYS = env.int("LOCKOUT_RECORDS_RETENTION_DAYS", default=30)


# Read budgets (audit/budget.py): the distinct patients one account may decrypt per rolling
# hour and per day, by role, as "hour/day". A front desk's day view of a 10-practitioner
# clinic shows about 300 patients; size from the practice's own trail (docs/read-budgets.md).
# System jobs (reminders, key rotation) have none: they are audited, and run no requests.
def _budget(name: str, default: str) -> tuple[int, int]:
    raw = env.str(name, default=default)
    try:
        hour, day = (int(part) for part in raw.split("/"))
    except ValueError:
        raise ImproperlyConfigured(f'{name} must be "<per hour>/<per day>", e.g. "{default}".') from None
    if not 0 < hour <= day:
        raise ImproperlyConfigured(f"{name}: the hourly budget must be positive and at most the daily one.")
    return hour, day


READ_BUDGETS = {
    "Secretary": _budget("READ_BUDGET_SECRETARY", "600/1500"),
    "Practitioner": _budget("READ_BUDGET_PRACTITIONER", "200/500"),
    # A practice admin also runs the front desk's agenda: the same volume brake as a secretary.
    "Practice admin": _budget("READ_BUDGET_PRACTICE_ADMIN", "600/1500"),
    # Superusers and accounts without a role get the smallest budget of all.
    "default": _budget("READ_BUDGET_OTHER", "100/200"),
}


# Explained reads (audit/explain.py). A read is explained by an appointment starting from
# EXPLAIN_APPOINTMENT_PAST_DAYS ago to EXPLAIN_APPOINTMENT_FUTURE_DAYS ahead with a practitioner
# the user works for; a practitioner's patient seen (appointment done) in the last
# EXPLAIN_CARE_MONTHS; the user's own write on the patient in the last EXPLAIN_OWN_ACTION_HOURS;
# an emergency-access grant; a reason stated today. A read followed within
# EXPLAIN_AFTERWARDS_MINUTES by the same user's write for that patient is explained afterwards.
EXPLAIN_APPOINTMENT_PAST_DAYS = env.int("EXPLAIN_APPOINTMENT_PAST_DAYS", default=2)
EXPLAIN_APPOINTMENT_FUTURE_DAYS = env.int("EXPLAIN_APPOINTMENT_FUTURE_DAYS", default=90)
EXPLAIN_CARE_MONTHS = env.int("EXPLAIN_CARE_MONTHS", default=24)
EXPLAIN_OWN_ACTION_HOURS = env.int("EXPLAIN_OWN_ACTION_HOURS", default=24)
EXPLAIN_AFTERWARDS_MINUTES = env.int("EXPLAIN_AFTERWARDS_MINUTES", default=30)
# Unexplained patients an account may read per rolling hour and day, by role ("hour/day"),
# then the step-up page asks a reason and the second factor. Masked search lines (last name
# alone: initial and birth year) have their own, larger allowance.
READ_ALLOWANCES = {
    "Secretary": _budget("READ_ALLOWANCE_SECRETARY", "20/40"),
    "Practitioner": _budget("READ_ALLOWANCE_PRACTITIONER", "10/30"),
    "Practice admin": _budget("READ_ALLOWANCE_PRACTICE_ADMIN", "30/100"),
    "default": _budget("READ_ALLOWANCE_OTHER", "10/20"),
}
READ_MASKED_ALLOWANCES = {
    "Secretary": _budget("READ_MASKED_ALLOWANCE_SECRETARY", "150/400"),
    "Practitioner": _budget("READ_MASKED_ALLOWANCE_PRACTITIONER", "50/100"),
    "Practice admin": _budget("READ_MASKED_ALLOWANCE_PRACTICE_ADMIN", "150/400"),
    "default": _budget("READ_MASKED_ALLOWANCE_OTHER", "30/60"),
}
# Patients an account may be asked a reason for, per hour and day; past it, the account is
# blocked and the practice admins alerted. With the allowance, this bounds what one account
# reads without an explanation in a day: 40 + 20 = 60 for a secretary.
READ_REASONS = _budget("READ_REASONS", "10/20")
READ_REASON_MIN_LENGTH = env.int("READ_REASON_MIN_LENGTH", default=20)
# Where the step-up page posts a reason (a URL name taking the patient id).
STEP_UP_URL_NAME = "patients:reason"

# Audit: records buffered per context are written in one insert; large buffers flush early.
AUDIT_FLUSH_THRESHOLD = env.int("AUDIT_FLUSH_THRESHOLD", default=2000)


# Anomaly signals (investigations/anomalies.py): beat scans the trail every five minutes, one clock
# hour at a time; a finding's severity comes from the "<low>/<medium>/<high>" levels
# below (docs/read-budgets.md, "Anomaly signals"). High ones are mailed to the practice admins at once.
def _levels(name: str, default: str) -> tuple[float, float, float]:
    raw = env.str(name, default=default)
    try:
        low, medium, high = (float(part) for part in raw.split("/"))
    except ValueError:
        raise ImproperlyConfigured(f'{name} must be "<low>/<medium>/<high>", e.g. "{default}".') from None
    if not 0 < low <= medium <= high:
        raise ImproperlyConfigured(f"{name}: the levels must be positive and in increasing order.")
    return low, medium, high


# Volume: an account's distinct patients in an hour over its own usual busiest hours (the
# 95th percentile of its active hours in the last ANOMALY_BASELINE_DAYS; half its role's hourly
# budget until it has ANOMALY_BASELINE_MIN_HOURS of them), never below the floor.
ANOMALY_VOLUME_MIN_PATIENTS = env.int("ANOMALY_VOLUME_MIN_PATIENTS", default=30)
ANOMALY_VOLUME_RATIO = _levels("ANOMALY_VOLUME_RATIO", "2/3/5")
ANOMALY_BASELINE_DAYS = env.int("ANOMALY_BASELINE_DAYS", default=28)
ANOMALY_BASELINE_MIN_HOURS = env.int("ANOMALY_BASELINE_MIN_HOURS", default=10)
# Walking: a session opening at least this many patients' records in an hour, each once, with
# no write; high when the gaps between its pages vary less than this (coefficient of variation).
ANOMALY_WALK_MIN_PATIENTS = env.int("ANOMALY_WALK_MIN_PATIENTS", default=30)
ANOMALY_WALK_MAX_VARIATION = env.float("ANOMALY_WALK_MAX_VARIATION", default=0.5)
# Distinct patients read outside the clinic's opening hours (Administration, Clinic), in an
# hour, by one account; reads within the grace after closing (or before opening) do not count.
ANOMALY_OUT_OF_HOURS = _levels("ANOMALY_OUT_OF_HOURS", "1/10/50")
ANOMALY_OUT_OF_HOURS_GRACE_MINUTES = env.int("ANOMALY_OUT_OF_HOURS_GRACE_MINUTES", default=30)
# Distinct patients a practitioner read without an appointment with them (from this many days
# before the read to this many after) nor an emergency access, in an hour.
ANOMALY_NO_APPOINTMENT = _levels("ANOMALY_NO_APPOINTMENT", "1/3/10")
ANOMALY_APPOINTMENT_PAST_DAYS = env.int("ANOMALY_APPOINTMENT_PAST_DAYS", default=365)
ANOMALY_APPOINTMENT_AHEAD_DAYS = env.int("ANOMALY_APPOINTMENT_AHEAD_DAYS", default=90)
# Distinct patients through the patient list (pages, searches) and exports, per account and hour.
ANOMALY_LIST_PATIENTS = _levels("ANOMALY_LIST_PATIENTS", "100/250/500")
# Failed logins, failed second factors and pages not found, per session (or per address for
# the anonymous), in an hour.
ANOMALY_FAILURES = _levels("ANOMALY_FAILURES", "10/25/50")

# Agenda grid: rows of AGENDA_SLOT_MINUTES between these wall-clock hours (practice time).
AGENDA_SLOT_MINUTES = env.int("AGENDA_SLOT_MINUTES", default=5)
AGENDA_DAY_START = datetime.time(env.int("AGENDA_DAY_START_HOUR", default=7))
AGENDA_DAY_END = datetime.time(env.int("AGENDA_DAY_END_HOUR", default=20))

# Break-the-glass: how long a practitioner's emergency access to one record lasts.
BREAK_GLASS_MINUTES = env.int("BREAK_GLASS_MINUTES", default=60)

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="cabinet@localhost")
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)
# SMTP (EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend): reminders and alerts.
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=587)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=True)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
# Brevo's e-mail API (EMAIL_BACKEND=practice.mail.BrevoEmailBackend): sends with an
# idempotency key, so a reminder interrupted mid-send is sent again without a duplicate.
EMAIL_HTTP_API_KEY = env.str("EMAIL_HTTP_API_KEY", default="")
EMAIL_HTTP_URL = env.str("EMAIL_HTTP_URL", default="https://api.brevo.com/v3/smtp/email")
ADMINS = [tuple(a.split(":", 1)) for a in env.list("ADMINS", default=[]) if ":" in a]

# Error pages and error mails never show local variables: they may hold plaintext.
DEFAULT_EXCEPTION_REPORTER_FILTER = "audit.exception_filter.NoPlaintextExceptionReporterFilter"

PHONENUMBER_DEFAULT_REGION = env.str("PHONE_REGION", default="FR")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
