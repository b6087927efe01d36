"""The agenda pages: the front desk's day, a practitioner's week, "my day", the waiting room,
next free slots, booking, the appointment page and its actions, the printable day sheet.

Access is decided at the top of every view (scheduling.access) on plaintext columns, before
anything is decrypted. Grid and list pages read through scheduling.selectors, which load the
patient's two name fields and nothing else encrypted: those pages decrypt `last_name` and
`first_names` once per patient shown, and never the reason or the internal note. The
appointment page is the one place that shows (and so decrypts) those.

No inline script or style (a strict CSP is coming): blocks are placed on the grid with the
generated row classes of static/css/agenda.css, and coloured by /agenda/colours.css.

Every form that changes an appointment (book, move, change type, cancel, status buttons)
carries a submission key: a POST sent again with it (its answer lost, a double click) gets
the first one's answer, and nothing is done or decrypted twice (`_replayed`, `_once`,
practice.models.FormSubmission). Booking a patient who is already booked with the same
practitioner within a few days asks for a confirmation first (`_booked_nearby`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from patients.models import Patient
from patients.selectors import (
    MaskedLine,
    PatientQuery,
    patient_duplicates,
    patient_search,
    patient_search_masked,
)
from practice.http import AuthenticatedHttpRequest
from practice.models import FormSubmission, Practitioner
from practice.roles import is_front_desk
from scheduling import availability, conflicts, finder, selectors, services
from scheduling.access import (
    FRONT_DESK_STATUSES,
    PRACTITIONER_STATUSES,
    allowed_statuses,
    get_appointment_for,
    get_practitioner_for,
    own_practitioner,
    require_agenda_role,
    require_front_desk,
)
from scheduling.forms import (
    LAST_DAY,
    MALFORMED_KEY,
    SUBMISSION_KEY,
    BookingForm,
    CancelForm,
    ChangeTypeForm,
    FreeSlotsForm,
    MoveForm,
    NewPatientForm,
    PatientFindForm,
    parse_day,
    submission_key_from,
    submission_key_malformed,
    submission_key_new,
)
from scheduling.grid import Actions, grid_context
from scheduling.models import Appointment, AppointmentStatus, AppointmentType

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Helpers


def _today() -> datetime.date:
    return timezone.localdate(timezone=availability.practice_tz())


def _monday(day: datetime.date) -> datetime.date:
    return day - datetime.timedelta(days=day.weekday())


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or ""
    # Bounded: where a status change went is kept with its submission key (FormSubmission.result).
    if (
        target
        and len(target) <= 1000
        and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
    ):
        return target
    return fallback


def _as_uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# The day flow, forward: what a list page offers as one-click buttons. The appointment page
# offers every allowed transition, including the ones that undo a click.
NEXT_STEPS: dict[str, list[AppointmentStatus]] = {
    AppointmentStatus.BOOKED: [AppointmentStatus.ARRIVED, AppointmentStatus.NO_SHOW],
    AppointmentStatus.ARRIVED: [AppointmentStatus.IN_CONSULTATION],
    AppointmentStatus.IN_CONSULTATION: [AppointmentStatus.DONE],
}

# Button labels: what the click does ("Mark arrived"), not the status name.
STATUS_ACTIONS = {
    AppointmentStatus.BOOKED: gettext_lazy("Back to booked"),
    AppointmentStatus.ARRIVED: gettext_lazy("Mark arrived"),
    AppointmentStatus.IN_CONSULTATION: gettext_lazy("Start consultation"),
    AppointmentStatus.DONE: gettext_lazy("Mark done"),
    AppointmentStatus.NO_SHOW: gettext_lazy("Mark no-show"),
}


def _status_buttons(statuses) -> list[tuple[str, str, str]]:
    """(status, label, submission key): each button is a form of its own, with its own key."""
    return [(s, str(STATUS_ACTIONS[s]), submission_key_new()) for s in statuses if s in STATUS_ACTIONS]


def _quick_actions(user, appointment: Appointment) -> list[tuple[str, str, str]]:
    allowed = set(allowed_statuses(user, appointment))
    return _status_buttons([s for s in NEXT_STEPS.get(appointment.status, []) if s in allowed])


def _page_status_buttons(user, appointment: Appointment) -> tuple[list[tuple[str, str, str]], bool]:
    """The appointment page's status buttons, and whether the first is the main one: the day
    flow's next step (NEXT_STEPS) comes first and is the main button; the buttons that undo a
    click follow. A status with no next step (done, no-show) has no main button."""
    allowed = allowed_statuses(user, appointment)
    forward = [s for s in NEXT_STEPS.get(appointment.status, []) if s in allowed]
    return _status_buttons([*forward, *(s for s in allowed if s not in forward)]), bool(forward)


# ---------------------------------------------------------------------------------------------
# Forms sent once (practice.models.FormSubmission)


def _fingerprint(request: HttpRequest) -> str:
    """The values a form sent, hashed: all but the CSRF token (a retry may carry a rotated one)
    and the key itself."""
    values = {k: v for k, v in request.POST.lists() if k not in ("csrfmiddlewaretoken", SUBMISSION_KEY)}
    return FormSubmission.fingerprint_of(values)


def _replayed(request: HttpRequest, action: str, confirmation: str) -> HttpResponse | None:
    """When this POST repeats one already done (the same user, key, action and values): a
    redirect where the first one went, with the same confirmation. Called after the access
    checks and before anything else: nothing is done again, nothing is decrypted.

    Raises FormSubmission.Reused when the key went with another action or other values."""
    key = submission_key_from(request.POST)
    if key is None:
        return None
    first = FormSubmission.first_result(user=request.user, key=key, action=action, fingerprint=_fingerprint(request))
    if first is None:
        return None
    logger.info("Form sent again, answered as the first time: %s by user %s", action.split(":")[0], request.user.pk)
    messages.success(request, confirmation)
    return redirect(first)


def _replayed_since(request: HttpRequest, action: str) -> HttpResponse | None:
    """The replay check again, after a check that found a booking or a record: a twin request
    (a double click) may have committed it, with this very key, since the first check. What
    the twin committed is visible as a whole, so if its booking is, its key is too."""
    try:
        return _replayed(request, f"scheduling.{action}", str(BOOKED[action]))
    except FormSubmission.Reused:
        return None  # refused at the first check already


def _once(request: HttpRequest, action: str, work: Callable[[], str]) -> str:
    """Do `work` (it returns where to send the user) once for the form's submission key.

    The key is claimed in the same transaction as the work: if the work is refused, neither
    stays; a twin request (a double click, a retry while this one runs) waits for this
    transaction and answers with its result. Without a key (an old page, a script): just do it.
    """
    key = submission_key_from(request.POST)
    if key is None:
        return work()
    fingerprint = _fingerprint(request)
    try:
        with transaction.atomic():
            claim = FormSubmission.claim(user=request.user, key=key, action=action, fingerprint=fingerprint)
            result = work()
            claim.done(result)
            return result
    except FormSubmission.Taken:
        # Read after our transaction ended: the winner has committed by now.
        first = FormSubmission.first_result(user=request.user, key=key, action=action, fingerprint=fingerprint)
        if first is None:  # purged in between (a day-old key): act afresh
            return _once(request, action, work)
        logger.info(
            "Form sent twice at once, answered as the first: %s by user %s", action.split(":")[0], request.user.pk
        )
        return first


def _refused(form, exc: ValidationError) -> None:
    """A refusal shown on the form: a booking rule (offering to force what can be forced), or
    a submission key used for something else (a fresh key, and a link to what was done)."""
    form.add_error(None, exc)
    if getattr(exc, "forceable", False):
        form.offer_force = True
    if isinstance(exc, FormSubmission.Reused):
        form.submission_key_renew()
        form.first_result = exc.result


def _conflict_shown(
    request: HttpRequest, form, exc: Exception, *, duration: datetime.timedelta, wanted: datetime.datetime | None = None
) -> None:
    """After a "slot taken" refusal: the form names the appointment in the way and the next free
    time (scheduling.conflicts), and offers to squeeze in where that may be done."""
    wanted = form.cleaned_data.get("start", wanted)
    conflict = conflicts.conflict_of(exc, user=request.user, duration=duration, wanted=wanted)
    form.conflict = conflict
    form.conflict_sentences = conflicts.conflict_sentences(conflict) if conflict else []
    if hasattr(form, "offer_squeeze"):
        form.offer_squeeze = form.offer_squeeze or conflicts.squeeze_offered(conflict, user=request.user)


# ---------------------------------------------------------------------------------------------
# Agenda grids


@never_cache
@login_required
@require_GET
def day_view(request: HttpRequest, day: datetime.date | None = None) -> HttpResponse:
    """The front desk's day: every active practitioner side by side. Front desk only."""
    require_front_desk(request)
    today = _today()
    if day is None:
        picked = request.GET.get("day")
        if picked:
            try:
                return redirect("scheduling:day", day=parse_day(picked))
            except ValueError:
                messages.error(request, _("Enter a date as yyyy-mm-dd."))
        day = today
    grid = selectors.agenda_day(day)
    actions = _grid_actions(request, days=(day, day), today=today, front_desk=True)
    context = {
        "day": day,
        "today": today,
        "previous": day - datetime.timedelta(days=1),
        "next": day + datetime.timedelta(days=1),
        **grid_context(grid, today=today, actions=actions),
    }
    return render(request, "scheduling/day.html", context)


