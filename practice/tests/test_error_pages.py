"""Pages not found (404) and refused (403) answer the app's page: its layout and menu, in the
user's language, with a way back; for visitors too. They show nothing of what was asked for
(no exception text, no object, no patient) and decrypt nothing. Which URL answers which status
to whom is practice/tests/test_url_access.py."""

import uuid

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import path
from django.utils import translation

from audit.models import AuditEvent, EventType
from config.testing import client_for, reads
from config.urls import urlpatterns as project_urlpatterns

SECRET = "secret detail: Lefèvre 0612345678"


def _refused(request):
    raise PermissionDenied(SECRET)  # what a view may put in the exception: never on the page


urlpatterns = [path("refused/", _refused), *project_urlpatterns]


def _page(response) -> str:
    body = response.content.decode()
    assert "Content-Security-Policy" in response
    assert "<!doctype html>" in body
    assert '<header class="topbar">' in body  # the app's layout
    assert "cabinet.css" in body
    assert 'href="/"' in body  # the way back
    return body


@pytest.mark.parametrize(
    ("language", "title", "back"),
    [("en", "Page not found", "Back to the home page"), ("fr", "Page introuvable", "Retour à l’accueil")],
)
def test_a_visitor_gets_our_404_in_their_language(db, language, title, back):
    response = Client(headers={"accept-language": language}).get("/no-such-page/")
    assert response.status_code == 404
    body = _page(response)
    assert f'<html lang="{language}">' in body
    assert f"<h1>{title}</h1>" in body
    assert back in body
    assert 'href="/accounts/login/"' in body
    assert "Not Found" not in body
    assert "/no-such-page/" not in body.replace('name="next" value="/no-such-page/"', "")
    translation.activate("en")


def test_a_logged_in_user_gets_our_404_with_their_menu(secretary):
    response = client_for(secretary).get("/no-such-page/")
    assert response.status_code == 404
    body = _page(response)
    assert "<h1>Page not found</h1>" in body
    assert 'href="/agenda/#now"' in body  # the secretary's menu (the agenda opens at now)
    assert secretary.username in body
    assert 'href="/accounts/login/"' not in body


def test_a_404_for_a_patient_id_shows_and_decrypts_nothing(secretary, outsider, patient):
    """An unknown id (a secretary), and a real patient one may not open (an account with no
    role): the same page, nothing decrypted, no READ row; the 404 is in the trail."""
    for user, pk in [(secretary, uuid.uuid4()), (outsider, patient.pk)]:
        before = AuditEvent.objects.filter(event_type=EventType.NOT_FOUND, actor_user_id=user.pk).count()
        response = client_for(user).get(f"/patients/{pk}/")
        assert response.status_code == 404
        body = _page(response)
        assert "<h1>Page not found</h1>" in body
        for plaintext in ("LEFÈVRE", "Lefèvre", "Anne-Marie", "Patient matches", "No Patient"):
            assert plaintext not in body
        assert str(pk) not in body.replace(f'name="next" value="/patients/{pk}/"', "")
        assert reads(actor_user_id=user.pk) == []
        assert AuditEvent.objects.filter(event_type=EventType.NOT_FOUND, actor_user_id=user.pk).count() == before + 1
    assert reads() == []


@pytest.mark.urls(__name__)
@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("en", ["<h1>Access refused</h1>", "Back to the home page", ">Waiting room</a>"]),
        ("fr", ["Retour à l’accueil", ">Salle d’attente</a>"]),
    ],
)
def test_a_refused_page_answers_our_403_without_the_reason_it_was_given(secretary, language, words):
    client = client_for(secretary)
    client.cookies["django_language"] = language
    response = client.get("/refused/")
    assert response.status_code == 403
    body = _page(response)
    assert f'<html lang="{language}">' in body
    for word in words:
        assert word in body
    assert SECRET not in body
    assert "0612345678" not in body
    assert "403 Forbidden" not in body
    translation.activate("en")


def test_a_page_of_another_role_answers_our_403(practitioner):
    """A practitioner opening the front desk's patient list: refused, with their own menu."""
    response = client_for(practitioner).get("/patients/")
    assert response.status_code == 403
    body = _page(response)
    assert "<h1>Access refused</h1>" in body
    assert 'href="/my-day/"' in body
    assert 'href="/patients/"' not in body
    assert reads() == []


def test_a_visitor_refused_by_the_admin_gets_our_403(outsider):
    """An account with no role is refused the admin (practice/admin_site.py): our page."""
    response = client_for(outsider).get("/admin/login/")
    assert response.status_code == 403
    assert "<h1>Access refused</h1>" in _page(response)
