"""Every URL pattern of the project, for every role: the status each one gets, what every
answer carries (a strict CSP, never a 500; no caching of a page of patient data or of the
agenda), and no existence oracle on object pages.

The table below is the access policy in one place. A new URL without an entry fails
`test_it_has_an_entry_for_every_url`, so nobody adds a page without deciding who may open it.
Django admin follows one rule (`_admin_expectation`): anonymous visitors go to the login page,
users who are not staff are refused, a practice admin gets what their permissions allow.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from axes.models import AccessAttempt
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.converters import IntConverter, PathConverter, UUIDConverter

from audit.models import Anomaly, AnomalyKind, AuditEvent, EventType, ReadBlock, Severity
from config.testing import (  # DAY: a Monday the practitioners work
    DAY,
    book,
    client_for,
    make_patient,
    make_practitioner,
    make_type,
    paris,
    totp_device,
    user_create,
)
from patients.models import Patient
from patients.services import break_glass_open
from practice.models import Clinic
from practice.roles import SECRETARY
from scheduling.models import Absence
from scheduling.urls import AgendaDateConverter

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# Expectations


@dataclass(frozen=True)
class Redirect:
    """A redirect (302) whose Location has one of these paths (the query string is not compared)."""

    paths: tuple[str, ...]

    def __init__(self, *paths: str):
        object.__setattr__(self, "paths", paths)

    def __repr__(self) -> str:
        return f"302 to {' or '.join(self.paths)}"


LOGIN = Redirect("/accounts/login/")
VERIFY = Redirect("/accounts/two-factor/")
SETUP = Redirect("/accounts/two-factor/setup/")
HOME = Redirect("/")

ROLES = [
    "anonymous",
    "secretary",
    "practitioner",
    "other_practitioner",
    "practice_admin",
    "outsider",
    "unverified",  # a practice admin's password, without the second factor
    "unenrolled",  # a secretary who has not set up a second factor yet
]


@dataclass(frozen=True)
class Row:
    """Expected answer to a GET, per role. Until the second factor, a session reaches nothing
    but the views of practice.middleware.OPEN_VIEWS: they say what they do, the rest redirect."""

    anonymous: int | Redirect
    secretary: int | Redirect
    practitioner: int | Redirect
    other_practitioner: int | Redirect
    practice_admin: int | Redirect
    outsider: int | Redirect
    unverified: int | Redirect = VERIFY
    unenrolled: int | Redirect = SETUP


def _everyone(expected, **overrides) -> Row:
    return Row(*[expected] * 6, **overrides)


def _logged_in(expected, **overrides) -> Row:
    return Row(LOGIN, *[expected] * 5, **overrides)


# URL objects (OBJECT_IDS): `pk` of patients: and investigations: URLs is the patient Dr Martin
# (`practitioner`) has an appointment with, or an anomaly's id; of scheduling: URLs, that
# appointment, or Dr Martin's practitioner id.
# POST-only views answer a GET with 405 once the login and the second factor are done.
TABLE: dict[str, Row] = {
    # Accounts and the second factor
    "home": Row(LOGIN, Redirect("/agenda/"), Redirect("/my-day/"), Redirect("/my-day/"), Redirect("/admin/"), 200),
    "login": Row(200, *[HOME] * 5, unverified=HOME, unenrolled=HOME),
    "logout": _everyone(405, unverified=405, unenrolled=405),  # POST only, even logged out
    "account": _logged_in(200),
    "two_factor_verify": _logged_in(HOME, unverified=200, unenrolled=SETUP),
    "two_factor_setup": _logged_in(200, unverified=VERIFY, unenrolled=200),
    "two_factor_qr": _logged_in(200, unverified=404, unenrolled=200),
    "recovery_codes": _logged_in(405),
    "password_change": _logged_in(200),
    "password_change_done": _logged_in(200),
    "password_reset": _everyone(200),
    "password_reset_done": _everyone(200),
    "password_reset_confirm": _everyone(200),  # a bogus link: the "invalid link" page
    "password_reset_complete": _everyone(200),
    "set_language": _everyone(HOME, unverified=HOME, unenrolled=HOME),
    # Patients: the front desk sees every record, a practitioner the patients they have seen
    "patients:list": Row(LOGIN, 200, 403, 403, 200, 403),
    "patients:create": Row(LOGIN, 200, 403, 403, 403, 403),  # practice admins do not add patients
    # The record, with its appointments panel (scheduling.record): the front desk's all, a practitioner's own
    "patients:detail": Row(LOGIN, 200, 200, 404, 200, 404),
    "patients:edit": Row(LOGIN, 200, 403, 403, 200, 403),
    "patients:archive": _logged_in(405),
    "patients:restore": _logged_in(405),
    "patients:break_glass": Row(LOGIN, 403, 200, 200, 403, 403),  # practitioners only, any id
    "patients:reveal": _logged_in(405),
    # The step-up page's form: only for a patient one may open ("no reason asked" until one is)
    "patients:reason": Row(LOGIN, 200, 200, 404, 200, 404),  # POST only: contact details shown on request
    "patients:export": Row(LOGIN, 200, 403, 403, 200, 403),  # a patient's own data: front desk
    "patients:export_list": _logged_in(405),  # POST only, from the list page
    # Agenda
    "scheduling:today": Row(LOGIN, 200, 403, 403, 200, 403),
    "scheduling:day": Row(LOGIN, 200, 403, 403, 200, 403),
    "scheduling:colours": Row(LOGIN, 200, 200, 200, 200, 403),
    "scheduling:free_slots": Row(LOGIN, 200, 403, 403, 200, 403),  # the finder: searches as it opens
    "scheduling:print_day": Row(LOGIN, 200, 200, 404, 200, 403),
    "scheduling:print_all": Row(LOGIN, 200, 403, 403, 200, 403),  # every practitioner's day: front desk
    "scheduling:this_week": Row(LOGIN, 200, 200, 404, 200, 403),
    "scheduling:week": Row(LOGIN, 200, 200, 404, 200, 403),
    "scheduling:my_day": Row(LOGIN, 403, 200, 200, 403, 403),  # needs a practitioner profile
    "scheduling:waiting_room": Row(LOGIN, 200, 200, 200, 200, 403),
    "scheduling:book": Row(LOGIN, 200, 403, 403, 200, 403),
    "scheduling:appointment": Row(LOGIN, 200, 200, 404, 200, 403),
    "scheduling:move": _logged_in(405),
    "scheduling:change_type": _logged_in(405),
    "scheduling:cancel": _logged_in(405),
    "scheduling:status": _logged_in(405),
    "scheduling:drag_move": _logged_in(405),  # POST only, from the grid's script
    # The audit trail: practice admins only
    "investigations:patient_access": Row(LOGIN, 403, 403, 403, 200, 403),
    "investigations:patient_access_print": Row(LOGIN, 403, 403, 403, 200, 403),
    "investigations:breach_scope": Row(LOGIN, 403, 403, 403, 200, 403),  # the empty form
    "investigations:breach_scope_csv": _logged_in(405),  # POST only, with a stated purpose
    "investigations:anomalies": Row(LOGIN, 403, 403, 403, 200, 403),
    "investigations:anomalies_scan": _logged_in(405),  # POST only
    "investigations:anomaly": Row(LOGIN, 403, 403, 403, 200, 403),  # `pk`: an anomaly of the world
    "investigations:anomaly_review": _logged_in(405),  # POST only, with a note
    "investigations:read_chart": Row(LOGIN, 403, 403, 403, 200, 403),
}

# Pages of patient data and of the agenda: no browser or proxy keeps a copy of a 200.
NO_STORE = ("patients:", "scheduling:", "investigations:")
NO_STORE_EXCEPT = {"scheduling:colours"}  # the appointment types' colours: a stylesheet, private, 5 minutes

# Admin views that are not a model's, for a practice admin (other roles: the admin rule).
ADMIN_SITE = {
    "admin:index": 200,
    "admin:login": Redirect("/admin/"),
    "admin:logout": 405,  # POST only
    "admin:password_change": Redirect("/accounts/password/"),  # the app's page: audited
    "admin:password_change_done": 200,
    "admin:autocomplete": 403,  # without its parameters
    "admin:jsi18n": 200,
    "admin:view_on_site": "object page",  # 302 to the object's own page (filled with a patient)
    "admin:app_list": "app perms",  # 200 for an app the user has a permission in, else 404
    "admin/(?P<url>.*)$": 404,  # the catch-all
}
# Extra views of a model admin: which permission they need.
ADMIN_MODEL_EXTRAS = {
    "otp_totp_totpdevice_config": "view",
    "otp_totp_totpdevice_qrcode": "view",
    "auth_user_password_change": "change",
}
# Add and delete pages a model admin refuses whatever the user's permissions: the trail and
# appointments are read-only in admin, patients are archived not deleted, grants are made by
# the break-the-glass page only, lockouts are not typed in by hand, the clinic is one row. (Change pages answer 200
# read-only to anyone who may view.)
ADMIN_REFUSES = {
    "audit.auditevent": {"add", "delete"},
    "audit.readblock": {"add", "delete"},  # blocks are opened by the read budget, lifted, kept
    "scheduling.appointment": {"add", "delete"},
    "patients.patient": {"delete"},
    "patients.breakglassgrant": {"add", "delete"},
    "axes.accessattempt": {"add"},
    "practice.clinic": {"add", "delete"},  # one row, which exists
}


# ---------------------------------------------------------------------------------------------
# The URL patterns


@dataclass(frozen=True)
class Pattern:
    key: str  # the namespaced name, or the route of an unnamed pattern
    name: str | None
    route: str
    converters: dict

    @property
    def is_admin(self) -> bool:
        return self.route.startswith("admin/")


def _walk(resolver: URLResolver, prefix: str = "", namespace: str = "", converters=None):
    for item in resolver.url_patterns:
        found = {**(converters or {}), **getattr(item.pattern, "converters", {})}
        if isinstance(item, URLResolver):
            inner = f"{namespace}:{item.namespace}" if namespace and item.namespace else namespace or item.namespace
            yield from _walk(item, prefix + str(item.pattern), inner or "", found)
        elif isinstance(item, URLPattern):
            route = prefix + str(item.pattern)
            name = f"{namespace}:{item.name}" if namespace and item.name else item.name
            yield Pattern(key=name or route, name=name, route=route, converters=found)


def all_patterns() -> list[Pattern]:
    return list(_walk(get_resolver()))


def _admin_model(pattern: Pattern):
    """The model whose admin this pattern belongs to, or None."""
    for model in admin.site._registry:
        if pattern.route.startswith(f"admin/{model._meta.app_label}/{model._meta.model_name}/"):
            return model
    return None


# ---------------------------------------------------------------------------------------------
# The clinic every URL is filled from


@dataclass
class World:
    doctor: object
    other_doctor: object
    patient: Patient  # Dr Martin's patient (an appointment with him, none with Dr Bernard)
    appointment: object
    others_patient: Patient  # Dr Bernard's
    others_appointment: object
    unseen_patient: Patient  # no appointment with anyone
    admin_rows: dict  # model -> primary key of a real row, for admin object pages
    users: dict
    anomaly: int = 0  # an anomaly signal's id (investigations:anomaly pages)


@pytest.fixture
def world(secretary, practitioner, other_practitioner, practice_admin, outsider) -> World:
    """The clinic every URL is filled from. Bookings and patients through the services; rows
    no service writes (an absence, a failed login, a read block, an anomaly) as raw rows,
    what admin, django-axes, the read budget and the anomaly scan write."""
    doctor = make_practitioner(practitioner.username)
    other_doctor = make_practitioner(other_practitioner.username)
    kind = make_type(doctor, other_doctor)
    patient = make_patient()
    appointment = book(doctor, patient, kind, paris(2030, 3, 4, 9), reason="Douleur au genou")
    others_patient = make_patient(last_name="Garnier", first_names="Hugo", email="", nir="", phone_mobile="")
    others_appointment = book(other_doctor, others_patient, kind, paris(2030, 3, 4, 10), reason="Vaccin")
    unseen_patient = make_patient(last_name="Roux", first_names="Léon", email="", nir="", phone_mobile="")
    Absence.objects.create(practitioner=doctor, start=paris(2030, 3, 11, 8), end=paris(2030, 3, 11, 19))

    AccessAttempt.objects.create(
        username="someone",
        ip_address="198.51.100.9",
        user_agent="test",
        http_accept="*/*",
        path_info="/accounts/login/",
        get_data="",
        post_data="",
        failures_since_start=1,
    )

    Clinic.current()

    # An emergency access for someone outside the personas (theirs would change what they see).
    third = make_practitioner("dr.third")
    break_glass_open(user=third.user, patient=unseen_patient, reason="Called by the emergency department at night")
    # A read budget block, also someone else's (a persona's would refuse their pages).
    ReadBlock.objects.create(
        user_id=third.user.pk,
        username="dr.third",
        role="Practitioner",
        blocked_at=paris(2030, 3, 4, 12),
        window="hour",
        patients_read=200,
        budget=200,
    )

    # An anomaly signal about someone outside the personas.
    anomaly = Anomaly.objects.create(
        key="world",
        kind=AnomalyKind.OUT_OF_HOURS,
        severity=Severity.LOW,
        user_id=third.user.pk,
        username="dr.third",
        role="Practitioner",
        window_start=paris(2030, 3, 4, 22),
        window_end=paris(2030, 3, 4, 23),
        detected_at=paris(2030, 3, 4, 23),
        updated_at=paris(2030, 3, 4, 23),
        summary="dr.third read 1 patient outside the opening hours.",
        evidence={"start": "2030-03-04T21:00:00+00:00", "end": "2030-03-04T22:00:00+00:00", "event_types": [1]},
    )

    unenrolled = user_create("nina.new", SECRETARY)
    users = {
        "secretary": secretary,
        "practitioner": practitioner,
        "other_practitioner": other_practitioner,
        "practice_admin": practice_admin,
        "outsider": outsider,
        "unverified": practice_admin,
        "unenrolled": unenrolled,
    }
    for role, user in users.items():
        if role != "unenrolled":
            totp_device(user)
    admin_rows = {
        model: model._default_manager.order_by("pk").values_list("pk", flat=True).first()
        for model in admin.site._registry
    }
    return World(
        doctor=doctor,
        other_doctor=other_doctor,
        patient=patient,
        appointment=appointment,
        others_patient=others_patient,
        others_appointment=others_appointment,
        unseen_patient=unseen_patient,
        admin_rows=admin_rows,
        users=users,
        anomaly=anomaly.pk,
    )


def _client(world: World, role: str) -> Client:
    if role == "anonymous":
        return Client()
    return client_for(world.users[role], verified=role not in ("unverified", "unenrolled"))


@dataclass(frozen=True)
class Objects:
    """What fills the ids of object URLs."""

    patient: uuid.UUID
    appointment: uuid.UUID
    practitioner: int


# The object an app URL's id stands for, by namespace and converter (see `Objects`).
OBJECT_IDS = {
    ("patients", UUIDConverter): "patient",
    ("investigations", UUIDConverter): "patient",
    ("scheduling", UUIDConverter): "appointment",
    ("scheduling", IntConverter): "practitioner",
    ("investigations", IntConverter): "anomaly",
}


def _app_value(pattern: Pattern, name: str, converter, world: World, objects: Objects):
    """What fills <name> in an app URL: a day, the bogus reset link, or an object's id."""
    if isinstance(converter, AgendaDateConverter):
        return DAY
    if pattern.key == "password_reset_confirm":
        return {"uidb64": "MQ", "token": "not-a-real-token"}[name]
    what = OBJECT_IDS.get((pattern.key.split(":")[0], type(converter)))
    if what is None:
        pytest.fail(f"{pattern.key}: no rule to fill <{name}> ({type(converter).__name__}): add one to OBJECT_IDS")
    return world.anomaly if what == "anomaly" else getattr(objects, what)


