from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from audit.selectors import patient_access_events
from patients.models import Patient
from practice.roles import PRACTICE_ADMIN, has_role


@never_cache
@login_required
def patient_access(request: HttpRequest, pk: UUID) -> HttpResponse:
    """Who opened this record: for practice admins only (secretaries never read the trail)."""
    if not has_role(request.user, PRACTICE_ADMIN) or not request.user.has_perm("audit.view_auditevent"):
        raise PermissionDenied
    patient = Patient.objects.only("id", "last_name", "first_names").filter(pk=pk).first()
    if patient is None:
        raise Http404
    page = Paginator(patient_access_events(patient_id=patient.pk), 100).get_page(request.GET.get("page"))
    return render(request, "audit/patient_access.html", {"patient": patient, "page": page})
