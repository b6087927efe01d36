"""Django's shell, audited: reads are written to the trail as they happen."""

from django.core.management.commands import shell

from audit.management.audited import AuditedCommandMixin


class Command(AuditedCommandMixin, shell.Command):
    # Flush after every decrypted row: an interactive session may end with a kill.
    audit_flush_threshold = 1
