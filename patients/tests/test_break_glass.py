"""Break the glass: a practitioner opens a record they have no appointment with after writing
why; the access covers that one record, expires, is audited with the reason, and practice
admins review it in Django admin without decrypting anyone."""

import datetime
import re
import uuid

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone

from audit.context import system_context
from audit.models import AuditEvent, EventType
from config.testing import client_for, make_appointment, make_patient
from patients import services
from patients.models import BreakGlassGrant
from practice.roles import PRACTITIONER

REASON = "Unconscious in the waiting room, GP unreachable: need allergies and contacts."


def _form_url(pk) -> str:
    return reverse("patients:break_glass", args=[pk])


def _detail_url(pk) -> str:
    return reverse("patients:detail", args=[pk])


def _same_page(body: str, pk) -> str:
    """The page with what differs per request or per id taken out: CSRF tokens are masked
    afresh on every render, and the id is in the URL the user typed."""
    body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", body)
    return body.replace(str(pk), "<id>")


def _reads_by(user) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=user.pk))


def _own_patient(user):
    """A patient with an appointment with ``user``, who becomes a practitioner of the clinic."""
    own = make_patient(last_name="Moreau", first_names="Paul", nir="")
    make_appointment(own, user, reason="")
    return own


@pytest.fixture
def other_patient(db):
    return make_patient(last_name="Girard", first_names="Hugo", nir="", email="", phone_mobile="")


@pytest.fixture
def doctor_client(practitioner):
    return client_for(practitioner)


# Without a grant -------------------------------------------------------------------------------


def test_it_offers_the_way_in_with_the_same_404_whether_the_record_exists_or_not(practitioner, doctor_client, patient):
    unknown = uuid.uuid4()
    existing = doctor_client.get(_detail_url(patient.pk))
    missing = doctor_client.get(_detail_url(unknown))

    assert existing.status_code == missing.status_code == 404
    assert [t.name for t in existing.templates][0] == "patients/no_access.html"
    assert _form_url(patient.pk) in existing.content.decode()
    assert _same_page(existing.content.decode(), patient.pk) == _same_page(missing.content.decode(), unknown)
    assert "no-store" in existing["Cache-Control"]
    assert "LEFÈVRE" not in existing.content.decode().upper()
    assert _reads_by(practitioner) == []


def test_it_keeps_the_plain_404_for_users_who_cannot_break_the_glass(outsider, patient):
    response = client_for(outsider).get(_detail_url(patient.pk))
    assert response.status_code == 404
    assert "patients/no_access.html" not in [t.name for t in response.templates]
    assert "emergency-access" not in response.content.decode()


def test_it_shows_the_same_form_for_any_id_without_reading_the_patient(practitioner, doctor_client, patient):
    unknown = uuid.uuid4()
    existing = doctor_client.get(_form_url(patient.pk))
    missing = doctor_client.get(_form_url(unknown))

    assert existing.status_code == missing.status_code == 200
    assert 'name="reason"' in existing.content.decode()
    assert _same_page(existing.content.decode(), patient.pk) == _same_page(missing.content.decode(), unknown)
    assert "no-store" in existing["Cache-Control"]
    assert _reads_by(practitioner) == []
    assert not BreakGlassGrant.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Write the reason"),
        ({"reason": ""}, "Write the reason"),
        ({"reason": "   "}, "Write the reason"),
        ({"reason": "emergency"}, "at least 20 characters"),
        ({"reason": "  emergency, sorry      "}, "at least 20 characters"),
    ],
)
def test_it_refuses_access_without_a_written_reason(practitioner, doctor_client, patient, data, message):
    response = doctor_client.post(_form_url(patient.pk), data)

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors["reason"])
    assert 'class="errorlist' in response.content.decode()
    assert not BreakGlassGrant.objects.exists()
    assert not AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS).exists()
    assert doctor_client.get(_detail_url(patient.pk)).status_code == 404
    assert _reads_by(practitioner) == []


def test_it_refuses_a_short_reason_or_another_role_in_the_service_too(practitioner, secretary, patient):
    with pytest.raises(ValidationError):
        services.break_glass_open(user=practitioner, patient=patient, reason="  too short  ")
    with pytest.raises(PermissionDenied):
        services.break_glass_open(user=secretary, patient=patient, reason=REASON)
    assert not BreakGlassGrant.objects.exists()
    assert not AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS).exists()


# With a reason --------------------------------------------------------------------------------


