"""Tamper evidence: the HMAC chain over the trail, `manage.py audit_verify`, the exported
head and (PostgreSQL) the trigger that keeps the trail append-only.

Tampering is done the way someone with database access would: raw SQL, and on PostgreSQL
as the trail's owner with its triggers disabled (``config.testing.trail_tampering``).
"""

import contextlib
import importlib
import io
import logging
import threading

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, connections, transaction

from audit import chain
from audit.context import system_context
from audit.keys import canary_write
from audit.models import AuditEvent, AuditHead, EventType
from audit.services import audit_event_write
from audit.tasks import audit_verify_nightly
from config.testing import make_patient, trail_owner, trail_tampering
from patients.models import Patient

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the append-only trigger is PostgreSQL's; SQLite has the chain alone",
)


@pytest.fixture(autouse=True)
def _keys_sealed(db):
    # A transactional test elsewhere may have emptied the table the migration filled.
    canary_write()


def write_events(n: int, tag: str = "u") -> list[AuditEvent]:
    return [audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": f"{tag}{i}"}) for i in range(n)]


def tampering():
    """A cursor that gets past the trail's protection as its owner does: the triggers
    disabled (PostgreSQL); on SQLite nothing stands in the way."""
    return trail_tampering()


def verify(*args) -> tuple[str, str]:
    """Run audit_verify; (stdout, stderr). Raises CommandError when verification fails."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except CommandError:
        raise CommandError(out.getvalue() + err.getvalue()) from None
    return out.getvalue(), err.getvalue()


def verify_fails(*args) -> str:
    with pytest.raises(CommandError) as failure:
        verify(*args)
    return str(failure.value)


# --------------------------------------------------------------------------- the chain


def test_it_verifies_a_clean_chain_of_events_and_reads(audit_ctx):
    patient = make_patient()
    with system_context("tests:reader") as ctx:
        ctx.ip = "2001:DB8:0:0::1"  # PostgreSQL's inet gives it back as 2001:db8::1
        assert Patient.objects.get(pk=patient.pk).last_name == "Lefèvre"
    write_events(3)
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_username="system:tests:reader")
    assert read.fields == ["last_name"]

    rows = list(AuditEvent.objects.order_by("id"))
    assert all(len(row.mac) == 64 for row in rows)
    assert len({row.mac for row in rows}) == len(rows)
    out, _err = verify()
    assert f"Verified {len(rows)} rows" in out
    assert "chain is intact" in out


def test_the_canonical_form_keeps_none_and_empty_apart_and_covers_the_id():
    base = {"id": 7, "occurred_at": "2026-03-09T10:00:00.123456+01:00", "event_type": 1, "actor_user_id": None}
    assert chain.canonical(base) != chain.canonical({**base, "actor_user_id": 0})
    assert chain.canonical({**base, "ip": None}) != chain.canonical({**base, "ip": ""})
    assert chain.canonical(base) != chain.canonical({**base, "id": 8})
    assert b'"2026-03-09T09:00:00.123456+00:00"' in chain.canonical(base)
    assert chain.canonical({**base, "extra": {"b": 1, "a": [2]}}) == chain.canonical(
        {**base, "extra": {"a": [2], "b": 1}}
    )
    assert chain.mac_for(chain.GENESIS, base) != chain.mac_for("1" * 64, base)


def test_it_names_a_row_changed_with_raw_sql():
    events = write_events(5)
    target = events[2]
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET actor_username = 'someone.else' WHERE id = %s", [target.pk])

    message = verify_fails()

    assert f"First bad row: row {target.pk} (" in message
    assert "someone.else" in message
    assert "content does not match its MAC: the row was changed" in message
    assert "Verified 2 rows" in message


def test_it_names_the_row_after_a_deleted_one():
    events = write_events(5)
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [events[2].pk])

    message = verify_fails()

    assert f"First bad row: row {events[3].pk} (" in message
    assert "rows just before it were removed" in message
    assert f"Ids {events[2].pk} to {events[2].pk} are missing" in message


def test_it_names_a_forged_row_inserted_in_a_gap():
    before = write_events(2)
    removed = write_events(3, tag="x")
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id >= %s", [removed[0].pk])
    after = write_events(2, tag="v")
    forged_id = before[-1].pk + 2
    assert forged_id < after[0].pk
    with tampering() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditevent (id, occurred_at, event_type, actor_user_id, actor_username, actor_role, "
            "user_agent, request_id, session, path, purpose, model_label, object_pk, fields, extra, mac) "
            "SELECT %s, occurred_at, 20, 1, 'alice.admin', 'Practice admin', '', '', '', '', '', '', '', "
            "fields, extra, mac FROM audit_auditevent WHERE id = %s",
            [forged_id, before[-1].pk],
        )

    message = verify_fails()

    assert f"First bad row: row {forged_id} (" in message
    assert "the row was inserted" in message


def test_rolled_back_writes_leave_no_gap_and_are_not_tampering():
    """Ids come back with a rollback (audit/chain.py): a gap is a removal, never a rollback.
    More in audit/tests/test_trail_gaps.py."""
    write_events(2)
    with contextlib.suppress(RuntimeError), transaction.atomic():
        write_events(2, tag="rolled-back")
        raise RuntimeError("the service failed")
    write_events(2, tag="w")

    ids = list(AuditEvent.objects.order_by("id").values_list("id", flat=True))
    assert ids == list(range(ids[0], ids[0] + 4))
    out, _err = verify()
    assert "chain is intact" in out


def test_it_starts_from_a_given_row():
    events = write_events(6)
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET extra = '{}' WHERE id = %s", [events[1].pk])

    assert f"row {events[1].pk} (" in verify_fails()
    out, _err = verify("--from-id", str(events[3].pk))
    assert "Verified 3 rows" in out


# --------------------------------------------------------------------------- the exported head


def test_it_finds_a_truncated_tail_against_the_exported_head(caplog, tmp_path):
    events = write_events(5)
    with caplog.at_level(logging.INFO, logger="audit.heads"):
        audit_verify_nightly()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit head:")]
    head_file = tmp_path / "cabinet.log"
    head_file.write_text(f"Nov 28 03:00:01 app1 cabinet: {line}\n")
    head = AuditHead.objects.get()
    assert f"max_id={head.max_event_id} mac={head.head_mac} " in line
    assert "chain=ok" in line
    with tampering() as cursor:
        # The tail (and the nightly's record of it): what is left is still a valid chain.
        cursor.execute("DELETE FROM audit_auditevent WHERE id >= %s", [events[3].pk])
        cursor.execute("DELETE FROM audit_audithead")

    message = verify_fails("--head-file", str(head_file))

    assert f"Verified {AuditEvent.objects.count()} rows" in message
    assert f"row {head.max_event_id}, the head exported earlier, is missing" in message
    assert f"the last row before it is {events[2].pk}" in message
    assert "First bad row" not in message


def test_it_finds_a_tail_replaced_by_newer_rows(tmp_path):
    write_events(3)
    audit_verify_nightly()
    head = AuditHead.objects.get()
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [head.max_event_id])
    write_events(2, tag="later")  # the chain goes on from the row before: intact again

    message = verify_fails()  # the head recorded in the database
    assert f"row {head.max_event_id}, the head exported earlier, is missing" in message

    head_file = tmp_path / "heads.log"
    head_file.write_text(f"audit head: max_id={head.max_event_id} mac={'f' * 64} count=3\n")
    with tampering() as cursor:
        cursor.execute("DELETE FROM audit_audithead")
    assert "is missing" in verify_fails("--head-file", str(head_file))


def test_a_head_file_without_a_head_is_an_error(tmp_path):
    write_events(1)
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(CommandError, match="No 'audit head"):
        call_command("audit_verify", "--head-file", str(empty), stdout=io.StringIO())


# --------------------------------------------------------------------------- the nightly check


def test_the_nightly_check_reports_a_broken_chain_once(caplog, django_capture_on_commit_callbacks):
    write_events(3)
    audit_verify_nightly()
    newer = write_events(3, tag="n")
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET ip = '10.6.6.6' WHERE id = %s", [newer[1].pk])

    result = audit_verify_nightly()

    assert result["rows_verified"] == 1
    assert f"row {newer[1].pk} (" in result["chain_problem"]
    event = AuditEvent.objects.get(event_type=EventType.CHAIN_BROKEN)
    assert event.actor_username == "system:audit_verify_nightly"
    assert event.object_pk == str(newer[1].pk)
    assert f"row {newer[1].pk} (" in event.extra["problem"]
    head = AuditHead.objects.order_by("-id").first()
    assert head.chain_problem == result["chain_problem"]
    assert "Audit trail chain broken: row" in caplog.text
    assert "chain=broken" in caplog.text

    # Reported once: the next night goes on from the new head (the command still names it).
    assert audit_verify_nightly()["chain_problem"] == ""
    assert AuditEvent.objects.filter(event_type=EventType.CHAIN_BROKEN).count() == 1
    assert f"row {newer[1].pk} (" in verify_fails()


def test_the_nightly_check_finds_the_previous_head_replaced():
    write_events(3)
    audit_verify_nightly()
    head = AuditHead.objects.get()
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET mac = %s WHERE id = %s", ["e" * 64, head.max_event_id])

    result = audit_verify_nightly()

    assert f"row {head.max_event_id} differs from the head exported earlier" in result["chain_problem"]
    assert AuditEvent.objects.filter(event_type=EventType.CHAIN_BROKEN).count() == 1


def test_the_nightly_check_verifies_incrementally():
    write_events(4)
    first = audit_verify_nightly()
    write_events(2, tag="n")

    second = audit_verify_nightly()

    assert first["rows_verified"] == AuditHead.objects.order_by("id").first().rows_verified
    assert second["rows_verified"] == 2
    assert audit_verify_nightly(full=True)["rows_verified"] == AuditEvent.objects.count()


# --------------------------------------------------------------------------- sealing rows from before the chain


def test_the_migration_seals_rows_written_before_the_chain():
    events = write_events(4)
    with tampering() as cursor:
        cursor.execute("UPDATE audit_auditevent SET mac = ''")
    assert "has no MAC" in verify_fails()

    migration = importlib.import_module("audit.migrations.0007_trail_append_only")
    with tampering():
        migration.seal_existing(django_apps, type("SchemaEditor", (), {"connection": connection})())
    write_events(1, tag="after")

    out, _err = verify()
    assert f"Verified {len(events) + 1} rows" in out


# --------------------------------------------------------------------------- the trigger (PostgreSQL)


@postgresql_only
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET actor_username = 'x'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
)
def test_the_trigger_refuses_to_rewrite_the_trail(statement):
    """Even the owner, whose rights allow it (the app's role has no such rights at all:
    audit/tests/test_app_role.py)."""
    write_events(2)
    with (
        pytest.raises(DatabaseError, match="the audit trail is append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
        trail_owner(cursor),
    ):
        cursor.execute(statement)
    assert AuditEvent.objects.count() == 2
    verify()


@postgresql_only
def test_the_trigger_refuses_the_orm_too():
    [event] = write_events(1)
    with connection.cursor() as cursor, trail_owner(cursor):  # the ORM on this connection, as the owner
        with pytest.raises(DatabaseError, match="UPDATE refused on audit_auditevent"), transaction.atomic():
            AuditEvent.objects.filter(pk=event.pk).update(actor_username="x")
        with pytest.raises(DatabaseError, match="DELETE refused"), transaction.atomic():
            event.delete()
    assert AuditEvent.objects.filter(pk=event.pk, actor_username=event.actor_username).exists()


# --------------------------------------------------------------------------- concurrent writers


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_fork_the_chain():
    canary_write()
    patient = make_patient()
    barrier = threading.Barrier(8)
    errors = []

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                if i % 5 == 0:
                    with system_context(f"tests:reader{n}"):
                        assert Patient.objects.get(pk=patient.pk).first_names
                else:
                    audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"writer": n, "i": i})
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert AuditEvent.objects.filter(actor_username__startswith="system:tests:reader").count() == 8 * 10
    out, _err = verify()
    assert f"Verified {AuditEvent.objects.count()} rows" in out
    assert "chain is intact" in out