def _admin_value(pattern: Pattern, name: str, converter, world: World, objects: Objects):
    """What fills <name> in an admin URL: a content type, the patient, or a real row's id."""
    if name == "content_type_id":
        return ContentType.objects.get_for_model(Patient).pk
    if pattern.key == "admin:view_on_site" and name == "object_id":
        return world.patient.pk
    if not (isinstance(converter, PathConverter) or name in ("id", "pk")):
        pytest.fail(f"{pattern.key}: no rule to fill <{name}> ({type(converter).__name__}): add one to _admin_value")
    model = _admin_model(pattern)
    if model is None or world.admin_rows.get(model) is None:
        pytest.fail(f"{pattern.key}: no row to fill <{name}> with: create one in the `world` fixture")
    return world.admin_rows[model]


def _kwargs(pattern: Pattern, world: World, objects: Objects) -> list[dict]:
    """The keyword arguments that fill this pattern (several for admin:app_list)."""
    if pattern.key == "admin:app_list":
        labels = sorted({model._meta.app_label for model in admin.site._registry})
        return [{"app_label": label} for label in labels]
    fill = _admin_value if pattern.is_admin else _app_value
    return [{name: fill(pattern, name, converter, world, objects) for name, converter in pattern.converters.items()}]


def _url(pattern: Pattern, kwargs: dict) -> str:
    if pattern.name:
        return reverse(pattern.name, kwargs=kwargs)
    if pattern.key == "admin/(?P<url>.*)$":
        return "/admin/no-such-page/"
    if "(?P<" in pattern.route or "^" in pattern.route:
        pytest.fail(f"{pattern.key}: an unnamed regular expression pattern: name it or teach _url to fill it")
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(kwargs[m.group(1)]), pattern.route)


