"""The nightly check: the trail's head is recorded and logged, rows deleted behind the app's
back are found and alerted, and keys that no longer read the database are reported; the
nightly purge drops what the read limits no longer look at.
(The chain part of the check: audit/tests/test_chain.py.)"""

import datetime
import logging
import uuid

import pytest
from django.utils import timezone

from audit.keys import canary_write
from audit.models import AllowanceKind, AllowanceUse, AuditEvent, AuditHead, EventType, KeyCanary, ReadTally
from audit.services import audit_event_write
from audit.tasks import audit_verify_nightly, read_tally_purge
from config.testing import trail_tampering
from practice.roles import PRACTICE_ADMIN


@pytest.fixture
def admin_mail(practice_admin, eager, mailoutbox):
    practice_admin.email = "alice@clinic.example"
    practice_admin.save()
    assert practice_admin.groups.filter(name=PRACTICE_ADMIN).exists()
    return mailoutbox


@pytest.fixture(autouse=True)
def _keys_sealed(db):
    # A transactional test elsewhere may have emptied the table the migration filled.
    canary_write()


def write_events(n: int) -> list[AuditEvent]:
    return [audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": f"u{i}"}) for i in range(n)]


def raw_delete(*ids: int) -> None:
    """What someone with database access does: no signal, no model, no trail (and on
    PostgreSQL, as the trail's owner, with the append-only trigger switched off)."""
    with trail_tampering() as cursor:
        cursor.execute(
            f"DELETE FROM audit_auditevent WHERE id IN ({', '.join(['%s'] * len(ids))})",
            list(ids),
        )
        assert cursor.rowcount == len(ids)


def test_it_records_and_logs_the_head_of_the_trail(caplog):
    events = write_events(5)

    result = audit_verify_nightly()

    head = AuditHead.objects.get()
    assert head.max_event_id == events[-1].pk
    assert head.event_count == AuditEvent.objects.filter(id__lte=events[-1].pk).count()
    assert head.last_occurred_at == events[-1].occurred_at
    assert (head.missing_rows, head.key_problem) == (0, False)
    assert head.head_mac == events[-1].mac
    assert (head.rows_verified, head.chain_problem) == (head.event_count, "")
    assert result == {
        "max_id": head.max_event_id,
        "head_mac": head.head_mac,
        "count": head.event_count,
        "missing": 0,
        "gaps": [],
        "rows_verified": head.event_count,
        "chain_problem": "",
        "key_problem": False,
    }
    assert (
        f"audit head: max_id={head.max_event_id} mac={head.head_mac} count={head.event_count} "
        f"last_at={events[-1].occurred_at.isoformat()} missing=0 chain=ok verified={head.event_count} keys=ok"
    ) in caplog.text


def test_it_stays_quiet_while_the_trail_only_grows(admin_mail, django_capture_on_commit_callbacks):
    write_events(3)
    with django_capture_on_commit_callbacks(execute=True):
        audit_verify_nightly()
        write_events(3)
        audit_verify_nightly()

    assert AuditHead.objects.count() == 2
    assert not AuditEvent.objects.filter(event_type=EventType.TRAIL_SHRANK).exists()
    assert admin_mail == []


def test_it_finds_rows_deleted_with_raw_sql_even_after_newer_rows_and_alerts(
    admin_mail, caplog, django_capture_on_commit_callbacks
):
    events = write_events(6)
    audit_verify_nightly()
    raw_delete(events[1].pk, events[3].pk)
    write_events(4)  # more rows than were deleted: the total grew

    with django_capture_on_commit_callbacks(execute=True):
        result = audit_verify_nightly()

    assert result["missing"] == 2
    assert AuditHead.objects.order_by("-id").first().missing_rows == 2
    event = AuditEvent.objects.get(event_type=EventType.TRAIL_SHRANK)
    assert event.actor_username == "system:audit_verify_nightly"
    assert event.extra["missing_rows"] == 2
    assert "Audit trail rows missing: 2 since the check of" in caplog.text
    [mail] = admin_mail
    assert "Audit trail rows missing" in mail.subject
    assert "user: system:audit_verify_nightly" in mail.body

    # Reported once: the next night compares with the head that already lacks them.
    audit_verify_nightly()
    assert AuditEvent.objects.filter(event_type=EventType.TRAIL_SHRANK).count() == 1


def test_it_finds_a_truncated_tail(django_capture_on_commit_callbacks):
    events = write_events(5)
    audit_verify_nightly()
    raw_delete(*(e.pk for e in events[-3:]))

    result = audit_verify_nightly()

    assert result["missing"] == 3
    assert result["max_id"] < events[-1].pk
    assert AuditEvent.objects.filter(event_type=EventType.TRAIL_SHRANK).count() == 1
    # The chain part finds it too: the previous head's row is gone.
    assert f"row {events[-1].pk}, the head exported earlier, is missing" in result["chain_problem"]
    assert AuditEvent.objects.filter(event_type=EventType.CHAIN_BROKEN).count() == 1


def test_it_reports_keys_that_no_longer_read_the_database(admin_mail, caplog, django_capture_on_commit_callbacks):
    KeyCanary.objects.update(blind_index_fingerprint="0" * 16)  # the indexes were built with another key

    with django_capture_on_commit_callbacks(execute=True):
        result = audit_verify_nightly()

    assert result["key_problem"] is True
    assert AuditHead.objects.get().key_problem
    event = AuditEvent.objects.get(event_type=EventType.KEY_CHECK_FAILED)
    assert event.extra["problem"].startswith("BLIND_INDEX_KEY")
    assert "Key check failed: BLIND_INDEX_KEY" in caplog.text
    assert "keys=problem" in caplog.text
    [mail] = admin_mail
    assert "Key check failed" in mail.body


def test_the_nightly_purge_drops_tallies_and_allowance_uses_older_than_a_day(secretary, caplog):
    """What the read limits no longer look at (audit/budget.py, audit/explain.py) goes; the
    last day stays, and both counts are logged."""
    now = timezone.now()
    recent, stale = now - datetime.timedelta(hours=23), now - datetime.timedelta(hours=25)
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    ReadTally.objects.create(user_id=secretary.pk, patient_id=kept, first_read_at=recent, last_read_at=recent)
    ReadTally.objects.create(user_id=secretary.pk, patient_id=dropped, first_read_at=stale, last_read_at=stale)
    for kind in (AllowanceKind.UNEXPLAINED, AllowanceKind.MASKED, AllowanceKind.ASKED):
        AllowanceUse.objects.create(user_id=secretary.pk, patient_id=kept, kind=kind, used_at=recent)
        AllowanceUse.objects.create(user_id=secretary.pk, patient_id=dropped, kind=kind, used_at=stale)

    with caplog.at_level(logging.INFO, logger="audit.tasks"):
        assert read_tally_purge.apply().get() == {"tallies": 1, "allowance_uses": 3}

    assert set(ReadTally.objects.values_list("patient_id", flat=True)) == {kept}
    assert set(AllowanceUse.objects.values_list("patient_id", flat=True)) == {kept}
    assert AllowanceUse.objects.count() == 3
    assert "Read tallies purged: 1; allowance uses purged: 3" in caplog.text
