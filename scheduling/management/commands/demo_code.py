"""Print the current second-factor code of a demo account: `manage.py demo_code secretary`.

A convenience for people trying the demo without an authenticator app, not a bypass: it
answers only for the accounts `seed_demo` creates, and only from the authenticator
`seed_demo` gave them (named "demo"). An account enrolled with its own authenticator, or
any other account, is refused.

The code goes to stdout alone (scripts read it; the smoke test calls this command); how long
it stays valid goes to stderr. It skips the system checks: they were a fifth of its time.
"""

import time

from django.contrib.auth.models import User
from django.core.management.base import CommandError
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.management.audited import AuditedCommand
from scheduling.management.commands.seed_demo import DEMO_DEVICE, USERS


class Command(AuditedCommand):
    help = "Print the current TOTP code of a demo account (from seed_demo's authenticator only)."
    # The system checks (every URL and view imported, the key canary) guard what reads patient
    # data; this reads one authenticator and no patient, and answers faster without them.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("username", help="one of: " + ", ".join(spec.username for spec in USERS))

    def handle(self, *args, username, **options):
        if username not in {spec.username for spec in USERS}:
            raise CommandError(f"{username} is not a demo account: demo_code only answers for seed_demo's accounts.")
        user = User.objects.filter(username=username).first()
        devices = list(TOTPDevice.objects.filter(user=user, confirmed=True)) if user else []
        if [device.name for device in devices] != [DEMO_DEVICE]:
            raise CommandError(
                f"{username} has no authenticator from seed_demo (run `manage.py seed_demo`); "
                "an account enrolled with its own authenticator uses that one."
            )
        device = devices[0]
        now = time.time()
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
        totp.time = now
        seconds = device.step - int(now - device.t0) % device.step
        self.stdout.write(f"{totp.token():0{device.digits}d}")
        if totp.t() <= device.last_t:
            # django-otp accepts each code once: this one has been used to log in already.
            self.stderr.write(f"This code has been used already: a new one comes in {seconds} seconds.")
        else:
            self.stderr.write(f"Valid for {seconds} more seconds.")
