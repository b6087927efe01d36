import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()

from audit.keys import verify_keys_or_exit  # noqa: E402

verify_keys_or_exit()
