"""Who may open which patient record. Decided on plaintext columns, before any decryption.

- Secretaries and practice admins: every patient of the practice.
- Practitioners: the patients they have or had an appointment with. Appointments arrive
  with the scheduling work (issue 3); until then a practitioner opens no record.
- Anyone else: nothing. Unknown and forbidden records look the same (404).
"""

from django.db.models import QuerySet

from patients.models import Patient
from practice.roles import PRACTICE_ADMIN, SECRETARY, has_role


def patient_queryset_for(user) -> QuerySet[Patient]:
    if has_role(user, SECRETARY, PRACTICE_ADMIN):
        return Patient.objects.all()
    return Patient.objects.none()
