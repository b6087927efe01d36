"""Login lockout (django-axes, practice/lockout.py): five failures lock a username from one
address, never a colleague behind the same address; the pages tell an attacker nothing about
which accounts exist, and a practice admin lifts a lockout in admin, in the audit trail.
The limits per address and per account across addresses: test_lockout_limits.py."""

import datetime
import re

import pytest
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.test import Client

from audit.models import AuditEvent, EventType
from config.testing import ATTACKER, LOCKED_URL, PASSWORD, client_for, elapse, login_page_text, login_post

OFFICE = "198.51.100.10"


def lock(username: str, ip: str = ATTACKER):
    """Five wrong passwords: the fifth is answered with the lockout page."""
    responses = [login_post(username, f"wrong guess {n}", ip) for n in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 429]
    return responses


def test_it_refuses_the_right_password_after_five_wrong_ones(secretary):
    lock(secretary.username)
    client = Client()
    response = login_post(secretary.username, PASSWORD, client=client)
    assert response.status_code == 429
    assert "Too many attempts" in response.text
    assert "_auth_user_id" not in client.session
    assert client.get("/patients/").status_code == 302  # to the login page
    assert not AuditEvent.objects.filter(event_type=EventType.LOGIN).exists()


def test_the_lockout_page_says_when_to_retry_and_not_whether_the_account_exists(secretary):
    response = lock(secretary.username)[-1]
    assert "Try again in 15 minutes" in response.text
    assert "Each attempt before then starts the wait again." in response.text
    assert secretary.username not in response.text


def test_it_lets_the_user_in_again_after_the_cool_off(secretary):
    lock(secretary.username)
    cool_off = get_cool_off()
    assert cool_off == datetime.timedelta(minutes=15)
    elapse(cool_off - datetime.timedelta(minutes=1))
    # Still locked; and trying again starts the cool-off over (axes' default), which is why
    # the page can say "15 minutes" whenever it is shown.
    assert login_post(secretary.username, PASSWORD).status_code == 429
    elapse(cool_off - datetime.timedelta(minutes=1))
    assert login_post(secretary.username, PASSWORD).status_code == 429
    elapse(cool_off + datetime.timedelta(seconds=1))
    assert login_post(secretary.username, PASSWORD).status_code == 302


def test_a_wrong_password_reads_the_same_for_an_unknown_account(secretary):
    known = login_post(secretary.username, "wrong guess", ip="192.0.2.1")
    unknown = login_post("nobody.here", "wrong guess", ip="192.0.2.2")
    assert known.status_code == unknown.status_code == 200
    assert login_page_text(known, secretary.username) == login_page_text(unknown, "nobody.here")
    assert "Please enter a correct username and password" in known.text


def test_the_lockout_reads_the_same_for_an_unknown_account(secretary):
    known = lock(secretary.username, ip="192.0.2.1")[-1]
    unknown = lock("nobody.here", ip="192.0.2.2")[-1]
    assert known.status_code == unknown.status_code == 429
    assert login_page_text(known) == login_page_text(unknown)
    # And trying the right password of the locked account changes nothing in the answer.
    assert login_page_text(login_post(secretary.username, PASSWORD, ip="192.0.2.1")) == login_page_text(unknown)


def test_one_users_mistakes_never_lock_a_colleague_out_behind_the_same_address(secretary, practitioner):
    lock(secretary.username, ip=OFFICE)
    # The colleague at the next desk, behind the clinic's one address, logs in.
    colleague = Client()
    assert login_post(practitioner.username, PASSWORD, ip=OFFICE, client=colleague).status_code == 302
    assert "_auth_user_id" in colleague.session
    # The one who mistyped waits, from that address only: from home, the password works.
    assert login_post(secretary.username, PASSWORD, ip=OFFICE).status_code == 429
    assert login_post(secretary.username, PASSWORD, ip="192.0.2.20").status_code == 302


def test_the_lockout_page_says_only_this_username_from_this_network_waits(secretary):
    response = lock(secretary.username)[-1]
    assert "Only this username is paused, and only from your network: colleagues can still log in." in response.text
    assert response["Retry-After"] == "900"


