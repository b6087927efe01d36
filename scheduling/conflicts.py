"""How a refused booking or move names what is in the way: the appointment that holds the
time (when, with whom, and the patient's name when the user may open that record: decrypted
and audited like any read, scheduling.selectors.slot_conflict) and the next free time, in
sentences the booking page, the appointment page and the grid's script show alike.

Whether the front desk may squeeze an emergency in over it is said here too: the clinic
allows it (practice.Clinic.squeeze_in_allowed), the user is the front desk, and no squeezed
appointment holds any of the time already (scheduling.services enforces the same rules).
"""

from __future__ import annotations

import datetime

from django.contrib.auth.models import AnonymousUser, User
from django.utils import formats
from django.utils.translation import gettext as _

from practice.models import Clinic
from practice.roles import is_front_desk
from scheduling import availability, selectors
from scheduling.selectors import SlotConflict
from scheduling.services import SlotTaken


def conflict_of(
    exc: Exception, *, user: User | AnonymousUser, duration: datetime.timedelta, wanted: datetime.datetime | None
) -> SlotConflict | None:
    """The description of what holds the slot when `exc` is a "slot taken" refusal that knows
    it, else None."""
    if not isinstance(exc, SlotTaken) or exc.conflict is None or wanted is None:
        return None
    return selectors.slot_conflict(exc.conflict, user=user, duration=duration, wanted=wanted, squeezable=exc.squeezable)


def squeeze_offered(conflict: SlotConflict | None, *, user: User | AnonymousUser) -> bool:
    return conflict is not None and conflict.squeezable and is_front_desk(user) and Clinic.current().squeeze_in_allowed


def _when(moment: datetime.datetime) -> str:
    local = moment.astimezone(availability.practice_tz())
    return f"{formats.date_format(local, 'l j F Y')}, {local:%H:%M}"


def conflict_sentences(conflict: SlotConflict) -> list[str]:
    """What holds the time, and the next free time, in words (the patient's name, when
    known, is already decrypted: nothing is read here)."""
    tz = availability.practice_tz()
    start, end = conflict.start.astimezone(tz), conflict.end.astimezone(tz)
    words = {
        "day": formats.date_format(start, "l j F Y"),
        "start": f"{start:%H:%M}",
        "end": f"{end:%H:%M}",
        "practitioner": conflict.practitioner,
    }
    if conflict.squeezed:
        held = _("Held by an emergency squeezed in on %(day)s, %(start)s–%(end)s, with %(practitioner)s") % words
    else:
        held = _("Held by the appointment of %(day)s, %(start)s–%(end)s, with %(practitioner)s") % words
    if conflict.patient:
        held += f" ({conflict.patient})"
    sentences = [held + "."]
    if conflict.next_free is not None:
        sentences.append(_("Next free time: %(when)s.") % {"when": _when(conflict.next_free.start)})
    else:
        sentences.append(_("No free time of this length in the next two months."))
    return sentences


def next_free_fields(conflict: SlotConflict | None) -> dict[str, str] | None:
    """The next free time as the forms take it: {"date": "yyyy-mm-dd", "time": "hh:mm"}."""
    if conflict is None or conflict.next_free is None:
        return None
    local = conflict.next_free.start.astimezone(availability.practice_tz())
    return {"date": local.date().isoformat(), "time": f"{local:%H:%M}"}
