"""The production deploy check: `python -m config.deploy_check` (`make deploy-check`; CI runs it).

Production settings, as a deploy has them: DEBUG unset, fresh keys, ALLOWED_HOSTS set, no
broker; on a database made for the check and dropped after it: PostgreSQL when DATABASE_URL
names a PostgreSQL server (the database is made there by DATABASE_OWNER_URL's role if set,
else DATABASE_URL's, and the check connects as that role), a temporary SQLite file otherwise.
Each step is a `manage.py` of its own, as at a deploy; the first that fails ends the check:

1. `migrate` and `collectstatic`;
2. `check --deploy --fail-level WARNING`: not one warning;
3. `check` with a FIELD_ENCRYPTION_KEY that did not encrypt this database must fail, and with
   the key canary (audit.E001): a wrong key stops the start instead of showing garbage.

Nothing here imports the settings: `manage.py` finds them.
"""

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from cryptography.fernet import Fernet
from psycopg import sql

from practice.keygen import fresh_env

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql"}
# Set by the check itself, or left out of its environment: a deploy's values, not the caller's.
DROPPED = ("DEBUG", "CELERY_BROKER_URL", "DATABASE_OWNER_URL", "DATABASE_URL", "ALLOWED_HOSTS")


class CheckFailed(Exception):
    pass


def fresh_keys() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in fresh_env(debug=False).splitlines() if not line.startswith("#"))
    return dict(pairs)


@contextmanager
def throwaway_database(database_url: str, owner_url: str):
    """Yields the URL of an empty database of the check's own, dropped when the check ends."""
    if urlsplit(database_url).scheme not in POSTGRES_SCHEMES:
        with tempfile.TemporaryDirectory(prefix="cabinet-deploy-check-") as folder:
            yield f"sqlite:///{Path(folder) / 'deploy-check.sqlite3'}"
        return
    owner = urlsplit(owner_url)
    name = f"{owner.path.strip('/') or 'cabinet'}_deploy_check"
    statements = [sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))]
    with psycopg.connect(owner_url, dbname="postgres", autocommit=True) as connection:
        for statement in [*statements, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))]:
            connection.execute(statement)
    try:
        yield urlunsplit(owner._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(owner_url, dbname="postgres", autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)


def manage(env: dict[str, str], *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    print(f"$ manage.py {' '.join(args)}", flush=True)
    return subprocess.run(  # noqa: S603 (this interpreter, our manage.py, fixed arguments)
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=False, capture_output=capture, text=True
    )


def run(env: dict[str, str]) -> None:
    for step in (["migrate", "--noinput", "-v", "0"], ["collectstatic", "--noinput", "-v", "0"]):
        if manage(env, *step).returncode:
            raise CheckFailed(f"manage.py {step[0]} failed")
    if manage(env, "check", "--deploy", "--fail-level", "WARNING").returncode:
        raise CheckFailed("check --deploy found problems (warnings count) with production settings")
    print("check --deploy: no warnings")

    wrong_key = {**env, "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    result = manage(wrong_key, "check", capture=True)
    output = result.stdout + result.stderr
    if result.returncode == 0:
        raise CheckFailed(f"{output}check passed with a FIELD_ENCRYPTION_KEY that did not encrypt this database")
    if "audit.E001" not in output:
        raise CheckFailed(
            f"{output}a wrong FIELD_ENCRYPTION_KEY failed check, but not with the key canary (audit.E001)"
        )
    print("a wrong FIELD_ENCRYPTION_KEY: refused by the key canary (audit.E001), as it should be")


def main() -> int:
    database_url = os.environ.get("DATABASE_URL", "")
    owner_url = os.environ.get("DATABASE_OWNER_URL") or database_url
    env = {name: value for name, value in os.environ.items() if name not in DROPPED}
    env.update(fresh_keys(), ALLOWED_HOSTS="cabinet.example.org")
    if (ROOT / ".env").exists():
        # The settings read a developer's .env for what the environment lacks, DEBUG=1 among it.
        print("(.env present: DEBUG=0, which is what an unset DEBUG means)")
        env["DEBUG"] = "0"
    try:
        with throwaway_database(database_url, owner_url) as url:
            print(f"deploy check on {urlsplit(url).scheme} ({urlsplit(url).path.rsplit('/', 1)[-1]})", flush=True)
            run({**env, "DATABASE_URL": url})
    except CheckFailed as failure:
        print(f"FAIL: {failure}", file=sys.stderr)
        return 1
    print("deploy check: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
