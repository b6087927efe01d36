"""What django-axes writes to the log: a lockout, not a banner on every command.

django-axes logs "AXES: BEGIN version ..., blocking by ..." at start-up unless AXES_VERBOSE
is off; every `manage.py` command a newcomer ran printed it. The lockout warnings are not
behind that setting and stay in the log."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def throwaway_keys() -> dict[str, str]:
    printed = subprocess.run(
        [sys.executable, "-m", "practice.keygen"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in printed.splitlines() if line.strip() and not line.startswith("#"))


def test_it_prints_no_axes_banner_on_a_command(tmp_path):
    env = {**os.environ, **throwaway_keys(), "DEBUG": "0", "LOG_LEVEL": "INFO"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'check.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "System check identified no issues" in result.stdout
    assert "AXES: BEGIN" not in result.stdout + result.stderr


def test_a_lockout_is_still_logged(secretary, caplog):
    client = Client()
    with caplog.at_level(logging.WARNING, logger="axes"):
        statuses = [
            client.post(
                "/accounts/login/", {"username": secretary.username, "password": f"wrong guess {n}"}
            ).status_code
            for n in range(5)
        ]
    assert statuses == [200, 200, 200, 200, 429]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("axes")]
    assert [w.split(" by ")[0] for w in warnings[:5]] == ["AXES: New login failure"] + [
        "AXES: Repeated login failure"
    ] * 4
    assert warnings[5].startswith("AXES: Locking out ")
    assert len(warnings) == 6
    assert not any("wrong guess" in w or secretary.username in w for w in warnings)
