"""Investigation pages over the audit trail: practice admins (and superusers) only.

The anomaly pages and the reads chart show counts and patient ids from the trail only: they
decrypt nothing.

Secretaries and practitioners never read the trail; they get 403 before anything is
loaded. The pages send Cache-Control: no-store. The breach scope page decrypts nothing;
the access report decrypts the patient's name for its header (an audited read); the
notification list decrypts contact details under a stated purpose (audited reads and one
EXPORT event), and those reads count against the admin's read budget.
"""

import datetime
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from audit.context import Actor
from audit.models import Anomaly, EventType
from investigations.anomalies import anomalies_scan_due, anomaly_events
from investigations.charts import read_chart_data
from investigations.forms import (
    AccessFilterForm,
    AnomalyFilterForm,
    AnomalyReviewForm,
    BreachScopeForm,
    NotificationExportForm,
    ReadChartForm,
)
from investigations.reports import (
    access_list_appearances,
    access_opened,
    breach_notification_export,
    breach_scope,
    explain_appearances,
    explain_opened,
    explained_afterwards,
    purpose_label,
    record_label,
    unexplained_per_account,
)
from investigations.selectors import patient_access_summary
from investigations.services import anomaly_review
from patients.models import Patient
from practice.models import Clinic
from practice.roles import PRACTICE_ADMIN, has_role

PAGE_SIZE = 100
ACCESS_PAGE_SIZE = 50
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


def _query_without(request: HttpRequest, name: str) -> str:
    """The query string (the filters, the other list's page) without one page parameter."""
    query = request.GET.copy()
    query.pop(name, None)
    return query.urlencode()


