"""Explanations in words, for the reports (who opened this record, investigations/views.py).

A READ row records why its patient could be decrypted as a code and a reference
(``AuditEvent.explanation`` / ``explained_by``, audit/explain.py). The reports say it in words:
"appointment of 3 Dec 2030, 09:00 with Dr Martin (Consultation)", "reason: called about the
invoice", "own action: changed patient on 2 Dec 2030".

Rules enforced here:

- Nothing is decrypted: a describer reads plaintext columns only (an appointment's start, its
  practitioner's display name and its type's name; a grant's or a stated reason's text, which
  are plain by design).
- One query per explanation code per page: ``describe`` hands a describer every reference of
  its code at once.
- ``audit`` imports no domain app: the app that owns a code's data registers its describer from
  its ``AppConfig.ready()`` (scheduling: appointment and care; patients: grant); this module
  registers the two audit owns (own action, stated reason). A code without a describer, or a
  reference no longer found, is said by the code's label alone.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable

from django.apps import apps
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from audit.models import AuditEvent, EventType, Explanation, ReadReason

# A describer: the references of one code -> {reference: words}. References it cannot find are
# left out (the code's label stands in for them).
Describe = Callable[[list[str]], dict[str, str]]

_describers: dict[str, Describe] = {}


def describer_register(code: str, describe: Describe) -> None:
    """Register the describer of an ``Explanation`` code (from an ``AppConfig.ready()``).
    Registering a code again replaces it."""
    if code not in Explanation.values:
        raise ValueError(f"Unknown explanation code {code!r}: add it to audit.models.Explanation.")
    _describers[code] = describe


def uuid_refs(refs: Iterable[str]) -> dict[uuid.UUID, list[str]]:
    """References as UUIDs (the trail keeps them as text: hyphenated on PostgreSQL, bare hex on
    SQLite), each with the references that name it; unparsable ones are dropped."""
    found: dict[uuid.UUID, list[str]] = {}
    for ref in refs:
        try:
            found.setdefault(uuid.UUID(str(ref)), []).append(ref)
        except ValueError:
            continue
    return found


def when_text(moment: datetime.datetime, *, with_time: bool = True) -> str:
    """A moment in the practice's time zone, in the active language: "3 Dec 2030, 09:00"."""
    local = timezone.localtime(moment)
    day = date_format(local, "j M Y")
    return f"{day}, {local:%H:%M}" if with_time else day


def code_label(code: str) -> str:
    """A code in words, without its reference (also for rows written before explanations)."""
    if code == Explanation.UNEXPLAINED:
        return _("unexplained (allowance)")
    if code == Explanation.MASKED:
        return _("masked search line")
    if code in Explanation.values:
        return str(Explanation(code).label)
    return ""


def describe(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(code, reference): words} for every (code, reference) pair: one query per code."""
    by_code: dict[str, set[str]] = {}
    for code, ref in pairs:
        by_code.setdefault(code or "", set()).add(ref or "")
    words: dict[tuple[str, str], str] = {}
    for code, refs in by_code.items():
        describer = _describers.get(code)
        found = describer(sorted(r for r in refs if r)) if describer is not None and any(refs) else {}
        for ref in refs:
            words[(code, ref)] = found.get(ref) or code_label(code)
    return words


# --------------------------------------------------------------------------- the two audit owns


def _record_words(model_label: str) -> str:
    try:
        return str(apps.get_model(model_label)._meta.verbose_name)
    except (LookupError, ValueError):
        return model_label


def _own_action(refs: list[str]) -> dict[str, str]:
    ids: dict[int, list[str]] = {}
    for ref in refs:
        if str(ref).isdigit():
            ids.setdefault(int(ref), []).append(ref)
    rows = AuditEvent.objects.filter(pk__in=list(ids)).values_list("id", "event_type", "model_label", "occurred_at")
    words = {}
    for pk, event_type, model_label, occurred_at in rows:
        text = _("own action: %(action)s %(record)s on %(when)s") % {
            "action": str(EventType(event_type).label).lower(),
            "record": _record_words(model_label),
            "when": when_text(occurred_at),
        }
        for ref in ids[pk]:
            words[ref] = text
    return words


def _stated_reason(refs: list[str]) -> dict[str, str]:
    ids = uuid_refs(refs)
    words = {}
    for pk, reason in ReadReason.objects.filter(pk__in=list(ids)).values_list("id", "reason"):
        for ref in ids[pk]:
            words[ref] = _("reason: %(reason)s") % {"reason": reason}
    return words


describer_register(Explanation.OWN_ACTION, _own_action)
describer_register(Explanation.REASON, _stated_reason)