def test_five_usernames_tried_from_one_address_lock_nobody(secretary, practitioner):
    responses = [login_post(f"guess{n}", "wrong", ip=ATTACKER) for n in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert login_post(practitioner.username, PASSWORD, ip=ATTACKER).status_code == 302
    assert login_post(secretary.username, PASSWORD, ip=OFFICE).status_code == 302


def test_failures_and_the_lockout_are_in_the_trail(secretary):
    lock(secretary.username)
    failures = AuditEvent.objects.filter(event_type=EventType.LOGIN_FAILED)
    assert failures.count() == 5
    assert {(e.extra["username"], e.ip) for e in failures} == {(secretary.username, ATTACKER)}
    lockout = AuditEvent.objects.get(event_type=EventType.LOCKOUT)
    assert lockout.extra == {"username": secretary.username, "ip": ATTACKER}
    assert not any("wrong guess" in str(e.extra) for e in AuditEvent.objects.all())


# Lifting a lockout in admin -----------------------------------------------------------------------


@pytest.fixture
def admin_client(practice_admin):
    return client_for(practice_admin)


def test_a_practice_admin_sees_who_is_locked_and_why(admin_client, secretary):
    lock(secretary.username)
    for n in range(5):
        login_post(f"guess{n}", "wrong", ip=OFFICE)
    response = admin_client.get(LOCKED_URL)
    assert response.status_code == 200
    rows = re.findall(r"<tr>.*?</tr>", response.text, flags=re.S)
    secretary_row = next(r for r in rows if secretary.username in r)
    assert 'field-locked">this account from this address<' in secretary_row
    # Each sprayed username failed once: five together lock neither them nor the address.
    sprayed = [r for r in rows if "guess" in r]
    assert len(sprayed) == 5
    assert all('field-locked">no<' in r for r in sprayed)
    assert admin_client.get(LOCKED_URL, {"locked": "no"}).text.count(">guess") == 5
    locked = admin_client.get(LOCKED_URL, {"locked": "yes"}).text
    assert ">guess" not in locked
    assert secretary.username in locked


def test_a_practice_admin_lifts_a_lockout(admin_client, practice_admin, secretary):
    lock(secretary.username)
    attempt = AccessAttempt.objects.get(username=secretary.username)
    response = admin_client.post(
        LOCKED_URL, {"action": "lockout_lift_action", "_selected_action": [attempt.pk], "index": 0}
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    unlock = AuditEvent.objects.get(event_type=EventType.UNLOCK)
    assert unlock.actor_user_id == practice_admin.pk
    assert unlock.actor_username == practice_admin.username
    assert unlock.extra == {"username": secretary.username, "ip": ATTACKER, "failures": 5}
    assert login_post(secretary.username, PASSWORD).status_code == 302


def test_deleting_an_attempt_in_admin_is_an_unlock_too(admin_client, practice_admin, secretary):
    lock(secretary.username)
    attempt = AccessAttempt.objects.get(username=secretary.username)
    response = admin_client.post(f"{LOCKED_URL}{attempt.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    unlock = AuditEvent.objects.get(event_type=EventType.UNLOCK)
    assert (unlock.actor_username, unlock.extra["username"]) == (practice_admin.username, secretary.username)


def test_attempts_cannot_be_added_or_changed_in_admin(admin_client, secretary):
    lock(secretary.username)
    attempt = AccessAttempt.objects.get()
    assert admin_client.get(f"{LOCKED_URL}add/").status_code == 403
    view = admin_client.get(f"{LOCKED_URL}{attempt.pk}/change/")
    assert view.status_code == 200
    assert "<form" in view.text
    assert 'name="_save"' not in view.text
    response = admin_client.post(f"{LOCKED_URL}{attempt.pk}/change/", {"failures_since_start": 0})
    assert response.status_code == 403
    assert AccessAttempt.objects.get().failures_since_start == 5


def test_axes_copies_of_the_trail_are_not_in_admin(admin_client):
    # Logins and failures are in the audit trail; axes' own logs are not shown twice.
    assert admin_client.get("/admin/axes/accesslog/").status_code == 404
    assert admin_client.get("/admin/axes/accessfailurelog/").status_code == 404


@pytest.mark.parametrize("persona", ["secretary", "practitioner", "outsider"])
def test_only_practice_admins_reach_the_lockouts(request, persona, practice_admin):
    lock(practice_admin.username)
    attempt = AccessAttempt.objects.get()
    client = client_for(request.getfixturevalue(persona))
    response = client.get(LOCKED_URL)
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
    assert client.get(response.url).status_code == 403
    client.post(LOCKED_URL, {"action": "lockout_lift_action", "_selected_action": [attempt.pk], "index": 0})
    client.post(f"{LOCKED_URL}{attempt.pk}/delete/", {"post": "yes"})
    assert AccessAttempt.objects.filter(pk=attempt.pk).exists()
    assert not AuditEvent.objects.filter(event_type=EventType.UNLOCK).exists()
