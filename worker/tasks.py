"""Celery tasks. A job carries a campaign id only: no phone, no text, no key ever reaches Redis."""

from __future__ import annotations

import contextlib
import logging
import time

from sqlalchemy.exc import OperationalError

from models.db import get_engine
from worker import stopflags, store, sweep
from worker.app import app
from worker.dispatch import MAX_COUNTDOWN_SECONDS, publish
from worker.limiter import Grant, LimiterUnavailable
from worker.redis_client import get_redis
from worker.sender import BatchResult, Sender, get_sender
from worker.settings import get_settings

log = logging.getLogger("wahero_bulk.tasks")

# How long to keep trying to write outcomes of requests already made (a PostgreSQL restart).
RECORD_DEADLINE_SECONDS = 120.0
# How long a job waits for the shared limiter before it steps back into the queue: long enough
# to ride out a short 429 block, short enough that a warm shutdown stays quick.
ACQUIRE_MAX_WAIT_SECONDS = 10.0
# When Redis (and so the limiter) is unreachable: look again after this long, sending nothing.
LIMITER_DOWN_RETRY_SECONDS = 5.0


@app.task(name="wahero.send_batch", ignore_result=True)
def send_batch(campaign_id: str) -> None:
    """Take slots from the shared limiter, claim that many messages, send, record, chain on."""
    settings = get_settings()
    settings.require_api_key()
    engine = get_engine()
    sender = get_sender(settings)
    # The limiter comes first: a job waiting for it holds no connection and no message.
    try:
        grant = sender.acquire(settings.batch_size, ACQUIRE_MAX_WAIT_SECONDS)
    except LimiterUnavailable:
        log.warning("rate limiter unreachable; nothing sent campaign=%s", campaign_id)
        follow_up(campaign_id, not_before=LIMITER_DOWN_RETRY_SECONDS)
        return
    if grant.count == 0:
        follow_up(campaign_id, not_before=grant.first_wait)
        return
    claim = store.claim(engine, campaign_id, grant.count, sender.owner, settings.lease_seconds)
    _give_back(sender, grant, grant.count - len(claim.messages))
    if claim.messages:
        # PostgreSQL says the campaign runs: an old stop copy in this process no longer holds.
        stopflags.forget_local(campaign_id)
        result = sender.send_claim(claim, grant)
        progress = _record(claim, result)
        if result.change is not None:
            log.warning(
                "campaign %s campaign=%s code=%s",
                result.change.action,
                campaign_id,
                result.change.code,
            )
        follow_up(campaign_id, progress=progress)
        return
    follow_up(campaign_id)


def _give_back(sender: Sender, grant: Grant, unused: int) -> None:
    # Fewer messages were due than slots granted: free the tail of the schedule for others.
    # Without Redis the slots simply go unused.
    with contextlib.suppress(LimiterUnavailable):
        sender.limiter.refund(grant, unused)


def _record(claim: store.Claim, result: BatchResult) -> store.Progress:
    # The requests were made: their outcomes must reach PostgreSQL even across a restart.
    deadline = time.monotonic() + RECORD_DEADLINE_SECONDS
    delay = 0.2
    while True:
        try:
            progress = store.record(
                get_engine(), claim, result.outcomes, result.released, result.change
            )
            break
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            log.warning(
                "database unreachable while recording campaign=%s; retrying", claim.campaign_id
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    sent = sum(1 for o in result.outcomes if o.status == "sent")
    log.info(
        "batch recorded campaign=%s claimed=%d sent=%d other=%d released=%d",
        claim.campaign_id,
        len(claim.messages),
        sent,
        len(result.outcomes) - sent,
        len(result.released),
    )
    return progress


def follow_up(
    campaign_id: str, not_before: float = 0.0, progress: store.Progress | None = None
) -> None:
    """Publish the chain's next job, schedule it for the next due retry, or finish the campaign.

    `not_before` (seconds) delays the next job while the shared limiter has no slot;
    `progress` is the campaign's state if the caller just read it (with its outcomes).
    """
    engine = get_engine()
    if progress is None:
        progress = store.progress(engine, campaign_id)
    if progress.status != "running":
        return
    if progress.next_due is None:
        if store.finish_if_done(engine, campaign_id):
            log.info("campaign completed campaign=%s", campaign_id)
        return
    delay = (progress.next_due - progress.now).total_seconds()
    if not_before > 0 and delay <= not_before:
        # The limiter's wait: the job comes back (at least once a countdown) to ask again.
        publish(
            campaign_id,
            priority=progress.priority,
            countdown=min(not_before, MAX_COUNTDOWN_SECONDS),
        )
    elif delay <= 0:
        publish(campaign_id, priority=progress.priority)
    elif delay <= MAX_COUNTDOWN_SECONDS:
        publish(campaign_id, priority=progress.priority, countdown=delay)
    # Later retries wait in PostgreSQL (next_attempt_at) for the beat tick.


@app.task(name="wahero.tick", ignore_result=True)
def tick() -> None:
    """The beat's periodic pass (see worker.sweep); a second tick at once does nothing."""
    sweep.tick(get_engine(), get_redis(), get_settings())
