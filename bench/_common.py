"""Set-up shared by bench scripts: environment, throwaway keys, bench database, Django.

Same approach as bench/patients_bench.py (which keeps its own copy): production settings
(DEBUG off, TLS redirect off because there is no proxy here), keys from the environment or
from a throwaway key file made once and reused (the bench database is reused between runs,
so its keys must be too), the database created if missing, the plain static storage.
Nothing here is imported by the app.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY_NAMES = ("SECRET_KEY", "FIELD_ENCRYPTION_KEY", "BLIND_INDEX_KEY", "AUDIT_CHAIN_KEY")


def database_name(url: str) -> str:
    import environ

    return environ.Env.db_url_config(url)["NAME"]


def _trusted(path: Path) -> None:
    """A key file must be ours and private (it may sit in a shared directory such as /tmp)."""
    info = path.lstat()
    if path.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SystemExit(f"{path}: not a private file of this user (owner, mode 600, no symlink); remove it.")


def state_read(path: Path) -> dict[str, str]:
    """NAME=value lines of a key/state file ({} when missing)."""
    if not path.exists():
        return {}
    _trusted(path)
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values


def state_set(path: Path, name: str, value: str) -> None:
    """Add or replace one NAME=value line (a new file is made with mode 600)."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _trusted(path)
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{name}=")]
    lines.append(f"{name}={value}")
    path.write_text("\n".join(lines) + "\n")


def keys_load(key_file: Path) -> str:
    """Keys from the environment, else throwaway keys from `key_file` (made once, mode 600)."""
    if all(os.environ.get(name) for name in KEY_NAMES):
        return "from the environment"
    made = False
    if not key_file.exists():
        from practice.keygen import fresh_env

        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(fresh_env(debug=False))
        made = True
    values = state_read(key_file)
    for name in KEY_NAMES:
        os.environ[name] = values[name]
    return f"throwaway, {'made now in' if made else 'reused from'} {key_file}"


def environment_prepare(*, database_url: str, key_file: Path, conn_max_age: int = 600) -> str:
    """Environment for config.settings; returns where the keys came from."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ["DEBUG"] = "0"
    os.environ["SECURE_SSL_REDIRECT"] = "0"
    os.environ["ALLOWED_HOSTS"] = "testserver,localhost,127.0.0.1"
    os.environ.setdefault("CONN_MAX_AGE", str(conn_max_age))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Building the data runs single long statements (bulk inserts, index builds, VACUUM ANALYZE of
    # millions of rows): no statement limit here (docs/operations.md, "When the database fails").
    os.environ.setdefault("DATABASE_STATEMENT_TIMEOUT", "0")
    # Benches read far more patients than a person may: the budget check still runs (and is
    # measured), but with budgets no bench reaches.
    for role in ("SECRETARY", "PRACTITIONER", "PRACTICE_ADMIN", "OTHER"):
        os.environ.setdefault(f"READ_BUDGET_{role}", "100000000/100000000")
    return keys_load(key_file)


def _admin_connection(url: str):
    import environ
    import psycopg

    config = environ.Env.db_url_config(url)
    params = {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
        "dbname": "postgres",
    }
    return psycopg.connect(**{k: v for k, v in params.items() if v}, autocommit=True), config


def database_drop(url: str) -> bool:
    """Drop the bench database if it exists (PostgreSQL). Returns whether it existed."""
    import environ
    from psycopg import sql

    if "postgresql" not in environ.Env.db_url_config(url)["ENGINE"]:
        return False
    conn, config = _admin_connection(url)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (config["NAME"],)).fetchone()
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(config["NAME"])))
    return bool(exists)


def database_ensure(url: str) -> str:
    """Create the bench database if missing (PostgreSQL). Returns what was done."""
    import environ
    from psycopg import sql

    if "postgresql" not in environ.Env.db_url_config(url)["ENGINE"]:
        return "not PostgreSQL: left to Django"
    conn, config = _admin_connection(url)
    with conn:
        name = config["NAME"]
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return "exists"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return "created"


def django_setup() -> None:
    """django.setup(), then the plain static storage (the manifest is built by collectstatic at deploy)."""
    import django

    # whitenoise warns that STATIC_ROOT does not exist: collectstatic is a deploy step, not ours.
    warnings.filterwarnings("ignore", message="No directory at", module="django.core.handlers.base")
    django.setup()
    from django.conf import settings
    from django.test.utils import override_settings

    override_settings(
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    ).enable()


def keys_problem() -> str | None:
    """Why the configured keys do not fit the stored data (audit.keys.canary_problem), or None."""
    from audit.keys import canary_problem

    return canary_problem()


def role_user(username: str, role: str):
    """A user in one of practice.roles' groups (groups synced first), unusable password."""
    from django.contrib.auth.models import Group, User

    from practice.roles import roles_sync

    roles_sync()
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save()
    user.groups.add(Group.objects.get(name=role))
    return user


def pct(values, p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def server_describe() -> list[tuple[str, str]]:
    """Database server, Python/Django versions, machine: lines for a report header."""
    import cryptography
    import django
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT version()")
            server = cursor.fetchone()[0].split(" on ")[0]
            for knob in ("shared_buffers", "work_mem", "effective_cache_size", "jit"):
                cursor.execute(f"SHOW {knob}")
                server += f", {knob} {cursor.fetchone()[0]}"
        else:
            server = connection.vendor
    return [
        ("database", f"{server}; db {db['NAME']}, CONN_MAX_AGE {db['CONN_MAX_AGE']}"),
        (
            "python / django",
            f"{platform.python_version()} / {django.get_version()}, cryptography {cryptography.__version__}",
        ),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"),
    ]


def second_factor_passed(client, user) -> None:
    """Mark a force_login'ed client's session as past the second factor (conftest.client_for)."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    device = device or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()


def commit_latency(samples: int = 50) -> list[float]:
    """INSERT + COMMIT of one row in a logged table, in seconds (PostgreSQL: the disk's fsync).
    Every bench prints it beside its figures."""
    from time import perf_counter

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial PRIMARY KEY, at timestamptz)")
        values = []
        for _ in range(samples):
            t0 = perf_counter()
            cursor.execute("INSERT INTO bench_commit_probe (at) VALUES (now())")
            values.append(perf_counter() - t0)
        cursor.execute("TRUNCATE bench_commit_probe")
    return values