# ---------------------------------------------------------------------------------------------
# Admin: one rule


# Before the admin is reached: the login, the second factor, its set-up.
ADMIN_BEFORE = {"anonymous": "to login", "unverified": VERIFY, "unenrolled": SETUP}


def _admin_expectation(pattern: Pattern, role: str, user, kwargs: dict, world: World):
    """What a role gets from an admin URL. Only the practice admin is staff; every other role is
    sent from the admin's login to the app's (anonymous) or refused (403)."""
    if role in ADMIN_BEFORE:
        return ADMIN_BEFORE[role]
    if not user.is_staff:
        return "refused"
    if pattern.key in ADMIN_SITE:
        return _admin_site_expectation(pattern, user, kwargs, world)
    return _model_admin_expectation(pattern, user, kwargs)


def _admin_site_expectation(pattern: Pattern, user, kwargs: dict, world: World):
    """A view of the admin site itself (ADMIN_SITE), for a staff user."""
    expected = ADMIN_SITE[pattern.key]
    if expected == "app perms":
        return 200 if user.has_module_perms(kwargs["app_label"]) else 404
    if expected == "object page":
        return Redirect(world.patient.get_absolute_url())
    return expected


def _model_admin_expectation(pattern: Pattern, user, kwargs: dict):
    """A model admin's view, for a staff user: what their permissions allow, less what the
    model admin refuses to anyone (ADMIN_REFUSES)."""
    model = _admin_model(pattern)
    if model is None:
        pytest.fail(f"{pattern.key}: an admin URL outside any model admin: add it to ADMIN_SITE")
    app_label, model_name = model._meta.app_label, model._meta.model_name
    refused = ADMIN_REFUSES.get(f"{app_label}.{model_name}", set())

    def may(action: str) -> bool:
        return action not in refused and user.has_perm(f"{app_label}.{action}_{model_name}")

    if pattern.name is None:  # <object_id>/ alone: Django redirects to the change page
        return Redirect(reverse(f"admin:{app_label}_{model_name}_change", kwargs=kwargs))
    view = pattern.name.removeprefix("admin:")
    if view in ADMIN_MODEL_EXTRAS:
        action = ADMIN_MODEL_EXTRAS[view]
        return 200 if may(action) or (action == "view" and may("change")) else 403
    action = view.removeprefix(f"{app_label}_{model_name}_")
    if action in ("changelist", "change", "history"):
        return 200 if may("view") or may("change") else 403
    if action in ("add", "delete"):
        return 200 if may(action) else 403
    pytest.fail(f"{pattern.key}: an admin view the rule does not know: add it to ADMIN_MODEL_EXTRAS")


