"""Migrations: what they store and what they run.

Rules checked here (docs/contributing.md): the audit event type is stored without its
choices, so a new ``EventType`` needs no migration, while validation and the admin still
use ``EventType`` (its labels, and no unknown value); and a migration runs the code frozen
in its own file, never the app's live code, so a later change of a module cannot change
what an old migration does.
"""

import ast
import importlib
import io
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.forms import modelform_factory
from django.utils import timezone

from audit import chain
from audit.models import AuditEvent, EventType
from audit.services import audit_event_write
from config.testing import client_for, trail_tampering

OUR_APPS = ("audit", "patients", "practice", "scheduling")

pytestmark = pytest.mark.django_db


# --------------------------------------------------------------------------- event types


def test_it_needs_no_migration_for_a_new_event_type():
    """What adding a member to EventType does to the field: more choices, nothing else."""
    field = AuditEvent._meta.get_field("event_type")
    choices, out = field.choices, io.StringIO()
    field.choices = [*choices, (99, "A new event type")]  # a property: mock.patch cannot undo it
    try:
        call_command("makemigrations", "audit", "--check", "--dry-run", stdout=out)  # exits 1 on a change
    finally:
        field.choices = choices
    assert "No changes detected" in out.getvalue()


def test_it_stores_the_event_type_without_its_choices():
    _name, path, _args, kwargs = AuditEvent._meta.get_field("event_type").deconstruct()

    assert path == "django.db.models.PositiveSmallIntegerField"  # no import of audit.models in a migration
    assert "choices" not in kwargs
    state = MigrationLoader(connection).project_state()
    assert not state.models["audit", "auditevent"].fields["event_type"].choices


def test_it_refuses_an_unknown_event_type(audit_ctx):
    event = AuditEvent(occurred_at=timezone.now(), event_type=99, actor_username="x", actor_role="system")
    with pytest.raises(ValidationError) as refused:
        event.full_clean(exclude=["mac"])
    assert "event_type" in refused.value.message_dict

    event.event_type = EventType.LOGIN_FAILED
    event.full_clean(exclude=["mac"])


def test_the_admin_form_offers_the_event_types_by_label_and_refuses_others():
    Form = modelform_factory(AuditEvent, fields=["event_type"])

    assert (EventType.LOGIN_FAILED, "Login failed") in Form().fields["event_type"].choices
    assert not Form({"event_type": "99"}).is_valid()
    assert Form({"event_type": str(EventType.LOGIN_FAILED)}).is_valid()


def test_the_trail_in_the_admin_shows_the_event_types_by_label(practice_admin):
    practice_admin.is_superuser = True  # the trail's admin page, whoever may see it
    practice_admin.save()
    audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": "someone"})

    page = client_for(practice_admin).get("/admin/audit/auditevent/")

    assert page.status_code == 200
    assert page.content.decode().count("Login failed") >= 2  # the row and the filter
    assert "Blind index rebuild" in page.content.decode()  # the filter lists every type


# --------------------------------------------------------------------------- frozen code


def _app_imports(path: Path) -> list[str]:
    """The modules of our apps that a migration file imports, at any depth (RunPython
    functions included), except the field classes its operations name (``audit.fields``):
    Django imports those to build the state, and they stay importable by design."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if module.split(".")[0] in OUR_APPS and module != "audit.fields":
                found.append(f"{path.relative_to(settings.BASE_DIR)}:{node.lineno} {module}")
    return found


def test_no_migration_runs_the_apps_live_code():
    files = sorted(Path(settings.BASE_DIR).glob("*/migrations/0*.py"))
    assert len(files) > 30

    assert [line for path in files for line in _app_imports(path)] == []


def test_it_seals_rows_from_before_the_chain_with_the_trail_of_that_time():
    """Migration 0007 chains the rows written before the chain, with the models of that time
    (no explanation column yet); the chain's code of today verifies what it wrote."""
    rows = [audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"n": n}) for n in range(3)]
    with trail_tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET mac = ''")
    then = MigrationLoader(connection).project_state(("audit", "0006_audit_session")).apps
    migration = importlib.import_module("audit.migrations.0007_trail_append_only")

    with trail_tampering():
        migration.seal_existing(then, type("SchemaEditor", (), {"connection": connection})())

    assert all(AuditEvent.objects.values_list("mac", flat=True))
    report = chain.chain_verify()
    assert report.ok, report.problem and report.problem.describe()
    assert report.rows == len(rows)


def test_the_chain_tip_migration_holds_the_chains_lock():
    """Migration 0012 takes the chain writers' lock: its frozen copy is the live one's value."""
    migration = importlib.import_module("audit.migrations.0012_chain_tip")

    assert migration.ADVISORY_LOCK_ID == chain.ADVISORY_LOCK_ID


# --------------------------------------------------------------------------- names


def _generated(name: str) -> bool:
    """What Django names a migration when it has nothing better: a timestamp, "..._and_more",
    or several operations run together ("alter_practitioner_specialty_alter_practitioner_user")."""
    words = name.split("_")[1:]
    verbs = sum(word in {"add", "alter", "create", "delete", "remove", "rename"} for word in words)
    return words[:1] == ["auto"] or name.endswith("_and_more") or verbs >= 2


def test_migration_names_say_what_they_do():
    names = sorted(name for app, name in MigrationLoader(None).disk_migrations if app in OUR_APPS)
    assert "0002_verbose_names" in names

    assert [name for name in names if _generated(name)] == []


def test_a_database_migrated_before_the_renames_is_up_to_date():
    """It recorded the names Django generated; each renamed migration ``replaces`` its old name."""
    loader = MigrationLoader(None)
    old_names = {old for key in loader.replacements for old in loader.disk_migrations[key].replaces}
    assert len(old_names) == 4
    with connection.cursor() as cursor:  # the records as they were before the renames
        cursor.execute("DELETE FROM django_migrations WHERE name = %s", ["0002_verbose_names"])
    assert old_names <= set(MigrationRecorder(connection).applied_migrations())

    now = MigrationLoader(connection)
    now.check_consistent_history(connection)  # what migrate checks first
    assert set(now.graph.nodes) - set(now.applied_migrations) == set()  # nothing left to apply
