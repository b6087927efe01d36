"""The reads chart: distinct patients read per account and hour, and per day over a month.

Counts from the trail only (one aggregate query each, on the (event type, time) index); the
chart is server-rendered SVG (no script: the CSP allows none inline, and none is needed).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Max
from django.db.models.functions import TruncDate, TruncHour
from django.utils import timezone

from audit.budget import budget_for_role
from investigations.anomalies import HOUR, p95, reads_between
from investigations.reports import unexplained_per_hour


@dataclass
class HourlyReads:
    """Distinct patients read per account and clock hour over one day of the practice."""

    day: datetime.date
    hours: list[datetime.datetime]  # each hour's start (aware, practice time), 23 to 25 of them
    users: list[dict]  # {"user_id", "username", "role", "counts": [per hour], "total_max"}


def reads_per_hour(*, day: datetime.date) -> HourlyReads:
    """One aggregate query on the (event type, time) index: per account and hour of ``day``
    (practice time), the distinct patients whose data it decrypted."""
    zone = timezone.get_default_timezone()
    start = datetime.datetime.combine(day, datetime.time(0), tzinfo=zone)
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(0), tzinfo=zone)
    hours = []
    moment = start.astimezone(datetime.UTC)
    while moment < end:
        hours.append(moment.astimezone(zone))
        moment += HOUR
    index = {hour.astimezone(datetime.UTC): n for n, hour in enumerate(hours)}
    rows = (
        reads_between(start, end)
        .annotate(hour=TruncHour("occurred_at", tzinfo=datetime.UTC))
        .values("actor_user_id", "hour")
        .annotate(n=Count("patient_id", distinct=True), username=Max("actor_username"), role=Max("actor_role"))
        .order_by()
    )
    users: dict[int | None, dict[str, Any]] = {}
    for row in rows:
        user = users.setdefault(
            row["actor_user_id"],
            {"user_id": row["actor_user_id"], "username": row["username"], "role": row["role"], "counts": None},
        )
        if user["counts"] is None:
            user["counts"] = [0] * len(hours)
        position = index.get(row["hour"].astimezone(datetime.UTC))
        if position is not None:
            user["counts"][position] = row["n"]
    ordered = sorted(users.values(), key=lambda user: (-max(user["counts"]), user["username"]))
    return HourlyReads(day=day, hours=hours, users=ordered)


def daily_distribution(*, last_day: datetime.date, days: int = 30) -> list[dict]:
    """Per account, its distinct patients per day (practice time) over ``days`` days ending with
    ``last_day``: the largest day, the 95th percentile and the median of its active days. What a
    practice sizes its read budgets from (docs/read-budgets.md)."""
    zone = timezone.get_default_timezone()
    first = last_day - datetime.timedelta(days=days - 1)
    start = datetime.datetime.combine(first, datetime.time(0), tzinfo=zone)
    end = datetime.datetime.combine(last_day + datetime.timedelta(days=1), datetime.time(0), tzinfo=zone)
    rows = (
        reads_between(start, end)
        .annotate(day=TruncDate("occurred_at", tzinfo=zone))
        .values("actor_user_id", "day")
        .annotate(n=Count("patient_id", distinct=True), username=Max("actor_username"), role=Max("actor_role"))
        .order_by()
    )
    users: dict[int | None, dict[str, Any]] = {}
    for row in rows:
        user = users.setdefault(row["actor_user_id"], {"username": row["username"], "role": row["role"], "counts": []})
        user["counts"].append(row["n"])
    result = []
    for user in users.values():
        counts = sorted(user["counts"])
        middle = len(counts) // 2
        median = counts[middle] if len(counts) % 2 else (counts[middle - 1] + counts[middle]) / 2
        result.append(
            {
                "username": user["username"],
                "role": user["role"],
                "days": len(counts),
                "max": counts[-1],
                "p95": p95(counts),
                "median": median,
            }
        )
    return sorted(result, key=lambda user: (-user["max"], user["username"]))


CHART_WIDTH, CHART_HEIGHT = 880, 320
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 52, 16, 30, 44
CHART_SERIES_STYLES = 8  # series-0 .. series-7 in static/css/audit.css, then dashed


def nice_ceiling(value: int) -> tuple[int, int]:
    """(axis maximum, tick step): a round number at or above ``value``, in five steps or so."""
    if value <= 5:
        return 5, 1
    magnitude = 10 ** math.floor(math.log10(value / 5))
    for factor in (1, 2, 5, 10):
        step = factor * magnitude
        if step * 5 >= value:
            return math.ceil(value / step) * step, step
    return value, max(value // 5, 1)


def chart_geometry(hourly: HourlyReads) -> dict:
    """Coordinates for templates/investigations/_read_chart.svg.html: axes, ticks, one polyline per user."""
    plot_width = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    slots = max(len(hourly.hours), 1)
    top = max((max(user["counts"]) for user in hourly.users), default=0)
    y_max, y_step = nice_ceiling(top)

    def x(position: int) -> float:
        return round(CHART_LEFT + (position + 0.5) * plot_width / slots, 1)

    def y(value: int) -> float:
        return round(CHART_TOP + plot_height - value * plot_height / y_max, 1)

    bottom = CHART_TOP + plot_height
    y_ticks = [{"value": v, "y": y(v)} for v in range(0, y_max + 1, y_step)]
    x_ticks = [
        {"label": hour.strftime("%H"), "x": x(n), "full": hour.strftime("%H:%M")} for n, hour in enumerate(hourly.hours)
    ]
    series = []
    for n, user in enumerate(hourly.users):
        css = f"series-{n % CHART_SERIES_STYLES}" + (" dashed" if n >= CHART_SERIES_STYLES else "")
        points = [
            {"x": x(i), "y": y(count), "count": count, "hour": x_ticks[i]["full"]}
            for i, count in enumerate(user["counts"])
        ]
        series.append(
            {
                **user,
                "css": css,
                "points": points,
                "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
                "peak": max(user["counts"]),
                "total_hours": sum(1 for count in user["counts"] if count),
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - CHART_RIGHT,
        "top": CHART_TOP,
        "bottom": bottom,
        "label_y": bottom + 18,
        "title_y": CHART_HEIGHT - 4,
        "y_label_x": CHART_LEFT - 8,
        "y_title_y": CHART_TOP - 14,
        "center_x": CHART_LEFT + plot_width / 2,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
        "series": series,
    }


def read_chart_data(day: datetime.date) -> tuple[dict, list[dict]]:
    """The reads chart of ``day`` (its geometry, with each user's unexplained patients per hour)
    and each user's daily distribution over the 30 days up to it, beside their role's budget."""
    hourly = reads_per_hour(day=day)
    chart = chart_geometry(hourly)
    unexplained = unexplained_per_hour(hours=hourly.hours)
    for series in chart["series"]:
        counts = unexplained.get(series["user_id"]) or [0] * len(hourly.hours)
        series["unexplained"] = counts
        for point, count in zip(series["points"], counts, strict=True):
            point["unexplained"] = count
        series["unexplained_total"] = sum(counts)
    distribution = daily_distribution(last_day=day)
    for user in distribution:
        user["budget_hour"], user["budget_day"] = budget_for_role(user["role"])
    chart["any_unexplained"] = any(series["unexplained_total"] for series in chart["series"])
    return chart, distribution
