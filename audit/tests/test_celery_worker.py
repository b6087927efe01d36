"""A real Celery worker, fed through the real Redis broker, audits what its tasks decrypt.

The eager mode of the embedded default runs tasks in the caller's process; production runs
them in a worker that shares nothing with the web process but the database and the broker.
This is that setup, in one process: the task travels through Redis and runs in the worker's
thread, with its own database connection (hence committed data: `transaction=True`).
"""

import threading

import pytest
from celery.contrib.testing.worker import start_worker

from config.testing import make_patient, patient_key, read_map, reads
from patients.tasks import patient_reindex

# Slow (a real worker, a subprocess, a browser or much data): `make test-fast` skips it.
pytestmark = pytest.mark.slow

INDEXED_FIELDS = {"last_name", "first_names", "birth_date", "phone_mobile", "phone_other", "email"}


@pytest.mark.django_db(transaction=True)
def test_it_audits_a_task_run_by_a_worker_through_redis(celery_app, finished_tasks):
    app, queue = celery_app
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
