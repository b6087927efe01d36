"""Re-encrypt every encrypted column under the first FIELD_ENCRYPTION_KEY, and rebuild blind
indexes after BLIND_INDEX_KEY changed. Batched, resumable, with a progress bar; an audited
system job.

Re-encryption uses MultiFernet.rotate: the plaintext never reaches our code, and the row
binding inside the token is kept. Rebuilding blind indexes does decrypt the indexed fields
(there is no other way): those reads are audited under `system:command:rotate_keys`.

Rules enforced here:
- the trail holds what was done, even by a run killed halfway (`kill -9`): each batch commits
  its rows, its progress and its event (and, for a rebuild, the reads it made) in one
  transaction, so no batch is done without its record, nor recorded without being done;
- one rotation is everything from its "start" event (no saved progress for this key) to its
  "done" event, over as many runs as it took: the "done" event counts every row once, with
  each run's share;
- saved progress toward another key is dropped when a rotation starts: a run towards B
  re-encrypts every row, so the rows an interrupted run towards A had done are no longer
  under A, and skipping them when A comes back would leave them under B.
"""

import uuid

from django.apps import apps
from django.db import transaction
from tqdm import tqdm

from audit import blind
from audit.context import require
from audit.fields import Ciphertext, encrypted_fields, rotate_token
from audit.keys import canary_write, field_key_fingerprint
from audit.management.audited import AuditedCommand
from audit.models import AuditEvent, EventType, RotationProgress
from audit.services import audit_event_write


def encrypted_models():
    return [m for m in apps.get_models() if encrypted_fields(m)]


def rotation_runs(event_type: EventType, fingerprint: str) -> list[dict]:
    """The rows each run of the current rotation to ``fingerprint`` did, in the order of the
    runs, as their batch events in the trail say (a killed run's batches included)."""
    events = AuditEvent.objects.filter(event_type=event_type, extra__key_fingerprint=fingerprint)
    start = events.filter(extra__stage="start").order_by("-id").values_list("id", flat=True).first()
    batches = events.filter(extra__stage="batch", id__gt=start or 0).order_by("id").values_list("extra", flat=True)
    runs: dict[str, int] = {}
    for extra in batches:
        runs[extra["run"]] = runs.get(extra["run"], 0) + extra["rows"]
    return [{"run": run, "rows": rows} for run, rows in runs.items()]


class Command(AuditedCommand):
    help = "Re-encrypt all encrypted columns under the first key (resumable); --blind-index rebuilds indexes."
    audit_flush_threshold = 5000
    # The key check would refuse the very mismatch this command is here to repair.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--blind-index", action="store_true", help="rebuild blind indexes instead")
        parser.add_argument("--restart", action="store_true", help="ignore saved progress")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, batch_size, blind_index, restart, no_progress, **options):
        job = "blind-index" if blind_index else "encrypt"
        event_type = EventType.BLIND_INDEX_REBUILD if blind_index else EventType.KEY_ROTATION
        fingerprint = blind.key_fingerprint() if blind_index else field_key_fingerprint()
        models = [m for m in encrypted_models() if not blind_index or hasattr(m, "blind_indexes_update")]
        run = uuid.uuid4().hex[:12]
        progress = RotationProgress.objects.filter(job=job)
        with transaction.atomic():
            progress.exclude(key_fingerprint=fingerprint).delete()
            if restart:
                progress.filter(key_fingerprint=fingerprint).delete()
            if not progress.filter(key_fingerprint=fingerprint).exists():
                RotationProgress.objects.bulk_create(
                    RotationProgress(job=job, key_fingerprint=fingerprint, model_label=m._meta.label) for m in models
                )
                audit_event_write(
                    event_type=event_type, extra={"stage": "start", "key_fingerprint": fingerprint, "run": run}
                )
        done = 0
        for model in models:
            done += self._run_model(model, job, fingerprint, batch_size, event_type, run, disable=no_progress)
        with transaction.atomic():
            canary_write(field_key=not blind_index, blind_index_key=blind_index)
            runs = rotation_runs(event_type, fingerprint)
            total = sum(r["rows"] for r in runs)
            # Progress only serves to resume an interrupted run: a later rotation back to this
            # same key must start over, not skip everything as "done".
            progress.filter(key_fingerprint=fingerprint).delete()
            audit_event_write(
                event_type=event_type,
                extra={"stage": "done", "rows": total, "runs": runs, "key_fingerprint": fingerprint, "run": run},
            )
        earlier = f" ({total} in all over {len(runs)} runs)" if len(runs) > 1 else ""
        self.stdout.write(self.style.SUCCESS(f"{job}: {done} rows done under key {fingerprint}{earlier}."))

    def _run_model(self, model, job, fingerprint, batch_size, event_type, run, *, disable) -> int:
        progress, _ = RotationProgress.objects.get_or_create(
            job=job, key_fingerprint=fingerprint, model_label=model._meta.label
        )
        if progress.done:
            self.stdout.write(f"{model._meta.label}: already done for this key.")
            return 0
        qs = model._base_manager.order_by("pk")
        remaining = qs.filter(pk__gt=progress.last_pk).count() if progress.last_pk else qs.count()
        done = 0
        with tqdm(total=remaining, desc=model._meta.label, unit="row", disable=disable, file=self.stderr._out) as bar:
            while True:
                batch_qs = qs.filter(pk__gt=progress.last_pk) if progress.last_pk else qs
                batch = list(batch_qs[:batch_size])
                if not batch:
                    break
                with transaction.atomic():
                    if job == "encrypt":
                        self._reencrypt(model, batch)
                    else:
                        self._reindex(model, batch)
                    progress.last_pk = str(batch[-1].pk)
                    progress.save(update_fields=["last_pk", "updated_at"])
                    # Trail writes last: they hold the chain lock until the commit (audit/chain.py).
                    audit_event_write(
                        event_type=event_type,
                        model_label=model._meta.label,
                        extra={"stage": "batch", "key_fingerprint": fingerprint, "run": run, "rows": len(batch)},
                    )
                    # The reads this batch made, committed with the indexes they built.
                    require().flush()
                done += len(batch)
                bar.update(len(batch))
        progress.done = True
        progress.save(update_fields=["done", "updated_at"])
        return done

    @staticmethod
    def _reencrypt(model, batch) -> None:
        fields = encrypted_fields(model)
        for obj in batch:
            updates = {}
            for field in fields:
                sealed = obj.__dict__.get(field.attname)
                if sealed is not None:
                    updates[field.attname] = Ciphertext(rotate_token(sealed.token))
            if updates:
                model._base_manager.filter(pk=obj.pk).update(**updates)

    @staticmethod
    def _reindex(model, batch) -> None:
        index_fields = [f.attname for f in model._meta.concrete_fields if f.attname.startswith("bidx_")]
        for obj in batch:
            obj.blind_indexes_update(force=True)
        model._base_manager.bulk_update(batch, index_fields)
