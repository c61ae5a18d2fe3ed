"""Faults mid-campaign: killed workers, Redis and PostgreSQL outages, a misbehaving Wahero,
a revoked key, stray jobs and two beats. Each runs a real campaign through real PostgreSQL,
Redis, worker processes and the simulator, then checks the simulator's record against the
database: nobody received twice, nothing is lost, and `sent` equals received except for
messages recorded `unknown` (their request may have been accepted: received may include them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.simfixture import SIM_KEY, SimProcess
from tests.test_pipeline import INSTANCE, recipients, worker_env
from tests.workerproc import (
    WAHERO_BULK,
    PrivateRedis,
    Workers,
    counts,
    enqueue_argv,
    start_beat,
    stop_process,
    wait_for,
    wait_status,
)
from worker.coverage import covered_campaigns
from worker.producer import enqueue_campaign
from worker.redis_client import get_redis
from worker.settings import get_settings
from worker.sweep import TickReport, tick

FINAL = {"sent", "failed", "unknown", "dead", "skipped", "cancelled"}
# What an ambiguous exchange is recorded as (the request may have reached Wahero).
AMBIGUOUS_CODES = {
    "READ_TIMEOUT",
    "CONNECTION_DROPPED",
    "TRANSPORT_ERROR",
    "UNREADABLE_RESPONSE",
    "LEASE_EXPIRED",
}


def phones_by_status(engine: sa.Engine, campaign_id: Any) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT status, phone FROM messages WHERE campaign_id = :id"),
            {"id": campaign_id},
        ).all()
    found: dict[str, set[str]] = {}
    for status, phone in rows:
        found.setdefault(str(status), set()).add(str(phone))
    return found


def assert_delivery_invariant(
    engine: sa.Engine, campaign_id: Any, sim: SimProcess, *, final: bool = True
) -> dict[str, int]:
    """Nobody received twice; every `sent` was received; anything else received is `unknown`.

    With `final`, nothing is left pending or sending. Returns the counts by status.
    """
    by_status = phones_by_status(engine, campaign_id)
    mine = set().union(*by_status.values()) if by_status else set()
    received = Counter(m["phone"] for m in sim.received() if m["phone"] in mine)
    twice = {phone for phone, n in received.items() if n > 1}
    assert not twice, f"received more than once: {sorted(twice)[:5]}"
    sent = by_status.get("sent", set())
    unknown = by_status.get("unknown", set())
    assert sent <= set(received), f"sent but never received: {sorted(sent - set(received))[:5]}"
    extra = set(received) - sent
    assert extra <= unknown, f"received but neither sent nor unknown: {sorted(extra - unknown)[:5]}"
    result = {status: len(phones) for status, phones in by_status.items()}
    if final:
        assert set(result) <= FINAL, result
    return result


def db_now(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT now()")).scalar_one()


def run_tick(engine: sa.Engine, now: Any = None) -> TickReport:
    return tick(engine, get_redis(), get_settings(), now=now)


def tick_ahead(engine: sa.Engine) -> TickReport:
    """A tick past every lease (this process's WAHERO_LEASE_SECONDS is the default 300 s): only
    safe while no live worker holds a lease."""
    return run_tick(engine, db_now(engine) + timedelta(minutes=10))


# ------------------------------------------------------------------ 1. killed workers


@pytest.mark.slow
def test_a_worker_sigkilled_three_times_loses_and_doubles_nothing(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=20, jitter_ms=20)
    env = worker_env(sim, WAHERO_LEASE_SECONDS="10")
    worker = workers.start(env)
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(300))
    campaign = str(result.campaign_id)
    for round_ in range(3):
        seen = len(sim.received())
        wait_for(lambda s=seen: len(sim.received()) >= s + 40, 60, message=f"progress {round_}")
        worker.kill()
        # No worker is alive: a tick a minute ahead expires what the dead one held, and does not
        # count its never-acknowledged jobs (stuck in Redis's `unacked` for an hour) as coverage.
        report = tick_ahead(db)
        assert report.expired_leases > 0 or counts(db, campaign).get("sending", 0) == 0
        if counts(db, campaign).get("pending", 0):
            assert campaign in report.republished or campaign in covered_campaigns(get_redis())
        worker = workers.start(env)
    wait_status(db, campaign, "completed", timeout=60)
    by_status = assert_delivery_invariant(db, campaign, sim)
    assert set(by_status) <= {"sent", "unknown"}
    assert by_status["sent"] + by_status.get("unknown", 0) == 300
    # Only what a killed worker held can be unknown: at most 3 kills x (4 jobs x 10 messages).
    assert by_status.get("unknown", 0) <= 120
    with db.connect() as conn:
        codes = set(
            conn.scalars(sa.text("SELECT error_code FROM messages WHERE status = 'unknown'"))
        )
    assert codes <= {"LEASE_EXPIRED"}


# ------------------------------------------------------------------ 2. Redis killed and restarted


def cli_enqueue(tmp_path: Path, env: dict[str, str], n: int, start: int = 0) -> str:
    """`wahero-bulk enqueue` in a subprocess (so it publishes to the env's REDIS_URL)."""
    csv_path = tmp_path / f"people-{start}.csv"
    csv_path.write_text(
        "phone,name\n" + "".join(f"{r['phone']},{r['name']}\n" for r in recipients(n, start))
    )
    done = subprocess.run(
        [
            WAHERO_BULK,
            *enqueue_argv(csv_path, "Hi {{ name }}"),
            "--json",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["campaign_id"])


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_campaign_loses_and_doubles_nothing(
    db: sa.Engine,
    workers: Workers,
    sim_process: Callable[..., SimProcess],
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    # The shared test Redis must not be restarted: this test has a redis-server of its own.
    # (A FLUSHALL mid-campaign: tests/test_schedule.py::
    # test_a_redis_wipe_mid_campaign_loses_and_duplicates_nothing.)
    sim = sim_process(latency_ms=15, jitter_ms=15)
    # Paced by the shared limiter (in that Redis too), so the kill lands mid-campaign.
    env = worker_env(
        sim, REDIS_URL=private_redis.url, WAHERO_BEAT_INTERVAL="0.5", WAHERO_RATE_LIMIT="60/s"
    )
    worker = workers.start(env)
    beat, beat_log = start_beat(tmp_path, env)
    try:
        campaign = cli_enqueue(tmp_path, env, 300)
        wait_for(lambda: len(sim.received()) >= 60, 60, 0.2, "first sends")
        private_redis.kill()
        # Everything Redis held is gone: queued jobs, unacked jobs, limiter and stop flags.
        at_kill = len(sim.received())
        private_redis.start()
        wait_status(db, campaign, "completed", timeout=120)
    finally:
        stop_process(beat)
    assert worker.alive(), worker.log()[-3000:]
    assert at_kill < 300
    by_status = assert_delivery_invariant(db, campaign, sim)
    assert by_status == {"sent": 300}, by_status
    assert "Traceback" not in beat_log.read_text(errors="replace")


# ------------------------------------------------------------------ 3. PostgreSQL connections cut


def terminate_worker_backends(engine: sa.Engine) -> int:
    """pg_terminate_backend every connection of the product to this test database but ours."""
    with engine.connect() as conn:
        killed = conn.execute(
            sa.text("""
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'wahero-bulk'
              AND pid <> pg_backend_pid()""")
        ).scalar_one()
        conn.commit()
    return int(killed)


@pytest.mark.slow
def test_postgres_connections_cut_mid_campaign_workers_reconnect_and_finish(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=15, jitter_ms=15)
    worker = workers.start(worker_env(sim, WAHERO_LEASE_SECONDS="10"))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(300))
    campaign = str(result.campaign_id)
    killed = 0
    for round_ in range(3):
        seen = len(sim.received())
        wait_for(lambda s=seen: len(sim.received()) >= s + 30, 60, message=f"sends {round_}")
        killed += terminate_worker_backends(db)
    assert killed > 0
    # A job whose claim died with its connection ends its chain; the tick (the beat's job)
    # republishes, and a lease left by a cut claim expires (10 s) into `unknown`.
    wait_for(
        lambda: run_tick(db).ran and counts(db, campaign).keys() <= FINAL,
        90,
        0.5,
        "nothing pending or sending",
    )
    wait_status(db, campaign, "completed", timeout=30)
    assert worker.alive(), worker.log()[-3000:]
    by_status = assert_delivery_invariant(db, campaign, sim)
    assert set(by_status) <= {"sent", "unknown"}
    assert by_status["sent"] >= 300 - 40, by_status


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("WAHERO_TEST_RESTART_POSTGRES") != "1",
    reason="restarts the machine's shared PostgreSQL; set WAHERO_TEST_RESTART_POSTGRES=1 to run",
)
def test_postgres_server_restarted_mid_campaign(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=15, jitter_ms=15)
    worker = workers.start(worker_env(sim, WAHERO_LEASE_SECONDS="10"))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(300))
    campaign = str(result.campaign_id)
    wait_for(lambda: len(sim.received()) >= 60, 60, message="first sends")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
    )

    def tick_when_up() -> bool:
        try:
            return run_tick(db).ran and counts(db, campaign).keys() <= FINAL
        except sa.exc.OperationalError:
            return False

    wait_for(tick_when_up, 120, 0.5, "nothing pending or sending")
    wait_status(db, campaign, "completed", timeout=30)
    assert worker.alive()
    by_status = assert_delivery_invariant(db, campaign, sim)
    assert set(by_status) <= {"sent", "unknown"}


