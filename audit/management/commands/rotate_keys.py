"""Re-encrypt every encrypted column under the first FIELD_ENCRYPTION_KEY, and rebuild blind
indexes after BLIND_INDEX_KEY changed. Batched, resumable, with a progress bar; an audited
system job.

Re-encryption uses MultiFernet.rotate: the plaintext never reaches our code, and the row
binding inside the token is kept. Rebuilding blind indexes does decrypt the indexed fields
(there is no other way): those reads are audited under `system:command:rotate_keys`.
"""

from django.apps import apps
from django.db import transaction
from tqdm import tqdm

from audit import blind
from audit.commands import AuditedCommand
from audit.fields import Ciphertext, encrypted_fields, rotate_token
from audit.keys import canary_write, field_key_fingerprint
from audit.models import EventType, RotationProgress
from audit.services import audit_event_write


def encrypted_models():
    return [m for m in apps.get_models() if encrypted_fields(m)]


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
        fingerprint = blind.key_fingerprint() if blind_index else field_key_fingerprint()
        if restart:
            RotationProgress.objects.filter(job=job, key_fingerprint=fingerprint).delete()
        total = 0
        for model in encrypted_models():
            if blind_index and not hasattr(model, "blind_indexes_update"):
                continue
            total += self._run_model(model, job, fingerprint, batch_size, disable=no_progress)
        canary_write(field_key=not blind_index, blind_index_key=blind_index)
        # Progress only serves to resume an interrupted run: a later rotation back to this
        # same key must start over, not skip everything as "done".
        RotationProgress.objects.filter(job=job, key_fingerprint=fingerprint).delete()
        audit_event_write(
            event_type=EventType.BLIND_INDEX_REBUILD if blind_index else EventType.KEY_ROTATION,
            extra={"rows": total, "key_fingerprint": fingerprint},
        )
        self.stdout.write(self.style.SUCCESS(f"{job}: {total} rows done under key {fingerprint}."))

    def _run_model(self, model, job, fingerprint, batch_size, *, disable) -> int:
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
