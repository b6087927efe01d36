"""Emergency accesses in Django admin name their patient. The name is a read like any other: in
the request's audit context, explained before it is decrypted (here by an appointment) or paid
from the practice admin's allowance, one batch for the whole page."""

import datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AllowanceUse
from config.testing import (
    at,
    book,
    client_for,
    make_patient,
    make_practitioner,
    make_type,
    patient_key,
    read_map,
    reads,
    today,
)
from patients.admin import GRANTS_PER_PAGE
from patients.models import BreakGlassGrant
from patients.services import break_glass_open

CHANGELIST = reverse("admin:patients_breakglassgrant_changelist")
NAMES = {"last_name", "first_names"}
REASON = "Called by the emergency department at night"


def _grant(doctor, **patient):
    """An emergency access of Dr Third to a new patient (no appointment with him)."""
    someone = make_patient(email="", nir="", phone_mobile="", **patient)
    return break_glass_open(user=doctor.user, patient=someone, reason=REASON)


def _booked(grant, kind, doctor):
    """The grant's patient has an appointment (with Dr Test) in the coming weeks, a day of its
    own: it explains a read by the front desk and by a practice admin, who work for every
    practitioner."""
    day = today() + datetime.timedelta(days=1 + BreakGlassGrant.objects.count())
    book(doctor, grant.patient, kind, at(day, 9), force=True)


def test_the_list_names_each_patient_explained_or_paid_from_the_allowance(practice_admin):
    third, other = make_practitioner("dr.third"), make_practitioner("dr.test")
    kind = make_type(other)
    seen = _grant(third, last_name="Lefèvre", first_names="Anne-Marie")
    _booked(seen, kind, other)
    unseen = _grant(third, last_name="Garnier", first_names="Hugo")

    response = client_for(practice_admin).get(CHANGELIST)

    assert response.status_code == 200
    body = response.content.decode()
    assert "LEFÈVRE Anne-Marie" in body
    assert "GARNIER Hugo" in body
    assert str(unseen.patient_id) in body  # the id too: what the breach scope and reports use
    assert read_map(path=CHANGELIST) == {patient_key(seen.patient): NAMES, patient_key(unseen.patient): NAMES}
    why = {r.patient_id: (r.explanation, r.actor_user_id, r.actor_role) for r in reads(path=CHANGELIST)}
    assert why == {
        seen.patient_id: ("appointment", practice_admin.pk, "Practice admin"),
        unseen.patient_id: ("unexplained", practice_admin.pk, "Practice admin"),
    }
    paid = AllowanceUse.objects.filter(user_id=practice_admin.pk, kind="unexplained")
    assert list(paid.values_list("patient_id", flat=True)) == [unseen.patient_id]


def test_the_grants_own_page_names_its_patient(practice_admin):
    grant = _grant(make_practitioner("dr.third"), last_name="Garnier", first_names="Hugo")
    url = reverse("admin:patients_breakglassgrant_change", args=[grant.pk])

    body = client_for(practice_admin).get(url).content.decode()

    assert "GARNIER Hugo" in body
    assert REASON in body
    assert read_map(path=url) == {patient_key(grant.patient): NAMES}
    assert [r.explanation for r in reads(path=url)] == ["unexplained"]


def test_a_page_of_grants_costs_the_same_queries_whatever_its_rows(practice_admin):
    """One query loads the page's patients, one explains them all: not one per row."""
    third, other = make_practitioner("dr.third"), make_practitioner("dr.test")
    kind = make_type(other)
    client = client_for(practice_admin)

    def page(grants: int) -> tuple[int, str]:
        """After `grants` more grants: the page's queries, and its request id."""
        for n in range(grants):
            _booked(_grant(third, last_name=f"Patient{grants}x{n}", first_names="Zoé"), kind, other)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(CHANGELIST)
        assert response.status_code == 200
        return len(captured.captured_queries), response["X-Request-ID"]

    page(0)  # the session's first request
    two, _request = page(2)
    full, request = page(GRANTS_PER_PAGE - 2)  # a full page: 20 grants, 20 patients named
    assert full == two
    assert read_map(request_id=request) == {patient_key(g.patient): NAMES for g in BreakGlassGrant.objects.all()}
    assert {r.explanation for r in reads(request_id=request)} == {"appointment"}


def test_a_page_stays_under_the_practice_admins_hourly_allowance(settings):
    assert settings.READ_ALLOWANCES["Practice admin"][0] > GRANTS_PER_PAGE