def test_it_opens_that_record_only_and_audits_the_reason(
    practitioner, other_practitioner, doctor_client, patient, other_patient
):
    before = timezone.now()
    response = doctor_client.post(_form_url(patient.pk), {"reason": f"  {REASON}  "})

    assert response.status_code == 302
    assert response["Location"] == _detail_url(patient.pk)
    grant = BreakGlassGrant.objects.get()
    assert (grant.user, grant.username, grant.patient_id, grant.reason) == (
        practitioner,
        practitioner.username,
        patient.pk,
        REASON,
    )
    assert grant.granted_at >= before
    assert grant.expires_at - grant.granted_at == datetime.timedelta(minutes=60)
    assert grant.reviewed_at is None

    event = AuditEvent.objects.get(event_type=EventType.BREAK_GLASS)
    assert (event.actor_user_id, event.actor_username, event.actor_role) == (
        practitioner.pk,
        practitioner.username,
        PRACTITIONER,
    )
    assert event.patient_id == patient.pk
    assert event.object_pk == str(patient.pk)
    assert event.model_label == "patients.Patient"
    assert event.extra["reason"] == REASON
    assert event.extra["expires_at"] == grant.expires_at.isoformat()
    assert event.path == _form_url(patient.pk)

    page = doctor_client.get(_detail_url(patient.pk))
    body = page.content.decode()
    assert page.status_code == 200
    assert "LEFÈVRE Anne-Marie" in body
    until = timezone.localtime(grant.expires_at).strftime("%H:%M")
    assert f"Emergency access until {until}, reason: {REASON}" in body
    assert "Edit" not in body
    reads = _reads_by(practitioner)
    assert reads
    assert {r.patient_id for r in reads} == {patient.pk}

    # That record only, for that practitioner only, and still no editing.
    assert doctor_client.get(_detail_url(other_patient.pk)).status_code == 404
    assert client_for(other_practitioner).get(_detail_url(patient.pk)).status_code == 404
    assert doctor_client.get(reverse("patients:edit", args=[patient.pk])).status_code == 403
    assert doctor_client.post(reverse("patients:archive", args=[patient.pk])).status_code == 403


def test_it_escapes_the_reason_on_the_record_page(doctor_client, patient):
    reason = '<script>alert("x")</script> collapsed in the street outside'
    doctor_client.post(_form_url(patient.pk), {"reason": reason})
    body = doctor_client.get(_detail_url(patient.pk)).content.decode()
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body


def test_it_lets_the_access_expire(practitioner, doctor_client, patient, settings):
    settings.BREAK_GLASS_MINUTES = 5
    doctor_client.post(_form_url(patient.pk), {"reason": REASON})
    grant = BreakGlassGrant.objects.get()
    assert grant.expires_at - grant.granted_at == datetime.timedelta(minutes=5)
    assert doctor_client.get(_detail_url(patient.pk)).status_code == 200

    BreakGlassGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    reads_before = len(_reads_by(practitioner))
    response = doctor_client.get(_detail_url(patient.pk))
    assert response.status_code == 404
    assert [t.name for t in response.templates][0] == "patients/no_access.html"
    assert len(_reads_by(practitioner)) == reads_before


def test_it_opens_an_archived_record_too(practitioner, doctor_client, patient):
    with system_context("tests"):
        services.patient_archive(patient=patient, actor=None)
    assert doctor_client.post(_form_url(patient.pk), {"reason": REASON}).status_code == 302
    assert doctor_client.get(_detail_url(patient.pk)).status_code == 200


def test_it_answers_404_after_a_valid_reason_for_an_unknown_id(doctor_client):
    response = doctor_client.post(_form_url(uuid.uuid4()), {"reason": REASON})
    assert response.status_code == 404
    assert not BreakGlassGrant.objects.exists()
    assert not AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS).exists()


def test_it_grants_nothing_for_a_practitioner_s_own_patient(practitioner, doctor_client):
    own = _own_patient(practitioner)
    response = doctor_client.post(_form_url(own.pk), {"reason": REASON})
    assert response.status_code == 302
    assert response["Location"] == _detail_url(own.pk)
    assert not BreakGlassGrant.objects.exists()
    body = doctor_client.get(_detail_url(own.pk)).content.decode()
    assert "MOREAU Paul" in body
    assert "Emergency access until" not in body


def test_it_shows_no_banner_when_the_practitioner_sees_the_patient_anyway(practitioner, doctor_client):
    own = _own_patient(practitioner)
    with system_context("tests"):
        services.break_glass_open(user=practitioner, patient=own, reason=REASON)
    assert "Emergency access until" not in doctor_client.get(_detail_url(own.pk)).content.decode()


# Who may ask -------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["secretary", "practice_admin", "outsider"])
def test_it_refuses_the_form_to_everyone_but_practitioners(request, persona, patient):
    client = client_for(request.getfixturevalue(persona))
    for pk in (patient.pk, uuid.uuid4()):
        assert client.get(_form_url(pk)).status_code == 403
        assert client.post(_form_url(pk), {"reason": REASON}).status_code == 403
    assert not BreakGlassGrant.objects.exists()


