"""Start-up refuses missing or malformed keys, with a message that says how to make one.

Each case runs `manage.py check` in a fresh interpreter: settings are read once per process.
Settings fill unset variables from an untracked `.env`, so a "missing" key is set to the
empty string (which `_required` treats as not set) rather than deleted.
"""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _good_keys() -> dict[str, str]:
    return {
        "SECRET_KEY": "test-" + _b64(os.urandom(40)),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "BLIND_INDEX_KEY": _b64(os.urandom(32)),
        "AUDIT_CHAIN_KEY": _b64(os.urandom(32)),
    }


def _check(tmp_path, *command, **overrides) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(_good_keys())
    # A throwaway database: the check must not depend on (or touch) the developer's one.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'check.sqlite3'}"
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *(command or ["check"])],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_refused(result: subprocess.CompletedProcess, variable: str) -> None:
    assert result.returncode != 0, result.stdout
    assert variable in result.stderr
    assert "practice.keygen" in result.stderr, result.stderr[-600:]
    assert "System check identified no issues" not in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("FIELD_ENCRYPTION_KEY", "", id="field-key-missing"),
        pytest.param("FIELD_ENCRYPTION_KEY", "   ", id="field-key-blank"),
        pytest.param("FIELD_ENCRYPTION_KEY", "not-a-key", id="field-key-malformed"),
        pytest.param("BLIND_INDEX_KEY", "", id="blind-key-missing"),
        pytest.param("BLIND_INDEX_KEY", _b64(os.urandom(16)), id="blind-key-too-short"),
        pytest.param("AUDIT_CHAIN_KEY", "", id="chain-key-missing"),
        pytest.param("SECRET_KEY", "", id="secret-key-missing"),
    ],
)
def test_it_refuses_to_start_with_a_missing_or_malformed_key(tmp_path, variable, value):
    _assert_refused(_check(tmp_path, **{variable: value}), variable)


def test_it_refuses_a_malformed_second_field_key(tmp_path):
    """During a rotation the list holds several keys: each one is checked, not just the first."""
    result = _check(tmp_path, FIELD_ENCRYPTION_KEY=f"{Fernet.generate_key().decode()},not-a-key")
    _assert_refused(result, "FIELD_ENCRYPTION_KEY")
    assert "key #2" in result.stderr


def test_it_refuses_the_same_secret_for_blind_index_and_audit_chain(tmp_path):
    shared = _b64(os.urandom(32))
    result = _check(tmp_path, BLIND_INDEX_KEY=shared, AUDIT_CHAIN_KEY=shared)
    _assert_refused(result, "BLIND_INDEX_KEY")
    assert "AUDIT_CHAIN_KEY" in result.stderr


def test_it_refuses_the_field_key_reused_as_blind_index_key(tmp_path):
    field_key = Fernet.generate_key().decode()
    result = _check(tmp_path, FIELD_ENCRYPTION_KEY=field_key, BLIND_INDEX_KEY=field_key)
    _assert_refused(result, "BLIND_INDEX_KEY")


@pytest.mark.slow
def test_it_starts_with_the_keys_keygen_prints(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "practice.keygen"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    keys = dict(
        line.split("=", 1) for line in printed.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    assert set(keys) >= {"SECRET_KEY", "FIELD_ENCRYPTION_KEY", "BLIND_INDEX_KEY", "AUDIT_CHAIN_KEY"}
    assert "DEBUG" not in keys  # only with --debug
    Fernet(keys["FIELD_ENCRYPTION_KEY"])
    assert len(base64.urlsafe_b64decode(keys["BLIND_INDEX_KEY"])) >= 32
    assert len(base64.urlsafe_b64decode(keys["AUDIT_CHAIN_KEY"])) >= 32
    assert len({keys[k] for k in ("FIELD_ENCRYPTION_KEY", "BLIND_INDEX_KEY", "AUDIT_CHAIN_KEY")}) == 3

    result = _check(tmp_path, **keys)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "System check identified no issues" in result.stdout


@pytest.mark.slow
def test_commands_that_read_no_data_run_without_keys(tmp_path):
    """makemigrations (CI's migration check, a fresh clone) needs no keys: with none set it runs
    with throwaway ones; anything else still refuses to start."""
    missing = dict.fromkeys(("SECRET_KEY", "FIELD_ENCRYPTION_KEY", "BLIND_INDEX_KEY", "AUDIT_CHAIN_KEY"), "")
    result = _check(tmp_path, "makemigrations", "--check", "--dry-run", **missing)
    assert result.returncode == 0, result.stderr[-600:]
    assert "No changes detected" in result.stdout
    _assert_refused(_check(tmp_path, "migrate", **missing), "SECRET_KEY")
