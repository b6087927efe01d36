from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from audit.context import Actor
from audit.explain import reason_asked, reason_state
from patients import exports, services
from patients.access import break_glass_grant_for, may_break_glass, patient_queryset_for
from patients.forms import (
    BreakGlassForm,
    PatientExportForm,
    PatientForm,
    PatientListExportForm,
    PatientSearchForm,
    ReadReasonForm,
    RevealForm,
)
from patients.models import Patient
from patients.panels import record_panel_stylesheets, record_panels
from patients.selectors import (
    CONTACT_GROUPS,
    DETAIL_FIELDS,
    PLAIN_FIELDS,
    MaskedLine,
    PatientQuery,
    name_order,
    patient_duplicates,
    patient_search,
    patient_search_masked,
    patients_for_export,
    patients_today,
)
from practice import twofactor
from practice.http import AuthenticatedHttpRequest
from practice.roles import is_front_desk


def _require_front_desk(request: HttpRequest) -> None:
    if not is_front_desk(request.user):
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


class _NoAccess(Exception):
    """A practitioner asked for a record they may not open (or that does not exist)."""


def _open_patient(request: HttpRequest, pk: UUID, *, only) -> Patient:
    """The patient for a record page: a practitioner who may not open it gets the
    break-the-glass offer, the same page whether the record exists or not."""
    try:
        return _get_patient_for(request, pk, only=only)
    except Http404:
        if not may_break_glass(request.user):
            raise
        raise _NoAccess from None


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_list(request: HttpRequest) -> HttpResponse:
    """The search form and today's patients (each explained by their appointment); nobody else
    until the user searches. Search is a POST: names stay out of URLs and logs. A search by last
    name alone shows masked lines (initial, birth year) until one is chosen; with a first name,
    a birth date, a phone or an e-mail it shows full lines."""
    _require_front_desk(request)
    form = PatientSearchForm(request.POST or None)
    results: list[Patient] = []
    masked: list[MaskedLine] = []
    too_many, searched = False, False
    if request.method == "POST" and form.is_valid():
        searched = True
        query = PatientQuery(**form.cleaned_data)
        if query.last_name_only:
            masked = patient_search_masked(query)
            too_many = masked.more
        else:
            results = patient_search(query)
            too_many = results.more
    today = [] if searched else sorted(patients_today(day=timezone.localdate()), key=name_order)
    context = {
        "form": form,
        "results": results,
        "masked": masked,
        "today": today,
        "searched": searched,
        "too_many": too_many,
    }
    context["export_form"] = PatientListExportForm(initial={"patient": [p.pk for p in (results or today)]})
    return render(request, "patients/list.html", context)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_create(request: AuthenticatedHttpRequest) -> HttpResponse:
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
    """The record, contact details masked (phones, e-mail, address, NIR): they are not even
    loaded. "Show" posts to patient_reveal, an audited read of those fields alone."""
    try:
        patient = _open_patient(request, pk, only=DETAIL_FIELDS)
    except _NoAccess:
        # A practitioner is offered the way in, with the same page whether the record exists
        # or not (no existence oracle): nothing about the patient is looked up here.
        return render(request, "patients/no_access.html", {"pk": pk}, status=404)
    grant = break_glass_grant_for(request.user, patient)
    context = _contact_context(patient, grant=grant, shown=[])
    # Other apps' panels (scheduling: the patient's appointments), asked only now that the
    # record is known to be this user's to open (patients.panels).
    context.update(panels=record_panels(request, patient), panel_stylesheets=record_panel_stylesheets())
    return render(request, "patients/detail.html", context)


def _contact_context(patient: Patient, *, grant, shown: list[str]) -> dict:
    # patients/_contact.html renders (decrypts) the groups in `shown` and masks the others.
    return {"patient": patient, "grant": grant, "shown": shown}


@never_cache
@login_required
@require_POST
def patient_reveal(request: HttpRequest, pk: UUID) -> HttpResponse:
    """Show the contact details the user asked for (a group, or all): the record page masks
    them. A POST, so that nothing prefetches or caches it; the page decrypts the asked fields
    only (not even the name), so the audit rows of this request name exactly those fields,
    with this view as their purpose."""
    form = RevealForm(request.POST)
    if not form.is_valid():  # the same answer for every id: checked before the record
        return HttpResponseBadRequest()
    shown = form.groups()
    fields = [name for group in shown for name in CONTACT_GROUPS[group]]
    try:
        patient = _open_patient(request, pk, only=[*PLAIN_FIELDS, *fields])
    except _NoAccess:
        return render(request, "patients/no_access.html", {"pk": pk}, status=404)
    grant = break_glass_grant_for(request.user, patient)
    return render(request, "patients/contact.html", _contact_context(patient, grant=grant, shown=shown))


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
def patient_edit(request: AuthenticatedHttpRequest, pk: UUID) -> HttpResponse:
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
def patient_archive(request: AuthenticatedHttpRequest, pk: UUID) -> HttpResponse:
    _require_front_desk(request)
    if not request.user.has_perm("patients.change_patient"):
        raise PermissionDenied
    patient = _get_patient_for(request, pk, only=["id", "is_archived", "archived_at", "updated_by", "updated_at"])
    services.patient_archive(patient=patient, actor=request.user)
    messages.success(request, _("Patient record archived. It stays searchable with “include archived”."))
    return redirect(patient)


