from django.contrib.admin.apps import AdminConfig


class CabinetAdminConfig(AdminConfig):
    """Installed instead of django.contrib.admin, so ``admin.site`` is practice.admin_site's."""

    default_site = "practice.admin_site.CabinetAdminSite"