# ------------------------------------------------------------------ 4. a misbehaving Wahero


@pytest.mark.slow
def test_timeouts_slowness_drops_and_502_pages_in_bursts_end_per_the_outcome_table(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(seed=11)
    workers.start(worker_env(sim, WAHERO_READ_TIMEOUT="0.5", WAHERO_MAX_ATTEMPTS="10"))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(300))
    campaign = str(result.campaign_id)
    bursts: list[dict[str, Any]] = [
        {"timeout_rate": 0.2, "timeout_after_accept_rate": 0.1, "hang_seconds": 1.0},
        {"latency_ms": 300.0},  # slow, but within the read timeout: sent
        {"drop_rate": 0.2, "drop_after_accept_rate": 0.1},
        {"error_502_rate": 0.3},
    ]
    clean = {k: 0.0 for burst in bursts for k in burst}
    for burst in bursts:
        sim.configure(**{**clean, "hang_seconds": 1.0, **burst})
        seen = sim.stats()["requests"]
        wait_for(lambda s=seen: sim.stats()["requests"] >= s + 40, 60, message=f"burst {burst}")
    sim.configure(**{**clean, "hang_seconds": 1.0})
    wait_status(db, campaign, "completed", timeout=90)
    by_status = assert_delivery_invariant(db, campaign, sim)
    assert set(by_status) <= {"sent", "unknown", "failed"}, by_status
    assert by_status.get("unknown", 0) > 0
    assert sum(by_status.values()) == 300
    with db.connect() as conn:
        codes = Counter(
            conn.scalars(sa.text("SELECT error_code FROM messages WHERE status = 'unknown'"))
        )
        http = Counter(conn.scalars(sa.text("SELECT http_status FROM attempts")))
        outcomes = Counter(conn.scalars(sa.text("SELECT outcome FROM attempts")))
    assert None not in codes
    assert codes.keys() >= {"READ_TIMEOUT", "CONNECTION_DROPPED"}, codes
    assert http[502] > 0, http  # each 502 page is an attempt, its message `unknown`
    assert outcomes["sent"] == by_status["sent"]


