"""Removed rows are named by their ids: the trail's ids have no gaps, so a gap is a removal.

The attack: the table's owner disables the trigger and deletes the last
rows of the trail; what is left is a valid chain, and rows written afterwards chain onto it.
Before, ``audit_verify`` said "intact" as long as no head had been exported. Now the ids are
drawn gap-free under the chain lock and the chain keeps its largest id drawn (the tip), so
``audit_verify`` names the missing ids with or without newer rows; heads are exported every
five minutes and compared one by one with the trail.

Tampering is done as the owner would: raw SQL with the trail's triggers disabled
(``config.testing.trail_tampering``).
"""

import contextlib
import io
import logging

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import transaction

from audit import chain, tasks
from audit.keys import canary_write
from audit.models import AuditEvent, EventType
from audit.services import audit_event_write
from audit.tasks import audit_verify_nightly
from config.testing import trail_tampering


@pytest.fixture(autouse=True)
def _keys_sealed(db):
    canary_write()


def write_events(n: int, tag: str = "u") -> list[AuditEvent]:
    return [audit_event_write(event_type=EventType.LOGIN_FAILED, extra={"username": f"{tag}{i}"}) for i in range(n)]


def verify(*args) -> str:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except CommandError:
        raise CommandError(out.getvalue() + err.getvalue()) from None
    return out.getvalue()


def verify_fails(*args) -> str:
    with pytest.raises(CommandError) as failure:
        verify(*args)
    return str(failure.value)


def delete_ids(first: int, last: int) -> int:
    with trail_tampering() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id BETWEEN %s AND %s", [first, last])
        return cursor.rowcount


def tip_lower_to(last_id: int) -> None:
    """What an owner who knows about the tip does as well: put it back to the cut trail."""
    with trail_tampering() as cursor:
        cursor.execute("UPDATE audit_chaintip SET last_id = %s", [last_id])


def ids() -> list[int]:
    return list(AuditEvent.objects.order_by("id").values_list("id", flat=True))


def head_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit head:")]


# --------------------------------------------------------------------------- gaps


def test_it_names_a_tail_cut_off_before_newer_rows_were_written():
    """The campaign's finding: the last 25 rows deleted, then the app writes on."""
    events = write_events(30)
    first_cut, last_cut = events[5].pk, events[-1].pk
    assert delete_ids(first_cut, last_cut) == 25
    newer = write_events(3, tag="after")
    assert newer[0].pk == last_cut + 1  # the ids go on from the largest drawn, not from the cut

    message = verify_fails()

    assert f"Ids {first_cut} to {last_cut} are missing" in message
    assert "rows were removed" in message
    assert "First bad row" not in message  # the chain itself is intact: only the ids show it


def test_it_names_a_tail_cut_off_when_nothing_was_written_since():
    events = write_events(10)
    delete_ids(events[7].pk, events[-1].pk)

    message = verify_fails()

    assert f"Ids {events[7].pk} to {events[-1].pk} are missing at the end of the trail" in message


def test_it_names_every_range_removed_in_the_middle_and_at_the_end():
    events = write_events(20)
    delete_ids(events[4].pk, events[6].pk)
    delete_ids(events[15].pk, events[-1].pk)
    write_events(2, tag="after")

    message = verify_fails()

    # The chain breaks after the middle range (the next row chained onto a removed one)...
    assert f"First bad row: row {events[7].pk} (" in message
    # ... and both ranges are named, the second one too although the chain was rebuilt past it.
    assert f"Ids {events[4].pk} to {events[6].pk} are missing" in message
    assert f"Ids {events[15].pk} to {events[-1].pk} are missing" in message


def test_gaps_are_found_across_the_chunks_of_the_scan(monkeypatch):
    """The trail is scanned a million ids at a time (a statement stays short however long the
    trail); here four at a time, with gaps astride the chunks' edges."""
    monkeypatch.setattr(chain, "GAPS_CHUNK", 4)
    events = write_events(20)
    pk = [e.pk for e in events]
    for first, last in [(pk[2], pk[6]), (pk[9], pk[9]), (pk[11], pk[12]), (pk[17], pk[19])]:
        delete_ids(first, last)

    gaps = chain.id_gaps(after_id=pk[0])

    assert gaps.ranges == [(pk[2], pk[6]), (pk[9], pk[9]), (pk[11], pk[12])]
    assert gaps.tail == (pk[17], pk[19])
    monkeypatch.setattr(chain, "GAPS_LISTED", 2)
    assert chain.id_gaps(after_id=pk[0]).more


