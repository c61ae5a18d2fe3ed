"""The send pipeline end to end: real PostgreSQL, Redis, worker processes and the simulator."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.simfixture import SIM_KEY, SimProcess
from tests.workerproc import INSTANCE, Workers, counts, wait_for, wait_status
from worker import control
from worker.producer import enqueue_campaign


def phones(n: int, start: int = 0) -> list[str]:
    return [f"62812{10000000 + start + i}" for i in range(n)]


def recipients(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"phone": p, "name": f"N{i}"} for i, p in enumerate(phones(n, start))]


def worker_env(sim: SimProcess, **extra: str) -> dict[str, str]:
    env = {
        "WAHERO_API_KEY": SIM_KEY,
        "WAHERO_BASE_URL": sim.url,
        "WAHERO_RATE_LIMIT": "0",
        "WAHERO_RETRY_BASE_DELAY": "0.05",
        "WAHERO_RETRY_MAX_DELAY": "0.3",
        "WAHERO_CONCURRENCY": "8",
        "WAHERO_BATCH_SIZE": "10",
        "WAHERO_JOBS_PER_CAMPAIGN": "4",
    }
    env.update(extra)
    return env


def received_phones(sim: SimProcess) -> Counter[str]:
    return Counter(m["phone"] for m in sim.received())


def assert_sent_matches_received(engine: sa.Engine, campaign_id: Any, sim: SimProcess) -> None:
    """Every `sent` message reached the simulator exactly once, and nothing else did."""
    received = received_phones(sim)
    assert max(received.values(), default=1) == 1, "a recipient received a message twice"
    with engine.connect() as conn:
        sent = {
            row.phone
            for row in conn.execute(
                sa.text("SELECT phone FROM messages WHERE campaign_id = :id AND status = 'sent'"),
                {"id": campaign_id},
            )
        }
    assert sent == set(received)


def test_happy_path_sends_each_message_once_and_records_cost(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(cost="350.25", currency="IDR")
    workers.start(worker_env(sim))
    result = enqueue_campaign(
        instance_id=INSTANCE, message="Halo {{ name }}", recipients=recipients(120)
    )
    assert result.accepted == 120
    wait_status(db, result.campaign_id, "completed")
    assert counts(db, result.campaign_id) == {"sent": 120}
    assert_sent_matches_received(db, result.campaign_id, sim)
    with db.connect() as conn:
        total, ids, attempts, started, finished = conn.execute(
            sa.text("""
            SELECT sum(m.cost), count(DISTINCT m.provider_message_id), sum(m.attempts),
                   c.started_at, c.finished_at
            FROM messages m JOIN campaigns c ON c.id = m.campaign_id
            WHERE m.campaign_id = :id GROUP BY c.started_at, c.finished_at"""),
            {"id": result.campaign_id},
        ).one()
        attempt_rows = conn.scalar(sa.text("SELECT count(*) FROM attempts"))
        fingerprints = set(conn.scalars(sa.text("SELECT DISTINCT key_fingerprint FROM attempts")))
    assert total == Decimal("350.25") * 120
    assert ids == 120 and attempts == 120 and attempt_rows == 120
    assert started is not None and finished is not None and finished >= started
    assert len(fingerprints) == 1 and SIM_KEY not in fingerprints.pop()
    bodies = {m["message"] for m in sim.received()}
    assert "Halo N0" in bodies


def test_transient_errors_and_429_are_retried_until_sent_once(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(error_500_rate=0.25, error_503_rate=0.1, rate_limit=40, seed=3)
    workers.start(worker_env(sim, WAHERO_MAX_ATTEMPTS="30"))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(150))
    wait_status(db, result.campaign_id, "completed", timeout=120)
    assert counts(db, result.campaign_id) == {"sent": 150}
    assert_sent_matches_received(db, result.campaign_id, sim)
    stats = sim.stats()
    with db.connect() as conn:
        by_outcome = dict(
            conn.execute(sa.text("SELECT outcome, count(*) FROM attempts GROUP BY outcome")).all()
        )
        counted = conn.scalar(sa.text("SELECT sum(attempts) FROM messages"))
    assert by_outcome.get("transient", 0) > 0
    assert by_outcome["sent"] == 150
    # A 429 is recorded as an attempt row but never counts against the message's attempts.
    assert counted == sum(n for outcome, n in by_outcome.items() if outcome != "rate_limited")
    assert sum(by_outcome.values()) == stats["requests"]


def test_ambiguous_timeouts_become_unknown_and_are_not_resent_until_retried(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(timeout_rate=0.2, timeout_after_accept_rate=0.1, hang_seconds=2, seed=5)
    workers.start(worker_env(sim, WAHERO_READ_TIMEOUT="0.5"))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(60))
    wait_status(db, result.campaign_id, "completed")
    by_status = counts(db, result.campaign_id)
    assert by_status.get("unknown", 0) > 0
    assert set(by_status) <= {"sent", "unknown"}
    received = received_phones(sim)
    assert max(received.values()) == 1  # no unknown message was sent again by itself
    with db.connect() as conn:
        unknown = set(conn.scalars(sa.text("SELECT phone FROM messages WHERE status = 'unknown'")))
        codes = set(
            conn.scalars(sa.text("SELECT error_code FROM messages WHERE status = 'unknown'"))
        )
    assert codes and all(codes)
    accepted_then_hung = unknown & set(received)
    never_accepted = unknown - set(received)
    assert never_accepted
    sim.configure(timeout_rate=0.0, timeout_after_accept_rate=0.0)
    assert control.retry(result.campaign_id, "unknown") == len(unknown)
    wait_status(db, result.campaign_id, "completed")
    assert counts(db, result.campaign_id) == {"sent": 60}
    received = received_phones(sim)
    # Sent on purpose: the ones that had hung after acceptance now arrive a second time.
    assert {p for p, n in received.items() if n == 2} == accepted_then_hung
    assert all(received[p] == 1 for p in never_accepted)


def test_unauthorized_halts_dead_letters_and_resume_sends_everything_once(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess], tmp_path: Path
) -> None:
    new_key = "wahero_test_rotatedkey"
    sim = sim_process(keys=[SIM_KEY, new_key], revoke_after=40)
    key_file = tmp_path / "key"
    key_file.write_text(SIM_KEY)
    env = worker_env(sim, WAHERO_API_KEY_FILE=str(key_file))
    del env["WAHERO_API_KEY"]
    workers.start(env)
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(300))
    wait_status(db, result.campaign_id, "halted")
    with db.connect() as conn:
        code = conn.scalar(sa.text("SELECT halt_code FROM campaigns"))
        letters = conn.execute(
            sa.text("SELECT message_id, reason_code, payload FROM dead_letters")
        ).all()
    assert code == "UNAUTHORIZED"
    assert letters and all(letter.reason_code == "UNAUTHORIZED" for letter in letters)
    assert all(set(letter.payload) == {"campaign_id", "message_id"} for letter in letters)
    # Nothing in flight any more: wait until no message is being sent.
    wait_for(lambda: counts(db, result.campaign_id).get("sending", 0) == 0, 30)
    by_status = counts(db, result.campaign_id)
    assert by_status["dead"] == len(letters)
    assert by_status["pending"] > 0
    unauthorized = sim.stats()["by_status"].get("401", 0)
    # Requests after the halt are bounded by what was in flight: the worker's concurrency.
    assert unauthorized <= 8
    assert len(sim.received()) == 40

    key_file.write_text(new_key)
    sim.configure(revoke_after=0)  # the new key stays valid
    assert control.resume(result.campaign_id) == len(letters)
    wait_status(db, result.campaign_id, "completed")
    assert counts(db, result.campaign_id) == {"sent": 300}
    assert_sent_matches_received(db, result.campaign_id, sim)
    with db.connect() as conn:
        assert (
            conn.scalar(sa.text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")) == 0
        )


def test_forbidden_instance_halts_with_bounded_requests(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(forbidden_instances=[INSTANCE])
    workers.start(worker_env(sim))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(200))
    wait_status(db, result.campaign_id, "halted")
    wait_for(lambda: counts(db, result.campaign_id).get("sending", 0) == 0, 30)
    by_status = counts(db, result.campaign_id)
    assert 1 <= by_status["failed"] <= 8
    assert by_status["pending"] == 200 - by_status["failed"]
    assert sim.stats()["requests"] <= 8
    with db.connect() as conn:
        assert conn.scalar(sa.text("SELECT halt_code FROM campaigns")) == "FORBIDDEN"


def test_two_workers_duplicate_jobs_and_a_killed_worker_never_send_twice(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    from worker.dispatch import publish
    from worker.redis_client import get_redis
    from worker.settings import get_settings
    from worker.sweep import tick

    sim = sim_process(latency_ms=20, jitter_ms=20)
    env = worker_env(sim, WAHERO_LEASE_SECONDS="10")
    first = workers.start(env)
    workers.start(env)
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(600))
    campaign = str(result.campaign_id)
    publish(campaign, jobs=6)  # duplicates of jobs already queued
    wait_for(lambda: len(sim.received()) > 150, 60)
    killed = first.process.pid
    first.kill()
    workers.start(env)

    def only_the_killed_worker_holds_messages() -> bool:
        # Whatever the killed worker held stays `sending` until its lease runs out; the live
        # workers must be done, so the injected-time tick below expires only dead leases.
        with db.connect() as conn:
            busy = conn.scalar(
                sa.text(
                    "SELECT count(*) FROM messages WHERE campaign_id = :id AND "
                    "(status = 'pending' OR (status = 'sending' AND lease_owner NOT LIKE :dead))"
                ),
                {"id": campaign, "dead": f"%:{killed}"},
            )
        return busy == 0

    wait_for(only_the_killed_worker_holds_messages, 120)
    with db.connect() as conn:
        later = conn.scalar(sa.text("SELECT now() + interval '1 minute'"))
    tick(db, get_redis(), get_settings(), now=later)
    wait_status(db, campaign, "completed", timeout=60)
    by_status = counts(db, campaign)
    assert "sending" not in by_status and "pending" not in by_status
    assert set(by_status) <= {"sent", "unknown"}
    with db.connect() as conn:
        sent = set(conn.scalars(sa.text("SELECT phone FROM messages WHERE status = 'sent'")))
        unknown = set(conn.scalars(sa.text("SELECT phone FROM messages WHERE status = 'unknown'")))
    # Read after the database: a send the injected-time tick marked `unknown` may still land.
    received = received_phones(sim)
    assert max(received.values()) == 1
    assert sent <= set(received)
    assert set(received) <= sent | unknown
    assert len(sent) + len(unknown) == 600


def test_job_payloads_carry_ids_only(db: sa.Engine, redis_client: Any) -> None:
    result = enqueue_campaign(
        instance_id=INSTANCE, message="Secret text {{ name }}", recipients=recipients(5)
    )
    raw = redis_client.lrange("wahero", 0, -1)
    assert raw
    for item in raw:
        text = item.decode()
        assert "6281210000000" not in text and "Secret text" not in text
        envelope = json.loads(text)
        assert envelope["headers"]["argsrepr"] == repr([str(result.campaign_id)])
