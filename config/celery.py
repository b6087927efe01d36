"""The Celery app. Every task runs inside an audit context naming its job."""

import os

from celery import Celery, Task
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class AuditedTask(Task):
    """Opens `system:<job>` around each run; its decryptions are audited like a person's.

    The job is the task name's last part, or the task's `audit_job` when it declares one
    (`@shared_task(audit_job="reminders")`): several tasks of one feature audit as one job.
    Tasks take ids, never patient data, as arguments: nothing decrypted sits in the broker.
    """

    audit_job: str | None = None

    def __call__(self, *args, **kwargs):
        # The Celery app is made while settings load, before Django's apps are ready: what needs
        # the models is imported when a task runs.
        from audit.context import system_context  # noqa: PLC0415

        job = self.audit_job or self.name.rsplit(".", 1)[-1]
        with system_context(job, task_id=getattr(self.request, "id", None) or ""):
            return super().__call__(*args, **kwargs)


app = Celery("config", task_cls=AuditedTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _check_keys(**kwargs):
    """A worker with the wrong keys must not start (gunicorn does the same in wsgi.py)."""
    from audit.keys import verify_keys_or_exit  # noqa: PLC0415 (needs the models, see above)

    verify_keys_or_exit()
