from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def _ensure_canary(sender, **kwargs):
    from audit.keys import canary_write
    from audit.models import KeyCanary

    if not KeyCanary.objects.filter(pk=1).exists():
        canary_write()


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = _("Audit trail")

    def ready(self):
        from audit import checks, explain, signals  # noqa: F401  (registers checks, explainers, receivers)

        post_migrate.connect(_ensure_canary, sender=self, dispatch_uid="audit.ensure_canary")
