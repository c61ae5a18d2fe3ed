"""The shared rate limit end to end: real workers, Redis, PostgreSQL, a rate-limiting simulator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.simfixture import SimProcess
from tests.test_pipeline import (
    INSTANCE,
    assert_sent_matches_received,
    received_phones,
    recipients,
    worker_env,
)
from tests.workerproc import Workers, counts, wait_for, wait_status
from worker.producer import enqueue_campaign
from worker.redis_client import get_redis
from worker.settings import get_settings
from worker.sweep import tick


def sent(engine: sa.Engine, campaign_id: Any) -> int:
    return counts(engine, campaign_id).get("sent", 0)


def rate_of(sim: SimProcess) -> tuple[float, float]:
    """(accepted per second, seconds) between the first and last accepted message."""
    from datetime import datetime

    stamps = sorted(datetime.fromisoformat(m["at"]) for m in sim.received())
    span = (stamps[-1] - stamps[0]).total_seconds()
    return (len(stamps) - 1) / span, span


def campaign_row(engine: sa.Engine, campaign_id: Any) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT status, halt_code, paused_until, now() AS now FROM campaigns WHERE id = :id"
            ),
            {"id": campaign_id},
        ).one()


@pytest.mark.slow
def test_three_workers_share_the_limit_exactly_with_no_429(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(rate_limit=20, rate_window=1.0)
    env = worker_env(sim, WAHERO_RATE_LIMIT="20/s")
    started = [workers.start(env, ready=False) for _ in range(3)]
    wait_for(lambda: all(" ready." in w.log() for w in started), 60, message="workers ready")
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(500))
    wait_status(db, result.campaign_id, "completed", timeout=90)
    assert counts(db, result.campaign_id) == {"sent": 500}
    assert_sent_matches_received(db, result.campaign_id, sim)
    assert sim.stats()["by_status"].get("429", 0) == 0
    achieved, span = rate_of(sim)
    assert span >= 20
    assert achieved == pytest.approx(20, rel=0.10)
    # All three shared the work: each worker process sent some of it.
    with db.connect() as conn:
        owners = conn.scalar(sa.text("SELECT count(DISTINCT key_fingerprint) FROM attempts"))
    assert owners == 1  # one key, so one schedule
    assert all("batch recorded" in w.log() for w in workers.started)


@pytest.mark.slow
def test_a_limit_above_wahero_adapts_with_a_handful_of_429s(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(rate_limit=20, rate_window=1.0)
    env = worker_env(sim, WAHERO_RATE_LIMIT="60/s", WAHERO_MAX_ATTEMPTS="2")
    workers.start(env)
    workers.start(env)
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(200))
    wait_status(db, result.campaign_id, "completed", timeout=60)
    # A 429 never counts as an attempt: even with 2 attempts allowed, everything is sent once.
    assert counts(db, result.campaign_id) == {"sent": 200}
    assert_sent_matches_received(db, result.campaign_id, sim)
    assert sim.stats()["by_status"].get("429", 0) <= 5
    achieved, _ = rate_of(sim)
    assert achieved == pytest.approx(20, rel=0.15)  # Wahero's 20/s, not our 60/s
    logs = "".join(w.log() for w in workers.started)
    assert logs.count("below WAHERO_RATE_LIMIT") == 1  # adopted once, by one worker, for all


@pytest.mark.slow  # waits out a real (short) quota day
def test_a_spent_daily_quota_pauses_the_campaign_until_the_reset(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(daily_quota=30, quota_day_seconds=5)
    workers.start(worker_env(sim, WAHERO_RATE_LIMIT="100/s"))
    sim.reset_quota()  # the quota day starts now, with the worker ready
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(50))
    wait_status(db, result.campaign_id, "paused", timeout=15)
    row = campaign_row(db, result.campaign_id)
    assert row.halt_code == "QUOTA_EXCEEDED"
    assert row.paused_until is not None
    assert timedelta(0) < row.paused_until - row.now <= timedelta(seconds=6)
    wait_for(lambda: counts(db, result.campaign_id).get("sending", 0) == 0, 10)
    assert len(sim.received()) == 30
    refused = sim.stats()["by_status"].get("429", 0)
    assert 1 <= refused <= 8  # no more than was in flight
    by_status = counts(db, result.campaign_id)
    assert by_status == {"sent": 30, "pending": 20}
    # Nothing is sent while paused; then the quota day rolls over and the tick resumes it.
    wait_for(lambda: campaign_row(db, result.campaign_id).now > row.paused_until, 10)
    sim.reset_quota()
    report = tick(db, get_redis(), get_settings(), now=row.paused_until + timedelta(seconds=1))
    assert report.resumed == [str(result.campaign_id)]
    wait_status(db, result.campaign_id, "completed", timeout=30)
    assert counts(db, result.campaign_id) == {"sent": 50}
    assert_sent_matches_received(db, result.campaign_id, sim)


def test_remaining_zero_with_a_far_reset_pauses_before_any_refusal(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    # 20 per hour: the 20th answer says Remaining 0 with the reset an hour away, like a spent day.
    sim = sim_process(rate_limit=20, rate_window=3600, rate_window_kind="sliding")
    workers.start(worker_env(sim, WAHERO_RATE_LIMIT="10/s"))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(40))
    wait_status(db, result.campaign_id, "paused", timeout=20)
    wait_for(lambda: counts(db, result.campaign_id).get("sending", 0) == 0, 10)
    row = campaign_row(db, result.campaign_id)
    assert row.halt_code == "QUOTA_EXCEEDED"
    assert timedelta(minutes=55) < row.paused_until - row.now <= timedelta(minutes=61)
    assert len(sim.received()) == 20
    assert sim.stats()["by_status"].get("429", 0) == 0
    assert counts(db, result.campaign_id) == {"sent": 20, "pending": 20}
    sim.configure(rate_limit=0)  # a new day at Wahero
    report = tick(db, get_redis(), get_settings(), now=row.paused_until + timedelta(seconds=1))
    assert report.resumed == [str(result.campaign_id)]
    wait_status(db, result.campaign_id, "completed", timeout=30)
    assert_sent_matches_received(db, result.campaign_id, sim)


def sent_order(engine: sa.Engine) -> list[tuple[str, Any]]:
    """(campaign id, sent_at) of every sent message, in sending order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT campaign_id, sent_at FROM messages WHERE status = 'sent' ORDER BY sent_at"
            )
        ).all()
    return [(str(r.campaign_id), r.sent_at) for r in rows]


