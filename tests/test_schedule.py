"""Scheduled and recurring broadcasts, and the beat tick's self-healing."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from tests.conftest import wipe_redis
from tests.simfixture import SimProcess
from tests.test_pipeline import INSTANCE, assert_sent_matches_received, recipients, worker_env
from tests.workerproc import Workers, counts, enqueue_argv, wait_for, wait_status
from worker import control
from worker.broadcasts import create_broadcast, next_occurrence, run_due_occurrences
from worker.cli import main
from worker.coverage import covered_campaigns
from worker.csvinput import iter_recipients
from worker.producer import enqueue_campaign
from worker.redis_client import get_redis
from worker.settings import get_settings
from worker.sweep import tick


def db_now(engine: sa.Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT now()")).scalar_one()


def run_tick(engine: sa.Engine, now: datetime | None = None) -> Any:
    return tick(engine, get_redis(), get_settings(), now=now)


def test_a_scheduled_campaign_publishes_nothing_until_its_time(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    at = db_now(db) + timedelta(hours=2)
    result = enqueue_campaign(
        instance_id=INSTANCE, message="Hi", recipients=recipients(5), scheduled_at=at
    )
    assert result.status == "scheduled"
    assert covered_campaigns(redis_client) == set()
    assert run_tick(db, now=at - timedelta(seconds=1)).started == []
    assert covered_campaigns(redis_client) == set()
    report = run_tick(db, now=at + timedelta(seconds=1))
    assert report.started == [str(result.campaign_id)]
    assert covered_campaigns(redis_client) == {str(result.campaign_id)}
    with db.connect() as conn:
        status, started = conn.execute(sa.text("SELECT status, started_at FROM campaigns")).one()
    assert status == "running" and started is not None
    # A second tick at the same moment starts nothing again.
    assert run_tick(db, now=at + timedelta(seconds=2)).started == []


def test_enqueue_at_reads_naive_times_in_the_local_zone(
    db: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("phone\n081234567890\n")
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            *enqueue_argv(csv_path, "Hi"),
            "--at",
            "2030-01-06T09:00",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    with db.connect() as conn:
        at = conn.execute(sa.text("SELECT scheduled_at FROM campaigns")).scalar_one()
    assert at == datetime(2030, 1, 6, 9, 0, tzinfo=ZoneInfo("Asia/Jakarta"))
    assert at.astimezone(UTC).hour == 2
    bad = runner.invoke(
        main,
        [
            *enqueue_argv(csv_path, "Hi"),
            "--at",
            "next tuesday",
        ],
    )
    assert bad.exit_code == 2
    assert "--at" in bad.output


def _broadcast(db: sa.Engine, now: datetime) -> uuid.UUID:
    return create_broadcast(
        name="weekly",
        instance_id=INSTANCE,
        message="Halo {{ name }}",
        cron="0 9 * * MON",
        zone="Asia/Jakarta",
        recipients=iter_recipients(recipients(4)),
        now=now,
    )


def test_cron_occurrences_follow_their_zone() -> None:
    after = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # a Thursday
    following = next_occurrence("0 9 * * MON", "Asia/Jakarta", after)
    assert following == datetime(2026, 12, 7, 2, 0, tzinfo=UTC)  # Monday 09:00 WIB


def test_a_recurring_occurrence_is_created_once_across_restarts(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    broadcast_id = _broadcast(db, now)
    occurrence = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert run_due_occurrences(db, occurrence - timedelta(seconds=1)) == []
    first = run_due_occurrences(db, occurrence + timedelta(seconds=1))
    assert len(first) == 1
    # A beat restarted with the old schedule state: the occurrence's key finds the campaign.
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE broadcasts SET next_run_at = :at"), {"at": occurrence})
    again = run_due_occurrences(db, occurrence + timedelta(seconds=5))
    assert again == first
    with db.connect() as conn:
        campaigns = conn.execute(sa.text("SELECT id, status, idempotency_key FROM campaigns")).all()
        next_run = conn.scalar(sa.text("SELECT next_run_at FROM broadcasts"))
    assert len(campaigns) == 1
    assert campaigns[0].idempotency_key == f"broadcast:{broadcast_id}:{occurrence.isoformat()}"
    assert campaigns[0].status == "running"
    assert next_run == datetime(2026, 12, 14, 2, 0, tzinfo=UTC)
    assert counts(db, campaigns[0].id) == {"pending": 4}


def test_two_ticks_racing_create_one_campaign_per_occurrence(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    _broadcast(db, now)
    due = datetime(2026, 12, 7, 2, 0, 30, tzinfo=UTC)
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        results.append(run_due_occurrences(db, due))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM campaigns")) == 1
        assert conn.scalar(sa.text("SELECT count(*) FROM messages")) == 4


def test_only_one_tick_works_at_a_time(db: sa.Engine, redis_client: redis.Redis) -> None:
    from worker.sweep import TICK_LOCK_KEY

    with db.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": TICK_LOCK_KEY})
        assert run_tick(db).ran is False
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": TICK_LOCK_KEY})
    assert run_tick(db).ran is True


def test_expired_leases_become_unknown_never_stuck_sending(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(6))
    wipe_redis(redis_client)
    with db.begin() as conn:
        conn.execute(
            sa.text("""UPDATE messages SET status = 'sending', lease_owner = 'dead:1',
                                lease_token = gen_random_uuid(),
                                lease_expires_at = now() - interval '1 second'
                                WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 4)""")
        )
        conn.execute(
            sa.text("""UPDATE messages SET status = 'sending', lease_owner = 'alive:1',
                                lease_expires_at = now() + interval '5 minutes'
                                WHERE status = 'pending' AND id = (SELECT max(id) FROM messages)
                                """)
        )
    report = run_tick(db)
    assert report.expired_leases == 4
    by_status = counts(db, result.campaign_id)
    assert by_status == {"unknown": 4, "sending": 1, "pending": 1}
    with db.connect() as conn:
        codes = set(
            conn.scalars(sa.text("SELECT error_code FROM messages WHERE status = 'unknown'"))
        )
    assert codes == {"LEASE_EXPIRED"}


def test_paused_and_halted_campaigns_are_left_alone_quota_pauses_resume(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    paused = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(2))
    halted = enqueue_campaign(
        instance_id=INSTANCE, message="Hi", recipients=recipients(2, start=100)
    )
    quota = enqueue_campaign(
        instance_id=INSTANCE, message="Hi", recipients=recipients(2, start=200)
    )
    control.pause(paused.campaign_id)
    now = db_now(db)
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE campaigns SET status = 'halted', halt_code = 'UNAUTHORIZED' WHERE id = :id"
            ),
            {"id": halted.campaign_id},
        )
        conn.execute(
            sa.text(
                "UPDATE campaigns SET status = 'paused', halt_code = 'QUOTA_EXCEEDED',"
                " paused_until = :until WHERE id = :id"
            ),
            {"id": quota.campaign_id, "until": now + timedelta(minutes=10)},
        )
    wipe_redis(redis_client)
    report = run_tick(db, now=now + timedelta(minutes=5))
    assert report.resumed == [] and report.republished == []
    report = run_tick(db, now=now + timedelta(minutes=11))
    assert report.resumed == [str(quota.campaign_id)]
    with db.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT id, status FROM campaigns")).all())
    assert statuses[paused.campaign_id] == "paused"
    assert statuses[halted.campaign_id] == "halted"
    assert statuses[quota.campaign_id] == "running"
    assert covered_campaigns(redis_client) == {str(quota.campaign_id)}


def test_long_retry_delays_wait_in_postgres_not_in_redis(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(3))
    wipe_redis(redis_client)
    now = db_now(db)
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE messages SET next_attempt_at = :at"),
            {"at": now + timedelta(minutes=30)},
        )
    from worker.tasks import follow_up

    follow_up(str(result.campaign_id))
    assert covered_campaigns(redis_client) == set()
    assert redis_client.llen("wahero") == 0
    assert run_tick(db, now=now + timedelta(minutes=29)).republished == []
    report = run_tick(db, now=now + timedelta(minutes=31))
    assert report.republished == [str(result.campaign_id)]
    assert covered_campaigns(redis_client) == {str(result.campaign_id)}


def test_a_redis_wipe_mid_campaign_loses_and_duplicates_nothing(
    db: sa.Engine,
    workers: Workers,
    sim_process: Callable[..., SimProcess],
    redis_client: redis.Redis,
) -> None:
    sim = sim_process(latency_ms=10, jitter_ms=10)
    workers.start(worker_env(sim))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(400))
    wait_for(lambda: len(sim.received()) >= 80, 60)
    wipe_redis(redis_client)  # this run's database only: other runs keep theirs
    # The tick finds the campaign uncovered and republishes it (repeat: jobs in flight may
    # still chain on, or may be the ones the flush took).
    wait_for(lambda: run_tick(db) and wait_for_idle_or_done(db, result.campaign_id), 90, 0.5)
    wait_status(db, result.campaign_id, "completed", timeout=60)
    assert counts(db, result.campaign_id) == {"sent": 400}
    assert_sent_matches_received(db, result.campaign_id, sim)


def wait_for_idle_or_done(db: sa.Engine, campaign_id: Any) -> bool:
    by_status = counts(db, campaign_id)
    return by_status.get("pending", 0) == 0


@pytest.mark.slow
def test_beat_starts_a_scheduled_campaign_by_itself(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess], tmp_path: Path
) -> None:
    import os
    import subprocess

    from tests.workerproc import WAHERO_BULK

    sim = sim_process()
    env = worker_env(sim, WAHERO_BEAT_INTERVAL="0.5")
    workers.start(env)
    log_path = tmp_path / "beat.log"
    beat = subprocess.Popen(
        [WAHERO_BULK, "beat", "--schedule", str(tmp_path / "schedule")],
        env={**os.environ, **env},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Once the beat ticks, a campaign due in two seconds starts within a few ticks.
        wait_for(lambda: "Sending due task" in log_path.read_text(), 60, 0.1, "the first tick")
        at = db_now(db) + timedelta(seconds=2)
        result = enqueue_campaign(
            instance_id=INSTANCE, message="Hi", recipients=recipients(20), scheduled_at=at
        )
        assert result.status == "scheduled"
        wait_status(db, result.campaign_id, "completed", timeout=60)
    finally:
        beat.terminate()
        beat.wait(20)
    with db.connect() as conn:
        started = conn.scalar(sa.text("SELECT started_at FROM campaigns"))
    assert started >= at
    assert started - at < timedelta(seconds=5)
    assert counts(db, result.campaign_id) == {"sent": 20}
