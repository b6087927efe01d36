#!/usr/bin/env python
import os
import sys

# Commands that read no patient data and need no keys: with none configured (a fresh clone, a
# CI lint step), they run with throwaway ones made for this process only.
KEYLESS_COMMANDS = {"makemigrations", "makemessages", "help", "version"}
KEYS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEY", "BLIND_INDEX_KEY", "AUDIT_CHAIN_KEY")


def _throwaway_keys() -> None:
    from practice.keygen import fresh_env

    for line in fresh_env(debug=False).splitlines():
        name, _, value = line.partition("=")
        if name in KEYS and not os.environ.get(name):
            os.environ[name] = value


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 (loads the settings: missing keys stop here)
    except ImproperlyConfigured as exc:
        command = sys.argv[1] if len(sys.argv) > 1 else "help"
        if command not in KEYLESS_COMMANDS or not any(f"{key} is not set" in str(exc) for key in KEYS):
            # Django would swallow this and fail later with "Models aren't loaded yet".
            sys.exit(f"Cabinet cannot start: {exc}")
        _throwaway_keys()
        settings.INSTALLED_APPS  # noqa: B018 (a malformed key still stops here)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
