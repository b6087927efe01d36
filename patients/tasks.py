from celery import shared_task

from patients.models import Patient


@shared_task(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=5)
def patient_reindex(patient_id: str) -> bool:
    """Recompute one patient's blind indexes (after an import or a normalization change).

    Runs as `system:patient_reindex`: the indexed fields it decrypts are audited.
    Takes an id, never patient data: nothing decrypted sits in the broker.
    """
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        return False
    patient.blind_indexes_update(force=True)
    index_fields = [f.attname for f in Patient._meta.concrete_fields if f.attname.startswith("bidx_")]
    patient.save(update_fields=index_fields)
    return True
