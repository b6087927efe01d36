"""Panels of the patient's record page that other apps hold (scheduling: the patient's
appointments). patients imports none of them: each app registers its panels in its
AppConfig.ready() (docs/design.md, the registry table).

Rules enforced here:

- A panel is asked for its context only once the record page has decided the user may open
  the record (patients.views.patient_detail, on plaintext columns). The panel decides what of
  its own data this user may see (a practitioner: their own appointments), and returns None
  to show nothing.
- A panel loads what it shows, plain columns first: the record page's audit rows are the
  record's own fields plus whatever a panel says it decrypts (the appointments panel:
  nothing).
- With no panel registered the record page is the record alone (fail closed: nothing shown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from patients.models import Patient


@dataclass(frozen=True)
class RecordPanel:
    """``context(request, patient)``: the template's context, or None to show nothing.
    ``stylesheets``: static paths the page links in its head (no inline style: strict CSP)."""

    name: str
    template: str
    context: Callable[[HttpRequest, Patient], dict[str, Any] | None]
    stylesheets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShownPanel:
    template: str
    context: dict[str, Any]


# Registered by the apps that hold them, in their AppConfig.ready(), in that order.
_PANELS: dict[str, RecordPanel] = {}


def record_panel_register(panel: RecordPanel) -> None:
    _PANELS[panel.name] = panel


def record_panels(request: HttpRequest, patient: Patient) -> list[ShownPanel]:
    """The panels to show on this record for this user, each with its context."""
    shown = []
    for panel in _PANELS.values():
        context = panel.context(request, patient)
        if context is not None:
            shown.append(ShownPanel(template=panel.template, context=context))
    return shown


def record_panel_stylesheets() -> list[str]:
    return list(dict.fromkeys(path for panel in _PANELS.values() for path in panel.stylesheets))