# ---------------------------------------------------------------------------------------------
# Requests


CSP = "Content-Security-Policy"


def _csp_problem(response) -> str | None:
    policy = response.get(CSP, "")
    if "default-src 'self'" not in policy:
        return f"no strict {CSP} header ({policy!r})"
    if "unsafe-inline" in policy or "unsafe-eval" in policy:
        return f"{CSP} allows inline code ({policy!r})"
    return None


def _get(client: Client, url: str):
    """GET, returning (response or None, problem or None): an exception is a 500."""
    try:
        response = client.get(url)
    except Exception as exc:  # the test client re-raises what the view raised: that is a 500
        return None, f"500 ({type(exc).__name__}: {exc})"
    if response.status_code >= 500:
        return response, f"{response.status_code}"
    return response, _csp_problem(response)


def _describe(response) -> str:
    if response.status_code in (301, 302):
        return f"{response.status_code} to {response['Location']}"
    return str(response.status_code)


def _matches(response, expected) -> bool:
    if isinstance(expected, Redirect):
        return response.status_code == 302 and urlsplit(response["Location"]).path in expected.paths
    return response.status_code == expected


def _follow(client: Client, response, problems: list[str], where: str):
    """Follow redirects (every hop must carry the CSP too); the last response."""
    for _hop in range(6):
        if response.status_code not in (301, 302):
            return response
        response, problem = _get(client, response["Location"])
        if problem:
            problems.append(f"{where}, redirected: {problem}")
        if response is None:
            return None
    problems.append(f"{where}: too many redirects")
    return None


