"""Each role lands where its day starts."""

from config.testing import client_for, make_practitioner


def test_it_sends_a_secretary_to_the_day(secretary):
    assert client_for(secretary).get("/")["Location"] == "/agenda/"


def test_it_sends_a_practitioner_to_their_day(roles):
    doctor = make_practitioner("dr.home")
    assert client_for(doctor.user).get("/")["Location"] == "/my-day/"


def test_it_sends_a_practice_admin_to_the_admin(practice_admin):
    assert client_for(practice_admin).get("/")["Location"] == "/admin/"


def test_it_sends_anonymous_visitors_to_log_in(client):
    assert client.get("/")["Location"].startswith("/accounts/login/")
