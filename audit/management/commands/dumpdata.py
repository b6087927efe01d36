"""Django's dumpdata, audited: every decrypted value it writes out is in the trail."""

from django.core.management.commands import dumpdata

from audit.commands import AuditedCommandMixin


class Command(AuditedCommandMixin, dumpdata.Command):
    pass
