"""The record page's "Created ..., last changed ..." line: short date and 24-hour time in both
languages, one full stop (English short date-times end with "p.m.", which doubled it)."""

import re

import pytest
import time_machine

from config.testing import client_for, make_patient, paris, patient_key, read_map

# The record page's identity and care fields; its contact details stay sealed (test_reveal.py).
RECORD_PAGE_READS = {"last_name", "first_names", "birth_name", "sex", "birth_date", "referring_doctor", "notes"}


@pytest.mark.parametrize(
    ("language", "sentence"),
    [
        ("en", "Created 03/01/2030 16:20, last changed 03/01/2030 16:20."),
        ("fr", "Dossier créé le 01/03/2030 16:20, dernière modification le 01/03/2030 16:20."),
    ],
)
def test_it_ends_the_created_line_with_one_full_stop(secretary, language, sentence):
    with time_machine.travel(paris(2030, 3, 1, 16, 20), tick=False):
        patient = make_patient()
    client = client_for(secretary)
    client.cookies["django_language"] = language
    body = client.get(patient.get_absolute_url()).content.decode()

    assert sentence in body
    assert "p.m." not in body
    assert ".." not in re.sub(r"<[^>]*>", "", body).replace("...", "")
    assert read_map(path=patient.get_absolute_url()) == {patient_key(patient): RECORD_PAGE_READS}
