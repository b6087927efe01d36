"""Login limits per address and per account (practice/lockout.py).

Five failures lock a username from one address (test_lockout.py). Beyond that pair:
- an address gets LOGIN_ADDRESS_FREE_FAILURES (10) failures, whatever the usernames, then
  each attempt waits 1 s, 2 s, 4 s... after the previous one (answered at once, "try again in
  N seconds"), and LOGIN_ADDRESS_FAILURE_LIMIT (50) lock it for the cool-off;
- a username gets LOGIN_ACCOUNT_FAILURE_LIMIT (20) failures from all addresses together, so an
  attacker rotating addresses checks at most 100 passwords an hour;
- every count is race-safe: a burst of parallel attempts checks no more passwords than the
  limit;
- an unknown username is counted, locked and answered like a real one.
"""

import datetime
import re
import threading

import pytest
from axes.models import AccessAttempt
from django.db import connection
from django.test import Client

from audit.models import AuditEvent, EventType
from config.testing import ATTACKER, LOCKED_URL, PASSWORD, client_for, elapse, login_page_text, login_post

OFFICE = "198.51.100.10"
WRONG = "Please enter a correct username and password"
WAITING = "logins from it are slowed down"
ADDRESS_LOCKED = "Logging in from your network is paused"
ACCOUNT_LOCKED = "Logging in with this username is paused after too many failed attempts from several places"


def attacker_address(n: int) -> str:
    return f"203.0.113.{n + 1}"


def fail_patiently(username: str, ip: str):
    """A wrong password, as often as needed: an attempt told to wait waits (time passes for the
    lockout) and tries again. The answer to the attempt that was checked."""
    for _ in range(5):
        response = login_post(username, "wrong", ip)
        if response.status_code != 429 or WAITING not in response.text:
            return response
        elapse(datetime.timedelta(seconds=int(response["Retry-After"])))
    raise AssertionError("still told to wait")


# An address ------------------------------------------------------------------------------------


def test_an_address_failing_past_ten_is_told_to_wait_a_growing_delay(practitioner, settings):
    assert (settings.LOGIN_ADDRESS_FREE_FAILURES, settings.LOGIN_ADDRESS_DELAY_MAX_SECONDS) == (10, 15)
    # Ten failures, ten usernames: no wait, and nobody is locked.
    assert [login_post(f"guess{n}", "wrong").status_code for n in range(10)] == [200] * 10
    waits = []
    for n in range(10, 16):
        assert login_post(f"guess{n}", "wrong").status_code == 200  # checked: the wrong password
        # The next attempt from the address comes too early, even with a right password.
        client = Client()
        response = login_post(practitioner.username, PASSWORD, client=client)
        assert response.status_code == 429
        assert WAITING in response.text
        assert "Your password was not checked." in response.text
        assert "_auth_user_id" not in client.session
        waits.append(int(response["Retry-After"]))
        elapse(datetime.timedelta(seconds=waits[-1]))
    assert waits == [1, 2, 4, 8, 15, 15]
    assert "Try again in 15 seconds." in response.text
    # Waiting was enough: the colleague logs in from that address, and others never waited.
    assert login_post(practitioner.username, PASSWORD).status_code == 302
    assert login_post(practitioner.username, PASSWORD, ip=OFFICE).status_code == 302
    # A wait refuses without checking or counting: it is not a failure of the pair either.
    assert not AuditEvent.objects.filter(event_type=EventType.LOCKOUT).exists()


@pytest.mark.slow
def test_fifty_failures_lock_the_address_for_every_account(practitioner, settings):
    assert settings.LOGIN_ADDRESS_FAILURE_LIMIT == 50
    answers = [fail_patiently(f"guess{n}", ATTACKER).status_code for n in range(50)]
    assert answers == [200] * 49 + [429]
    response = login_post(practitioner.username, PASSWORD)
    assert response.status_code == 429
    assert ADDRESS_LOCKED in response.text
    assert "Try again in 15 minutes" in response.text
    assert response["Retry-After"] == "900"
    # Any other address logs in.
    assert login_post(practitioner.username, PASSWORD, ip=OFFICE).status_code == 302
    lockout = AuditEvent.objects.get(event_type=EventType.LOCKOUT)
    assert lockout.extra == {"username": "guess49", "ip": ATTACKER}
    # Trying while locked does not start the wait again: 15 minutes after the lock, it is over.
    elapse(datetime.timedelta(minutes=10))
    assert login_post(practitioner.username, "wrong").status_code == 429
    elapse(datetime.timedelta(minutes=5))
    assert login_post(practitioner.username, PASSWORD).status_code == 302


