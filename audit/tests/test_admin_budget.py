"""A practice admin's ordinary hour is not blocked: the admin pages, the
day view of today and tomorrow of a 10-practitioner clinic, the waiting room and some records.
With 300/800 (the old default) the second day view blocked the admin, who in a one-admin
practice could then only be unblocked from the shell."""

import datetime

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from audit.models import AuditEvent, EventType, ReadBlock
from config.testing import at, book, client_for, make_doctor, make_patient, make_type, today

PRACTITIONERS = 10
PER_DAY = 25


@pytest.mark.slow
def test_an_hour_of_ordinary_admin_work_is_not_blocked(practice_admin):
    doctors = [make_doctor(User.objects.create_user(f"dr.adm{n}"), f"Dr Adm {n}") for n in range(PRACTITIONERS)]
    kind = make_type(*doctors)
    days = (today(), today() + datetime.timedelta(days=1))
    opened = []
    for day in days:
        for d, doctor in enumerate(doctors):
            for slot in range(PER_DAY):
                patient = make_patient(last_name=f"Adm{day.day:02d}{d}x{slot:02d}", email="", nir="", phone_mobile="")
                start = at(day, 8) + datetime.timedelta(minutes=20 * slot)
                book(doctor, patient, kind, start, force=True)
                if slot == 0:
                    opened.append(patient)
    client = client_for(practice_admin)
    pages = [
        "/admin/",
        "/admin/practice/practitioner/",
        "/admin/scheduling/appointmenttype/",
        "/admin/scheduling/absence/",
        reverse("investigations:anomalies"),
        reverse("investigations:read_chart"),
        *(reverse("scheduling:day", args=[day]) for day in days),
        reverse("scheduling:waiting_room"),
        *(p.get_absolute_url() for p in opened),
        *(reverse("scheduling:day", args=[day]) for day in days),  # reloaded
    ]
    for url in pages:
        assert client.get(url).status_code == 200, url
    read = AuditEvent.objects.filter(event_type=EventType.READ, actor_user_id=practice_admin.pk)
    assert read.values("patient_id").distinct().count() == PRACTITIONERS * PER_DAY * len(days)
    assert not ReadBlock.objects.exists()
