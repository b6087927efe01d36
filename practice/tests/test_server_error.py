"""An error nobody handled answers a page of ours: translated, no trace, no detail."""

import pytest
from django.test import Client
from django.urls import path
from django.utils import translation

from config.urls import urlpatterns as project_urlpatterns


def _broken(request):
    raise RuntimeError("secret detail: Lefèvre 0612345678")


urlpatterns = [path("broken/", _broken), *project_urlpatterns]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize(("language", "title"), [("en", "Something went wrong"), ("fr", "Une erreur s’est produite")])
def test_an_unhandled_error_answers_our_page_in_the_users_language(db, language, title):
    client = Client(raise_request_exception=False, HTTP_ACCEPT_LANGUAGE=language)
    response = client.get("/broken/")
    body = response.content.decode()
    assert response.status_code == 500
    assert title in body
    assert "Server Error (500)" not in body
    assert "secret detail" not in body
    assert "Traceback" not in body
    assert "0612345678" not in body
    translation.activate("en")
