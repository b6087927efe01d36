#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "practice.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 (loads the settings: missing keys stop here)
    except ImproperlyConfigured as exc:
        # Django would swallow this and fail later with "Models aren't loaded yet".
        sys.exit(f"Cabinet cannot start: {exc}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
