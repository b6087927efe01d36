"""What the clickable agenda adds to the pages of scheduling.views: a block dragged to another
time or practitioner (static/js/agenda.js), and the whole day on paper.

- Drag to move is the appointment page's move, sent by the script: the same service and rules
  (scheduling.services.appointment_move), the same submission key (a retry acts once), the
  same access (the front desk; a practitioner gets 403 on their own appointment, 404 on
  anyone else's). The script asks for JSON: 200 when moved (the page reloads and shows it),
  409 when refused, with the refusal in words (what holds the time, the next free time) and
  the block goes back, 400 for values that do not make a time. A plain form POST (no script)
  is answered with a redirect back to `next` and the same words as a message.
- The day of every active practitioner printed: one sheet each, in the order of the day view.
  Decrypts the patients' two name fields, like the day view (audited, explained).
"""

from __future__ import annotations

import datetime
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from practice.http import AuthenticatedHttpRequest
from practice.models import FormSubmission
from scheduling import availability, conflicts, selectors, services
from scheduling.access import require_front_desk
from scheduling.forms import MoveForm
from scheduling.models import Appointment
from scheduling.views import _front_desk_appointment, _once, _replayed, _safe_next


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _answer(
    request: HttpRequest, *, ok: bool, message: str, back: str, status: int = 200, extra: dict | None = None
) -> HttpResponse:
    """The script's JSON, or (a plain form) a redirect back, a refusal's words as a message
    (a success's message is the caller's: the page that comes next shows it either way)."""
    if _wants_json(request):
        return JsonResponse({"ok": ok, "message": message, **(extra or {})}, status=200 if ok else status)
    if not ok:
        messages.error(request, message)
    return redirect(back)


def _day_of(appointment: Appointment) -> str:
    local = appointment.start.astimezone(availability.practice_tz())
    return reverse("scheduling:day", args=[local.date()])


def _refusal(request: HttpRequest, appointment: Appointment, form: MoveForm, exc: Exception, back: str) -> HttpResponse:
    """A refused move in words: the service's, then what holds the time and the next free one."""
    words = [" ".join(getattr(exc, "messages", [str(exc)]))]
    conflict = conflicts.conflict_of(
        exc, user=request.user, duration=appointment.end - appointment.start, wanted=form.cleaned_data.get("start")
    )
    if conflict is not None:
        words += conflicts.conflict_sentences(conflict)
    extra = {"next_free": conflicts.next_free_fields(conflict)}
    return _answer(request, ok=False, message=" ".join(words), back=back, status=409, extra=extra)


@never_cache
@login_required
@require_POST
def appointment_drag_move(request: AuthenticatedHttpRequest, pk: uuid.UUID) -> HttpResponse:
    """A block dropped on the grid: move it there, or say why not (module docstring)."""
    appointment = _front_desk_appointment(request, pk)
    back = _safe_next(request, _day_of(appointment))
    action = f"scheduling.move:{appointment.pk}"
    confirmation = _("Appointment moved.")
    form = MoveForm(request.POST)
    try:
        if _replayed(request, action, confirmation) is not None:  # it says so itself
            return _answer(request, ok=True, message=confirmation, back=back)
    except FormSubmission.Reused as exc:
        return _answer(request, ok=False, message=" ".join(exc.messages), back=back, status=409)
    if not form.is_valid():
        words = [str(e) for errors in form.errors.values() for e in errors]
        return _answer(request, ok=False, message=" ".join(words), back=back, status=400)

    def move() -> str:
        services.appointment_move(
            appointment=appointment,
            start=form.cleaned_data["start"],
            practitioner=form.cleaned_data["practitioner"],
            actor=request.user,
        )
        return back

    try:
        _once(request, action, move)
    except (services.BookingError, FormSubmission.Reused) as exc:
        return _refusal(request, appointment, form, exc, back)
    messages.success(request, confirmation)  # the page the script reloads shows it
    return _answer(request, ok=True, message=confirmation, back=back)


@never_cache
@login_required
@require_GET
def print_all(request: HttpRequest, day: datetime.date) -> HttpResponse:
    """Every active practitioner's day on paper, one sheet each. Front desk only."""
    require_front_desk(request)
    grid = selectors.agenda_day(day)
    context = {
        "day": day,
        "previous": day - datetime.timedelta(days=1),
        "next": day + datetime.timedelta(days=1),
        "columns": grid.columns,
        "printed_at": timezone.now(),
    }
    return render(request, "scheduling/print_all.html", context)