@never_cache
@login_required
def patient_access(request: HttpRequest, pk: UUID) -> HttpResponse:
    """The patient access report: who opened the record (each read with what explained it, in
    words), and where the patient appeared in lists and agendas (per person and hour), 50 lines
    a page each, newest first; filtered by person or to unexplained reads. Nothing but the
    patient's name (the header) is decrypted."""
    patient = _get_patient_for_report(request, pk)
    form = AccessFilterForm(request.GET or None)
    filters = form.filters() if form.is_bound else {}
    afterwards = explained_afterwards(patient_id=patient.pk)
    opened = Paginator(access_opened(patient_id=patient.pk, **filters), ACCESS_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    explain_opened(opened.object_list, afterwards)
    lists = Paginator(access_list_appearances(patient_id=patient.pk, **filters), ACCESS_PAGE_SIZE).get_page(
        request.GET.get("lists_page")
    )
    lists.object_list = explain_appearances(lists.object_list, afterwards)
    return render(
        request,
        "investigations/patient_access.html",
        {
            "patient": patient,
            "form": form,
            "page": opened,
            "lists": lists,
            "query": _query_without(request, "page"),
            "lists_query": _query_without(request, "lists_page"),
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
    afterwards = explained_afterwards(patient_id=patient.pk)
    events = list(access_opened(patient_id=patient.pk))
    explain_opened(events, afterwards)
    lists = explain_appearances(access_list_appearances(patient_id=patient.pk), afterwards)
    return render(
        request,
        "investigations/patient_access_print.html",
        {
            "patient": patient,
            "events": events,
            "lists": lists,
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
        "investigations/breach_scope.html",
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


# Anomaly signals (investigations/anomalies.py) -----------------------------------------------------------

ANOMALY_PAGE_SIZE = 50


@never_cache
@login_required
def anomaly_list(request: HttpRequest) -> HttpResponse:
    """The anomaly signals found in the trail, newest hour first, filtered by severity, signal
    and review. Counts and usernames only: nothing is decrypted."""
    _require_trail_reader(request)
    form = AnomalyFilterForm(request.GET or None)
    anomalies = Anomaly.objects.defer("details", "evidence")
    if form.is_bound and form.is_valid():
        anomalies = form.filter(anomalies)
    page = Paginator(anomalies, ANOMALY_PAGE_SIZE).get_page(request.GET.get("page"))
    today = timezone.localdate()
    zone = timezone.get_current_timezone()
    start = datetime.datetime.combine(today, datetime.time(0), tzinfo=zone)
    end = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(0), tzinfo=zone)
    return render(
        request,
        "investigations/anomalies.html",
        {
            "form": form,
            "page": page,
            "query": _query_without_page(request),
            "today": today,
            "unexplained": unexplained_per_account(start=start, end=end),
        },
    )


# The words for what a finding's details hold (investigations/anomalies.py); other keys show as stored.
DETAIL_LABELS = {
    "patients": gettext_lazy("Distinct patients"),
    "reads": gettext_lazy("Decrypted reads"),
    "pages": gettext_lazy("Pages opened"),
    "events": gettext_lazy("Events"),
    "by_type": gettext_lazy("By event type"),
    "baseline_p95": gettext_lazy("Usual busiest hours (95th percentile of active hours)"),
    "baseline_hours": gettext_lazy("Active hours in the baseline"),
    "baseline_days": gettext_lazy("Baseline period (days)"),
    "reference": gettext_lazy("Compared with"),
    "ratio": gettext_lazy("Ratio"),
    "floor": gettext_lazy("Never below (patients)"),
    "gaps": gettext_lazy("Gaps between pages"),
    "gap_variation": gettext_lazy("Variation of the gaps (0: machine-regular)"),
    "max_variation": gettext_lazy("Regular at or below"),
    "min_patients": gettext_lazy("Minimum patients"),
    "writes": gettext_lazy("Writes in the hour"),
    "closed": gettext_lazy("Closed (UTC)"),
    "grace_minutes": gettext_lazy("Grace (minutes)"),
    "appointment_past_days": gettext_lazy("Appointments looked for, days before"),
    "appointment_ahead_days": gettext_lazy("Appointments looked for, days after"),
    "levels": gettext_lazy("Levels (low / medium / high)"),
}


def _detail_value(value) -> str:
    """A detail in words: counts per event type by their labels, levels as "1 / 10 / 50",
    closed periods as "start – end"."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        parts = []
        for name, count in value.items():
            label = EventType[name.upper()].label if name.upper() in EventType.__members__ else name
            parts.append(f"{label}: {count}")
        return ", ".join(parts)
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, list):
                parts.append(" – ".join(str(part) for part in item))
            elif isinstance(item, float):
                parts.append(f"{item:g}")
            else:
                parts.append(str(item))
        return " / ".join(parts)
    return str(value)


def _anomaly_page(request: HttpRequest, anomaly: Anomaly, review_form: AnomalyReviewForm, status: int = 200):
    page = Paginator(anomaly_events(anomaly), PAGE_SIZE).get_page(request.GET.get("page"))
    _labelled(page.object_list)
    details = [(DETAIL_LABELS.get(name, name), _detail_value(value)) for name, value in anomaly.details.items()]
    return render(
        request,
        "investigations/anomaly_detail.html",
        {
            "anomaly": anomaly,
            "page": page,
            "details": details,
            "review_form": review_form,
            # The breach scope link covers the whole hour (its form takes minutes).
            "scope_end": anomaly.window_start + datetime.timedelta(hours=1),
        },
        status=status,
    )


@never_cache
@login_required
def anomaly_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One finding: what was seen, the thresholds, and the trail events behind it (100 a page,
    oldest first), with the review form."""
    _require_trail_reader(request)
    anomaly = get_object_or_404(Anomaly, pk=pk)
    return _anomaly_page(request, anomaly, AnomalyReviewForm())


@never_cache
@login_required
@require_POST
def anomaly_review_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Mark a finding as handled with a note (audited)."""
    _require_trail_reader(request)
    anomaly = get_object_or_404(Anomaly, pk=pk)
    form = AnomalyReviewForm(request.POST)
    if not form.is_valid():
        return _anomaly_page(request, anomaly, form, status=400)
    anomaly_review(anomaly=anomaly, actor=Actor.for_user(request.user), note=form.cleaned_data["note"])
    messages.success(request, _("The anomaly is marked as reviewed."))
    return redirect("investigations:anomaly", pk=anomaly.pk)


@never_cache
@login_required
@require_POST
def anomalies_scan_now(request: HttpRequest) -> HttpResponse:
    """Run the periodic scan now (what beat does every minute), e.g. while investigating."""
    _require_trail_reader(request)
    result = anomalies_scan_due()
    counts = {"findings": result.findings, "created": result.created}
    messages.success(request, _("Scan done: %(findings)d findings (%(created)d new).") % counts)
    return redirect("investigations:anomalies")


@never_cache
@login_required
def read_chart(request: HttpRequest) -> HttpResponse:
    """Distinct patients read per user and hour on one day (practice time), as a chart and the
    same numbers as a table; and each user's daily distribution over the last 30 days, which is
    what read budgets are sized from. Counts from the trail only."""
    _require_trail_reader(request)
    day = timezone.localdate()
    form = ReadChartForm(request.GET or None, initial={"day": day})
    if form.is_bound and form.is_valid() and form.cleaned_data["day"]:
        day = form.cleaned_data["day"]
    chart, distribution = read_chart_data(day)
    return render(
        request,
        "investigations/read_chart.html",
        {
            "form": form,
            "day": day,
            "previous_day": day - datetime.timedelta(days=1),
            "next_day": day + datetime.timedelta(days=1),
            "chart": chart,
            "any_unexplained": chart["any_unexplained"],
            "distribution": distribution,
        },
        status=200 if not form.is_bound or form.is_valid() else 400,
    )
