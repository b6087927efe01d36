"""French and English: the browser's language, the user's choice, and the catalogue itself."""

import gettext
import re
import subprocess
from pathlib import Path

import polib
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from config.testing import at, book, client_for, make_doctor, make_type, today
from patients.models import Patient

LOCALE_DIR = Path(settings.BASE_DIR) / "locale" / "fr" / "LC_MESSAGES"
PO = LOCALE_DIR / "django.po"
MO = LOCALE_DIR / "django.mo"

NEW_PATIENT = {
    "last_name": "Durand",
    "first_names": "Léa",
    "sex": "F",
    "birth_date": "1990-05-17",
    "phone_mobile": "06 11 22 33 44",
    "email": "lea.durand@example.fr",
    "nir": "",
    "language": "fr",
}


def _page(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def todays_patient(practitioner, patient):
    """The patient, booked today: until a search, the patient list shows today's patients only."""
    doctor = make_doctor(practitioner, "Dr Martin")
    book(doctor, patient, make_type(doctor), at(today(), 23), force=True)
    return patient


# --- Pages follow the browser's language (Accept-Language) ---------------------------------


def test_the_login_page_is_in_french_for_a_french_browser(db):
    response = Client(headers={"accept-language": "fr-FR,fr;q=0.9,en;q=0.5"}).get(reverse("login"))
    body = _page(response)
    assert response["Content-Language"] == "fr"
    assert '<html lang="fr">' in body
    assert "<h1>Se connecter</h1>" in body
    assert "Identifiant" in body
    assert "Mot de passe" in body
    assert "Log in" not in body
    assert "Username" not in body


def test_the_login_page_is_in_english_for_an_english_browser(db):
    response = Client(headers={"accept-language": "en-GB,en;q=0.9"}).get(reverse("login"))
    body = _page(response)
    assert response["Content-Language"] == "en"
    assert '<html lang="en">' in body
    assert "<h1>Log in</h1>" in body
    assert "Username" in body
    assert "Password" in body
    assert "Se connecter" not in body


def test_an_unsupported_browser_language_falls_back_to_the_default_french(db, settings):
    settings.LANGUAGE_CODE = "fr"  # production default (conftest uses "en" for the other tests)
    body = _page(Client(headers={"accept-language": "de-DE,de;q=0.9"}).get(reverse("login")))
    assert "<h1>Se connecter</h1>" in body


def test_a_failed_login_explains_itself_in_french(secretary):
    response = Client(headers={"accept-language": "fr"}).post(
        reverse("login"), {"username": secretary.username, "password": "wrong password"}
    )
    body = _page(response)
    assert "Saisissez un nom d’utilisateur et un mot de passe valides" in body  # Django's own catalogue


def test_the_patient_list_is_in_french_for_a_french_browser(secretary, todays_patient):
    response = client_for(secretary).get(reverse("patients:list"), HTTP_ACCEPT_LANGUAGE="fr")
    body = _page(response)
    assert "<h1>Patients</h1>" in body
    assert "Nouveau patient" in body
    assert "Patients du jour" in body
    assert "Date de naissance" in body
    assert "Nom de naissance" in body
    assert "Inclure les dossiers archivés" in body
    assert ">Rechercher</button>" in body
    assert "Se déconnecter" in body
    assert "09/03/1984" in body  # French short date: day first
    assert "New patient" not in body
    assert "Today's patients" not in body


def test_the_patient_list_is_in_english_for_an_english_browser(secretary, patient):
    body = _page(client_for(secretary).get(reverse("patients:list"), HTTP_ACCEPT_LANGUAGE="en"))
    assert "New patient" in body
    assert "Today's patients" in body
    assert "Birth date" in body
    assert ">Search</button>" in body
    assert "Log out" in body
    assert "Nouveau patient" not in body


def test_the_patient_record_is_in_french(secretary, patient):
    body = _page(client_for(secretary).get(patient.get_absolute_url(), HTTP_ACCEPT_LANGUAGE="fr"))
    assert "Numéro de sécurité sociale" in body
    assert "Téléphone portable" in body
    assert "Médecin traitant / adressant" in body
    assert "Femme" in body  # sex choice label
    assert "Dossier créé le" in body
    assert ">Modifier</a>" in body
    assert ">Archiver</button>" in body


def test_the_patient_form_labels_come_from_the_model_in_french(secretary):
    body = _page(client_for(secretary).get(reverse("patients:create"), HTTP_ACCEPT_LANGUAGE="fr"))
    assert "Nom d’usage" in body
    assert "Nom de naissance" in body
    assert "Numéro de sécurité sociale (NIR)" in body
    assert "Identité" in body
    assert "Coordonnées" in body
    assert ">Enregistrer</button>" in body


# --- The user's own choice (/i18n/setlang/) --------------------------------------------------


def test_choosing_french_switches_a_logged_in_users_pages(secretary):
    client = client_for(secretary)
    assert "New patient" in _page(client.get(reverse("patients:list"), HTTP_ACCEPT_LANGUAGE="en"))

    response = client.post(reverse("set_language"), {"language": "fr", "next": reverse("patients:list")})
    assert response.status_code == 302
    assert response["Location"] == reverse("patients:list")
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "fr"

    # The cookie wins over the browser's English.
    body = _page(client.get(reverse("patients:list"), HTTP_ACCEPT_LANGUAGE="en"))
    assert "Nouveau patient" in body
    assert "New patient" not in body


def test_choosing_english_overrides_a_french_browser(secretary):
    client = client_for(secretary)
    client.post(reverse("set_language"), {"language": "en", "next": reverse("patients:list")})
    body = _page(client.get(reverse("patients:list"), HTTP_ACCEPT_LANGUAGE="fr"))
    assert "New patient" in body
    assert "Nouveau patient" not in body


def test_the_language_switcher_offers_both_languages(db):
    body = _page(Client().get(reverse("login"), HTTP_ACCEPT_LANGUAGE="fr"))
    assert 'action="/i18n/setlang/"' in body
    assert '<option value="fr" selected>Français</option>' in body
    assert '<option value="en">' in body


# --- Form errors and messages --------------------------------------------------------------


def test_an_invalid_phone_number_is_refused_in_french(secretary):
    response = client_for(secretary).post(
        reverse("patients:create"), {**NEW_PATIENT, "phone_mobile": "12"}, HTTP_ACCEPT_LANGUAGE="fr"
    )
    body = _page(response)
    assert "Saisissez un numéro de téléphone valide." in body
    assert "Enter a valid phone number." not in body
    assert not Patient.objects.exists()


def test_the_same_error_stays_english_for_an_english_browser(secretary):
    response = client_for(secretary).post(
        reverse("patients:create"), {**NEW_PATIENT, "phone_mobile": "12"}, HTTP_ACCEPT_LANGUAGE="en"
    )
    assert "Enter a valid phone number." in _page(response)


def test_a_missing_field_and_a_bad_nir_are_explained_in_french(secretary):
    response = client_for(secretary).post(
        reverse("patients:create"),
        {**NEW_PATIENT, "last_name": "", "nir": "290057511512300"},
        HTTP_ACCEPT_LANGUAGE="fr",
    )
    body = _page(response)
    assert "Ce champ est obligatoire." in body  # Django's own catalogue
    assert "La clé de ce numéro de sécurité sociale ne correspond pas" in body


def test_an_empty_search_is_explained_in_french(secretary):
    response = client_for(secretary).post(reverse("patients:list"), {"first_name": "Anne"}, HTTP_ACCEPT_LANGUAGE="fr")
    body = _page(response)
    assert "Saisissez un nom, une date de naissance, un numéro de téléphone ou un e-mail." in body


def test_the_confirmation_message_after_creating_a_patient_is_in_french(secretary):
    response = client_for(secretary).post(
        reverse("patients:create"), NEW_PATIENT, HTTP_ACCEPT_LANGUAGE="fr", follow=True
    )
    assert "Dossier patient créé." in _page(response)


# --- The catalogue ---------------------------------------------------------------------------


def _po_entries(path: Path) -> list[polib.POEntry]:
    """The entries of a .po file, the header and obsolete entries left out."""
    return [entry for entry in polib.pofile(str(path)) if entry.msgid and not entry.obsolete]


def _msgstr(entry: polib.POEntry) -> str:
    """The translation of the singular: msgstr, or a plural entry's first form."""
    return entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\(\w+\)[sd]|\{\{\s*\w+\s*\}\}", text))


def test_every_string_of_the_catalogue_is_translated():
    entries = _po_entries(PO)
    assert len(entries) > 100
    assert [e.msgid for e in entries if not _msgstr(e).strip()] == []
    assert [e.msgid for e in entries if any(not v.strip() for v in e.msgstr_plural.values())] == []
    assert [e.msgid for e in entries if "fuzzy" in e.flags] == []
    assert not polib.pofile(str(PO)).metadata_is_fuzzy  # header too


def test_translations_keep_their_placeholders():
    for entry in _po_entries(PO):
        assert _placeholders(_msgstr(entry)) == _placeholders(entry.msgid), entry.msgid
        if entry.msgid_plural:
            plural = entry.msgstr_plural[1]
            assert _placeholders(plural) == _placeholders(entry.msgid_plural), entry.msgid_plural


def test_the_compiled_catalogue_matches_the_po():
    with MO.open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    assert compiled.info()["language"] == "fr"
    assert compiled.gettext("Log in") == "Se connecter"
    assert compiled.gettext("Enter a valid phone number.") == "Saisissez un numéro de téléphone valide."
    assert compiled.gettext("social security number (NIR)") == "numéro de sécurité sociale (NIR)"
    stale = [
        e.msgid
        for e in _po_entries(PO)
        if (compiled.ngettext(e.msgid, e.msgid_plural, 1) if e.msgid_plural else compiled.gettext(e.msgid))
        != _msgstr(e)
    ]
    assert stale == [], "django.mo is out of date: run compilemessages"


def test_the_po_passes_msgfmt_check(tmp_path):
    result = subprocess.run(
        ["msgfmt", "--check", "-o", str(tmp_path / "django.mo"), str(PO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