# ------------------------------------------------------------------ 5. key revoked and restored


@pytest.mark.slow
def test_a_key_revoked_mid_campaign_and_restored_by_file_sends_everything_once(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess], tmp_path: Path
) -> None:
    # The single-worker version: tests/test_pipeline.py::
    # test_unauthorized_halts_dead_letters_and_resume_sends_everything_once.
    from worker import control
    from worker.apikey import fingerprint

    new_key = "wahero_test_" + uuid.uuid4().hex[:20]
    sim = sim_process(keys=[SIM_KEY, new_key], revoke_after=50)
    key_file = tmp_path / "key"
    key_file.write_text(SIM_KEY)
    env = worker_env(sim, WAHERO_API_KEY_FILE=str(key_file))
    del env["WAHERO_API_KEY"]
    first, second = workers.start(env), workers.start(env)
    pids = {first.process.pid, second.process.pid}
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(200))
    campaign = str(result.campaign_id)
    wait_status(db, campaign, "halted")
    wait_for(lambda: counts(db, campaign).get("sending", 0) == 0, 30)
    halted = counts(db, campaign)
    assert halted.get("dead", 0) >= 1 and halted.get("pending", 0) > 0
    # At most what two workers had in flight was refused after the revocation.
    assert sim.stats()["by_status"].get("401", 0) <= 16
    key_file.write_text(new_key)
    sim.configure(revoke_after=0)
    assert control.resume(result.campaign_id) == halted["dead"]
    wait_status(db, campaign, "completed")
    assert counts(db, campaign) == {"sent": 200}
    assert_delivery_invariant(db, campaign, sim)
    assert {first.process.pid, second.process.pid} == pids and first.alive() and second.alive()
    with db.connect() as conn:
        by_key = dict(
            conn.execute(
                sa.text(
                    "SELECT key_fingerprint, count(*) FROM attempts WHERE outcome = 'sent' "
                    "GROUP BY key_fingerprint"
                )
            ).all()
        )
    simulated = Counter(m["key_fingerprint"] for m in sim.received())
    assert by_key == dict(simulated), (by_key, simulated)
    assert by_key == {fingerprint(SIM_KEY): 50, fingerprint(new_key): 150}


