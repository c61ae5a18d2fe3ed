"""Celery tasks. A job carries a campaign id only: no phone, no text, no key ever reaches Redis."""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import OperationalError

from models.db import get_engine
from worker import stopflags, store, sweep
from worker.app import app
from worker.dispatch import MAX_COUNTDOWN_SECONDS, publish
from worker.redis_client import get_redis
from worker.sender import BatchResult, get_sender
from worker.settings import get_settings

log = logging.getLogger("wahero_bulk.tasks")

# How long to keep trying to write outcomes of requests already made (a PostgreSQL restart).
RECORD_DEADLINE_SECONDS = 120.0


@app.task(name="wahero.send_batch", ignore_result=True)
def send_batch(campaign_id: str) -> None:
    """Claim a batch of the campaign's due messages, send them, record outcomes, chain on."""
    settings = get_settings()
    settings.require_api_key()
    engine = get_engine()
    sender = get_sender(settings)
    claim = store.claim(
        engine, campaign_id, settings.batch_size, sender.owner, settings.lease_seconds
    )
    if claim.messages:
        # PostgreSQL says the campaign runs: an old stop copy in this process no longer holds.
        stopflags.forget_local(campaign_id)
        result = sender.send_claim(claim)
        _record(claim, result)
        if result.change is not None:
            log.warning(
                "campaign %s campaign=%s code=%s",
                result.change.action,
                campaign_id,
                result.change.code,
            )
    follow_up(campaign_id)


def _record(claim: store.Claim, result: BatchResult) -> None:
    # The requests were made: their outcomes must reach PostgreSQL even across a restart.
    deadline = time.monotonic() + RECORD_DEADLINE_SECONDS
    delay = 0.2
    while True:
        try:
            store.record(get_engine(), claim, result.outcomes, result.released, result.change)
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


def follow_up(campaign_id: str) -> None:
    """Publish the chain's next job, schedule it for the next due retry, or finish the campaign."""
    engine = get_engine()
    progress = store.progress(engine, campaign_id)
    if progress.status != "running":
        return
    if progress.next_due is None:
        if store.finish_if_done(engine, campaign_id):
            log.info("campaign completed campaign=%s", campaign_id)
        return
    delay = (progress.next_due - progress.now).total_seconds()
    if delay <= 0:
        publish(campaign_id, priority=progress.priority)
    elif delay <= MAX_COUNTDOWN_SECONDS:
        publish(campaign_id, priority=progress.priority, countdown=delay)
    # Later retries wait in PostgreSQL (next_attempt_at) for the beat tick.


@app.task(name="wahero.tick", ignore_result=True)
def tick() -> None:
    """The beat's periodic pass (see worker.sweep); a second tick at once does nothing."""
    sweep.tick(get_engine(), get_redis(), get_settings())