def test_a_right_password_is_not_counted_against_the_address(secretary, practitioner, settings):
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = settings.LOGIN_ADDRESS_FREE_FAILURES = 3
    assert [login_post(f"guess{n}", "wrong").status_code for n in range(2)] == [200, 200]
    for _ in range(5):
        assert login_post(practitioner.username, PASSWORD).status_code == 302
        assert login_post(secretary.username, PASSWORD).status_code == 302
    assert login_post("guess2", "wrong").status_code == 429  # the third failure locks
    assert login_post(practitioner.username, PASSWORD).status_code == 429


# An account across addresses -------------------------------------------------------------------


def test_an_account_tried_from_many_addresses_is_locked_everywhere(secretary, practitioner, settings):
    assert settings.LOGIN_ACCOUNT_FAILURE_LIMIT == 20
    answers = [login_post(secretary.username, "wrong", ip=attacker_address(n)).status_code for n in range(20)]
    assert answers == [200] * 19 + [429]
    response = login_post(secretary.username, PASSWORD, ip=OFFICE)
    assert response.status_code == 429
    assert ACCOUNT_LOCKED in response.text
    assert "Try again in 15 minutes" in response.text
    # The addresses are not locked, nor the colleagues.
    assert login_post(practitioner.username, PASSWORD, ip=attacker_address(0)).status_code == 302
    assert login_post(practitioner.username, PASSWORD, ip=OFFICE).status_code == 302
    elapse(datetime.timedelta(minutes=15))
    assert login_post(secretary.username, PASSWORD, ip=OFFICE).status_code == 302


@pytest.mark.slow
def test_rotating_addresses_checks_at_most_100_passwords_an_hour(secretary):
    """ASVS 2.2.1: no more than 100 failed attempts an hour on one account. The attacker takes
    a new address for every attempt and tries as many as it is allowed, every minute of an
    hour. The worst case is the account's 20 at minutes 0, 15, 30, 45 and 60."""
    checked, address = 0, 0
    for _minute in range(61):
        for _ in range(30):
            address += 1
            response = login_post(secretary.username, "wrong", ip=f"10.{address // 250}.{address % 250}.1")
            if response.status_code == 200:
                checked += 1
                continue
            # Refused: either this very attempt locked the account (its password was checked:
            # the wait starts now, in full), or it came while the account was locked.
            if response["Retry-After"] == "900":
                checked += 1
            break
        elapse(datetime.timedelta(minutes=1))
    assert 80 <= checked <= 100


# Nothing tells an unknown username from a real one ---------------------------------------------


def test_an_account_lockout_reads_the_same_for_an_unknown_username(secretary):
    known = [login_post(secretary.username, "wrong", ip=attacker_address(n)) for n in range(20)][-1]
    unknown = [login_post("nobody.here", "wrong", ip=attacker_address(n)) for n in range(20)][-1]
    assert known.status_code == unknown.status_code == 429
    assert login_page_text(known) == login_page_text(unknown)
    assert known["Retry-After"] == unknown["Retry-After"]
    # And the right password of the locked account changes nothing in the answer.
    assert login_page_text(login_post(secretary.username, PASSWORD, ip=OFFICE)) == login_page_text(unknown)


def test_a_wait_reads_the_same_for_an_unknown_username(secretary):
    for n in range(11):
        login_post(f"guess{n}", "wrong")
    known, unknown = login_post(secretary.username, PASSWORD), login_post("nobody.here", PASSWORD)
    assert known.status_code == unknown.status_code == 429
    assert login_page_text(known) == login_page_text(unknown)