def _grid_actions(
    request: HttpRequest, *, days: tuple[datetime.date, datetime.date], today: datetime.date, front_desk: bool
) -> Actions:
    """What a grid of `days` (first, last) offers: booking free time and moving blocks (the
    front desk), and one-click status buttons on today's appointments, which come back to this
    page (at now, when it shows today)."""
    back = request.path + ("#now" if days[0] <= today <= days[1] else "")
    return Actions(book=front_desk, status_next=back)


@never_cache
@login_required
@require_GET
def week_view(request: HttpRequest, pk: int, day: datetime.date | None = None) -> HttpResponse:
    """One practitioner's week (Monday to Sunday). The front desk sees anyone's; a practitioner
    their own (another's answers 404, like one that does not exist)."""
    practitioner = get_practitioner_for(request, pk)
    front_desk = is_front_desk(request.user)
    today = _today()
    monday = _monday(day or today)
    grid = selectors.agenda_week(practitioner, monday)
    actions = _grid_actions(
        request, days=(monday, monday + datetime.timedelta(days=6)), today=today, front_desk=front_desk
    )
    context = {
        "practitioner": practitioner,
        "monday": monday,
        "sunday": monday + datetime.timedelta(days=6),
        "today": today,
        "previous": monday - datetime.timedelta(days=7),
        "next": monday + datetime.timedelta(days=7),
        "this_week": _monday(today),
        "front_desk": front_desk,
        **grid_context(grid, today=today, actions=actions),
    }
    return render(request, "scheduling/week.html", context)


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def _tint(colour: str, share: float = 0.22) -> str:
    """`colour` mixed with white: a light background that dark text reads well on."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(round(255 - (255 - c) * share) for c in (r, g, b)))


@login_required
@require_GET
@cache_control(private=True, max_age=300)
def colours_css(request: HttpRequest) -> HttpResponse:
    """Type and practitioner colours as CSS classes, so pages need no inline style.

    Only strict #rrggbb values are written: anything else in the database is skipped, so a
    stored value can never inject CSS."""
    require_agenda_role(request)
    lines = ["/* Agenda colours: .type-<id> (appointment types), .prac-<id> (practitioners). */"]
    for kind in AppointmentType.objects.only("id", "colour").order_by("pk"):
        if _COLOUR.fullmatch(kind.colour or ""):
            colour = kind.colour.lower()
            lines.append(f".type-{kind.pk} {{ background: {_tint(colour)}; border-color: {colour}; }}")
    for practitioner in Practitioner.objects.only("id", "colour").order_by("pk"):
        if _COLOUR.fullmatch(practitioner.colour or ""):
            lines.append(f".prac-{practitioner.pk} {{ border-color: {practitioner.colour.lower()}; }}")
    return HttpResponse("\n".join(lines) + "\n", content_type="text/css; charset=utf-8")


# ---------------------------------------------------------------------------------------------
# Lists: my day, waiting room, print sheet


@never_cache
@login_required
@require_GET
def my_day(request: HttpRequest) -> HttpResponse:
    """Today's patients of the logged-in practitioner, in order, with waiting times."""
    require_agenda_role(request)
    practitioner = own_practitioner(request.user)
    if practitioner is None:
        raise PermissionDenied
    today = _today()
    now = timezone.now()
    rows: list[dict[str, Any]] = []
    for appointment in selectors.my_day(practitioner, today):
        waited = None
        if appointment.status == AppointmentStatus.ARRIVED and appointment.arrived_at:
            waited = max(now - appointment.arrived_at, datetime.timedelta())
        rows.append({"appt": appointment, "waited": waited, "actions": _quick_actions(request.user, appointment)})
    counts = {
        "total": sum(1 for r in rows if r["appt"].status != AppointmentStatus.NO_SHOW),
        "waiting": sum(1 for r in rows if r["appt"].status == AppointmentStatus.ARRIVED),
        "done": sum(1 for r in rows if r["appt"].status == AppointmentStatus.DONE),
    }
    context = {"practitioner": practitioner, "today": today, "rows": rows, "counts": counts}
    return render(request, "scheduling/my_day.html", context)


