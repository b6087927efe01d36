"""The smoke test: the demo clinic as a person meets it, over real HTTP.

pytest-django's live server runs the app on the suite's database (SQLite by default,
PostgreSQL in CI) and settings (DEBUG off); a plain HTTP client with a cookie jar, which
follows no redirect, does what a browser does:

- every committed catalogue (.po) ships its compiled .mo, committed and current with it
  (the app reads the .mo and never compiles anything), and the login page is French for a
  French browser, English for an English one;
- ``seed_demo --patients 50``, run twice, leaves 50 patients;
- /patients/ sends an anonymous visitor away; the login page's form, posted with its CSRF
  token and cookie, takes the password; then every page sends the session to the second
  factor, whose form takes the code ``manage.py demo_code secretary`` prints;
- the patient list answers 200, never to be cached (no-store), with its table; a search by a
  seeded patient's full name finds them, and their record answers 200;
- the trail holds a read row naming the secretary for every patient any page showed, the
  login and the second factor.
"""

import io
import re
import secrets
import subprocess
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import Message
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import polib
import pytest
from django.conf import settings
from django.core.management import call_command

from audit.context import system_context
from audit.models import AuditEvent, EventType
from patients.models import Patient

ROOT = Path(settings.BASE_DIR)
CSRF_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]*)"')
PATIENT_LINK = re.compile(r'href="/patients/([0-9a-f-]{36})/"')
H1 = re.compile(r"<h1>([^<]*)</h1>")
ERRORS = re.compile(r'<ul class="errorlist[^>]*>.*?</ul>', re.DOTALL)


# --- The catalogues ----------------------------------------------------------------------------


def _git_files(*patterns: str) -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout, so nothing says what is committed: {exc}")
    return listed.stdout.splitlines()


def _compiled(catalogue: polib.POFile | polib.MOFile) -> tuple[dict, dict]:
    """What a catalogue compiles to, as msgfmt does: its header (less the POT-Creation-Date,
    which msgfmt leaves out), and its translated entries (neither fuzzy nor obsolete) by
    context and msgid. A .mo holds nothing else."""
    entries = {
        (entry.msgctxt, entry.msgid): (entry.msgid_plural, entry.msgstr, dict(entry.msgstr_plural))
        for entry in catalogue
        if isinstance(entry, polib.MOEntry) or entry.translated()
    }
    header = {name: value for name, value in catalogue.metadata.items() if name != "POT-Creation-Date"}
    return header, entries


def test_each_committed_catalogue_ships_its_compiled_mo_current_with_its_po():
    tracked = _git_files("*.po", "*.mo")
    catalogues = [name for name in tracked if name.endswith(".po")]
    assert catalogues, "no translation catalogue (.po) is committed; the French locale must ship compiled"
    for po in catalogues:
        mo = po.removesuffix(".po") + ".mo"
        assert mo in tracked, f"{mo} is not committed (run `make messages` and commit it)"
        assert _compiled(polib.mofile(str(ROOT / mo))) == _compiled(polib.pofile(str(ROOT / po))), (
            f"{mo} is older than {po} (run `make messages` and commit the .mo)"
        )


# --- A browser without a browser ---------------------------------------------------------------


class _LocalhostIsSecure(DefaultCookiePolicy):
    """Browsers count http://localhost as a secure context and send it Secure cookies; with
    DEBUG off the session and CSRF cookies are Secure, so this jar does as browsers do."""

    def return_ok_secure(self, cookie, request):
        local = urllib.parse.urlsplit(request.full_url).hostname in {"localhost", "127.0.0.1"}
        return local or super().return_ok_secure(cookie, request)


class _EveryStatus(urllib.request.HTTPErrorProcessor):
    """Hands back every answer as it came: a 302 is looked at, not followed; a 4xx is not raised."""

    def http_response(self, request, response):
        return response

    https_response = http_response


@dataclass
class Page:
    status: int
    headers: Message
    body: str
    url: str

    @property
    def location(self) -> str:
        """Where a redirect sends the browser, as an absolute URL."""
        return urllib.parse.urljoin(self.url, self.headers.get("Location", ""))

    def csrf_token(self) -> str:
        found = CSRF_TOKEN.search(self.body)
        assert found, f"no CSRF token in {self.url}"
        return found[1]

    def patients(self) -> set[uuid.UUID]:
        return {uuid.UUID(pk) for pk in PATIENT_LINK.findall(self.body)}

    def explain(self) -> str:
        return f"{self.url} answered {self.status}: {' '.join(ERRORS.findall(self.body)) or self.body[:500]}"


