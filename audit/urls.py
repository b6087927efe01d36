from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("patients/<uuid:pk>/", views.patient_access, name="patient_access"),
    path("patients/<uuid:pk>/print/", views.patient_access_print, name="patient_access_print"),
    path("breach-scope/", views.breach_scope_page, name="breach_scope"),
    path("breach-scope/notification-list.csv", views.breach_scope_csv, name="breach_scope_csv"),
]