@never_cache
@login_required
@require_GET
def waiting_room(request: HttpRequest) -> HttpResponse:
    """Arrived patients, longest wait first, then those expected who have not arrived yet, in
    order of their start: all of them for the front desk, a practitioner's own."""
    require_agenda_role(request)
    front_desk = is_front_desk(request.user)
    if front_desk:
        appointments, expected = selectors.waiting_and_expected()
    else:
        practitioner = own_practitioner(request.user)
        if practitioner is None:
            raise PermissionDenied
        appointments, expected = selectors.waiting_and_expected(practitioner=practitioner)
    now = timezone.now()
    rows = [
        {
            "appt": a,
            "waited": max(now - a.arrived_at, datetime.timedelta()) if a.arrived_at else None,
            "actions": _quick_actions(request.user, a),
        }
        for a in appointments
    ]
    expected_rows = [{"appt": a, "late": a.start < now, "actions": _quick_actions(request.user, a)} for a in expected]
    context = {"rows": rows, "expected": expected_rows, "front_desk": front_desk}
    return render(request, "scheduling/waiting_room.html", context)


@never_cache
@login_required
@require_GET
def print_day(request: HttpRequest, day: datetime.date, pk: int) -> HttpResponse:
    """A practitioner's day on paper: hours, absences, the ordered list of patients."""
    practitioner = get_practitioner_for(request, pk)
    start, end = availability.local_day_bounds(day)
    hours = availability.hours_for_days([practitioner.pk], day, day).get((practitioner.pk, day), [])
    context = {
        "practitioner": practitioner,
        "day": day,
        "previous": day - datetime.timedelta(days=1),
        "next": day + datetime.timedelta(days=1),
        "hours": hours,
        "absences": list(availability.absences_between([practitioner.pk], start, end)),
        "appointments": selectors.my_day(practitioner, day),
        "printed_at": timezone.now(),
    }
    return render(request, "scheduling/print_day.html", context)


