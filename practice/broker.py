"""Publishing Celery tasks from a web request without ever waiting long on the broker.

Why: a broker that accepts the connection but never answers (Redis paused or swapping, a
half-open TCP connection) holds a publish until the socket time-out, which the Redis client
applies to each read and retries: with a 1 s socket time-out a publish to a paused Redis
took 4.2 s here, and with none (the client's default) it never returned.
CELERY_BROKER_CONNECTION_TIMEOUT bounds the connect only. So a request publishes from a
small pool of threads and waits at most BROKER_PUBLISH_BUDGET seconds. What is not
published by then is left to the periodic sweeps (reminders, security alerts), exactly as if
the broker were down; a publish that lands late only duplicates a message whose task does
nothing the second time. With eager Celery (no broker) the work runs inline, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from celery import current_app
from django.conf import settings
from kombu.exceptions import OperationalError as KombuOperationalError

logger = logging.getLogger(__name__)

# Two threads per process: publishing is quick when the broker answers, and when it hangs,
# later publishes queue behind the stuck ones and their callers stop waiting at the budget.
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="broker-publish")


def publish_bounded(publish: Callable[[], object], *, budget: float | None = None) -> str:
    """Run ``publish`` (one or more ``delay``/``apply_async`` calls) within the budget.

    Returns "" when it finished in time, else why not: "timeout", or the broker error's
    class name. Never raises for a broker that is down or hung.
    """
    if current_app.conf.task_always_eager:
        try:
            publish()
        except Exception as exc:
            # The task ran here and failed (a trail that refuses writes, say): the caller's own
            # work is committed and must not fail with it; the task's sweep takes it up again.
            logger.exception("A task run eagerly after commit failed")
            return type(exc).__name__
        return ""
    try:
        _pool.submit(publish).result(timeout=settings.BROKER_PUBLISH_BUDGET if budget is None else budget)
    except FuturesTimeout:
        return "timeout"
    except (KombuOperationalError, OSError) as exc:  # ConnectionError and TimeoutError are OSErrors
        return type(exc).__name__
    return ""