# ------------------------------------------------------------------ 6. stray and malformed jobs


def test_jobs_for_finished_missing_or_malformed_campaigns_are_ignored_safely(
    db: sa.Engine,
    workers: Workers,
    sim_process: Callable[..., SimProcess],
    redis_client: redis.Redis,
) -> None:
    from worker.dispatch import publish
    from worker.tasks import send_batch

    sim = sim_process()
    worker = workers.start(worker_env(sim))
    done = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(20))
    wait_status(db, done.campaign_id, "completed")
    before = (counts(db, done.campaign_id), len(sim.received()))
    missing = str(uuid.uuid4())
    assert publish(str(done.campaign_id), jobs=3)
    assert publish(missing, jobs=2)
    # send_task skips the client-side signature check: what a foreign producer could publish.
    for args in (["not-a-uuid"], [], [None], [{"campaign": 1}], ["1", "2"]):
        send_batch.app.send_task("wahero.send_batch", args=args, queue="wahero")
    later = enqueue_campaign(
        instance_id=INSTANCE, message="Hi", recipients=recipients(60, start=1000)
    )
    wait_status(db, later.campaign_id, "completed")
    assert counts(db, later.campaign_id) == {"sent": 60}
    assert_delivery_invariant(db, later.campaign_id, sim)
    assert (counts(db, done.campaign_id), len(sim.received()) - 60) == before
    with db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM campaigns")) == 2
    assert worker.alive(), worker.log()[-3000:]
    # Each bad job failed alone, logged (a None id simply matches no campaign).
    assert worker.log().count("raised unexpected") == 4
    # The worker is still healthy: a third campaign goes through as well.
    third = enqueue_campaign(
        instance_id=INSTANCE, message="Hi", recipients=recipients(10, start=2000)
    )
    wait_status(db, third.campaign_id, "completed")
    assert counts(db, third.campaign_id) == {"sent": 10}


# ------------------------------------------------------------------ 7. two beats


