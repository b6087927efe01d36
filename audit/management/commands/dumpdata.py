"""Django's dumpdata, audited and fail-closed: the dump leaves only once its reads are in
the trail. It is built in memory first (a temporary file would put plaintext on disk)."""

import bz2
import gzip
import io
import lzma
import os

from django.core.management.base import OutputWrapper
from django.core.management.commands import dumpdata

from audit import context
from audit.management.audited import AuditedCommandMixin

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}


class Command(AuditedCommandMixin, dumpdata.Command):
    def handle(self, *app_labels, **options):
        output = options.pop("output", None)
        real_stdout, buffer = self.stdout, io.StringIO()
        self.stdout = OutputWrapper(buffer)
        try:
            super().handle(*app_labels, output=None, **options)
        finally:
            self.stdout = real_stdout
        context.require().flush()  # raises if the trail cannot be written: nothing leaves
        if output:
            opener = _OPENERS.get(os.path.splitext(output)[1], open)
            with opener(output, "wt", encoding="utf-8") as stream:
                stream.write(buffer.getvalue())
        else:
            self.stdout.write(buffer.getvalue(), ending="")