def _check_admin(client, response, expected, problems, where):
    if expected == "to login":
        final = _follow(client, response, problems, where)
        if response.status_code != 302 or final is None or final.request["PATH_INFO"] != "/accounts/login/":
            problems.append(f"{where}: expected redirects to /accounts/login/, got {_describe(response)}")
    elif expected == "refused":
        # Redirected to the admin's login, which refuses a logged-in user who is not staff.
        final = _follow(client, response, problems, where)
        hops_ok = response.status_code == 403 or urlsplit(response["Location"]).path.startswith("/admin/")
        if not hops_ok or final is None or final.status_code != 403:
            problems.append(f"{where}: expected 302 then 403, got {_describe(response)}")
    elif not _matches(response, expected):
        problems.append(f"{where}: expected {expected!r}, got {_describe(response)}")


def _check_app(response, pattern: Pattern, role: str, problems: list[str], where: str) -> None:
    """The TABLE's answer; and a page of patient data or of the agenda that answers 200 says
    ``Cache-Control: no-store`` (NO_STORE)."""
    expected = getattr(TABLE[pattern.key], role)
    if not _matches(response, expected):
        problems.append(f"{where}: expected {expected!r}, got {_describe(response)}")
    elif response.status_code == 200 and _no_store(pattern) and "no-store" not in response.get("Cache-Control", ""):
        problems.append(f"{where}: 200 without Cache-Control: no-store ({response.get('Cache-Control')!r})")


