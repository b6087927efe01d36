"""Who may open which patient record. Decided on plaintext columns, before any decryption.

- Secretaries and practice admins: every patient of the practice.
- Practitioners: the patients they have or had an appointment with.
- Anyone else: nothing. Unknown and forbidden records look the same (404).
"""

from django.db.models import Exists, OuterRef, QuerySet

from patients.models import Patient
from practice.roles import PRACTICE_ADMIN, PRACTITIONER, SECRETARY, has_role


def patient_queryset_for(user) -> QuerySet[Patient]:
    if has_role(user, SECRETARY, PRACTICE_ADMIN):
        return Patient.objects.all()
    if has_role(user, PRACTITIONER) and hasattr(user, "practitioner"):
        from scheduling.models import Appointment

        seen = Appointment.objects.filter(patient=OuterRef("pk"), practitioner=user.practitioner)
        return Patient.objects.filter(Exists(seen))
    return Patient.objects.none()
