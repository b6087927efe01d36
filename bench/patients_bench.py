"""Patient benchmark: search, audited pages versus a plaintext baseline, audit write rate.

    .venv/bin/python bench/patients_bench.py [--patients 100000]
        [--database-url postgres://postgres@127.0.0.1:5432/cabinet_bench] [--profile]

Sets Django up itself (production settings: DEBUG off, TLS redirect off because there is
no proxy here), creates and migrates the bench database, seeds N patients once (with a
plaintext mirror for the baseline), then prints figures and ratios. See bench/README.md
for what each figure means and how the baseline is built.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import random
import re
import statistics
import sys
import time
import types
import unicodedata
import uuid
import warnings
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit_latency  # noqa: E402  (bench/ is put on the path just above)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cabinet_bench"
KEY_FILE = Path(__file__).resolve().with_name(".bench-keys.env")
KEY_NAMES = ("SECRET_KEY", "FIELD_ENCRYPTION_KEY", "BLIND_INDEX_KEY", "AUDIT_CHAIN_KEY")
AUDIT_MIDDLEWARE = "audit.middleware.AuditContextMiddleware"
BATCH = 2000
TARGET_RATIO = 1.25
TARGET_SEARCH_P50_MS = 10.0
BASELINE_PREFIX = "bench-plain/patients/"

BASELINE_DESCRIPTION = """\
Baseline (plaintext, audit off), built from the same data:
  * table bench_plainpatient: same column names as patients_patient, plain CharField/DateField/
    TextField instead of encrypted ones, same PK (UUID) and indexes on is_archived / FKs, no blind
    indexes; created at run time with connection.schema_editor() from a model registered under
    the throwaway app label "bench"; filled with the same plaintext as patients_patient (same
    ids, created_at, updated_at) when the patients are seeded.
  * views defined in this script, mirroring patients.views.patient_list (GET) and patient_detail:
    same decorators (never_cache, login_required), same role check, same query shape
    (.filter(is_archived=False).only(RESULT_FIELDS).order_by('-updated_at')[:50], and
    .filter(pk=...).first()), same templates (patients/list.html + _table.html, patients/detail.html),
    same context keys; the model has the same get_absolute_url and display_name.
  * served by a second django.test.Client whose middleware is settings.MIDDLEWARE minus
    audit.middleware.AuditContextMiddleware (sessions, auth, CSRF, messages, axes all still run);
    both clients are force_login'ed as the same Secretary user; both pages are checked to render
    the same HTML (CSRF tokens aside) before timing."""


# --------------------------------------------------------------------------- set-up


def args_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100_000, help="patients to seed (default 100,000)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=f"bench database (default {DEFAULT_DATABASE_URL}; created if missing)",
    )
    parser.add_argument("--searches", type=int, default=200, help="timed searches per kind (default 200)")
    parser.add_argument("--pages", type=int, default=50, help="timed page loads per page and side (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed page loads first (default 10)")
    parser.add_argument("--audit-rounds", type=int, default=5, help="rounds of 10,000 audit rows (default 5)")
    parser.add_argument(
        "--conn-max-age",
        type=int,
        default=600,
        help="CONN_MAX_AGE unless set in the environment (default 600: persistent connection, "
        "so connection set-up does not dilute the ratio; 0 reconnects per request)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the audited pages and print the top entries")
    parser.add_argument("--reset", action="store_true", help="drop and recreate the bench database first")
    return parser.parse_args(argv)


def keys_load() -> str:
    """Keys from the environment, else the bench's own throwaway keys (made once, kept for reuse).

    The bench database is reused between runs, so its keys must be too: they live in
    bench/.bench-keys.env (untracked, mode 600), never in the project's .env.
    """
    if all(os.environ.get(name) for name in KEY_NAMES):
        return "from the environment"
    made = False
    if not KEY_FILE.exists():
        from practice.keygen import fresh_env

        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(fresh_env(debug=False))
        made = True
    for line in KEY_FILE.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name in KEY_NAMES:
            os.environ[name] = value
    return f"throwaway, {'made now in' if made else 'reused from'} {KEY_FILE.relative_to(ROOT)}"


def environment_prepare(args) -> str:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DEBUG"] = "0"
    os.environ["SECURE_SSL_REDIRECT"] = "0"
    os.environ["ALLOWED_HOSTS"] = "testserver,localhost,127.0.0.1"
    # The budget check still runs (and is measured), with budgets no bench reaches.
    for role in ("SECRETARY", "PRACTITIONER", "PRACTICE_ADMIN", "OTHER"):
        os.environ.setdefault(f"READ_BUDGET_{role}", "100000000/100000000")
        # Explained reads (audit/explain.py): the bench's patients have no appointment, so every
        # page is explained in one query, finds nothing, and spends the allowance: the worst
        # case of a page's admission cost (a real front desk's reads are 98% explained).
        os.environ.setdefault(f"READ_ALLOWANCE_{role}", "100000000/100000000")
        os.environ.setdefault(f"READ_MASKED_ALLOWANCE_{role}", "100000000/100000000")
    os.environ.setdefault("CONN_MAX_AGE", str(args.conn_max_age))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Building the data runs single long statements (bulk inserts, index builds, VACUUM ANALYZE of
    # millions of rows): no statement limit here (docs/operations.md, "When the database fails").
    os.environ.setdefault("DATABASE_STATEMENT_TIMEOUT", "0")
    return keys_load()


def database_ensure(url: str, *, reset: bool) -> str:
    """Create the bench database if missing (PostgreSQL). Returns what was done."""
    import environ
    import psycopg
    from psycopg import sql

    config = environ.Env.db_url_config(url)
    if "postgresql" not in config["ENGINE"]:
        return "not PostgreSQL: left to Django"
    name = config["NAME"]
    params = {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
        "dbname": "postgres",
    }
    with psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
        if exists and reset:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = False
            done = "dropped and created"
        else:
            done = "exists" if exists else "created"
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return done


# --------------------------------------------------------------------------- the plaintext mirror


def plain_model_define():
    """The baseline model: same columns as patients.Patient, in plaintext, app label "bench"."""
    from django.conf import settings
    from django.db import models
    from django.urls import reverse

    from patients.models import Language, Sex

    class PlainPatient(models.Model):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
        last_name = models.CharField(max_length=100)
        birth_name = models.CharField(max_length=100, blank=True)
        first_names = models.CharField(max_length=150)
        sex = models.CharField(max_length=1, choices=Sex.choices)
        birth_date = models.DateField()
        phone_mobile = models.CharField(max_length=20, blank=True)
        phone_other = models.CharField(max_length=20, blank=True)
        email = models.EmailField(max_length=254, blank=True)
        address = models.TextField(blank=True)
        postal_code = models.CharField(max_length=10, blank=True)
        city = models.CharField(max_length=100, blank=True)
        nir = models.CharField(max_length=15, blank=True)
        referring_doctor = models.CharField(max_length=150, blank=True)
        notes = models.TextField(blank=True)
        language = models.CharField(max_length=2, choices=Language.choices, default=Language.FRENCH)
        consent_sms = models.BooleanField(default=False)
        consent_email = models.BooleanField(default=False)
        is_archived = models.BooleanField(default=False, db_index=True)
        archived_at = models.DateTimeField(null=True, blank=True)
        created_at = models.DateTimeField()
        created_by = models.ForeignKey(
            settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
        )
        updated_at = models.DateTimeField()
        updated_by = models.ForeignKey(
            settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
        )

        class Meta:
            app_label = "bench"
            db_table = "bench_plainpatient"
            managed = False

        def __str__(self) -> str:
            return f"plain patient {str(self.pk)[:8]}"

        def get_absolute_url(self) -> str:
            return reverse("patients:detail", args=[self.pk])

        @property
        def display_name(self) -> str:
            return f"{self.last_name.upper()} {self.first_names}"

    return PlainPatient


def plain_table_ensure(model) -> bool:
    from django.db import connection

    if model._meta.db_table in connection.introspection.table_names():
        return False
    with connection.schema_editor() as editor:
        editor.create_model(model)
    return True


def plain_copy_fields() -> tuple[str, ...]:
    """What the plaintext mirror copies: every editable field plus the flags and times."""
    from patients.services import EDITABLE_FIELDS

    return (*EDITABLE_FIELDS, "is_archived", "archived_at", "created_at", "updated_at")


def plain_from(plain_model, patient):
    """A mirror row from a patient whose values are in plaintext in memory (or decrypted, audited)."""
    return plain_model(id=patient.pk, **{name: getattr(patient, name) for name in plain_copy_fields()})


# --------------------------------------------------------------------------- data


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and (c.isalnum() or c in "-.")).lower()


class People:
    """Cheap deterministic French patients: Faker fr_FR word lists, drawn like real life.

    Last names: 12 % from Faker's 400 most common French surnames with a Zipf-like weight
    (Martin is about 0.35 % of patients, as in France), 88 % from a long tail of 40,000
    derived surnames (about 2 patients each). Phones are unique E.164 numbers.
    """

    SUFFIXES = ("et", "ot", "in", "eau", "ier", "ard", "aud", "on", "ec", "ez")
    STREETS = 3000
    PLACES = 800

    def __init__(self):
        from faker import Faker
        from faker.providers.person.fr_FR import Provider as Person

        fake = Faker("fr_FR")
        fake.seed_instance(20260101)
        rng = random.Random(1)
        self.common = list(Person.last_names)
        self.common_cum = list(_cumulative([rank**-0.55 for rank in range(1, len(self.common) + 1)]))
        tail = {f"{name}{suffix}" for name in self.common for suffix in self.SUFFIXES if not name.endswith(suffix)}
        while len(tail) < 40_000:
            a, b = rng.sample(self.common, 2)
            tail.add(f"{a}-{b}")
        self.tail = sorted(tail)
        self.male = list(Person.first_names_male)
        self.female = list(Person.first_names_female)
        self.streets = [fake.street_name() for _ in range(self.STREETS)]
        self.places = [(fake.postcode(), fake.city()) for _ in range(self.PLACES)]
        self.doctors = [f"Dr {fake.first_name()} {fake.last_name()}" for _ in range(300)]
        self.domains = ("orange.fr", "free.fr", "gmail.com", "laposte.net", "sfr.fr", "yahoo.fr", "outlook.fr")
        self.notes = (
            "Allergie à la pénicilline.",
            "Préfère les rendez-vous le matin.",
            "Malentendant : parler face à lui.",
            "Accompagné par sa fille.",
            "Diabète de type 2, suivi trimestriel.",
            "Ne pas appeler au travail.",
        )
        self.today = datetime.datetime.now(datetime.UTC).date()

    def last_name(self, rng: random.Random) -> str:
        if rng.random() < 0.12:
            return rng.choices(self.common, cum_weights=self.common_cum)[0]
        return self.tail[rng.randrange(len(self.tail))]

    def person(self, i: int, rng: random.Random) -> dict:
        roll = rng.random()
        sex = "F" if roll < 0.51 else ("M" if roll < 0.99 else "X")
        names = self.female if sex == "F" or (sex == "X" and rng.random() < 0.5) else self.male
        count = 1 if rng.random() < 0.7 else (2 if rng.random() < 0.85 else 3)
        first_names = " ".join(rng.sample(names, count))
        last_name = self.last_name(rng)
        birth_name = self.last_name(rng) if sex == "F" and rng.random() < 0.3 else ""
        birth_date = datetime.date(1930, 1, 1) + datetime.timedelta(days=rng.randrange(94 * 365))
        if birth_date > self.today:
            birth_date = self.today
        mobile = f"+336{(i * 7919 + 12_345_678) % 100_000_000:08d}"  # a permutation: unique per i
        other = f"+331{rng.randrange(40_000_000, 80_000_000):08d}" if rng.random() < 0.25 else ""
        email = ""
        if rng.random() < 0.7:
            email = f"{_ascii(first_names.split(' ')[0])}.{_ascii(last_name)}{i % 97}@{rng.choice(self.domains)}"
        postal_code, city = rng.choice(self.places)
        department = rng.choice([d for d in range(1, 96) if d != 20])
        body = (
            f"{'2' if sex == 'F' else '1'}{birth_date.year % 100:02d}{birth_date.month:02d}"
            f"{department:02d}{rng.randrange(1, 990):03d}{rng.randrange(1, 999):03d}"
        )
        nir = f"{body}{97 - int(body) % 97:02d}"
        return {
            "last_name": last_name,
            "birth_name": birth_name,
            "first_names": first_names,
            "sex": sex,
            "birth_date": birth_date,
            "phone_mobile": mobile,
            "phone_other": other,
            "email": email,
            "address": f"{rng.randrange(1, 140)} {rng.choice(self.streets)}",
            "postal_code": postal_code,
            "city": city,
            "nir": nir,
            "referring_doctor": rng.choice(self.doctors) if rng.random() < 0.8 else "",
            "notes": rng.choice(self.notes) if rng.random() < 0.15 else "",
            "language": "fr" if rng.random() < 0.95 else "en",
            "consent_sms": rng.random() < 0.7,
            "consent_email": rng.random() < 0.4,
            "is_archived": rng.random() < 0.03,
        }


def _cumulative(weights):
    total = 0.0
    for w in weights:
        total += w
        yield total


def seed(n: int, plain_model) -> tuple[int, float]:
    """Seed patients (and their plaintext mirror) up to n rows. Returns (rows added, seconds)."""
    from django.db import transaction

    from audit.context import system_context
    from patients.models import Patient

    existing = Patient.objects.count()
    if existing >= n:
        return 0, 0.0
    people = People()
    started = perf_counter()
    with system_context("bench", purpose="bench seed"):
        for start in range(existing, n, BATCH):
            rng = random.Random(f"cabinet bench batch {start}")
            stop = min(start + BATCH, n)
            patients = []
            for i in range(start, stop):
                patient = Patient(**people.person(i, rng))
                patient.blind_indexes_update()
                patients.append(patient)
            with transaction.atomic():
                Patient.objects.bulk_create(patients)
                # Values are still plaintext in memory here (nothing decrypts, nothing to audit).
                plain_model.objects.bulk_create([plain_from(plain_model, p) for p in patients])
            elapsed = perf_counter() - started
            done = stop - existing
            rate = done / elapsed
            print(
                f"\r  seeded {stop:>9,}/{n:,}  ({rate:,.0f} patients/s, ~{(n - stop) / rate:,.0f} s left)  ",
                end="",
                flush=True,
            )
    print()
    return n - existing, perf_counter() - started


def stored_format_problem() -> str | None:
    """Reused data must still decrypt: the token format (or the keys) may have changed since seeding."""
    from audit.context import system_context
    from audit.fields import CiphertextError
    from patients.models import Patient

    patient = Patient.objects.only("id", "last_name").first()
    if patient is None:
        return None
    with system_context("bench-check", purpose="bench: stored format check") as ctx:
        try:
            patient.last_name  # noqa: B018  (the read is the check)
        except CiphertextError as error:
            return f"Stored patients no longer decrypt ({error}): the token format changed. Run again with --reset."
        finally:
            ctx.discard()
    return None


def plain_mirror_rebuild(plain_model) -> int:
    """Copy every patient's plaintext into the mirror by decrypting it (audited as system:bench-mirror).

    Only needed when the patients exist without their mirror (e.g. seeded by another tool).
    """
    from django.db import connection, transaction

    from audit.context import system_context
    from patients.models import Patient

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {connection.ops.quote_name(plain_model._meta.db_table)}")
    copied, last = 0, None
    with system_context("bench-mirror", purpose="bench plaintext baseline copy"):
        while True:
            qs = Patient.objects.order_by("pk")
            if last is not None:
                qs = qs.filter(pk__gt=last)
            chunk = list(qs[:BATCH])
            if not chunk:
                break
            with transaction.atomic():
                plain_model.objects.bulk_create([plain_from(plain_model, p) for p in chunk])
            copied += len(chunk)
            last = chunk[-1].pk
            print(f"\r  mirrored {copied:,}", end="", flush=True)
    print()
    return copied


def bench_user():
    from django.contrib.auth.models import Group, User

    from practice.roles import SECRETARY, roles_sync

    roles_sync()
    user, created = User.objects.get_or_create(username="bench.secretary")
    if created:
        user.set_unusable_password()
        user.save()
    user.groups.add(Group.objects.get(name=SECRETARY))
    return user


# The page loads are a front-desk account in the middle of a busy day, under the budgets the
# app ships with (config/settings.py), so the budget check costs what it costs in a clinic:
# a secretary of a 10-practitioner clinic reads about 450 patients a day
# (audit/tests/test_incident.py, the busy day), all before the measured pages.
FRONT_DESK_PATIENTS_EARLIER = 450
SHIPPED_BUDGETS = {
    "Secretary": (600, 1500),
    "Practitioner": (200, 500),
    "Practice admin": (600, 1500),
    "default": (100, 200),
}


def front_desk_user(plain_model, samples):
    """``bench.frontdesk`` (Secretary): its tally reset to FRONT_DESK_PATIENTS_EARLIER patients
    read over the previous nine hours (none of the sampled ones), no block."""
    import datetime

    from django.contrib.auth.models import Group, User
    from django.db import connection
    from django.utils import timezone

    from audit.models import ReadBlock, ReadTally
    from practice.roles import SECRETARY

    user, created = User.objects.get_or_create(username="bench.frontdesk")
    if created:
        user.set_unusable_password()
        user.save()
    user.groups.add(Group.objects.get(name=SECRETARY))
    # The tally is derived data (the trail keeps the reads): the bench may reset it.
    ReadTally.objects.filter(user_id=user.pk).delete()
    ReadBlock.objects.filter(user_id=user.pk).delete()
    sampled = {s["id"] for s in samples}
    earlier = [
        pk
        for pk in plain_model.objects.order_by("?").values_list("id", flat=True)[: FRONT_DESK_PATIENTS_EARLIER * 2]
        if pk not in sampled
    ][:FRONT_DESK_PATIENTS_EARLIER]
    now = timezone.now()
    ReadTally.objects.bulk_create(
        ReadTally(
            user_id=user.pk,
            patient_id=pk,
            first_read_at=now - datetime.timedelta(hours=9) + datetime.timedelta(minutes=i),
            last_read_at=now - datetime.timedelta(hours=9) + datetime.timedelta(minutes=i),
        )
        for i, pk in enumerate(earlier)
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audit_readtally")  # as autovacuum keeps it
    return user


# --------------------------------------------------------------------------- the baseline views


def baseline_urls_install(plain_model) -> None:
    """Baseline views served next to the app's URLs (so templates reverse the same names)."""
    from django.contrib.auth.decorators import login_required
    from django.core.exceptions import PermissionDenied
    from django.http import Http404
    from django.shortcuts import render
    from django.test.utils import override_settings
    from django.urls import path
    from django.views.decorators.cache import never_cache
    from django.views.decorators.http import require_http_methods

    import config.urls
    from patients.forms import PatientListExportForm, PatientSearchForm
    from patients.selectors import RESULT_FIELDS
    from practice.roles import PRACTICE_ADMIN, SECRETARY, has_role

    @never_cache
    @login_required
    @require_http_methods(["GET", "POST"])
    def plain_list(request):
        if not has_role(request.user, SECRETARY, PRACTICE_ADMIN):
            raise PermissionDenied
        form = PatientSearchForm(None)
        recent = list(plain_model.objects.filter(is_archived=False).only(*RESULT_FIELDS).order_by("-updated_at")[:50])
        context = {"form": form, "results": [], "recent": recent, "searched": False, "too_many": False}
        # The export form names the listed patients, as on the real page.
        context["export_form"] = PatientListExportForm(initial={"patient": [p.pk for p in recent]})
        return render(request, "patients/list.html", context)

    @never_cache
    @login_required
    def plain_detail(request, pk):
        if not has_role(request.user, SECRETARY, PRACTICE_ADMIN):
            raise Http404
        patient = plain_model.objects.filter(pk=pk).first()
        if patient is None:
            raise Http404
        return render(request, "patients/detail.html", {"patient": patient})

    module = types.ModuleType("bench_urls")
    module.urlpatterns = [
        *config.urls.urlpatterns,
        path(BASELINE_PREFIX, plain_list, name="bench_plain_list"),
        path(f"{BASELINE_PREFIX}<uuid:pk>/", plain_detail, name="bench_plain_detail"),
    ]
    sys.modules["bench_urls"] = module
    override_settings(ROOT_URLCONF="bench_urls").enable()


