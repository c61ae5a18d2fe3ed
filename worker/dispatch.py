"""Publishing jobs: a job names a campaign only; it claims its messages in PostgreSQL.

Each campaign runs as a few chains of jobs: a job sends one batch and publishes the next, so
campaigns interleave in the queue and no campaign holds the workers for hours.
"""

from __future__ import annotations

import logging

from worker.settings import get_settings

log = logging.getLogger("wahero_bulk.dispatch")

# Delays up to this long are Celery countdowns; longer ones wait in PostgreSQL for the beat tick.
MAX_COUNTDOWN_SECONDS = 60.0


def queue_for(priority: int) -> str:
    """High-priority campaigns go to their own queue, which workers consume first."""
    return "wahero.high" if priority > 0 else "wahero"


def publish(
    campaign_id: str, *, priority: int = 0, countdown: float | None = None, jobs: int = 1
) -> bool:
    """Publish `jobs` send jobs for the campaign; False (logged) when the broker is unreachable."""
    from worker.tasks import send_batch

    try:
        for _ in range(jobs):
            send_batch.apply_async(
                args=[campaign_id],
                queue=queue_for(priority),
                countdown=countdown,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2},
            )
    except Exception as error:  # the broker's errors vary by transport
        # Nothing is lost: the messages are pending in PostgreSQL; the beat tick republishes.
        log.warning("publish failed campaign=%s error=%s", campaign_id, type(error).__name__)
        return False
    return True


def start_campaign(campaign_id: str, *, priority: int = 0) -> bool:
    """Publish the first jobs of a running campaign."""
    return publish(campaign_id, priority=priority, jobs=get_settings().jobs_per_campaign)
