"""The key a form carries so that sending it twice acts once (scheduling/forms.py checks it;
practice.models.FormSubmission keeps what it did). Its own module: the agenda grid renders
keys for its one-click buttons without importing the forms."""

import secrets


def submission_key_new() -> str:
    """A fresh key for a form (192 random bits, 32 URL-safe characters)."""
    return secrets.token_urlsafe(24)