def test_a_small_campaign_is_not_held_behind_a_large_one(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process()
    workers.start(worker_env(sim, WAHERO_RATE_LIMIT="50/s"))
    large = enqueue_campaign(instance_id=INSTANCE, message="L", recipients=recipients(300))
    small = enqueue_campaign(
        instance_id=INSTANCE, message="S", recipients=recipients(30, start=5000)
    )
    wait_status(db, small.campaign_id, "completed", timeout=30)
    large_sent = sent(db, large.campaign_id)
    # Both progressed, and the small one finished long before the large one got far.
    assert 0 < large_sent <= 100
    wait_status(db, large.campaign_id, "completed", timeout=30)
    assert max(received_phones(sim).values()) == 1
    assert len(sim.received()) == 330


def test_a_high_priority_campaign_goes_first(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process()
    workers.start(worker_env(sim, WAHERO_RATE_LIMIT="50/s"))
    low = enqueue_campaign(instance_id=INSTANCE, message="L", recipients=recipients(300))
    wait_for(lambda: sent(db, low.campaign_id) > 0, 10)
    high = enqueue_campaign(
        instance_id=INSTANCE, message="H", recipients=recipients(150, start=5000), priority=1
    )
    wait_status(db, high.campaign_id, "completed", timeout=30)
    assert counts(db, low.campaign_id).get("pending", 0) >= 100
    order = sent_order(db)
    picks = [i for i, (c, _) in enumerate(order) if c == str(high.campaign_id)]
    during = order[picks[0] : picks[-1] + 1]
    share = len(picks) / len(during)
    # Sharing equally would give it half; once its jobs are picked it has nearly all of it.
    assert share >= 0.75
    wait_status(db, low.campaign_id, "completed", timeout=30)
    assert max(received_phones(sim).values()) == 1
