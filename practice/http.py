"""The request of a page behind ``login_required``, for the type checker."""

from django.contrib.auth.models import User
from django.http import HttpRequest


class AuthenticatedHttpRequest(HttpRequest):
    """A request whose user is an account, never anonymous: what ``login_required`` lets
    through. An annotation only: Django still hands the views plain ``HttpRequest`` objects."""

    user: User