def _no_store(pattern: Pattern) -> bool:
    return pattern.key.startswith(NO_STORE) and pattern.key not in NO_STORE_EXCEPT


# ---------------------------------------------------------------------------------------------
# Tests


def test_it_has_an_entry_for_every_url():
    patterns = all_patterns()
    keys = {p.key for p in patterns}
    missing = sorted(p.key for p in patterns if not p.is_admin and p.key not in TABLE)
    assert not missing, f"URLs without an entry in TABLE (decide who may open them): {missing}"
    stale = sorted(name for name in TABLE if name not in keys)
    assert not stale, f"TABLE entries for URLs that no longer exist: {stale}"
    admin_unknown = sorted(
        p.key for p in patterns if p.is_admin and p.key not in ADMIN_SITE and _admin_model(p) is None
    )
    assert not admin_unknown, f"Admin URLs outside any model admin and not in ADMIN_SITE: {admin_unknown}"


@pytest.mark.parametrize("role", ROLES)
def test_it_answers_every_url_as_the_table_says(role, world):
    client = _client(world, role)
    client.raise_request_exception = True
    user = world.users.get(role)
    objects = Objects(patient=world.patient.pk, appointment=world.appointment.pk, practitioner=world.doctor.pk)
    problems: list[str] = []
    checked = 0
    for pattern in all_patterns():
        if not pattern.is_admin and pattern.key not in TABLE:
            problems.append(f"{pattern.key}: no entry in TABLE")
            continue
        for kwargs in _kwargs(pattern, world, objects):
            url = _url(pattern, kwargs)
            where = f"{role} GET {url} ({pattern.key})"
            response, problem = _get(client, url)
            checked += 1
            if problem:
                problems.append(f"{where}: {problem}")
            if response is None:
                continue
            if pattern.is_admin:
                expected = _admin_expectation(pattern, role, user, kwargs, world)
                _check_admin(client, response, expected, problems, where)
            else:
                _check_app(response, pattern, role, problems, where)
    assert checked > 100
    assert not problems, "\n".join(problems)