def test_it_sends_anonymous_users_to_login(client, patient):
    for response in (client.get(_form_url(patient.pk)), client.post(_form_url(patient.pk), {"reason": REASON})):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    assert not BreakGlassGrant.objects.exists()


# Review by the practice admins ---------------------------------------------------------------


@pytest.fixture
def grant(practitioner, patient):
    with system_context("tests"):
        return services.break_glass_open(user=practitioner, patient=patient, reason=REASON)


@pytest.fixture
def admin_client(practice_admin):
    return client_for(practice_admin)


CHANGELIST = "/admin/patients/breakglassgrant/"


def test_it_lists_grants_for_review_naming_the_patient_in_an_audited_read(admin_client, grant, patient):
    """The patient's name (and id) on the list and the grant's page: two name fields read, in
    the request's audit context, paid from the practice admin's allowance (no appointment
    explains it). More in test_admin_break_glass.py."""
    response = admin_client.get(CHANGELIST)
    body = response.content.decode()
    assert response.status_code == 200
    assert grant.username in body
    assert str(patient.pk) in body
    assert REASON in body
    assert "LEFÈVRE Anne-Marie" in body
    change_url = f"{CHANGELIST}{grant.pk}/change/"
    change = admin_client.get(change_url)
    assert change.status_code == 200
    assert REASON in change.content.decode()
    assert "LEFÈVRE Anne-Marie" in change.content.decode()
    for path in (CHANGELIST, change_url):
        [read] = AuditEvent.objects.filter(event_type=EventType.READ, path=path)
        assert (read.patient_id, sorted(read.fields), read.explanation) == (
            patient.pk,
            ["first_names", "last_name"],
            "unexplained",
        )
    assert AuditEvent.objects.filter(event_type=EventType.READ).count() == 2


def test_it_filters_reviewed_and_unreviewed(admin_client, grant, practitioner, practice_admin):
    with system_context("tests"):
        reviewed = services.break_glass_open(
            user=practitioner, patient=make_patient(last_name="Roux", nir=""), reason=REASON
        )
        services.break_glass_review(grant=reviewed, reviewer=practice_admin, note="seen")
    pending = admin_client.get(CHANGELIST, {"reviewed": "no"}).context["cl"].result_list
    done = admin_client.get(CHANGELIST, {"reviewed": "yes"}).context["cl"].result_list
    assert [g.pk for g in pending] == [grant.pk]
    assert [g.pk for g in done] == [reviewed.pk]


def test_it_finds_grants_by_patient_id_or_username(admin_client, grant):
    assert admin_client.get(CHANGELIST, {"q": str(grant.patient_id)}).context["cl"].result_count == 1
    assert admin_client.get(CHANGELIST, {"q": "dr.martin"}).context["cl"].result_count == 1
    assert admin_client.get(CHANGELIST, {"q": "not-a-uuid"}).status_code == 200


def test_it_marks_grants_reviewed_and_audits_it(admin_client, grant, practice_admin):
    response = admin_client.post(CHANGELIST, {"action": "mark_reviewed", "_selected_action": [str(grant.pk)]})
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.reviewed_at is not None
    assert grant.reviewed_by == practice_admin
    event = AuditEvent.objects.get(event_type=EventType.BREAK_GLASS_REVIEWED)
    assert (event.actor_user_id, event.actor_username) == (practice_admin.pk, practice_admin.username)
    assert event.patient_id == grant.patient_id
    assert event.object_pk == str(grant.pk)
    assert event.extra["grantee"] == grant.username

    # A second pass leaves reviewed grants alone.
    admin_client.post(CHANGELIST, {"action": "mark_reviewed", "_selected_action": [str(grant.pk)]})
    assert AuditEvent.objects.filter(event_type=EventType.BREAK_GLASS_REVIEWED).count() == 1


def test_it_saves_a_review_note_through_the_service(admin_client, grant, practice_admin):
    response = admin_client.post(
        f"{CHANGELIST}{grant.pk}/change/", {"review_note": "Confirmed with Dr Martin: patient fainted."}
    )
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.review_note == "Confirmed with Dr Martin: patient fainted."
    assert grant.reviewed_by == practice_admin
    assert grant.reason == REASON  # read-only
    event = AuditEvent.objects.get(event_type=EventType.BREAK_GLASS_REVIEWED)
    assert event.extra["note"] == grant.review_note


def test_it_never_adds_or_deletes_grants_in_admin(admin_client, grant):
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{grant.pk}/delete/").status_code == 403
    assert BreakGlassGrant.objects.filter(pk=grant.pk).exists()


@pytest.mark.parametrize("persona", ["secretary", "practitioner", "outsider"])
def test_it_keeps_the_review_from_other_roles(request, persona, grant):
    response = client_for(request.getfixturevalue(persona)).get(CHANGELIST)
    assert response.status_code in (302, 403)
