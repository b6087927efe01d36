from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SchedulingConfig(AppConfig):
    name = "scheduling"
    verbose_name = _("Scheduling")

    def ready(self):
        # Imports here, not at the top: models and the apps below are only ready now.
        from patients.access import care_source_register
        from patients.exports import export_section_register
        from patients.panels import record_panel_register
        from patients.signals import reminder_details_changed
        from scheduling import explainers
        from scheduling.access import treats
        from scheduling.exports import APPOINTMENTS
        from scheduling.record import APPOINTMENTS_PANEL
        from scheduling.reminders import reminders_replan_on_change

        explainers.register()  # why its data explains a read (audit/explain.py)
        care_source_register(treats)  # a practitioner's own patients: those with an appointment
        export_section_register(APPOINTMENTS)  # a right-of-access export lists the appointments
        record_panel_register(APPOINTMENTS_PANEL)  # the patient's record lists their appointments
        reminder_details_changed.connect(reminders_replan_on_change, dispatch_uid="scheduling.reminders_replan")
