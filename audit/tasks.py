"""Background work of the audit trail: the head export, the nightly check and the purge of
the read limits' bookkeeping.

Beat names these tasks in ``CELERY_BEAT_SCHEDULE`` (config/settings.py). Each runs in an
audit context of its own (``system:<task>``, config/celery.py) and decrypts nothing. They
hold no logic: each calls the function that does the work.
"""

from __future__ import annotations

import logging

from celery import shared_task

from audit import chain
from audit.budget import read_tally_purge as tallies_purge
from audit.explain import allowance_purge
from audit.trail_check import trail_check_nightly

logger = logging.getLogger(__name__)


@shared_task
def audit_head_export() -> dict:
    """Export the trail's head (last row's id and MAC) as one log line, every five minutes.

    The line goes to the ``audit.heads`` logger (``audit.chain.head_export``), which the
    deployment ships where the database's users cannot write (docs/operations.md);
    ``manage.py audit_verify --head-file`` compares the trail with every exported head. Five
    minutes is how long rows cut from the tail, together with the chain's tip, can go
    unnoticed. Reads two values; writes nothing to the database.
    """
    head_id, mac = chain.head_export()
    return {"max_id": head_id, "head_mac": mac}


@shared_task
def audit_verify_nightly(full: bool = False) -> dict:
    """Check the keys and the trail; record the trail's head, log it, and alert on trouble
    (``audit.trail_check.trail_check_nightly`` says what it catches and what it does not)."""
    return trail_check_nightly(full=full)


@shared_task
def read_tally_purge() -> dict:
    """Delete what the read limits no longer look at, nightly: read tallies (audit/budget.py)
    whose last read left the budget's day, and allowance uses (audit/explain.py) older than a
    day. The counts deleted, logged.

    Neither looks further back than 24 hours; the trail keeps the reads themselves.
    """
    tallies = tallies_purge()
    allowance_uses = allowance_purge()
    logger.info("Read tallies purged: %d; allowance uses purged: %d", tallies, allowance_uses)
    return {"tallies": tallies, "allowance_uses": allowance_uses}
