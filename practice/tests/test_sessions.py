"""Sessions end after 15 minutes idle and 12 hours in all (docs/design.md, invariant 2); their key
changes at login and again after the second factor; logging out deletes them; a changed or
reset password ends the other sessions."""

import datetime
import time

import pytest
from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.contrib.sessions.backends.base import UpdateError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from audit.models import AuditEvent, EventType
from config.testing import PASSWORD, client_for, log_in, totp_code, totp_device
from practice.models import UserSession
from practice.sessions import SessionStore


def _key(client: Client) -> str:
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _goes_to_login(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_uses_the_lifetimes_of_the_design():
    assert settings.SESSION_COOKIE_AGE == 15 * 60
    assert settings.SESSION_SAVE_EVERY_REQUEST  # the 15 minutes start again at every request
    assert settings.SESSION_ABSOLUTE_SECONDS == 12 * 3600


def test_it_keeps_an_active_session_and_pushes_its_idle_end_back(secretary):
    client = client_for(secretary)
    UserSession.objects.filter(pk=_key(client)).update(expire_date=timezone.now() + datetime.timedelta(minutes=1))
    response = client.get("/agenda/")
    assert response.status_code == 200
    assert int(response.cookies[settings.SESSION_COOKIE_NAME]["max-age"]) == settings.SESSION_COOKIE_AGE
    left = UserSession.objects.get(pk=_key(client)).expire_date - timezone.now()
    assert datetime.timedelta(minutes=14) < left <= datetime.timedelta(minutes=15)


def test_it_logs_out_after_15_minutes_idle(secretary):
    client = client_for(secretary)
    assert client.get("/agenda/").status_code == 200
    # 15 minutes and a second without a request.
    UserSession.objects.filter(pk=_key(client)).update(expire_date=timezone.now() - datetime.timedelta(seconds=1))
    assert _goes_to_login(client.get("/agenda/"))
    assert _goes_to_login(client.get("/patients/"))


def test_it_logs_out_after_12_hours_even_when_active(secretary):
    client = Client()
    log_in(client, secretary)
    session = client.session
    started = session["auth_started_at"]  # set at login (audit.signals)
    assert abs(started - time.time()) < 60
    assert client.get("/agenda/").status_code == 200
    session["auth_started_at"] = time.time() - settings.SESSION_ABSOLUTE_SECONDS - 1
    session.save()
    key = _key(client)
    assert UserSession.objects.get(pk=key).expire_date > timezone.now()  # not idle

    assert _goes_to_login(client.get("/agenda/"))
    assert not UserSession.objects.filter(pk=key).exists()
    assert AuditEvent.objects.filter(event_type=EventType.LOGOUT, actor_user_id=secretary.pk).exists()
    assert _goes_to_login(client.get("/agenda/"))


def test_it_keeps_a_session_a_little_under_12_hours(secretary):
    client = client_for(secretary)
    session = client.session
    session["auth_started_at"] = time.time() - settings.SESSION_ABSOLUTE_SECONDS + 60
    session.save()
    assert client.get("/agenda/").status_code == 200


def test_it_changes_the_session_key_at_login_and_after_the_second_factor(secretary):
    device = totp_device(secretary)
    client = Client()
    session = client.session  # a session from before the login (as a shared screen would have)
    session["seen"] = True
    session.save()
    before = _key(client)

    response = client.post("/accounts/login/", {"username": secretary.username, "password": PASSWORD})
    assert response.status_code == 302
    after_password = _key(client)
    assert after_password != before
    assert not UserSession.objects.filter(pk=before).exists()

    response = client.post("/accounts/two-factor/", {"code": totp_code(device)})
    assert response.status_code == 302
    after_second_factor = _key(client)
    assert after_second_factor not in (before, after_password)
    assert not UserSession.objects.filter(pk=after_password).exists()
    assert UserSession.objects.get(pk=after_second_factor).user_id == secretary.pk
    assert client.get("/agenda/").status_code == 200

    # Whoever kept an older key (a fixated session, a proxy log) is not logged in.
    for old in (before, after_password):
        intruder = Client()
        intruder.cookies[settings.SESSION_COOKIE_NAME] = old
        assert _goes_to_login(intruder.get("/agenda/"))


def test_it_deletes_the_session_at_logout(secretary):
    client = Client()
    log_in(client, secretary)
    key = _key(client)
    assert UserSession.objects.get(pk=key).user_id == secretary.pk

    response = client.post("/accounts/logout/")
    assert _goes_to_login(response)
    assert not UserSession.objects.filter(pk=key).exists()
    assert not UserSession.objects.filter(user_id=secretary.pk).exists()
    # The old cookie opens nothing.
    intruder = Client()
    intruder.cookies[settings.SESSION_COOKIE_NAME] = key
    assert _goes_to_login(intruder.get("/agenda/"))


def test_it_ends_the_other_sessions_when_the_password_changes(secretary):
    here, elsewhere = client_for(secretary), client_for(secretary)
    new_password = "another horse battery staple 43"
    response = here.post(
        "/accounts/password/",
        {"old_password": PASSWORD, "new_password1": new_password, "new_password2": new_password},
    )
    assert response.status_code == 302
    assert here.get("/agenda/").status_code == 200  # this session goes on (with its second factor)
    assert _goes_to_login(elsewhere.get("/agenda/"))
    assert AuditEvent.objects.filter(event_type=EventType.PASSWORD_CHANGED, actor_user_id=secretary.pk).exists()


def test_it_changes_passwords_on_one_audited_page_only(practice_admin):
    # Django admin's own page would change the password without an audit row.
    response = client_for(practice_admin).get("/admin/password_change/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password/"


def test_it_ends_every_session_when_the_password_is_reset(secretary):
    logged_in = client_for(secretary)
    uid = urlsafe_base64_encode(force_bytes(secretary.pk))
    visitor = Client()
    response = visitor.get(f"/accounts/password/reset/{uid}/{default_token_generator.make_token(secretary)}/")
    assert response.status_code == 302  # to the same URL with the token moved into the session
    new_password = "another horse battery staple 43"
    response = visitor.post(response["Location"], {"new_password1": new_password, "new_password2": new_password})
    assert response.status_code == 302
    assert _goes_to_login(logged_in.get("/agenda/"))
    assert _goes_to_login(visitor.get("/agenda/"))  # a reset does not log in
    assert AuditEvent.objects.filter(event_type=EventType.PASSWORD_RESET, actor_user_id=secretary.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_session_saved_outside_a_transaction_is_one_update_and_fails_when_ended_meanwhile():
    """A request saves its session in autocommit, as one UPDATE (no BEGIN/COMMIT); if the
    session was ended meanwhile (log out everywhere), the save fails instead of reviving it."""
    store = SessionStore()
    store["step"] = 1
    store.create()
    store["step"] = 2
    with CaptureQueriesContext(connection) as captured:
        store.save()
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["UPDATE"]
    assert SessionStore(store.session_key).load()["step"] == 2

    UserSession.objects.filter(session_key=store.session_key).delete()
    store["step"] = 3
    with pytest.raises(UpdateError):
        store.save()
    assert not UserSession.objects.filter(session_key=store.session_key).exists()
