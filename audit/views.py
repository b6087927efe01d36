"""Investigation pages over the audit trail: practice admins (and superusers) only.

Secretaries and practitioners never read the trail; they get 403 before anything is
loaded. The pages send Cache-Control: no-store. The breach scope page decrypts nothing;
the access report decrypts the patient's name for its header (an audited read); the
notification list decrypts contact details under a stated purpose (audited reads and one
EXPORT event), and those reads count against the admin's read budget.
"""

from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from audit.forms import BreachScopeForm, NotificationExportForm
from audit.reports import breach_notification_export, breach_scope, purpose_label, record_label
from audit.selectors import patient_access_events, patient_access_summary
from patients.models import Patient
from practice.models import Clinic
from practice.roles import PRACTICE_ADMIN, has_role

PAGE_SIZE = 100
SCOPE_PAGE_SIZE = 200


def _require_trail_reader(request: HttpRequest) -> None:
    """Practice admins with the trail's view permission, and superusers; 403 for anyone else."""
    if not has_role(request.user, PRACTICE_ADMIN) or not request.user.has_perm("audit.view_auditevent"):
        raise PermissionDenied


def _get_patient_for_report(request: HttpRequest, pk: UUID) -> Patient:
    _require_trail_reader(request)
    # Only the name is loaded: the report's header is its only decryption (audited).
    patient = Patient.objects.only("id", "last_name", "first_names", "is_archived").filter(pk=pk).first()
    if patient is None:
        raise Http404
    return patient


def _labelled(events):
    """Events with their purpose and record type in words (no query: labels from code)."""
    for event in events:
        event.purpose_label = purpose_label(event.purpose)
        event.record_label = record_label(event.model_label)
    return events


@never_cache
@login_required
def patient_access(request: HttpRequest, pk: UUID) -> HttpResponse:
    """The patient access report: every read and change of one patient's data (who, role,
    when, from where, which fields, why), 100 events a page, newest first."""
    patient = _get_patient_for_report(request, pk)
    page = Paginator(patient_access_events(patient_id=patient.pk), PAGE_SIZE).get_page(request.GET.get("page"))
    _labelled(page.object_list)
    return render(
        request,
        "audit/patient_access.html",
        {
            "patient": patient,
            "page": page,
            "summary": patient_access_summary(patient_id=patient.pk),
            "clinic": Clinic.current(),
        },
    )


@never_cache
@login_required
def patient_access_print(request: HttpRequest, pk: UUID) -> HttpResponse:
    """The same report in full on one page, laid out for printing (or saving as PDF from the
    browser) and handing to the patient: the practice and the patient named in the header."""
    patient = _get_patient_for_report(request, pk)
    events = _labelled(list(patient_access_events(patient_id=patient.pk)))
    return render(
        request,
        "audit/patient_access_print.html",
        {
            "patient": patient,
            "events": events,
            "summary": patient_access_summary(patient_id=patient.pk),
            "clinic": Clinic.current(),
            "printed_at": timezone.localtime(),
        },
    )


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


def _scope_page(request: HttpRequest, form: BreachScopeForm, export_form=None, status: int = 200) -> HttpResponse:
    scope = page = None
    if form.is_valid():
        scope = breach_scope(**form.scope_arguments())
        page = Paginator(scope.patients, SCOPE_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "audit/breach_scope.html",
        {
            "form": form,
            "scope": scope,
            "page": page,
            "query": _query_without_page(request),
            "export_form": export_form or NotificationExportForm(),
        },
        status=status,
    )


@never_cache
@login_required
def breach_scope_page(request: HttpRequest) -> HttpResponse:
    """Breach scope: for a user, an IP, a login session (or everyone) and a time window,
    exactly which patients and which fields were exposed. Patient ids only: no names."""
    _require_trail_reader(request)
    form = BreachScopeForm(request.GET or None)
    return _scope_page(request, form)


@never_cache
@login_required
@require_POST
def breach_scope_csv(request: HttpRequest) -> HttpResponse:
    """The notification list of a scope (names, birth dates, contact details) as CSV, for a
    stated purpose: audited reads with that purpose, one EXPORT event, a watermark line."""
    _require_trail_reader(request)
    form = NotificationExportForm(request.POST)
    if not form.is_valid():
        scope_form = BreachScopeForm(request.POST)
        return _scope_page(request, scope_form, export_form=form, status=400)
    scope = breach_scope(**form.scope_arguments())
    text, _count = breach_notification_export(scope=scope, purpose=form.cleaned_data["purpose"])
    # Written in memory and returned whole: the audit middleware writes the reads before
    # the response leaves, or withholds it (fail closed).
    response = HttpResponse(text, content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="breach-notification-{stamp}.csv"'
    return response
