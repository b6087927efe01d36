"""A real Celery worker, fed through the real Redis broker, audits what its tasks decrypt.

The eager mode of the embedded default runs tasks in the caller's process; production runs
them in a worker that shares nothing with the web process but the database and the broker.
This is that setup, in one process: the task travels through Redis and runs in the worker's
thread, with its own database connection (hence committed data: `transaction=True`).
"""

import os
import threading
import uuid

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun

from audit.tests.helpers import patient_key, read_map, reads
from conftest import make_patient

BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/15"
INDEXED_FIELDS = {"last_name", "first_names", "birth_date", "phone_mobile", "phone_other", "email"}


def _drop_broker_connections(app) -> None:
    """Connections are pooled per app: drop them so the next use reads the broker URL afresh."""
    from kombu import pools

    pools.reset()
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@pytest.fixture
def celery_on_redis():
    """The project's Celery app pointed at Redis, not eager, on a queue of its own (so that
    no other worker on this broker takes the task, and ours takes no one else's)."""
    from practice.celery import app

    queue = f"cabinet-tests-{uuid.uuid4().hex}"
    overrides = {
        "broker_url": BROKER_URL,
        "task_always_eager": False,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": False,
    }
    saved = {key: app.conf[key] for key in overrides}
    _drop_broker_connections(app)
    app.conf.update(overrides)
    try:
        yield app, queue
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        _drop_broker_connections(app)
        app.conf.update(saved)


@pytest.fixture
def finished_tasks():
    """Task id -> (state, return value, ran eagerly, thread), as reported after each run."""
    done: dict[str, tuple] = {}
    finished = threading.Event()

    def on_postrun(task_id=None, task=None, state=None, retval=None, **kwargs):
        done[task_id] = (state, retval, bool(task.request.is_eager), threading.get_ident())
        finished.set()

    task_postrun.connect(on_postrun, weak=False)
    try:
        yield done, finished
    finally:
        task_postrun.disconnect(on_postrun)


@pytest.mark.django_db(transaction=True)
def test_it_audits_a_task_run_by_a_worker_through_redis(celery_on_redis, finished_tasks):
    from patients.tasks import patient_reindex

    app, queue = celery_on_redis
    done, finished = finished_tasks
    patient = make_patient()

    with start_worker(app, perform_ping_check=False, queues=[queue], shutdown_timeout=20):
        result = patient_reindex.apply_async(args=[str(patient.pk)], queue=queue)
        # Only the worker thread touches the database until the task is over (SQLite's
        # shared in-memory test database takes one writer at a time).
        assert finished.wait(timeout=30), "the worker did not run the task"

    state, retval, eager, thread = done[result.id]
    assert (state, retval, eager) == ("SUCCESS", True, False)
    assert thread != threading.get_ident()  # the worker's thread, not the caller's
    assert read_map() == {patient_key(patient): INDEXED_FIELDS}
    event = reads()[0]
    assert event.actor_username == "system:patient_reindex"
    assert event.actor_role == "system"
    assert event.patient_id == patient.pk
    assert event.extra["task_id"] == result.id
    assert event.path == "job:patient_reindex"