def test_the_pages_that_refuse_are_in_french(secretary, settings):
    french = {"HTTP_ACCEPT_LANGUAGE": "fr"}

    def answer(username: str, ip: str) -> str:
        return (
            Client()
            .post("/accounts/login/", {"username": username, "password": "wrong"}, REMOTE_ADDR=ip, **french)
            .text
        )

    text = [answer("someone", OFFICE) for _ in range(5)][-1]
    assert "Seul cet identifiant est suspendu, et seulement depuis votre réseau" in text
    settings.LOGIN_ADDRESS_FAILURE_LIMIT, settings.LOGIN_ACCOUNT_FAILURE_LIMIT = 12, 3
    for n in range(11):
        login_post(f"guess{n}", "wrong")
    assert "Réessayez dans 1 seconde." in answer("guess11", ATTACKER)
    assert "Votre mot de passe n’a pas été vérifié." in answer("guess11", ATTACKER)
    elapse(datetime.timedelta(seconds=1))
    assert "La connexion depuis votre réseau est suspendue" in answer("guess11", ATTACKER)
    for n in range(3):
        text = answer(secretary.username, attacker_address(100 + n))
    assert "La connexion avec cet identifiant est suspendue" in text
    assert "Réessayez dans 15 minutes" in text


# Races ----------------------------------------------------------------------------------------


def _burst(attempts: list[tuple[str, str]]) -> list[int]:
    """Every (username, address) posted at once, each from its own thread and connection."""
    barrier = threading.Barrier(len(attempts))
    statuses: list[int] = []

    def attempt(username: str, ip: str) -> None:
        try:
            barrier.wait(timeout=30)
            statuses.append(login_post(username, "wrong", ip).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=pair) for pair in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(statuses) == len(attempts)
    return statuses


@pytest.mark.django_db(transaction=True)
def test_a_burst_from_one_address_checks_no_more_passwords_than_its_limit(roles, settings):
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = settings.LOGIN_ADDRESS_FREE_FAILURES = 10
    statuses = _burst([(f"guess{n}", ATTACKER) for n in range(30)])
    # Ten checked (the tenth locks the address, answered with the lockout page), the rest refused.
    assert statuses.count(200) == 9
    assert statuses.count(429) == 21
    assert AuditEvent.objects.filter(event_type=EventType.LOGIN_FAILED).count() == 30


@pytest.mark.django_db(transaction=True)
def test_a_burst_against_one_account_checks_no_more_passwords_than_its_limit(roles, settings):
    settings.LOGIN_ACCOUNT_FAILURE_LIMIT = 20
    statuses = _burst([("sophie.secretary", attacker_address(n)) for n in range(40)])
    assert statuses.count(200) == 19
    assert statuses.count(429) == 21


# Admin ----------------------------------------------------------------------------------------


def _rows(html: str) -> list[str]:
    """The attempts listed (not the admin's menu)."""
    return [row for row in re.findall(r"<tr>.*?</tr>", html, flags=re.S) if "field-locked" in row]


def test_a_practice_admin_sees_and_lifts_an_address_lock(practice_admin, practitioner, settings):
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = settings.LOGIN_ADDRESS_FREE_FAILURES = 3
    assert [login_post(f"guess{n}", "wrong").status_code for n in range(3)] == [200, 200, 429]
    admin = client_for(practice_admin)
    rows = _rows(admin.get(LOCKED_URL, {"locked": "yes"}).text)
    assert len(rows) == 3
    assert all('field-locked">IP address, for every account<' in r for r in rows)
    attempt = AccessAttempt.objects.get(username="guess0")
    admin.post(LOCKED_URL, {"action": "lockout_lift_action", "_selected_action": [attempt.pk], "index": 0})
    unlock = AuditEvent.objects.get(event_type=EventType.UNLOCK)
    assert unlock.extra == {"username": "guess0", "ip": ATTACKER, "failures": 1}
    # Lifting a row lifts the locks it showed: the address is free again.
    assert login_post(practitioner.username, PASSWORD).status_code == 302
    assert 'field-locked">no<' in admin.get(LOCKED_URL).text


def test_a_practice_admin_sees_and_lifts_an_account_lock(practice_admin, secretary, settings):
    settings.LOGIN_ACCOUNT_FAILURE_LIMIT = 3
    answers = [login_post(secretary.username, "wrong", ip=attacker_address(n)).status_code for n in range(3)]
    assert answers == [200, 200, 429]
    admin = client_for(practice_admin)
    rows = _rows(admin.get(LOCKED_URL, {"locked": "yes"}).text)
    assert len(rows) == 3
    assert all('field-locked">account, from every address<' in r for r in rows)
    attempt = AccessAttempt.objects.filter(username=secretary.username).first()
    admin.post(LOCKED_URL, {"action": "lockout_lift_action", "_selected_action": [attempt.pk], "index": 0})
    assert login_post(secretary.username, PASSWORD, ip=OFFICE).status_code == 302
