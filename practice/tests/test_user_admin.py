"""Users in Django admin: who has a second factor, "log out everywhere" and "reset second
factor" (both audited), and what a practice admin may not do (make anyone superuser, touch a
superuser)."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent, EventType
from config.testing import PASSWORD, client_for, totp_device
from practice import twofactor
from practice.models import RecoveryCodeDevice, UserSession
from practice.roles import PRACTICE_ADMIN

USERS_URL = "/admin/auth/user/"


@pytest.fixture
def admin_client(practice_admin):
    return client_for(practice_admin)


@pytest.fixture
def superuser(roles):
    return User.objects.create_superuser(username="root", password=PASSWORD)


def act(client: Client, action: str, *users: User):
    return client.post(USERS_URL, {"action": action, "_selected_action": [u.pk for u in users], "index": 0})


def test_the_list_shows_who_has_a_second_factor(admin_client, secretary, outsider):
    totp_device(secretary)
    TOTPDevice.objects.create(user=outsider, name="authenticator", confirmed=False)  # enrolment not finished
    assert admin_client.get(USERS_URL).status_code == 200
    without = admin_client.get(USERS_URL, {"second_factor": "no"}).text
    assert outsider.username in without
    assert secretary.username not in without
    with_one = admin_client.get(USERS_URL, {"second_factor": "yes"}).text
    assert secretary.username in with_one
    assert outsider.username not in with_one


def test_it_logs_a_user_out_everywhere(admin_client, practice_admin, secretary):
    desk, laptop = client_for(secretary), client_for(secretary)
    assert desk.get("/patients/").status_code == 200
    assert act(admin_client, "sessions_end_action", secretary).status_code == 302
    for client in (desk, laptop):
        response = client.get("/patients/")
        assert response.status_code == 302
        assert response.url.startswith("/accounts/login/")
    assert not UserSession.objects.filter(user_id=secretary.pk).exists()
    assert admin_client.get(USERS_URL).status_code == 200  # the admin's own session goes on
    event = AuditEvent.objects.get(event_type=EventType.SESSIONS_ENDED)
    assert (event.actor_username, event.actor_user_id) == (practice_admin.username, practice_admin.pk)
    assert event.extra == {"username": secretary.username, "sessions": 2}
    assert (event.model_label, event.object_pk) == ("auth.User", str(secretary.pk))


def test_an_admin_may_log_themselves_out_everywhere(admin_client, practice_admin):
    other_browser = client_for(practice_admin)
    assert act(admin_client, "sessions_end_action", practice_admin).status_code == 302
    assert admin_client.get("/admin/").status_code == 302
    assert other_browser.get("/admin/").status_code == 302
    assert AuditEvent.objects.filter(event_type=EventType.SESSIONS_ENDED, extra__sessions=2).exists()
    assert AuditEvent.objects.filter(event_type=EventType.LOGOUT, actor_user_id=practice_admin.pk).exists()


def test_it_resets_a_second_factor(admin_client, practice_admin, secretary):
    target = client_for(secretary)
    twofactor.recovery_codes_generate(secretary)
    assert act(admin_client, "second_factor_reset_action", secretary).status_code == 302
    assert not TOTPDevice.objects.filter(user=secretary).exists()
    assert not RecoveryCodeDevice.objects.filter(user=secretary).exists()
    assert target.get("/patients/").url.startswith("/accounts/login/")
    event = AuditEvent.objects.get(event_type=EventType.OTP_RESET)
    assert event.actor_username == practice_admin.username
    assert event.extra == {"username": secretary.username, "sessions": 1}

    # The password alone no longer reaches anything: next stop, enrolling a new authenticator.
    client = Client()
    response = client.post("/accounts/login/", {"username": secretary.username, "password": PASSWORD})
    assert response.status_code == 302
    response = client.get("/patients/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/two-factor/setup/")


def test_a_practice_admin_cannot_make_anyone_superuser(admin_client, practice_admin, secretary):
    permission = Permission.objects.get(codename="delete_auditevent")
    for user in (secretary, practice_admin):
        change = f"{USERS_URL}{user.pk}/change/"
        assert 'name="is_superuser"' not in admin_client.get(change).text
        data = {
            "username": user.username,
            "first_name": "",
            "last_name": "",
            "email": "",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "groups": [g.pk for g in user.groups.all()],
            "user_permissions": [permission.pk],
            "date_joined_0": "2026-01-05",
            "date_joined_1": "09:00:00",
        }
        response = admin_client.post(change, data)
        assert response.status_code == 302, response.text[:2000]  # saved, without those two fields
        user.refresh_from_db()
        assert not user.is_superuser
        assert not user.user_permissions.exists()
    assert list(practice_admin.groups.values_list("name", flat=True)) == [PRACTICE_ADMIN]
    assert not User.objects.filter(is_superuser=True).exists()


def test_a_superuser_still_can(superuser, secretary):
    client = client_for(superuser)
    response = client.get(f"{USERS_URL}{secretary.pk}/change/")
    assert 'name="is_superuser"' in response.text
    assert 'name="user_permissions"' in response.text


def test_a_practice_admin_cannot_touch_a_superuser(admin_client, superuser):
    superuser_browser = client_for(superuser)
    assert admin_client.post(f"{USERS_URL}{superuser.pk}/password/", {}).status_code == 403
    change = admin_client.post(f"{USERS_URL}{superuser.pk}/change/", {"username": "root", "is_active": ""})
    assert change.status_code == 403
    act(admin_client, "sessions_end_action", superuser)
    act(admin_client, "second_factor_reset_action", superuser)
    assert superuser_browser.get("/admin/").status_code == 200
    assert TOTPDevice.objects.filter(user=superuser).exists()
    assert not AuditEvent.objects.filter(event_type__in=[EventType.SESSIONS_ENDED, EventType.OTP_RESET]).exists()


def test_a_practice_admin_still_manages_staff(admin_client, secretary):
    # The restrictions above leave the job itself: groups, staff status, active flag.
    change = f"{USERS_URL}{secretary.pk}/change/"
    admin_group = Group.objects.get(name=PRACTICE_ADMIN)
    data = {
        "username": secretary.username,
        "is_active": "on",
        "is_staff": "on",
        "groups": [admin_group.pk],
        "date_joined_0": "2026-01-05",
        "date_joined_1": "09:00:00",
    }
    assert admin_client.post(change, data).status_code == 302
    secretary.refresh_from_db()
    assert secretary.is_staff
    assert list(secretary.groups.all()) == [admin_group]


def test_role_and_password_changes_are_in_the_trail(admin_client, practice_admin, secretary):
    # A practice admin making someone a practice admin is exactly what a reviewer looks for.
    change = f"{USERS_URL}{secretary.pk}/change/"
    data = {
        "username": secretary.username,
        "is_active": "on",
        "is_staff": "on",
        "groups": [Group.objects.get(name=PRACTICE_ADMIN).pk],
        "date_joined_0": "2026-01-05",
        "date_joined_1": "09:00:00",
    }
    assert admin_client.post(change, data).status_code == 302
    new_password = "another long passphrase 77"
    password = {"password1": new_password, "password2": new_password, "usable_password": "true"}
    assert admin_client.post(f"{USERS_URL}{secretary.pk}/password/", password).status_code == 302
    events = list(AuditEvent.objects.filter(event_type=EventType.CHANGE, model_label="auth.User").order_by("id"))
    assert [e.object_pk for e in events] == [str(secretary.pk)] * 2
    assert {"Staff status", "Groups"} <= set(events[0].fields)
    assert events[1].fields == ["password"]
    assert all(e.actor_username == practice_admin.username for e in events)
    assert new_password not in str(events[1].extra)


@pytest.mark.parametrize("persona", ["secretary", "practitioner", "outsider"])
def test_only_practice_admins_use_the_user_admin(request, persona, other_practitioner):
    target = client_for(other_practitioner)
    client = client_for(request.getfixturevalue(persona))
    response = client.get(USERS_URL)
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
    act(client, "sessions_end_action", other_practitioner)
    act(client, "second_factor_reset_action", other_practitioner)
    assert target.get("/accounts/").status_code == 200
    assert TOTPDevice.objects.filter(user=other_practitioner).exists()