@pytest.mark.slow
def test_two_beats_at_once_start_and_publish_nothing_twice(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess], tmp_path: Path
) -> None:
    from worker.broadcasts import create_broadcast
    from worker.csvinput import iter_recipients

    sim = sim_process()
    env = worker_env(sim, WAHERO_BEAT_INTERVAL="0.5")
    worker = workers.start(env)
    scheduled = enqueue_campaign(
        instance_id=INSTANCE,
        message="Hi",
        recipients=recipients(20),
        scheduled_at=db_now(db) + timedelta(seconds=2),
    )
    broadcast = create_broadcast(
        name="weekly",
        instance_id=INSTANCE,
        message="Halo {{ name }}",
        cron="0 9 * * MON",
        zone="Asia/Jakarta",
        recipients=iter_recipients(recipients(15, start=500)),
    )
    with db.begin() as conn:  # the occurrence is due now
        conn.execute(sa.text("UPDATE broadcasts SET next_run_at = now() - interval '1 second'"))
    beats = [start_beat(tmp_path, env, f"beat{i}") for i in range(2)]
    try:
        wait_status(db, scheduled.campaign_id, "completed", timeout=60)
        wait_for(lambda: db_campaigns(db, f"broadcast:{broadcast}"), 30, 0.2, "the occurrence")
        occurrence = db_campaigns(db, f"broadcast:{broadcast}")[0]
        wait_status(db, occurrence, "completed", timeout=30)
        # Both beats keep ticking for a while: still nothing new.
        ticks = worker.log().count("Task wahero.tick[")
        wait_for(lambda: worker.log().count("Task wahero.tick[") >= ticks + 6, 30)
    finally:
        for beat, _ in beats:
            stop_process(beat)
    assert all("Sending due task" in log.read_text() for _, log in beats)
    assert len(db_campaigns(db, f"broadcast:{broadcast}")) == 1
    with db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM campaigns")) == 2
    assert assert_delivery_invariant(db, scheduled.campaign_id, sim) == {"sent": 20}
    assert assert_delivery_invariant(db, occurrence, sim) == {"sent": 15}
    log = worker.log()
    assert log.count("broadcast occurrence started") == 1
    started = [int(m) for m in re.findall(r"tick started=(\d+)", log)]
    assert sum(started) == 1, started


def db_campaigns(engine: sa.Engine, created_by: str) -> list[str]:
    with engine.connect() as conn:
        return [
            str(i)
            for i in conn.scalars(
                sa.text("SELECT id FROM campaigns WHERE created_by = :by"), {"by": created_by}
            )
        ]


def test_jobs_a_dead_worker_never_acknowledged_stop_covering_after_a_lease(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    import time

    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(3))
    campaign = str(result.campaign_id)
    # As a worker that took the jobs and was then SIGKILLed leaves them: in `unacked` only.
    jobs = redis_client.lrange("wahero", 0, -1)
    redis_client.delete("wahero")
    for tag, raw in enumerate(jobs):
        redis_client.hset("unacked", str(tag), json.dumps([json.loads(raw), "wahero", "wahero"]))
        redis_client.zadd("unacked_index", {str(tag): time.time()})
    assert covered_campaigns(redis_client) == {campaign}
    # Within a lease they still count (the worker may only be slow): nothing is republished.
    assert run_tick(db).republished == []
    # A lease later (this process's WAHERO_LEASE_SECONDS: 300 s) they no longer do.
    report = run_tick(db, db_now(db) + timedelta(seconds=get_settings().lease_seconds + 5))
    assert report.republished == [campaign]
    assert covered_campaigns(redis_client, stale_before=time.time() + 1) == {campaign}
    assert redis_client.llen("wahero") == get_settings().jobs_per_campaign


def test_garbage_pushed_onto_the_queue_does_not_stop_the_worker(
    db: sa.Engine,
    workers: Workers,
    sim_process: Callable[..., SimProcess],
    redis_client: redis.Redis,
) -> None:
    sim = sim_process()
    worker = workers.start(worker_env(sim))
    redis_client.lpush("wahero", b"\x00not json at all")
    later = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(20))
    wait_for(lambda: not worker.alive() or counts(db, later.campaign_id) == {"sent": 20}, 60)
    assert worker.alive(), worker.log()[-2000:]
    assert_delivery_invariant(db, later.campaign_id, sim)