# ---------------------------------------------------------------------------------------------
# Free slots and booking


@never_cache
@login_required
@require_GET
def free_slots(request: HttpRequest) -> HttpResponse:
    """The free-slot finder: filters (type, practitioner or specialty, from a date, days of the
    week, time of day), results by day with each practitioner's first slot of the morning and
    of the afternoon, each one click from the booking page filled in (scheduling.finder). It
    searches as soon as it opens; bad input comes back with errors. Front desk only; it
    decrypts nothing."""
    require_front_desk(request)
    form = FreeSlotsForm.for_query(request.GET)
    context: dict[str, Any] = {"form": form, "days": [], "results": None}
    if form.is_valid():
        query = form.query(today=_today())
        patient = form.cleaned_data["patient"]
        context.update(finder.page(query, params=form.params(), patient=patient, now=timezone.now(), last_day=LAST_DAY))
    return render(request, "scheduling/free_slots.html", context)


def _booking_initial(params) -> dict:
    """Prefill from the free-slot links: ?practitioner=..&type=..&start=<iso>[&patient=<uuid>].
    Anything that does not parse is ignored."""
    initial: dict[str, Any] = {}
    if (pk := _as_int(params.get("practitioner"))) is not None:
        initial["practitioner"] = pk
    if (pk := _as_int(params.get("type"))) is not None:
        initial["appointment_type"] = pk
    try:
        start = datetime.datetime.fromisoformat(params.get("start") or "")
        local = timezone.localtime(start, availability.practice_tz()) if timezone.is_aware(start) else start
        day = parse_day(local.date().isoformat())
    except (TypeError, ValueError, OverflowError):
        with contextlib.suppress(ValueError):
            initial["date"] = parse_day(params.get("date") or "")
    else:
        initial["date"], initial["time"] = day, local.time().replace(second=0, microsecond=0)
    return initial


def _unprefixed(data, prefix: str) -> dict:
    """A bound form's typed values as `initial` for an unbound copy (shown, not validated)."""
    start = f"{prefix}-"
    return {k[len(start) :]: v for k, v in data.items() if k.startswith(start)}


