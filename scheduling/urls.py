from django.urls import path, register_converter

from scheduling import agenda_views, views
from scheduling.forms import parse_day


class AgendaDateConverter:
    """yyyy-mm-dd within the agenda's reach; anything else (2026-02-30, 0000-01-01) is a 404."""

    regex = r"\d{4}-\d{2}-\d{2}"

    def to_python(self, value: str):
        return parse_day(value)  # ValueError: the URL does not match

    def to_url(self, value) -> str:
        # Templates may pass a formatted string ({% url ... appt.start|date:"Y-m-d" %}).
        return value if isinstance(value, str) else value.isoformat()


register_converter(AgendaDateConverter, "agendadate")

app_name = "scheduling"

urlpatterns = [
    path("agenda/", views.day_view, name="today"),
    path("agenda/colours.css", views.colours_css, name="colours"),
    path("agenda/free-slots/", views.free_slots, name="free_slots"),
    path("agenda/<agendadate:day>/", views.day_view, name="day"),
    path("agenda/<agendadate:day>/practitioner/<int:pk>/print/", views.print_day, name="print_day"),
    path("agenda/<agendadate:day>/print/", agenda_views.print_all, name="print_all"),
    path("agenda/practitioner/<int:pk>/week/", views.week_view, name="this_week"),
    path("agenda/practitioner/<int:pk>/week/<agendadate:day>/", views.week_view, name="week"),
    path("my-day/", views.my_day, name="my_day"),
    path("waiting-room/", views.waiting_room, name="waiting_room"),
    path("appointments/new/", views.book, name="book"),
    path("appointments/<uuid:pk>/", views.appointment_detail, name="appointment"),
    path("appointments/<uuid:pk>/move/", views.appointment_move, name="move"),
    path("appointments/<uuid:pk>/type/", views.appointment_change_type, name="change_type"),
    path("appointments/<uuid:pk>/cancel/", views.appointment_cancel, name="cancel"),
    path("appointments/<uuid:pk>/status/", views.appointment_status, name="status"),
    path("appointments/<uuid:pk>/drag-move/", agenda_views.appointment_drag_move, name="drag_move"),
]