def test_rolled_back_writes_leave_no_gap():
    """A rolled-back transaction that wrote to the trail (a booking that failed, a page whose
    reads could not be written) gives its ids back: the next write takes them."""
    write_events(2)
    with contextlib.suppress(RuntimeError), transaction.atomic():
        write_events(3, tag="rolled-back")
        raise RuntimeError("the service failed")
    write_events(2, tag="w")

    found = ids()
    assert found == list(range(found[0], found[0] + len(found)))
    out = verify()
    assert "chain is intact" in out


@pytest.mark.django_db(transaction=True)
def test_a_committed_then_failed_transaction_leaves_no_gap_either():
    """Across real commits (transactional test): a writer that drew its ids and rolled back
    between two committed writers."""
    canary_write()
    write_events(2)
    with contextlib.suppress(RuntimeError), transaction.atomic():
        write_events(2, tag="rolled-back")
        raise RuntimeError("the service failed")
    write_events(2, tag="w")

    found = ids()
    assert found == list(range(found[0], found[0] + len(found)))
    assert "chain is intact" in verify()


def test_the_nightly_check_reports_the_gap_once(django_capture_on_commit_callbacks):
    write_events(3)
    audit_verify_nightly()
    events = write_events(8, tag="n")
    delete_ids(events[2].pk, events[-1].pk)
    write_events(1, tag="after")

    result = audit_verify_nightly()

    assert result["gaps"] == [[events[2].pk, events[-1].pk]]
    event = AuditEvent.objects.get(event_type=EventType.TRAIL_SHRANK)
    assert event.extra["missing_ids"] == [[events[2].pk, events[-1].pk]]
    assert audit_verify_nightly()["gaps"] == []  # the next run goes on from the new head


# --------------------------------------------------------------------------- exported heads


def test_the_head_is_exported_every_five_minutes(caplog):
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "audit.tasks.audit_head_export")
    assert entry["schedule"] == 300.0
    events = write_events(3)

    with caplog.at_level(logging.INFO, logger="audit.heads"):
        tasks.audit_head_export.apply().get()

    [record] = [r for r in caplog.records if r.getMessage().startswith("audit head:")]
    assert record.getMessage().startswith(f"audit head: max_id={events[-1].pk} mac={events[-1].mac} at=")
    assert record.name == "audit.heads"


def test_verify_against_exported_heads_finds_a_tail_cut_without_newer_rows(caplog, tmp_path):
    """The owner cuts the tail and puts the tip back: the trail alone looks whole, the
    exported head does not."""
    events = write_events(6)
    with caplog.at_level(logging.INFO, logger="audit.heads"):
        tasks.audit_head_export.apply().get()
    head_file = tmp_path / "heads.log"
    head_file.write_text("".join(f"Nov 28 03:05:00 app1 cabinet: {line}\n" for line in head_lines(caplog)))
    delete_ids(events[3].pk, events[-1].pk)
    tip_lower_to(events[2].pk)
    assert "chain is intact" in verify()  # without the heads, nothing shows

    message = verify_fails("--head-file", str(head_file))

    assert f"row {events[-1].pk}, the head exported earlier, is missing" in message
    assert f"the last row before it is {events[2].pk}" in message


def test_verify_compares_every_exported_head_not_only_the_last(caplog, tmp_path):
    """Cut, tip put back, new rows written and a new head exported since: the last head
    matches, an earlier one does not."""
    events = write_events(5)
    with caplog.at_level(logging.INFO, logger="audit.heads"):
        tasks.audit_head_export.apply().get()
        delete_ids(events[3].pk, events[-1].pk)
        tip_lower_to(events[2].pk)
        refilled = write_events(4, tag="forged")  # take the removed ids again
        tasks.audit_head_export.apply().get()
    assert refilled[0].pk == events[3].pk
    head_file = tmp_path / "heads.log"
    head_file.write_text("\n".join(head_lines(caplog)) + "\n")

    message = verify_fails("--head-file", str(head_file))

    assert f"row {events[-1].pk} differs from the head exported earlier (line 1 of" in message