class Browser:
    def __init__(self, base_url: str, language: str | None = None):
        self.base_url = base_url
        self.headers = {"Accept-Language": language} if language else {}
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(CookieJar(policy=_LocalhostIsSecure())), _EveryStatus
        )

    def _open(self, path: str, data: dict | None = None, headers: dict | None = None) -> Page:
        url = self.base_url + path
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(url, data=body, headers={**self.headers, **(headers or {})})  # noqa: S310 (http: the live server)
        with self.opener.open(request, timeout=30) as response:
            return Page(response.status, response.headers, response.read().decode(), url)

    def get(self, path: str) -> Page:
        return self._open(path)

    def post(self, path: str, data: dict) -> Page:
        """A form sent as a browser sends it: from its page, with that page's CSRF token in it."""
        return self._open(path, data, headers={"Referer": self.base_url + path})


# --- The demo clinic, end to end ---------------------------------------------------------------


def _demo_code(username: str) -> str:
    out = io.StringIO()
    call_command("demo_code", username, stdout=out, stderr=io.StringIO())
    code = out.getvalue().strip()
    assert re.fullmatch(r"\d{6}", code), f"manage.py demo_code {username} printed {code!r}, not a 6-digit code"
    return code


def test_a_secretary_logs_in_to_the_seeded_demo_and_every_patient_shown_is_audited(live_server, monkeypatch):
    password = f"smoke-{secrets.token_urlsafe(18)}"
    monkeypatch.setenv("DEMO_PASSWORD", password)  # DEBUG is off: the published password is refused
    for _ in range(2):  # idempotent: the second run adds nothing
        call_command("seed_demo", patients=50, no_progress=True, stdout=io.StringIO(), stderr=io.StringIO())
    assert Patient.objects.count() == 50, "seed_demo --patients 50, run twice, did not leave 50 patients"

    browser = Browser(live_server.url)
    # Without a session the list is out of reach: the 200 below is the login's doing.
    page = browser.get("/patients/")
    assert page.status == 302, page.explain()
    assert page.location.startswith(f"{live_server.url}/accounts/login/"), page.location

    # The password: the login form, posted with its CSRF token and the cookie that came with it.
    token = browser.get("/accounts/login/").csrf_token()
    page = browser.post(
        "/accounts/login/",
        {"csrfmiddlewaretoken": token, "username": "secretary", "password": password, "next": ""},
    )
    assert page.status == 302, page.explain()

    # The password alone reaches nothing: every page sends the session to the second factor.
    page = browser.get("/patients/")
    assert page.status == 302, page.explain()
    assert page.location.startswith(f"{live_server.url}/accounts/two-factor/"), page.location

    # The second factor: the code of the authenticator seed_demo gave the secretary, with the
    # CSRF token of the verification page (logging in rotated the token).
    token = browser.get("/accounts/two-factor/").csrf_token()
    page = browser.post(
        "/accounts/two-factor/", {"csrfmiddlewaretoken": token, "code": _demo_code("secretary"), "next": ""}
    )
    assert page.status == 302, page.explain()

    # A logged-in page: the patient list (today's patients; none on a day off), never cached.
    today = browser.get("/patients/")
    assert today.status == 200, today.explain()
    assert "no-store" in today.headers.get("Cache-Control", "").lower(), "/patients/ is sent without no-store"
    assert "<table" in today.body, "/patients/ has no table"

    # A search by full name, as the front desk does; the name read as a system job does (audited).
    with system_context("tests:smoke"):
        patient = Patient.objects.order_by("pk").first()
        last_name, first_name = patient.last_name, patient.first_names.split(" ")[0]
    found = browser.post(
        "/patients/", {"csrfmiddlewaretoken": today.csrf_token(), "last_name": last_name, "first_name": first_name}
    )
    assert found.status == 200, found.explain()
    assert patient.pk in found.patients(), "a search by a seeded patient's full name on /patients/ did not find them"
    record = browser.get(f"/patients/{patient.pk}/")
    assert record.status == 200, record.explain()

    # Invariant 1, end to end: every patient shown has a read row naming the secretary.
    mine = AuditEvent.objects.filter(actor_username="secretary")
    read = set(mine.filter(event_type=EventType.READ).values_list("patient_id", flat=True))
    shown = today.patients() | found.patients()
    assert shown - read == set(), f"{len(shown - read)} of the {len(shown)} patients shown have no audit read row"
    assert mine.filter(event_type=EventType.LOGIN).exists(), "the secretary's login is not in the audit trail"
    assert mine.filter(event_type=EventType.OTP_VERIFIED).exists(), "the second factor is not in the audit trail"

    # Translations come from the committed .mo (nothing compiles them): French and English differ.
    french = H1.findall(Browser(live_server.url, language="fr").get("/accounts/login/").body)
    english = H1.findall(Browser(live_server.url, language="en").get("/accounts/login/").body)
    assert french, "the French login page has no heading"
    assert french[:1] != english[:1], f"the login page is not translated (fr: {french}, en: {english})"
