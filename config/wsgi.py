import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

# A wrong-key deploy must fail at start, not show garbage: gunicorn runs no system checks.
from audit.keys import verify_keys_or_exit  # noqa: E402

verify_keys_or_exit()