def _chosen_patient(pk) -> Patient | None:
    """A patient picked in the booking flow (the front desk may book for any active patient)."""
    if pk is None:
        return None
    return Patient.objects.filter(pk=pk, is_archived=False).only("id", "last_name", "first_names", "birth_date").first()


def _selected_patient(results: Sequence[Patient | MaskedLine], pk: uuid.UUID | None) -> Patient | None:
    """The patient picked in the list. A masked line (a search by last name alone) is no
    patient: the chosen one is loaded (and shown in full from then on: it was chosen)."""
    found = next((p for p in results if p.pk == pk and isinstance(p, Patient)), None)
    return found or _chosen_patient(pk)


def _search(find: PatientFindForm) -> Sequence[Patient | MaskedLine]:
    if not find.is_valid():
        return []
    query = PatientQuery(last_name=find.cleaned_data["last_name"].strip(), birth_date=find.cleaned_data["birth_date"])
    if query.last_name_only:  # masked lines (initial, birth year) until one is chosen (audit/explain.py)
        return patient_search_masked(query)
    return patient_search(query)


def _slot_of(form: BookingForm) -> dict:
    """The booking's arguments for the services, from a valid form."""
    data = form.cleaned_data
    return {
        "practitioner": data["practitioner"],
        "appointment_type": data["appointment_type"],
        "start": data["start"],
        "reason": data["reason"].strip(),
        "internal_note": data["internal_note"].strip(),
        "force": data["force"],
        "squeeze": data["squeeze"],
        "squeeze_reason": data["squeeze_reason"],
    }


def _book_with(request: AuthenticatedHttpRequest, form: BookingForm, patient: Patient) -> Appointment:
    """Book from a valid form; services.BookingError propagates."""
    return services.appointment_book(patient=patient, actor=request.user, **_slot_of(form))


# A patient booked with the same practitioner this close to the new time (either side) is
# probably the same appointment booked twice: a retry that seemed to fail, then another slot.
DUPLICATE_WINDOW = datetime.timedelta(days=7)


def _booked_nearby(patient: Patient, practitioner: Practitioner, start: datetime.datetime) -> list[Appointment]:
    """The patient's booked appointments with this practitioner within DUPLICATE_WINDOW of
    `start`, from today on. Plain columns only: nothing decrypted."""
    since = max(start - DUPLICATE_WINDOW, availability.local_day_bounds(_today())[0])
    return list(
        Appointment.objects.filter(
            patient_id=patient.pk,
            practitioner_id=practitioner.pk,
            status=AppointmentStatus.BOOKED,
            start__gte=since,
            start__lt=start + DUPLICATE_WINDOW,
        )
        .only("id", "start", "practitioner_id")
        .order_by("start")[:5]
    )


