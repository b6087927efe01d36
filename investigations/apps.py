from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InvestigationsConfig(AppConfig):
    """Reads the whole trail for the practice admins: access reports, breach scope, anomaly
    signals, the reads chart and the security alert mails. Stands on every other app; none
    stands on it."""

    name = "investigations"
    verbose_name = _("Investigations")

    def ready(self):
        # The core writes the events; this app mails the ones worth waking an admin for.
        from audit.services import event_hook_register
        from investigations.alerts import ALERT_EVENT_TYPES
        from investigations.tasks import security_alert_schedule

        event_hook_register(ALERT_EVENT_TYPES, security_alert_schedule)
