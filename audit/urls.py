from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("patients/<uuid:pk>/", views.patient_access, name="patient_access"),
]