def _normalized(response, kwargs: dict) -> str:
    """The page with what legitimately differs between two ids blanked: the path and the UUID
    (pages repeat them, e.g. in the language form), and the CSRF token (new on every render)."""
    body = response.content.decode()
    body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', 'name="csrfmiddlewaretoken" value=""', body)
    body = body.replace(response.request["PATH_INFO"], "<path>")
    for value in kwargs.values():
        if isinstance(value, uuid.UUID):
            body = body.replace(str(value), "<id>")
    return body


@pytest.mark.parametrize("role", ["practitioner", "other_practitioner", "outsider"])
def test_it_answers_for_someone_elses_object_as_for_one_that_does_not_exist(role, world):
    """No existence oracle: another practitioner's patient, appointment or agenda looks exactly
    like a random id (same status, same page), for GET and POST; and nothing is decrypted."""
    client = _client(world, role)
    user = world.users[role]
    if role == "practitioner":
        foreign = Objects(world.others_patient.pk, world.others_appointment.pk, world.other_doctor.pk)
        foreign_patients = [world.others_patient.pk, world.unseen_patient.pk]
    else:
        foreign = Objects(world.patient.pk, world.appointment.pk, world.doctor.pk)
        foreign_patients = [world.patient.pk, world.unseen_patient.pk]
    unseen = Objects(world.unseen_patient.pk, foreign.appointment, foreign.practitioner)
    nowhere = Objects(uuid.uuid4(), uuid.uuid4(), 987654)
    problems = []
    object_patterns = [
        p
        for p in all_patterns()
        if not p.is_admin and any(isinstance(c, UUIDConverter | IntConverter) for c in p.converters.values())
    ]
    assert len(object_patterns) >= 10
    before = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk).count()
    for pattern in object_patterns:
        for method in ("get", "post"):
            answers = []
            for objects in (foreign, unseen, nowhere):
                (kwargs,) = _kwargs(pattern, world, objects)
                response = getattr(client, method)(_url(pattern, kwargs))
                answers.append((response.status_code, _normalized(response, kwargs)))
            statuses = [status for status, _body in answers]
            expected = getattr(TABLE[pattern.key], role) if pattern.key in TABLE else None
            if method == "get" and expected == 404 and statuses[0] != 404:
                problems.append(f"{role} GET {pattern.key} of someone else's: {statuses[0]}, expected 404")
            if answers[0] != answers[2] or answers[1] != answers[2]:
                problems.append(
                    f"{role} {method.upper()} {pattern.key}: someone else's / unseen / nonexistent answer "
                    f"{statuses} or differ in their page: an existence oracle"
                )
    assert not problems, "\n".join(problems)
    reads = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk, patient_id__in=foreign_patients)
    assert not reads.exists(), [(r.path, r.model_label, r.fields) for r in reads]
    assert AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk).count() == before
