from django.urls import path

from investigations import views

app_name = "investigations"

urlpatterns = [
    path("patients/<uuid:pk>/", views.patient_access, name="patient_access"),
    path("patients/<uuid:pk>/print/", views.patient_access_print, name="patient_access_print"),
    path("breach-scope/", views.breach_scope_page, name="breach_scope"),
    path("breach-scope/notification-list.csv", views.breach_scope_csv, name="breach_scope_csv"),
    path("anomalies/", views.anomaly_list, name="anomalies"),
    path("anomalies/scan/", views.anomalies_scan_now, name="anomalies_scan"),
    path("anomalies/<int:pk>/", views.anomaly_detail, name="anomaly"),
    path("anomalies/<int:pk>/review/", views.anomaly_review_view, name="anomaly_review"),
    path("reads/", views.read_chart, name="read_chart"),
]
