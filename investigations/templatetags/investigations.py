from django import template

from audit.models import Anomaly
from investigations.anomalies import anomaly_summary

register = template.Library()


@register.filter
def summary(anomaly: Anomaly) -> str:
    """A finding's summary in the active language (``Anomaly.summary`` keeps the words of the
    scan, in the practice's language, as the alert mail said them)."""
    return anomaly_summary(anomaly)
