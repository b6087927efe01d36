"""Bidirectional control characters are stripped from every text typed into a form.

U+202A to U+202E (embeddings, overrides) and U+2066 to U+2069 (isolates), and the invisible
marks U+200E, U+200F and U+061C, reorder what is displayed around them: a last name holding
U+202E shows its letters backwards on every page and in every CSV file that prints it, a way
to make one patient's record pass for another's (display spoofing). Nobody types them on
purpose in a clinic's forms, so they are removed, not refused: a value pasted from a document
that carried one is kept, without it.

Installed once (``PracticeConfig.ready``) on Django's ``forms.CharField``, which every text
field of every form inherits, the app's, the admin's and the login's alike: one place, so a
new form cannot forget it.
"""

from __future__ import annotations

import re

from django import forms

BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def bidi_strip(value):
    """The value without bidirectional control characters (non-strings unchanged)."""
    return BIDI_CONTROLS.sub("", value) if isinstance(value, str) else value


def install() -> None:
    """Make ``forms.CharField`` strip bidi controls before its own cleaning (idempotent)."""
    original = forms.CharField.to_python
    if getattr(original, "bidi_stripped", False):
        return

    def to_python(self, value):
        return original(self, bidi_strip(value))

    # A deliberate monkeypatch: a marker on the function, and a method replaced on the class.
    to_python.bidi_stripped = True  # type: ignore[attr-defined]
    forms.CharField.to_python = to_python  # type: ignore[method-assign]
