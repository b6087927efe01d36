"""The front desk, written once (practice.roles.is_front_desk): who it is, for every role."""

import pytest
from django.contrib.auth.models import AnonymousUser, User

from practice.roles import FRONT_DESK_ROLES, PRACTICE_ADMIN, SECRETARY, is_front_desk


@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("secretary", True),
        ("practice_admin", True),
        ("practitioner", False),
        ("outsider", False),
    ],
)
def test_it_names_the_front_desk_for_each_role(persona, expected, request):
    assert is_front_desk(request.getfixturevalue(persona)) is expected


def test_it_counts_a_superuser_and_never_an_anonymous_visitor(db):
    assert is_front_desk(User.objects.create_superuser("root", password="x" * 20)) is True
    assert is_front_desk(AnonymousUser()) is False


def test_it_is_the_secretaries_and_the_practice_admins():
    assert frozenset({SECRETARY, PRACTICE_ADMIN}) == FRONT_DESK_ROLES
