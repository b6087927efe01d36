from django.core.checks import Error, register

from audit.keys import canary_problem


@register()
def keys_match_database(app_configs, **kwargs):
    """A wrong-key deploy fails `check`, `migrate` and `runserver`, not a patient page."""
    problem = canary_problem()
    if problem:
        return [Error(problem, id="audit.E001")]
    return []
