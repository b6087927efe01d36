from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from patients import services
from patients.access import break_glass_grant_for, may_break_glass, patient_queryset_for
from patients.forms import BreakGlassForm, PatientForm, PatientSearchForm
from patients.models import Patient
from patients.selectors import SEARCH_LIMIT, PatientQuery, patient_duplicates, patient_recent, patient_search
from practice.roles import PRACTICE_ADMIN, SECRETARY, has_role


def _require_front_desk(request: HttpRequest) -> None:
    if not has_role(request.user, SECRETARY, PRACTICE_ADMIN):
        raise PermissionDenied


def _get_patient_for(request: HttpRequest, pk: UUID, *, only=None) -> Patient:
    """The patient if this user may open it; 404 otherwise (no existence oracle).

    Checked on plaintext columns before anything is decrypted.
    """
    qs = patient_queryset_for(request.user)
    if only:
        qs = qs.only(*only)
    patient = qs.filter(pk=pk).first()
    if patient is None:
        raise Http404
    return patient


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_list(request: HttpRequest) -> HttpResponse:
    """Recent patients and the search form. Search is a POST: names stay out of URLs and logs."""
    _require_front_desk(request)
    form = PatientSearchForm(request.POST or None)
    results, too_many, searched = [], False, False
    if request.method == "POST" and form.is_valid():
        searched = True
        results = patient_search(PatientQuery(**form.cleaned_data))
        too_many = len(results) > SEARCH_LIMIT
        results = results[:SEARCH_LIMIT]
    recent = [] if searched else list(patient_recent())
    return render(
        request,
        "patients/list.html",
        {"form": form, "results": results, "recent": recent, "searched": searched, "too_many": too_many},
    )


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_create(request: HttpRequest) -> HttpResponse:
    _require_front_desk(request)
    if not request.user.has_perm("patients.add_patient"):
        raise PermissionDenied
    form = PatientForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if _duplicate_blocks(form):
            return render(request, "patients/form.html", {"form": form, "creating": True})
        patient = services.patient_create(data=form.cleaned_data, actor=request.user)
        messages.success(request, _("Patient record created."))
        return redirect(patient)
    return render(request, "patients/form.html", {"form": form, "creating": True})


def _duplicate_blocks(form: PatientForm, *, exclude_pk=None) -> bool:
    """Warn once about a same-name same-birth-date record; the user confirms to go on."""
    data = form.cleaned_data
    form.duplicates = patient_duplicates(
        last_name=data["last_name"],
        first_names=data["first_names"],
        birth_date=data["birth_date"],
        exclude_pk=exclude_pk,
    )
    if form.duplicates and not data.get("confirm_duplicate"):
        form.add_error(
            None, _("A patient with the same name and birth date already exists. Open it, or confirm below.")
        )
        return True
    return False


@never_cache
@login_required
def patient_detail(request: HttpRequest, pk: UUID) -> HttpResponse:
    try:
        patient = _get_patient_for(request, pk)
    except Http404:
        if not may_break_glass(request.user):
            raise
        # A practitioner is offered the way in, with the same page whether the record exists
        # or not (no existence oracle): nothing about the patient is looked up here.
        return render(request, "patients/no_access.html", {"pk": pk}, status=404)
    grant = break_glass_grant_for(request.user, patient)
    return render(request, "patients/detail.html", {"patient": patient, "grant": grant})


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_break_glass(request: HttpRequest, pk: UUID) -> HttpResponse:
    """Break the glass: a practitioner opens a record they have no appointment with, for
    BREAK_GLASS_MINUTES, after writing why (audited, reviewed by the practice admins).

    The form is the same for every id; the patient is looked up (plain columns, nothing
    decrypted) only once a valid reason is given, so an id costs an audited grant to test.
    """
    if not may_break_glass(request.user):
        raise PermissionDenied
    # Bound on every POST, even an empty one: a missing reason is an error to show.
    form = BreakGlassForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        if patient_queryset_for(request.user).filter(pk=pk).exists():
            return redirect("patients:detail", pk=pk)  # already theirs: nothing to grant
        patient = Patient.objects.filter(pk=pk).only("id").first()
        if patient is None:
            raise Http404
        services.break_glass_open(user=request.user, patient=patient, reason=form.cleaned_data["reason"])
        return redirect("patients:detail", pk=pk)
    return render(request, "patients/break_glass.html", {"form": form, "minutes": settings.BREAK_GLASS_MINUTES})


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_edit(request: HttpRequest, pk: UUID) -> HttpResponse:
    _require_front_desk(request)
    if not request.user.has_perm("patients.change_patient"):
        raise PermissionDenied
    patient = _get_patient_for(request, pk)
    form = PatientForm(request.POST or None, instance=patient)
    if request.method == "POST" and form.is_valid():
        if _duplicate_blocks(form, exclude_pk=patient.pk):
            return render(request, "patients/form.html", {"form": form, "patient": patient})
        changed = services.patient_update(patient=patient, data=form.cleaned_data, actor=request.user)
        if changed:
            messages.success(request, _("Patient record saved."))
        return redirect(patient)
    return render(request, "patients/form.html", {"form": form, "patient": patient})


@login_required
@require_POST
def patient_archive(request: HttpRequest, pk: UUID) -> HttpResponse:
    _require_front_desk(request)
    if not request.user.has_perm("patients.change_patient"):
        raise PermissionDenied
    patient = _get_patient_for(request, pk, only=["id", "is_archived", "archived_at", "updated_by", "updated_at"])
    services.patient_archive(patient=patient, actor=request.user)
    messages.success(request, _("Patient record archived. It stays searchable with “include archived”."))
    return redirect(patient)


@login_required
@require_POST
def patient_restore(request: HttpRequest, pk: UUID) -> HttpResponse:
    _require_front_desk(request)
    if not request.user.has_perm("patients.change_patient"):
        raise PermissionDenied
    patient = _get_patient_for(request, pk, only=["id", "is_archived", "archived_at", "updated_by", "updated_at"])
    services.patient_restore(patient=patient, actor=request.user)
    messages.success(request, _("Patient record restored."))
    return redirect(patient)
