"""Building blocks for scheduling tests: a practitioner with hours, a type, a booking."""

import datetime
import zoneinfo

from django.contrib.auth.models import Group, User

from audit.context import system_context
from practice.models import Practitioner, Specialty
from practice.roles import PRACTITIONER
from scheduling import services
from scheduling.models import AppointmentType, Weekday, WorkingHours

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def paris(year, month, day, hour=0, minute=0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=PARIS)


def make_practitioner(username="dr.test", *, hours=((9, 0, 12, 0), (14, 0, 18, 0)), days=range(0, 6)) -> Practitioner:
    user = User.objects.filter(username=username).first() or User.objects.create_user(username, password="x" * 20)
    user.groups.add(Group.objects.get_or_create(name=PRACTITIONER)[0])
    specialty, _ = Specialty.objects.get_or_create(name="Médecine générale")
    practitioner = Practitioner.objects.create(user=user, display_name=f"Dr {username}", specialty=specialty)
    for weekday in days:
        for h1, m1, h2, m2 in hours:
            WorkingHours.objects.create(
                practitioner=practitioner,
                weekday=Weekday(weekday),
                start_time=datetime.time(h1, m1),
                end_time=datetime.time(h2, m2),
            )
    return practitioner


def make_type(*practitioners, minutes=20, name="Consultation") -> AppointmentType:
    appointment_type = AppointmentType.objects.create(name=name, duration_minutes=minutes, colour="#3366cc")
    appointment_type.practitioners.set(practitioners)
    return appointment_type


def book(practitioner, patient, appointment_type, start, **kwargs):
    with system_context("tests"):
        return services.appointment_book(
            practitioner=practitioner,
            patient=patient,
            appointment_type=appointment_type,
            start=start,
            actor=None,
            **kwargs,
        )
