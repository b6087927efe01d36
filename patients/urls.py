from django.urls import path

from patients import views

app_name = "patients"

urlpatterns = [
    path("", views.patient_list, name="list"),
    path("new/", views.patient_create, name="create"),
    path("export/", views.patient_list_export, name="export_list"),
    path("<uuid:pk>/", views.patient_detail, name="detail"),
    path("<uuid:pk>/edit/", views.patient_edit, name="edit"),
    path("<uuid:pk>/contact/", views.patient_reveal, name="reveal"),
    path("<uuid:pk>/export/", views.patient_export, name="export"),
    path("<uuid:pk>/reason/", views.patient_reason, name="reason"),
    path("<uuid:pk>/emergency-access/", views.patient_break_glass, name="break_glass"),
    path("<uuid:pk>/archive/", views.patient_archive, name="archive"),
    path("<uuid:pk>/restore/", views.patient_restore, name="restore"),
]