@login_required
@require_POST
def patient_restore(request: AuthenticatedHttpRequest, pk: UUID) -> HttpResponse:
    _require_front_desk(request)
    if not request.user.has_perm("patients.change_patient"):
        raise PermissionDenied
    patient = _get_patient_for(request, pk, only=["id", "is_archived", "archived_at", "updated_by", "updated_at"])
    services.patient_restore(patient=patient, actor=request.user)
    messages.success(request, _("Patient record restored."))
    return redirect(patient)


# ---------------------------------------------------------------------------------------------
# Exports: a stated purpose, audited per patient, budgeted, watermarked (patients.exports)


def _attachment(body: str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@login_required
@require_POST
def patient_list_export(request: HttpRequest) -> HttpResponse:
    """The patients the list page showed, as CSV: their list columns plus the contact
    details chosen. Front desk only. Each patient's read is audited with the purpose; one
    EXPORT event counts them. A form error comes back on a page that decrypts nothing."""
    _require_front_desk(request)
    form = PatientListExportForm(request.POST)
    if not form.is_valid():
        return render(request, "patients/export_list.html", {"form": form}, status=400)
    export = exports.export_begin(user=request.user, purpose=form.cleaned_data["purpose"])
    columns = exports.list_columns(form.cleaned_data["columns"])
    patients = patients_for_export(patient_queryset_for(request.user), form.cleaned_data["patient"], fields=columns)
    body = exports.patient_list_csv(patients, columns=columns, export=export)
    exports.export_record(export=export, kind="patient_list", file_format="csv", count=len(patients), fields=columns)
    return _attachment(body, content_type="text/csv; charset=utf-8", filename=export.filename("patients", "csv"))


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_export(request: HttpRequest, pk: UUID) -> HttpResponse:
    """A patient's own data for a right-of-access request (GDPR articles 15 and 20): the
    whole record, their appointments and the reminders sent to them, as JSON or CSV.

    Front desk and practice admins only (practitioners: 403 whatever the id, so no oracle);
    the form page decrypts nothing. The export is audited (READ rows with its purpose, an
    EXPORT event naming the patient) and watermarked.
    """
    _require_front_desk(request)
    patient = _get_patient_for(request, pk, only=["id"])
    form = PatientExportForm(request.POST if request.method == "POST" else None)
    if not (form.is_bound and form.is_valid()):
        return render(request, "patients/export.html", {"form": form, "patient": patient})
    data = form.cleaned_data
    export = exports.export_begin(user=request.user, purpose=data["purpose"])
    patient = _get_patient_for(request, pk, only=["id", *exports.patient_export_fields(data["include_notes"])])
    content = exports.patient_data(patient, include_notes=data["include_notes"])
    if data["file_format"] == "csv":
        body, content_type = exports.patient_data_csv(content, export=export), "text/csv; charset=utf-8"
    else:
        body, content_type = exports.patient_data_json(content, export=export), "application/json; charset=utf-8"
    exports.export_record(
        export=export,
        kind="patient_data",
        file_format=data["file_format"],
        count=1,
        fields=list(content["patient"]),  # the record's fields; appointments: their count
        patient=patient,
        **{name: len(rows) for name, rows in content.items() if name != "patient"},
        include_notes=data["include_notes"],
    )
    filename = export.filename(f"patient-{str(patient.pk)[:8]}", data["file_format"])
    return _attachment(body, content_type=content_type, filename=filename)


# ---------------------------------------------------------------------------------------------
# The step-up page (audit.explain): a reason and the second factor open one unexplained patient


def _reason_next(request: HttpRequest, pk: UUID) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("patients:detail", args=[pk])


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def patient_reason(request: AuthenticatedHttpRequest, pk: UUID) -> HttpResponse:
    """Say why you need this patient's record (at least READ_REASON_MIN_LENGTH characters) and
    pass the second factor again: the reason explains the patient for you until the end of the
    day (audited as REASON_STATED). Only for a patient the step-up page asked about today, and
    one this user may open; nothing is decrypted here. Wrong codes count like at login."""
    if not patient_queryset_for(request.user).filter(pk=pk).exists():
        raise Http404
    form = ReadReasonForm(request.POST if request.method == "POST" else None)
    context = {
        "form": form,
        "action": request.path,
        "next": request.POST.get("next", "") if request.method == "POST" else request.GET.get("next", ""),
        "min_length": settings.READ_REASON_MIN_LENGTH,
    }
    if not reason_asked(user_id=request.user.pk, patient_id=pk):
        # Reasons answer a step-up; one cannot be stated ahead for any patient one likes.
        context.update(form=ReadReasonForm(), not_asked=True)
        return render(request, "audit/step_up.html", context, status=409 if request.method == "POST" else 200)
    if not (form.is_bound and form.is_valid()):
        return render(request, "audit/step_up.html", context, status=400 if form.is_bound else 200)
    device, locked_until, spent = twofactor.second_factor_attempt(request, form.cleaned_data["code"])
    if device is None:
        if spent:
            logout(request)
            messages.error(request, _("Too many wrong codes. Log in again."))
            return redirect("login")
        if locked_until is not None:
            form.add_error(None, _("Too many wrong codes: wait a little before trying again."))
        else:
            form.add_error("code", _("This code is not valid. Check the time on your phone and try again."))
        return render(request, "audit/step_up.html", context, status=429 if locked_until is not None else 400)
    reason_state(actor=Actor.for_user(request.user), patient_id=pk, reason=form.cleaned_data["reason"])
    messages.success(request, _("Reason recorded: this record is open to you until the end of the day."))
    return redirect(_reason_next(request, pk))
