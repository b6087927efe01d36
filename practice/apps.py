from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def _sync_roles(sender, using="default", **kwargs):
    from django.contrib.auth.management import create_permissions

    from practice.roles import roles_sync

    if sender is not list(apps.get_app_configs())[-1]:
        return  # post_migrate is sent once per app: sync once, after the last one.
    # Permissions come from another post_migrate receiver that may not have run yet.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using)
    roles_sync()


class PracticeConfig(AppConfig):
    name = "practice"
    verbose_name = _("Practice")

    def ready(self):
        from audit.context import role_source_register
        from practice import bidi
        from practice.roles import role_of

        role_source_register(role_of)  # the audit core names each reader's role with it
        bidi.install()  # every form's text fields drop bidi control characters (practice/bidi.py)
        post_migrate.connect(_sync_roles, dispatch_uid="practice.sync_roles")
