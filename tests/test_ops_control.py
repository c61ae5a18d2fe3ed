"""Operator control against real workers: cancel racing sends, suppression while running."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import sqlalchemy as sa

from models.db import get_engine
from tests.simfixture import SimProcess
from tests.test_ops_cli import insert_campaign, run, statuses
from tests.test_pipeline import INSTANCE, received_phones, recipients, worker_env
from tests.workerproc import Workers, counts, wait_for, wait_status
from worker import store, suppressions
from worker.dispatch import publish
from worker.logs import setup_logging
from worker.producer import enqueue_campaign

CONCURRENCY = 8


@pytest.fixture(autouse=True)
def _logging_outside_the_runner() -> None:
    setup_logging()


def _phones_by_status(engine: sa.Engine, campaign_id: object) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT phone, status FROM messages WHERE campaign_id = :id"),
            {"id": campaign_id},
        ).all()
    out: dict[str, set[str]] = {}
    for phone, status in rows:
        out.setdefault(str(status), set()).add(phone)
    return out


def test_claim_skips_suppressed_numbers(db: sa.Engine, redis_client: redis.Redis) -> None:
    cid = insert_campaign(db, 6)
    suppressions.add("6281200000002", "stop")
    suppressions.add("+6281200000005")
    claim = store.claim(get_engine(), str(cid), 10, "test", 60)
    assert [m.phone for m in claim.messages] == [
        "6281200000001",
        "6281200000003",
        "6281200000004",
        "6281200000006",
    ]
    with db.connect() as conn:
        skipped = conn.execute(
            sa.text("""SELECT phone, skip_reason, lease_token FROM messages
                       WHERE campaign_id = :id AND status = 'skipped' ORDER BY phone"""),
            {"id": cid},
        ).all()
    assert [tuple(r) for r in skipped] == [
        ("6281200000002", "suppressed", None),
        ("6281200000005", "suppressed", None),
    ]
    assert statuses(db, cid) == {"sending": 4, "skipped": 2}


def test_cancel_racing_a_running_worker_sends_nothing_afterwards(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=30, jitter_ms=20)
    workers.start(worker_env(sim, WAHERO_CONCURRENCY=str(CONCURRENCY)))
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=recipients(600))
    cid = result.campaign_id
    sim.wait_for(lambda s: s.stats()["accepted"] >= 40, timeout=30)

    cancelled = run("cancel", str(cid))
    assert cancelled.exit_code == 0, cancelled.stderr
    at_cancel = sim.stats()["accepted"]

    # Requests in flight finish and are recorded; then nothing holds a lease any more.
    wait_for(lambda: "sending" not in counts(db, cid), 30, message="leases released")
    received = received_phones(sim)
    assert len(received) - at_cancel <= CONCURRENCY, (len(received), at_cancel)
    assert max(received.values()) == 1
    by_status = _phones_by_status(db, cid)
    assert set(received) == by_status.get("sent", set())
    assert not set(received) & by_status.get("cancelled", set())
    assert len(by_status["cancelled"]) > 0
    assert set(counts(db, cid)) <= {"sent", "cancelled"}
    assert wait_status(db, cid, "cancelled") == "cancelled"
    # Jobs reaching a worker after the cancel (stale ones in Redis) send nothing.
    worker = workers.started[0]
    before = worker.log().count("succeeded in")
    assert publish(str(cid), jobs=3)
    wait_for(lambda: worker.log().count("succeeded in") >= before + 3, 30, message="3 jobs")
    assert len(received_phones(sim)) == len(received)
    assert set(counts(db, cid)) <= {"sent", "cancelled"}
    assert "it is cancelled" in run("cancel", str(cid)).stderr


def test_suppressing_a_number_while_the_campaign_runs(
    db: sa.Engine, workers: Workers, sim_process: Callable[..., SimProcess]
) -> None:
    sim = sim_process(latency_ms=30, jitter_ms=10)
    workers.start(worker_env(sim))
    people = recipients(400)
    result = enqueue_campaign(instance_id=INSTANCE, message="Hi", recipients=people)
    cid = result.campaign_id
    sim.wait_for(lambda s: s.stats()["accepted"] >= 20, timeout=30)
    # The last recipients: claims go in id order, so these are still far from being claimed.
    late = [p["phone"] for p in people[-5:]]
    for phone in late:
        assert run("suppress", "add", phone, "--reason", "replied STOP").exit_code == 0
    pending_then = _phones_by_status(db, cid).get("pending", set())
    assert set(late) <= pending_then, "the campaign ran further than the test assumes"

    wait_status(db, cid, "completed", timeout=90)
    assert not set(late) & set(received_phones(sim))
    by_status = _phones_by_status(db, cid)
    assert by_status["skipped"] == set(late)
    assert len(by_status["sent"]) == 395 and set(received_phones(sim)) == by_status["sent"]
    with db.connect() as conn:
        reasons = set(
            conn.scalars(
                sa.text(
                    "SELECT skip_reason FROM messages WHERE campaign_id = :id "
                    "AND status = 'skipped'"
                ),
                {"id": cid},
            )
        )
    assert reasons == {"suppressed"}