def _second_factor_passed(client, user) -> None:
    """Mark a force_login'ed client's session as past the second factor (conftest.client_for)."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    device = device or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()


def clients_make(user):
    """The audited client (settings.MIDDLEWARE) and the baseline one (minus the audit middleware)."""
    from django.conf import settings
    from django.test import Client
    from django.test.utils import override_settings

    audited = Client()
    audited.force_login(user)
    _second_factor_passed(audited, user)
    audited.handler.load_middleware()
    without_audit = [m for m in settings.MIDDLEWARE if m != AUDIT_MIDDLEWARE]
    with override_settings(MIDDLEWARE=without_audit):
        baseline = Client()
        baseline.force_login(user)
        _second_factor_passed(baseline, user)
        baseline.handler.load_middleware()
    return audited, baseline


# --------------------------------------------------------------------------- measuring


def pct(values, p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


_CSRF = re.compile(r'(name="csrfmiddlewaretoken" value=")[^"]+(")')


def _html(response) -> str:
    # The language form carries request.path: the baseline's URL differs by its prefix only.
    html = _CSRF.sub(r"\1-\2", response.content.decode())
    return html.replace(f"/{BASELINE_PREFIX}", "/patients/")


def same_page(a, b) -> str:
    ha, hb = _html(a), _html(b)
    if ha == hb:
        return f"identical ({len(ha):,} chars)"
    for n, (la, lb) in enumerate(zip(ha.splitlines(), hb.splitlines(), strict=False), start=1):
        if la != lb:
            return f"DIFFERENT at line {n}: {la.strip()[:60]!r} vs {lb.strip()[:60]!r}"
    return f"DIFFERENT lengths {len(ha)} vs {len(hb)}"


def get_ok(client, url):
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"GET {url} answered {response.status_code}; the bench needs 200.")
    return response


def queries_and_rows(client, url) -> tuple[list[str], int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audit.models import AuditEvent

    before = AuditEvent.objects.count()
    with CaptureQueriesContext(connection) as captured:
        get_ok(client, url)
    heads = [_sql_head(q["sql"]) for q in captured.captured_queries]
    return heads, AuditEvent.objects.count() - before


def _sql_head(sql: str) -> str:
    sql = sql.replace('"bench_plainpatient"', '"patients_patient"')
    words = sql.replace('"', "").split()
    if words and words[0] == "SELECT" and "FROM" in words:
        return "SELECT ... FROM " + words[words.index("FROM") + 1]
    return " ".join(words[:3])


def extra_queries(audited: list[str], baseline: list[str]) -> list[str]:
    rest = list(baseline)
    extra = []
    for head in audited:
        if head in rest:
            rest.remove(head)
        else:
            extra.append(head)
    return extra


def todays_appointments_ensure(samples) -> list:
    """Half of the sampled patients get an appointment today with ``bench.doctor`` (five minutes
    apart from 00:00, idempotent): their record pages are explained by it (audit/explain.py), as
    98% of a front desk's reads are; the other half stay unexplained (the allowance is spent,
    the worst case). Returns the ids of the explained ones."""
    import datetime

    from django.contrib.auth.models import User
    from django.utils import timezone

    from practice.models import Practitioner, Specialty
    from scheduling.models import Appointment, AppointmentType

    user, _ = User.objects.get_or_create(username="bench.doctor")
    specialty, _ = Specialty.objects.get_or_create(name="Bench")
    doctor, _ = Practitioner.objects.get_or_create(
        user=user, defaults={"display_name": "Dr Bench", "specialty": specialty}
    )
    kind, _ = AppointmentType.objects.get_or_create(name="Bench visit", defaults={"duration_minutes": 5})
    explained = [s["id"] for s in samples[: len(samples) // 2]]
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    today = Appointment.objects.filter(
        practitioner=doctor, start__gte=midnight, start__lt=midnight + datetime.timedelta(days=1)
    )
    if today.count() < len(explained):
        today.delete()
        rows = []
        for n, pk in enumerate(explained):
            start = midnight + datetime.timedelta(minutes=5 * n)
            rows.append(
                Appointment(
                    practitioner=doctor,
                    patient_id=pk,
                    appointment_type=kind,
                    start=start,
                    end=start + datetime.timedelta(minutes=5),
                )
            )
        Appointment.objects.bulk_create(rows, batch_size=500)
    return explained


def pages_bench(audited, baseline, samples, *, iterations: int, warmup: int) -> dict:
    """Interleaved timings of the two sides; each detail load opens another patient."""
    results = {}
    explained = todays_appointments_ensure(samples)
    ids = [s["id"] for s in samples if s["id"] not in set(explained)]
    pages = {
        # Not comparable since explained reads: the audited list shows today's patients (those of the
        # explained half below, up to 100), the baseline the 50 most recently changed.
        "patient list (today's)": (lambda i: "/patients/", lambda i: f"/{BASELINE_PREFIX}"),
        "patient record page (explained)": (
            lambda i: f"/patients/{explained[i % len(explained)]}/",
            lambda i: f"/{BASELINE_PREFIX}{explained[i % len(explained)]}/",
        ),
        "patient record page (unexplained)": (
            lambda i: f"/patients/{ids[i % len(ids)]}/",
            lambda i: f"/{BASELINE_PREFIX}{ids[i % len(ids)]}/",
        ),
    }
    for name, (audited_url, baseline_url) in pages.items():
        check = same_page(get_ok(audited, audited_url(0)), get_ok(baseline, baseline_url(0)))
        audited_q, audited_rows = queries_and_rows(audited, audited_url(0))
        baseline_q, baseline_rows = queries_and_rows(baseline, baseline_url(0))
        for i in range(warmup):
            get_ok(audited, audited_url(len(ids) - 1 - i))
            get_ok(baseline, baseline_url(len(ids) - 1 - i))
        times = {"audited": [], "baseline": []}
        cpu = {"audited": [], "baseline": []}
        for i in range(iterations):
            order = (("audited", audited, audited_url), ("baseline", baseline, baseline_url))
            for side, client, url in order if i % 2 == 0 else reversed(order):
                target = url(i + 1)
                c0, t0 = time.process_time(), perf_counter()
                get_ok(client, target)
                times[side].append(perf_counter() - t0)
                cpu[side].append(time.process_time() - c0)
        results[name] = {
            "times": times,
            "cpu": cpu,
            "same": check,
            "queries": (len(audited_q), len(baseline_q)),
            "extra_queries": extra_queries(audited_q, baseline_q),
            "audit_rows": (audited_rows, baseline_rows),
        }
    return results


def search_bench(user, samples, iterations: int) -> dict:
    from audit.context import Actor, AuditContext, opened
    from patients.selectors import PatientQuery, patient_search

    actor = Actor.for_user(user)

    def national(e164: str) -> str:
        digits = "0" + e164[3:]
        return " ".join(digits[i : i + 2] for i in range(0, 10, 2))

    kinds = {
        "last name": lambda s: PatientQuery(last_name=s["last_name"]),
        "last name + first name": lambda s: PatientQuery(
            last_name=s["last_name"], first_name=s["first_names"].split(" ")[0]
        ),
        "phone (typed 06 12 34 56 78)": lambda s: PatientQuery(phone=national(s["phone_mobile"])),
    }
    results = {}
    for kind, make in kinds.items():
        for s in samples[:5]:  # warm-up
            with opened(AuditContext(purpose="bench:search", actor=actor, path="/patients/")):
                patient_search(make(s))
        total, before_flush, decrypted, found, capped = [], [], [], 0, 0
        for i in range(iterations):
            s = samples[i % len(samples)]
            query = make(s)
            t0 = perf_counter()
            with opened(AuditContext(purpose="bench:search", actor=actor, path="/patients/")) as ctx:
                rows = patient_search(query)
                t1 = perf_counter()
                decrypted.append(ctx.pending)
            total.append(perf_counter() - t0)
            before_flush.append(t1 - t0)
            if rows.more:
                capped += 1
            elif any(str(p.pk) == str(s["id"]) for p in rows):
                found += 1
        results[kind] = {
            "total": total,
            "search": before_flush,
            "decrypted": statistics.mean(decrypted),
            "found": found,
            "capped": capped,
            "n": iterations,
        }
    return results


def audit_write_bench(rounds: int, rows: int = 10_000) -> dict:
    from audit.context import Actor, AuditContext, opened

    def fill(ctx, count):
        for _ in range(count):
            pk = uuid.uuid4()
            ctx.record_read(model_label="patients.Patient", object_pk=pk, patient_id=pk, field_name="last_name")
            ctx.record_read(model_label="patients.Patient", object_pk=pk, patient_id=pk, field_name="first_names")

    one_insert, default_threshold = [], []
    for _ in range(rounds):
        ctx = AuditContext(purpose="bench:audit-rate", actor=Actor.system("bench"), flush_threshold=rows + 1)
        with opened(ctx):
            t0 = perf_counter()
            fill(ctx, rows)
            t1 = perf_counter()
            ctx.flush()
            t2 = perf_counter()
        one_insert.append((t1 - t0, t2 - t1))
        ctx = AuditContext(purpose="bench:audit-rate", actor=Actor.system("bench"))
        t0 = perf_counter()
        with opened(ctx):
            fill(ctx, rows)
        default_threshold.append(perf_counter() - t0)
    per_request = []
    for _ in range(200):
        ctx = AuditContext(purpose="bench:audit-flush", actor=Actor.system("bench"), path="/patients/")
        with opened(ctx):
            for _ in range(50):
                pk = uuid.uuid4()
                for name in ("last_name", "first_names", "birth_name", "birth_date"):
                    ctx.record_read(model_label="patients.Patient", object_pk=pk, patient_id=pk, field_name=name)
            t0 = perf_counter()
            ctx.flush()
            per_request.append(perf_counter() - t0)
    return {"rows": rows, "one_insert": one_insert, "default": default_threshold, "per_request_50": per_request}


def breakdown_bench(plain_model, samples, iterations: int = 30) -> dict:
    """Pieces of the audited pages timed alone (server side, no HTTP, no templates)."""
    from audit.context import Actor, AuditContext, opened
    from audit.fields import encrypted_fields, unseal
    from patients.models import Patient
    from patients.selectors import RESULT_FIELDS, patient_recent

    out = {}

    def timed(fn, n=iterations):
        fn()
        values = []
        for _ in range(n):
            t0 = perf_counter()
            fn()
            values.append(perf_counter() - t0)
        return values

    out["list query, encrypted table (no decryption)"] = timed(lambda: list(patient_recent()))
    out["list query, plaintext table"] = timed(
        lambda: list(plain_model.objects.filter(is_archived=False).only(*RESULT_FIELDS).order_by("-updated_at")[:50])
    )
    rows = list(patient_recent())
    list_fields = ("last_name", "first_names", "birth_name", "birth_date")

    def decrypt_list():
        fresh = [Patient.from_db("default", ["id"], [p.pk]) for p in rows]  # cheap instances
        for p, src in zip(fresh, rows, strict=True):
            for name in list_fields:
                p.__dict__[name] = src.__dict__[name]  # still Sealed: rows were loaded, never read
        ctx = AuditContext(purpose="bench:breakdown", actor=Actor.system("bench"))
        with opened(ctx):
            for p in fresh:
                for name in list_fields:
                    getattr(p, name)
            ctx.discard()

    out["decrypt + record 50 rows x 4 fields (list page)"] = timed(decrypt_list)
    ids = [s["id"] for s in samples]
    counter = iter(range(10**9))
    out["record query, encrypted table (no decryption)"] = timed(
        lambda: Patient.objects.filter(pk=ids[next(counter) % len(ids)]).first()
    )
    out["record query, plaintext table"] = timed(
        lambda: plain_model.objects.filter(pk=ids[next(counter) % len(ids)]).first()
    )
    one = Patient.objects.filter(pk=ids[0]).first()
    fields = encrypted_fields(Patient)

    def decrypt_record():
        fresh = Patient.from_db("default", ["id"], [one.pk])
        for f in fields:
            fresh.__dict__[f.attname] = one.__dict__[f.attname]
        ctx = AuditContext(purpose="bench:breakdown", actor=Actor.system("bench"))
        with opened(ctx):
            for f in fields:
                getattr(fresh, f.attname)
            ctx.discard()

    out[f"decrypt + record 1 row x {len(fields)} fields (record page)"] = timed(decrypt_record)
    token = one.__dict__["last_name"].token
    bound = fields[0].bound_to(one)
    out["unseal one field (Fernet decrypt + binding check), per call"] = timed(
        lambda: unseal(token, bound, where="bench"), n=2000
    )
    return out


PROFILE_PIECES = (
    r"audit/(middleware|context|services|fields)\.py|fernet\.py.*(decrypt|_verify)|query\.py.*bulk_create"
    r"|connection\.py.*wait|template/base\.py.*\(render\)|views\.py|shortcuts"
)


def profile_pages(audited, samples) -> str:
    ids = [s["id"] for s in samples]
    stream = io.StringIO()
    for name, urls in (
        ("GET /patients/ x20", ["/patients/"] * 20),
        ("GET /patients/<uuid>/ x50", [f"/patients/{ids[i % len(ids)]}/" for i in range(50)]),
    ):
        profiler = cProfile.Profile()
        profiler.enable()
        for url in urls:
            get_ok(audited, url)
        profiler.disable()
        stream.write(f"\n--- cProfile, audited {name}: top 20 by own time ---\n")
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(20)
        stream.write(f"\n--- cProfile, audited {name}: the audit, crypto, SQL and template pieces, cumulative ---\n")
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(PROFILE_PIECES, 30)
    return stream.getvalue()


# --------------------------------------------------------------------------- report


def baseline_recent_index(plain_model) -> None:
    """The baseline gets the app's `patient_recent` index (patients migration 0003): the
    comparison is about encryption and audit, not about an index one side lacks."""
    from django.db import connection

    table = plain_model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {table}_recent ON {table} (updated_at DESC) WHERE NOT is_archived")
        cursor.execute(f"ANALYZE {table}")


def environment_describe(keys_note: str, db_note: str, seeded: tuple[int, float]) -> list[tuple[str, str]]:
    import cryptography
    import django
    from django.conf import settings
    from django.db import connection

    from audit.models import AuditEvent
    from patients.models import Patient

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT version()")
            server = cursor.fetchone()[0].split(" on ")[0]
            cursor.execute("SHOW shared_buffers")
            server += f", shared_buffers {cursor.fetchone()[0]}"
            cursor.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('patients_patient')), "
                "pg_size_pretty(pg_total_relation_size('bench_plainpatient'))"
            )
            sizes = "patients_patient {}, bench_plainpatient {}".format(*cursor.fetchone())
        else:
            server, sizes = connection.vendor, "n/a"
    added, seconds = seeded
    db = settings.DATABASES["default"]
    commits = commit_latency() if connection.vendor == "postgresql" else [0.0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        ("database", f"{connection.vendor} ({server}), db {db['NAME']} ({db_note}), CONN_MAX_AGE {db['CONN_MAX_AGE']}"),
        (
            "patients",
            f"{Patient.objects.count():,} ({f'seeded {added:,} now in {seconds:,.0f} s' if added else 'reused'})",
        ),
        ("table sizes", sizes),
        (
            "commit latency",
            f"INSERT+COMMIT of 1 row: p50 {pct(commits, 50) * 1000:.2f} ms, p95 {pct(commits, 95) * 1000:.2f} ms",
        ),
        ("audit trail rows", f"{AuditEvent.objects.count():,} before this run's measurements"),
        (
            "python / django",
            f"{platform.python_version()} / {django.get_version()}, cryptography {cryptography.__version__}",
        ),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}, {platform.platform()}"),
        (
            "settings",
            f"DEBUG={settings.DEBUG}, AUDIT_FLUSH_THRESHOLD={settings.AUDIT_FLUSH_THRESHOLD}, keys {keys_note}",
        ),
    ]


def report(env, searches, pages, audit, breakdown, args) -> None:
    line = "=" * 100
    print(f"\n{line}\nCabinet patients bench\n{line}")
    for k, v in env:
        print(f"  {k:<18} {v}")

    print(f"\n[a] patient search, patients.selectors.patient_search inside an audit context ({args.searches} each)")
    print("    server time = open context + blind-index query + decrypt candidates + filter + audit INSERT")
    print(f"    {'query':<32}{'p50 ms':>9}{'p95 ms':>9}{'p50 w/o flush':>15}{'rows decr.':>11}  found / >50 hits")
    for kind, r in searches.items():
        verdict = "" if pct(r["total"], 50) * 1000 < TARGET_SEARCH_P50_MS else "  ABOVE 10 ms"
        print(
            f"    {kind:<32}{ms(pct(r['total'], 50)):>9}{ms(pct(r['total'], 95)):>9}{ms(pct(r['search'], 50)):>15}"
            f"{r['decrypted']:>11.1f}  {r['found']}/{r['n']} found, {r['capped']} capped{verdict}"
        )
    print(
        f"    target (docs/design.md): p50 under {TARGET_SEARCH_P50_MS:.0f} ms among 1,000,000 patients "
        "(this run: N above)"
    )

    print(f"\n[b] pages through django.test.Client, logged in as a Secretary ({args.pages} timed loads per side)")
    print("    wall = time for client.get() (Django + PostgreSQL); cpu = this process's CPU time (Django only)")
    print(
        f"    {'page':<26}{'side':<10}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'cpu p50':>9}"
        f"{'queries':>9}{'audit rows':>12}"
    )
    ratios = {}
    for name, r in pages.items():
        for n, side in enumerate(("audited", "baseline")):
            values = r["times"][side]
            print(
                f"    {name if n == 0 else '':<26}{side:<10}{ms(pct(values, 50)):>9}{ms(pct(values, 95)):>9}"
                f"{ms(statistics.mean(values)):>9}{ms(pct(r['cpu'][side], 50)):>9}"
                f"{r['queries'][n]:>9}{r['audit_rows'][n]:>12}"
            )
        p50 = pct(r["times"]["audited"], 50) / pct(r["times"]["baseline"], 50)
        p95 = pct(r["times"]["audited"], 95) / pct(r["times"]["baseline"], 95)
        ratios[name] = p50
        verdict = "ok" if p50 <= TARGET_RATIO else f"ABOVE the {TARGET_RATIO}x target"
        cpu = pct(r["cpu"]["audited"], 50) / pct(r["cpu"]["baseline"], 50)
        print(f"    {'':<26}ratio audited/baseline: p50 {p50:.2f}x, p95 {p95:.2f}x  -> {verdict}")
        print(f"    {'':<26}ratio of cpu p50: {cpu:.2f}x (Django side only; PostgreSQL work not counted)")
        print(f"    {'':<26}same HTML: {r['same']}")
        print(f"    {'':<26}audited-only queries: {', '.join(r['extra_queries']) or 'none'}")
    print("\n" + "\n".join("    " + s for s in BASELINE_DESCRIPTION.splitlines()))

    rows = audit["rows"]
    fill = [a for a, _ in audit["one_insert"]]
    insert = [b for _, b in audit["one_insert"]]
    total = [a + b for a, b in audit["one_insert"]]
    print(f"\n[c] audit rows written ({len(total)} rounds of {rows:,} distinct (model, pk), 2 fields each)")
    print(
        f"    one INSERT of {rows:,}: {rows / statistics.median(total):>10,.0f} rows/s overall "
        f"(buffering {statistics.median(fill) / rows * 1e6:.1f} us/row, "
        f"INSERT {statistics.median(insert) * 1000:.0f} ms"
        f" = {rows / statistics.median(insert):,.0f} rows/s)"
    )
    print(
        f"    default threshold (flush every {audit['threshold']:,} rows): "
        f"{rows / statistics.median(audit['default']):>10,.0f} rows/s overall"
    )
    per = audit["per_request_50"]
    print(
        f"    per-request flush of 50 rows (4 fields each): p50 {pct(per, 50) * 1000:.2f} ms, "
        f"p95 {pct(per, 95) * 1000:.2f} ms"
    )

    print("\n[d] where the audited time goes (pieces timed alone, p50)")
    for name, values in breakdown.items():
        unit = "us" if "per call" in name else "ms"
        value = pct(values, 50) * (1e6 if unit == "us" else 1000)
        print(f"    {name:<62}{value:>9.2f} {unit}")

    print(f"\nSUMMARY  target: audited/baseline <= {TARGET_RATIO}x (p50)")
    for name, ratio in ratios.items():
        print(f"    {name:<26}{ratio:.2f}x  {'ok' if ratio <= TARGET_RATIO else 'ABOVE TARGET'}")
    print(line)


def main(argv=None) -> int:
    args = args_parse(argv)
    keys_note = environment_prepare(args)
    db_note = database_ensure(args.database_url, reset=args.reset)

    import django

    # whitenoise warns that STATIC_ROOT does not exist: collectstatic is a deploy step, not ours.
    warnings.filterwarnings("ignore", message="No directory at", module="django.core.handlers.base")
    django.setup()

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import override_settings

    from audit.keys import canary_problem

    # As the test suite does: the static manifest is built by collectstatic at deploy only.
    override_settings(
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    ).enable()

    problem = canary_problem()
    if problem:
        print(f"The bench database was made with other keys: {problem}\nRun again with --reset.", file=sys.stderr)
        return 2
    print(f"Bench database {settings.DATABASES['default']['NAME']}: {db_note}; migrating...", flush=True)
    call_command("migrate", interactive=False, verbosity=0)

    plain_model = plain_model_define()
    plain_table_ensure(plain_model)
    from patients.models import Patient

    print(f"Seeding up to {args.patients:,} patients (batches of {BATCH:,})...", flush=True)
    seeded = seed(args.patients, plain_model)
    problem = stored_format_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if plain_model.objects.count() != Patient.objects.count():
        print("Plaintext mirror incomplete: copying every patient (decrypted, audited as system:bench-mirror)...")
        plain_mirror_rebuild(plain_model)
    if seeded[0] or connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for table in ("patients_patient", "bench_plainpatient"):
                cursor.execute(f"{'VACUUM ' if seeded[0] and connection.vendor == 'postgresql' else ''}ANALYZE {table}")

    user = bench_user()
    baseline_urls_install(plain_model)
    samples = list(
        plain_model.objects.filter(is_archived=False)
        .order_by("?")
        .values("id", "last_name", "first_names", "phone_mobile")[: max(args.searches, args.pages + args.warmup)]
    )
    audited, baseline = clients_make(front_desk_user(plain_model, samples))
    baseline_recent_index(plain_model)
    return measure(args, plain_model, user, audited, baseline, samples, keys_note, db_note, seeded)


def measure(args, plain_model, user, audited, baseline, samples, keys_note, db_note, seeded) -> int:
    from django.conf import settings
    from django.test.utils import override_settings

    env = environment_describe(keys_note, db_note, seeded)

    print("Measuring search...", flush=True)
    searches = search_bench(user, samples, args.searches)
    print("Measuring pages...", flush=True)
    with override_settings(READ_BUDGETS=SHIPPED_BUDGETS):
        pages = pages_bench(audited, baseline, samples, iterations=args.pages, warmup=args.warmup)
    print("Measuring audit writes...", flush=True)
    audit = audit_write_bench(args.audit_rounds)
    audit["threshold"] = settings.AUDIT_FLUSH_THRESHOLD
    print("Measuring the pieces...", flush=True)
    breakdown = breakdown_bench(plain_model, samples)
    report(env, searches, pages, audit, breakdown, args)
    if args.profile:
        print(profile_pages(audited, samples))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"(bench ran {time.time() - started:,.0f} s)")
    raise SystemExit(code)
