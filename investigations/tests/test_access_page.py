"""'Who opened this record': practice admins read it, nobody else."""

from django.urls import reverse

from audit.models import AuditEvent, EventType
from config.testing import client_for


def test_it_lists_who_opened_a_record_for_a_practice_admin(secretary, practice_admin, patient):
    client_for(secretary).get(patient.get_absolute_url(), REMOTE_ADDR="192.0.2.10", HTTP_USER_AGENT="FrontDesk/1")
    response = client_for(practice_admin).get(reverse("investigations:patient_access", args=[patient.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert secretary.username in body
    assert "Secretary" in body  # the role label
    assert "192.0.2.10" in body
    assert f"/patients/{patient.pk}/" in body
    assert "last name" in body
    assert "social security number (NIR)" in body
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_user_id=secretary.pk)
    assert read.user_agent == "FrontDesk/1"
    assert read.actor_role == "Secretary"


def test_it_audits_the_admin_reading_the_report(practice_admin, patient):
    client_for(practice_admin).get(reverse("investigations:patient_access", args=[patient.pk]))
    read = AuditEvent.objects.get(event_type=EventType.READ, actor_user_id=practice_admin.pk)
    assert read.patient_id == patient.pk
    assert read.fields == ["first_names", "last_name"]
    assert read.purpose == "investigations:patient_access"


def test_it_keeps_the_trail_from_secretaries_and_practitioners(secretary, practitioner, outsider, patient):
    url = reverse("investigations:patient_access", args=[patient.pk])
    for user in (secretary, practitioner, outsider):
        assert client_for(user).get(url).status_code == 403


def test_it_makes_the_trail_read_only_in_admin(practice_admin, superuser, patient):
    client = client_for(superuser)
    event = AuditEvent.objects.first()
    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    response = client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
