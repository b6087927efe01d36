"""Management commands run inside an audit context naming the command."""

from django.core.management.base import BaseCommand

from audit.context import system_context


class AuditedCommandMixin:
    """Opens `system:command:<name>` around the command; its reads are written when it ends
    (or earlier, in batches, when many rows are read)."""

    audit_flush_threshold: int | None = None

    def execute(self, *args, **options):
        name = self.__class__.__module__.rsplit(".", 1)[-1]
        with system_context(f"command:{name}", flush_threshold=self.audit_flush_threshold):
            return super().execute(*args, **options)


class AuditedCommand(AuditedCommandMixin, BaseCommand):
    pass
