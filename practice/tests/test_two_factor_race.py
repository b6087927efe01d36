"""Parallel wrong second-factor codes are checked one at a time (issue 12, item 10): the
device's failure count and throttle are read and written under a row lock, so a burst of 24
parallel guesses checks no more codes than a client sending them one after the other would."""

import threading
import time

import pytest
from django.contrib.auth.models import User
from django.db import connection

from conftest import totp_device
from practice.twofactor import second_factor_check

ATTEMPTS = 24


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_parallel_wrong_codes_checks_no_more_than_a_sequential_client(roles):
    user = User.objects.create_user("race.secretary")
    device = totp_device(user)
    barrier = threading.Barrier(ATTEMPTS)
    outcomes: list[str] = []

    def guess(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            ok, locked_until = second_factor_check(user, f"{n:06d}")
            outcomes.append("accepted" if ok else ("throttled" if locked_until else "checked"))
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(ATTEMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started

    device.refresh_from_db()
    checked = outcomes.count("checked")
    assert len(outcomes) == ATTEMPTS and "accepted" not in outcomes
    # Every code checked was counted: no failure lost to a race.
    assert device.throttling_failure_count == checked
    # A sequential client is throttled 1 s, then 2, 4...: within the burst it checks at most
    # 1 + log2(elapsed + 1) codes.
    sequential = 1
    while 2**sequential - 1 <= elapsed:
        sequential += 1
    assert checked <= sequential, (outcomes, elapsed)
