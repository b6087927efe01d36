"""Error reports never carry local variables or request bodies: they may hold plaintext."""

from django.views.debug import SafeExceptionReporterFilter


class NoPlaintextExceptionReporterFilter(SafeExceptionReporterFilter):
    def get_traceback_frame_variables(self, request, tb_frame):
        return [("(hidden)", "local variables are not shown: they may hold patient data")]

    def get_post_parameters(self, request):
        if request is None:
            return {}
        return dict.fromkeys(request.POST, self.cleansed_substitute)