# What a booking POST answers once done, and again when it is sent again.
BOOKED = {
    "book_existing": gettext_lazy("Appointment booked."),
    "book_new": gettext_lazy("Patient record created and appointment booked."),
}


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def book(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Book an appointment: pick the patient (search by last name and birth date, POSTed so
    names stay out of URLs and logs) or create one, then the slot. Front desk only.

    One page, three buttons: `search`, `book_existing`, `book_new`. Whatever was typed is kept
    when the page comes back with errors. A new patient and the booking commit together: a
    refused booking creates no patient."""
    require_front_desk(request)
    if request.method == "GET":
        form = BookingForm(initial=_booking_initial(request.GET))
        find = PatientFindForm(prefix="find")
        new = NewPatientForm(prefix="new")
        selected = _chosen_patient(_as_uuid(request.GET.get("patient")))
        return _render_book(request, form, find, new, results=[selected] if selected else [], selected=selected)

    action = request.POST.get("action", "")
    if action == "book_new" and not request.user.has_perm("patients.add_patient"):
        raise PermissionDenied
    form = BookingForm(request.POST) if action in BOOKED else BookingForm(initial=request.POST.dict())
    if action in BOOKED:
        # Before anything is searched or decrypted: a booking sent again answers as the first time.
        try:
            if replay := _replayed(request, f"scheduling.{action}", str(BOOKED[action])):
                return replay
        except FormSubmission.Reused as exc:
            _refused(form, exc)
    page = _BookPage.from_post(request.POST, action)
    if action == "book_existing":
        done = _book_existing(request, form, page)
    elif action == "book_new":
        done = _book_new(request, form, page)
    else:
        done = None
    if done is not None:
        return done
    return _render_book(
        request,
        form,
        page.find,
        page.new,
        results=page.results,
        selected=page.selected,
        searched=action == "search",
        patient_errors=page.patient_errors,
        nearby=page.nearby,
    )


@dataclass
class _BookPage:
    """The booking page's patient side as posted: the search, the new-patient form, the list of
    patients shown and the one picked (what the page shows again when it comes back)."""

    find: PatientFindForm
    new: NewPatientForm
    results: list[Patient | MaskedLine]
    selected: Patient | None
    patient_errors: list[str] = field(default_factory=list)
    nearby: list[Appointment] = field(default_factory=list)

    @classmethod
    def from_post(cls, data, action: str) -> _BookPage:
        searching = action == "search"
        find = PatientFindForm(data, prefix="find") if searching else PatientFindForm(initial=_unprefixed(data, "find"))
        new = (
            NewPatientForm(data, prefix="new")
            if action == "book_new"
            else NewPatientForm(prefix="new", initial=_unprefixed(data, "new"))
        )
        if not searching and any(_unprefixed(data, "find").values()):
            # Show the last search's results again so the choice survives an error.
            results = list(_search(PatientFindForm(data, prefix="find")))
        else:
            results = list(_search(find)) if searching else []
        selected_pk = _as_uuid(data.get("patient"))
        selected = _selected_patient(results, selected_pk)
        if selected is not None and selected not in results:  # in full, in place of its masked line
            results = [selected, *(p for p in results if p.pk != selected.pk)]
        return cls(find=find, new=new, results=results, selected=selected)


def _book_existing(request: AuthenticatedHttpRequest, form: BookingForm, page: _BookPage) -> HttpResponse | None:
    """Book the picked patient; the response when done, None to show the page again (with
    errors, or the patient's bookings nearby to confirm a second one)."""
    selected = page.selected
    if selected is None:
        page.patient_errors.append(_("Pick a patient in the list, or create a new one."))
    if not form.is_valid() or selected is None:
        return None
    if not form.cleaned_data["confirm_duplicate"]:
        page.nearby = _booked_nearby(selected, form.cleaned_data["practitioner"], form.cleaned_data["start"])
    if page.nearby:
        # The booking it found may be a twin's, committed meanwhile with this key.
        return _replayed_since(request, "book_existing")
    try:
        url = _once(request, "scheduling.book_existing", lambda: _book_with(request, form, selected).get_absolute_url())
    except (services.BookingError, FormSubmission.Reused) as exc:
        _refused(form, exc)
        _booking_conflict_shown(request, form, exc, patient=selected)
        return None
    messages.success(request, BOOKED["book_existing"])
    return redirect(url)


def _book_new(request: AuthenticatedHttpRequest, form: BookingForm, page: _BookPage) -> HttpResponse | None:
    """Create the patient and book them in one transaction; the response when done, None to show
    the page again (with errors, or the records that look like the same person)."""
    new = page.new
    slot_ok = form.is_valid()
    duplicates = new.is_valid() and slot_ok and _new_patient_duplicates(new, page.results)
    if duplicates and (replay := _replayed_since(request, "book_new")):
        return replay  # the record it found is a twin's, committed meanwhile with this key
    if new.is_valid() and slot_ok and not duplicates:

        def create_and_book() -> str:
            appointment = services.patient_create_and_book(
                patient_data=new.cleaned_data, actor=request.user, **_slot_of(form)
            )
            return appointment.get_absolute_url()

        try:
            url = _once(request, "scheduling.book_new", create_and_book)
        except (services.BookingError, FormSubmission.Reused) as exc:
            _refused(form, exc)
            _booking_conflict_shown(request, form, exc, patient=None)
        except ValidationError as exc:
            new.add_error(None, exc)
        else:
            messages.success(request, BOOKED["book_new"])
            return redirect(url)
    page.results = [*page.results, *(d for d in new.duplicates if d not in page.results)]
    return None


def _booking_conflict_shown(
    request: HttpRequest, form: BookingForm, exc: Exception, *, patient: Patient | None
) -> None:
    """A taken slot on the booking page: what holds it, and a link to book the next free time
    instead (the same practitioner, type and patient; the reason and note are typed again)."""
    kind = form.cleaned_data["appointment_type"]
    _conflict_shown(request, form, exc, duration=datetime.timedelta(minutes=kind.duration_minutes))
    fields = conflicts.next_free_fields(form.conflict)
    form.next_free_url = ""
    if fields is not None:
        query = {"practitioner": form.cleaned_data["practitioner"].pk, "type": kind.pk}
        query["start"] = f"{fields['date']}T{fields['time']}"
        if patient is not None:
            query["patient"] = str(patient.pk)
        form.next_free_url = f"{reverse('scheduling:book')}?{urlencode(query)}"


def _new_patient_duplicates(new: NewPatientForm, results: Sequence[Patient | MaskedLine]) -> bool:
    """Same name and birth date as an existing record: offer it first; booking a new one needs
    the "different person" confirmation."""
    data = new.cleaned_data
    new.duplicates = patient_duplicates(
        last_name=data["last_name"], first_names=data["first_names"], birth_date=data["birth_date"]
    )
    new.duplicates = [d for d in new.duplicates if not d.is_archived]
    if new.duplicates and not data.get("confirm_duplicate"):
        new.add_error(
            None,
            _("A patient with the same name and birth date already exists: pick them above, or confirm below."),
        )
        return True
    return False


def _render_book(
    request, form, find, new, *, results, selected, searched: bool = False, patient_errors=(), nearby=()
) -> HttpResponse:
    context = {
        "patient_errors": patient_errors,
        "nearby": nearby,
        "form": form,
        "find": find,
        "new": new,
        "results": results,
        "selected_pk": selected.pk if selected else None,
        "searched": searched,
        "can_create": request.user.has_perm("patients.add_patient"),
    }
    return render(request, "scheduling/book.html", context)


# ---------------------------------------------------------------------------------------------
# The appointment page and its actions

# What the appointment page shows: the appointment (reason, internal note and cancellation
# reason included: decrypted and audited), the patient's name, who did what.
PAGE_FIELDS = (
    "id",
    "practitioner",
    "patient",
    "appointment_type",
    "start",
    "end",
    "status",
    "reason",
    "internal_note",
    "forced",
    "squeezed",
    "arrived_at",
    "consultation_started_at",
    "done_at",
    "cancelled_at",
    "cancelled_by",
    "cancellation_reason",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
    "practitioner__id",
    "practitioner__display_name",
    "appointment_type__id",
    "appointment_type__name",
    "appointment_type__duration_minutes",
    "patient__id",
    "patient__last_name",
    "patient__first_names",
    "cancelled_by__id",
    "cancelled_by__username",
    "created_by__id",
    "created_by__username",
    "updated_by__id",
    "updated_by__username",
)
PAGE_RELATED = ("practitioner", "appointment_type", "patient", "cancelled_by", "created_by", "updated_by")


def _render_appointment(request: HttpRequest, pk, *, forms: dict | None = None, status: int = 200) -> HttpResponse:
    appointment = get_appointment_for(request, pk, related=PAGE_RELATED, only=PAGE_FIELDS)
    front_desk = is_front_desk(request.user)
    local = timezone.localtime(appointment.start, availability.practice_tz())
    forms = forms or {}
    status_buttons, status_main = _page_status_buttons(request.user, appointment)
    context = {
        "appointment": appointment,
        "front_desk": front_desk,
        "status_buttons": status_buttons,
        "status_main": status_main,
        "can_change": front_desk and appointment.status == AppointmentStatus.BOOKED,
        "can_cancel": front_desk and appointment.can_become(AppointmentStatus.CANCELLED),
        "move_form": forms.get("move")
        or MoveForm(initial={"date": local.date(), "time": local.time().replace(second=0, microsecond=0)}),
        "type_form": forms.get("type")
        or ChangeTypeForm(
            practitioner_id=appointment.practitioner_id, initial={"appointment_type": appointment.appointment_type_id}
        ),
        "cancel_form": forms.get("cancel") or CancelForm(),
        "open_form": next(iter(forms), None),
        # Whoever may open the appointment (the front desk, its practitioner) sees whether and
        # when each reminder went out, and why one did not: plain columns, nothing decrypted.
        "reminders": selectors.appointment_reminders(appointment),
    }
    return render(request, "scheduling/appointment.html", context, status=status)


@never_cache
@login_required
@require_GET
def appointment_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    return _render_appointment(request, pk)


def _front_desk_appointment(request: HttpRequest, pk) -> Appointment:
    """For moves, type changes and cancellations: the front desk only. A practitioner gets 403 on
    their own appointment and 404 on anyone else's (no existence oracle)."""
    appointment = get_appointment_for(request, pk)
    require_front_desk(request)
    return appointment


def _act_once(
    request: HttpRequest, appointment: Appointment, form, *, name: str, confirmation: str, work: Callable[[], object]
) -> HttpResponse:
    """The appointment page's forms (`name`: move, type, cancel): answer a POST sent again as
    the first time, else do `work` once for the form's key and go back to the appointment; a
    refusal comes back on the page, in that form."""
    action = f"scheduling.{name}:{appointment.pk}"
    try:
        if replay := _replayed(request, action, confirmation):
            return replay
    except FormSubmission.Reused as exc:
        _refused(form, exc)

    def act() -> str:
        work()
        # Back where the form was (the patient's record offers these forms too), else the appointment.
        return _safe_next(request, appointment.get_absolute_url())

    if form.is_valid():
        try:
            url = _once(request, action, act)
        except (services.BookingError, FormSubmission.Reused) as exc:
            _refused(form, exc)
            kind = form.cleaned_data.get("appointment_type")
            duration = (
                datetime.timedelta(minutes=kind.duration_minutes) if kind else appointment.end - appointment.start
            )
            _conflict_shown(request, form, exc, duration=duration, wanted=appointment.start)
        else:
            messages.success(request, confirmation)
            return redirect(url)
    return _render_appointment(request, appointment.pk, forms={name: form})


@never_cache
@login_required
@require_POST
def appointment_move(request: AuthenticatedHttpRequest, pk: uuid.UUID) -> HttpResponse:
    appointment = _front_desk_appointment(request, pk)
    form = MoveForm(request.POST)
    return _act_once(
        request,
        appointment,
        form,
        name="move",
        confirmation=_("Appointment moved."),
        work=lambda: services.appointment_move(
            appointment=appointment,
            start=form.cleaned_data["start"],
            practitioner=form.cleaned_data["practitioner"],
            actor=request.user,
            force=form.cleaned_data["force"],
        ),
    )


@never_cache
@login_required
@require_POST
def appointment_change_type(request: AuthenticatedHttpRequest, pk: uuid.UUID) -> HttpResponse:
    appointment = _front_desk_appointment(request, pk)
    form = ChangeTypeForm(request.POST, practitioner_id=appointment.practitioner_id)
    return _act_once(
        request,
        appointment,
        form,
        name="type",
        confirmation=_("Appointment type changed."),
        work=lambda: services.appointment_change_type(
            appointment=appointment,
            appointment_type=form.cleaned_data["appointment_type"],
            actor=request.user,
            force=form.cleaned_data["force"],
        ),
    )


@never_cache
@login_required
@require_POST
def appointment_cancel(request: AuthenticatedHttpRequest, pk: uuid.UUID) -> HttpResponse:
    appointment = _front_desk_appointment(request, pk)
    form = CancelForm(request.POST)
    return _act_once(
        request,
        appointment,
        form,
        name="cancel",
        confirmation=_("Appointment cancelled."),
        work=lambda: services.appointment_cancel(
            appointment=appointment, reason=form.cleaned_data["reason"], actor=request.user
        ),
    )


@never_cache
@login_required
@require_POST
def appointment_status(request: AuthenticatedHttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Move along the day's flow. Practitioners: their own appointments, arrived / in
    consultation / done / no-show. The front desk: any, and back to booked."""
    appointment = get_appointment_for(request, pk)
    wanted = request.POST.get("status", "")
    back = _safe_next(request, appointment.get_absolute_url())
    if wanted not in FRONT_DESK_STATUSES:
        # Unknown values, and "cancelled" (it needs a reason: its own form).
        messages.error(request, _("This status cannot be set here."))
        return redirect(back)
    if wanted not in (FRONT_DESK_STATUSES if is_front_desk(request.user) else PRACTITIONER_STATUSES):
        raise PermissionDenied
    if submission_key_malformed(request.POST):
        messages.error(request, MALFORMED_KEY)
        return redirect(back)
    action = f"scheduling.status:{appointment.pk}"
    confirmation = _("Status changed to “%(status)s”.") % {"status": AppointmentStatus(wanted).label}

    def act() -> str:
        services.appointment_set_status(appointment=appointment, status=wanted, actor=request.user)
        return back

    try:
        if replay := _replayed(request, action, confirmation):
            return replay
        back = _once(request, action, act)
    except (services.BookingError, FormSubmission.Reused) as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, confirmation)
    return redirect(back)
