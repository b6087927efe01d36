"""The trail's own writes outside a request's reads, each in its app's services module:
lifting a read budget block (audit/services.py) and reviewing an anomaly
(investigations/services.py). Each changes its row and writes its
audit event in one transaction; the admin page and the anomaly page call these."""

import datetime

import pytest
import time_machine
from django.utils import timezone

from audit import admin as audit_admin
from audit import services
from audit.context import Actor
from audit.models import Anomaly, AnomalyKind, AuditEvent, EventType, ReadBlock, Severity
from investigations import services as investigation_services
from investigations import views as investigation_views


def _block(user) -> ReadBlock:
    return ReadBlock.objects.create(
        user_id=user.pk,
        username=user.username,
        role="Secretary",
        blocked_at=timezone.now(),
        window="hour",
        patients_read=5,
        budget=5,
    )


def _anomaly() -> Anomaly:
    now = timezone.now()
    return Anomaly.objects.create(
        key="out_of_hours:test",
        kind=AnomalyKind.OUT_OF_HOURS,
        severity=Severity.HIGH,
        username="sophie.secretary",
        window_start=now - datetime.timedelta(hours=1),
        window_end=now,
        detected_at=now,
        updated_at=now,
        summary="Reads out of hours",
    )


def test_it_lifts_a_block_with_a_reason_and_one_event(secretary, practice_admin):
    block = _block(secretary)
    # The lift is stamped with the moment it is made: the counts start again from it.
    lifted_at = timezone.now() + datetime.timedelta(minutes=7)
    actor = Actor.for_user(practice_admin)

    with time_machine.travel(lifted_at, tick=False):
        lifted = services.read_block_lift(block=block, actor=actor, reason="  Called Sophie: the mailing.  ")

    assert (lifted.lifted_at, lifted.lifted_by, lifted.lift_reason) == (
        lifted_at,
        "alice.admin",
        "Called Sophie: the mailing.",
    )
    [event] = AuditEvent.objects.filter(event_type=EventType.BUDGET_LIFTED)
    assert (event.actor_user_id, event.actor_username) == (practice_admin.pk, "alice.admin")
    assert event.extra == {
        "block": block.pk,
        "user_id": secretary.pk,
        "username": "sophie.secretary",
        "reason": "Called Sophie: the mailing.",
    }
    # Lifting it again changes nothing and writes nothing.
    again = services.read_block_lift(block=block, actor=actor, reason="Twice")
    assert again.lift_reason == "Called Sophie: the mailing."
    assert AuditEvent.objects.filter(event_type=EventType.BUDGET_LIFTED).count() == 1


def test_it_refuses_a_lift_without_a_reason_or_by_the_blocked_account(secretary):
    block = _block(secretary)
    with pytest.raises(ValueError, match="reason is required"):
        services.read_block_lift(block=block, actor=Actor.for_user(secretary), reason="   ")
    with pytest.raises(PermissionError):
        services.read_block_lift(block=block, actor=Actor.for_user(secretary), reason="It was me, honestly.")
    block.refresh_from_db()
    assert block.lifted_at is None
    assert not AuditEvent.objects.filter(event_type=EventType.BUDGET_LIFTED).exists()


def test_it_reviews_an_anomaly_with_a_note_and_one_event(practice_admin):
    anomaly = _anomaly()
    reviewed = investigation_services.anomaly_review(
        anomaly=anomaly, actor=Actor.for_user(practice_admin), note="Late call"
    )

    reviewed.refresh_from_db()
    assert reviewed.reviewed_at is not None
    assert (reviewed.reviewed_by, reviewed.review_note) == ("alice.admin", "Late call")
    [event] = AuditEvent.objects.filter(event_type=EventType.CHANGE, model_label="audit.Anomaly")
    assert (event.actor_user_id, event.object_pk) == (practice_admin.pk, str(anomaly.pk))
    assert event.fields == ["review_note", "reviewed_at", "reviewed_by"]
    assert event.extra == {"review_note": "Late call", "kind": "out_of_hours"}


def test_the_admin_and_the_anomaly_page_write_through_these_services():
    assert audit_admin.read_block_lift is services.read_block_lift
    assert investigation_views.anomaly_review is investigation_services.anomaly_review
