"""The suite runs every app's tests: a tests package left out of pytest's testpaths would pass
unseen (the whole investigations app once did)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_tests_package_is_in_the_testpaths():
    testpaths = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"]
    packages = {path.parent.parent.name for path in ROOT.glob("*/tests/__init__.py")}
    assert packages, "no tests package found"
    assert packages - set(testpaths) == set()
