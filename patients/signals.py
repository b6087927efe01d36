"""What the patients app announces to the apps that stand on it.

``reminder_details_changed``: a patient's consent to reminders, mobile phone or e-mail
changed, or the patient was archived or restored. Sent inside the change's transaction, with
``patient``; the scheduling app re-plans the patient's reminders on it (scheduling/apps.py).
"""

from django.dispatch import Signal

reminder_details_changed = Signal()
