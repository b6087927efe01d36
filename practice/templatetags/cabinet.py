"""The project's template filters."""

import datetime
import math

from django import template
from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.template.defaultfilters import date as date_filter
from django.template.defaultfilters import time as time_filter

from practice.roles import role_label

register = template.Library()


@register.filter
def minutes(value: datetime.timedelta | None) -> int:
    """Whole minutes of a duration, rounded up (a lockout of 14m30s reads as 15 minutes)."""
    if not value:
        return 0
    return math.ceil(value.total_seconds() / 60)


@register.filter
def role(value: str) -> str:
    """The translated label of a role name stored in the trail or on a group."""
    return role_label(value)


@register.filter
def field_labels(names, model_label: str) -> str:
    """Field names recorded in the trail, as the model's (translated) verbose names."""
    try:
        model = apps.get_model(model_label)
    except (LookupError, ValueError):
        return ", ".join(names)
    labels = []
    for name in names:
        try:
            labels.append(str(model._meta.get_field(name).verbose_name))
        except FieldDoesNotExist:  # a field removed since the event: show its name
            labels.append(name)
    return ", ".join(labels)


@register.filter(expects_localtime=True)
def short_datetime(value: datetime.datetime | None) -> str:
    """A moment as the short date of the language and the time on 24 hours ("03/04/2030 14:30",
    "04/03/2030 14:30"), in the current time zone. Django's SHORT_DATETIME_FORMAT ends an
    English time with "p.m.", which doubles the full stop of a sentence ending with it."""
    if not value:
        return ""
    return f"{date_filter(value, 'SHORT_DATE_FORMAT')} {time_filter(value, 'H:i')}"
