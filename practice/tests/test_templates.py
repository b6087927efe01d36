"""No inline script or style in our templates (the CSP forbids them: they would silently not
run), and the CSP header on pages that are not views: the login page, an error page, a static
file."""

import re
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.test import Client

# What a strict CSP blocks, and so what our templates must not contain.
FORBIDDEN = [
    (re.compile(r"<script\b(?![^>]*\bsrc\s*=)[^>]*>", re.IGNORECASE), "inline <script> (no src=)"),
    (re.compile(r"<style\b", re.IGNORECASE), "<style> element"),
    (re.compile(r"(?<![\w-])style\s*=", re.IGNORECASE), "style= attribute"),
    (re.compile(r"(?<![\w-])on[a-z]{3,}\s*=", re.IGNORECASE), "event handler attribute (on...=)"),
    (re.compile(r"javascript\s*:", re.IGNORECASE), "javascript: URL"),
]
OUR_APPS = ("audit", "practice", "patients", "scheduling")


def template_files() -> list[Path]:
    """Every template of the project: templates/ and the templates folder of our apps, if any."""
    folders = [Path(folder) for engine in settings.TEMPLATES for folder in engine.get("DIRS", [])]
    folders += [Path(apps.get_app_config(label).path) / "templates" for label in OUR_APPS]
    files = []
    for folder in folders:
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".html", ".txt", ".xml"))
    return files


def inline_code(text: str) -> list[tuple[int, str, str]]:
    """(line, what, excerpt) for each inline script or style in ``text``."""
    found = []
    for pattern, what in FORBIDDEN:
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((line, what, match.group(0)[:60]))
    return sorted(found)


def test_it_finds_our_templates():
    names = {p.name for p in template_files()}
    assert {"base.html", "login.html", "two_factor_verify.html", "day.html"} <= names


@pytest.mark.parametrize(
    "snippet",
    [
        "<script>alert(1)</script>",
        '<SCRIPT type="module">',
        '<div style="color: red">',
        "<style>p { color: red }</style>",
        '<button onclick="go()">',
        '<body onload = "go()">',
        '<a href="javascript:go()">',
    ],
)
def test_it_would_catch_inline_code(snippet):
    assert inline_code(f"<p>\n{snippet}\n</p>")[0][0] == 2


@pytest.mark.parametrize(
    "snippet",
    [
        '<script src="/static/app.js"></script>',
        '<link rel="stylesheet" href="/static/css/cabinet.css">',
        '<div class="st-booked" data-style="x">',
        "<p>Consultation on Monday</p>",
    ],
)
def test_it_lets_plain_markup_through(snippet):
    assert inline_code(snippet) == []


def test_it_has_no_inline_script_or_style_in_any_template():
    problems = []
    for path in template_files():
        for line, what, excerpt in inline_code(path.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(settings.BASE_DIR)}:{line}: {what}: {excerpt}")
    assert not problems, "\n".join(problems)


def _strict_csp(response) -> str:
    policy = response.get("Content-Security-Policy", "")
    assert "default-src 'self'" in policy, response
    assert "unsafe-inline" not in policy
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    return policy


def test_it_sends_the_csp_on_the_login_page(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    _strict_csp(response)
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]


def test_it_sends_the_csp_on_an_error_page(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    _strict_csp(response)


def test_it_sends_the_csp_with_static_files_too(settings):
    """Whitenoise answers static files before the views, but inside the CSP middleware (which
    comes first in MIDDLEWARE), so they carry it too. Harmless on CSS, and on an SVG opened
    directly it stops any script inside."""
    settings.WHITENOISE_USE_FINDERS = True  # no collectstatic in tests: serve from static/
    client = Client()
    response = client.get("/static/css/cabinet.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    _strict_csp(response)
