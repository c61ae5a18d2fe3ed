"""The worker's hot statements keep cheap plans: after a bulk load, and once cached generically.

A big campaign enqueued into a table whose statistics predate it is planned as if the table were
nearly empty; the enqueue analyses the table when it grew by more than a tenth. And psycopg
prepares a statement after its fifth run on a connection, after which PostgreSQL may switch to a
generic plan that no longer sees the parameter values: a claim's `LIMIT :limit` planned without
its value is taken for a tenth of the table, and the plan that follows reads every row of
`messages` for each batch of fifty. Each statement here is captured as the worker sends it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import event

from tests.test_ops_cli import insert_campaign
from tests.test_pipeline import recipients
from worker import store
from worker.producer import enqueue_campaign
from worker.store import Outcome
from worker.tablestats import analyse_after_load

MESSAGES = 50_000  # a table where reading every row costs more than 50 index probes


@pytest.fixture()
def analysed(db: sa.Engine) -> Iterator[str]:
    """A running campaign with MESSAGES pending messages, and fresh statistics."""
    campaign_id = str(insert_campaign(db, MESSAGES))
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE messages"))
        conn.execute(sa.text("ANALYZE campaigns"))
    yield campaign_id


def captured(engine: sa.Engine, run: Callable[[], object]) -> list[tuple[str, dict[str, Any]]]:
    """The statements (as sent to the driver) and parameters of everything `run` executes."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, dict(parameters or {})))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def known_rows(engine: sa.Engine) -> float:
    """How many rows the planner's statistics believe `messages` holds (-1: never analysed)."""
    with engine.connect() as conn:
        return float(
            conn.execute(
                sa.text("SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass")
            ).scalar_one()
        )


def test_a_big_campaign_on_an_empty_table_leaves_fresh_statistics_for_its_claims(
    db: sa.Engine, database_url: str, redis_client: redis.Redis
) -> None:
    assert known_rows(db) < 1  # emptied by the fixture: the planner thinks so too
    result = enqueue_campaign(
        instance_id="inst-1", message="Halo {{ name }}", recipients=recipients(20_000)
    )
    assert known_rows(db) == 20_000
    [(statement, parameters)] = captured(
        db, lambda: store.claim(db, str(result.campaign_id), 50, "plan-test", 60)
    )
    plan = plan_of(database_url, statement, parameters, generic=False)
    # A Sort here would order every pending message of the campaign to pick fifty.
    assert "Sort" not in plan, plan
    assert "ix_messages_pending_due" in plan, plan


def test_a_small_campaign_beside_a_big_table_does_not_analyse_it(
    db: sa.Engine, redis_client: redis.Redis
) -> None:
    insert_campaign(db, 10_000)
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE messages"))
    assert known_rows(db) == 10_000
    enqueue_campaign(instance_id="inst-1", message="Halo", recipients=recipients(500))
    assert known_rows(db) == 10_000  # 500 rows are under a tenth: autovacuum's business


def plan_of(
    database_url: str, statement: str, parameters: dict[str, Any], *, generic: bool = True
) -> str:
    """EXPLAIN ANALYZE of the statement as prepared (rolled back: nothing changes)."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    numbered = re.sub(r"%\((\w+)\)s", placeholder, statement)
    url = sa.make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        mode = "force_generic_plan" if generic else "force_custom_plan"
        conn.execute(f"SET plan_cache_mode = {mode}")
        conn.execute(f"PREPARE hot AS {numbered}")
        # The EXECUTE's arguments go as literals: EXPLAIN takes no parameters of its own.
        args = ", ".join(
            conn.execute("SELECT quote_nullable(%s::text)", (parameters[n],)).fetchone()[0]
            for n in names
        )
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN (ANALYZE) EXECUTE hot({args})"))
        conn.rollback()
    return plan


def test_a_claim_reads_only_what_it_claims_under_a_generic_plan(
    db: sa.Engine, database_url: str, analysed: str
) -> None:
    [(statement, parameters)] = captured(db, lambda: store.claim(db, analysed, 50, "plan-test", 60))
    plan = plan_of(database_url, statement, parameters)
    assert "Seq Scan on messages" not in plan, plan
    assert "ix_messages_pending_due" in plan, plan


def test_recording_a_batch_reads_only_its_rows_under_a_generic_plan(
    db: sa.Engine, database_url: str, analysed: str
) -> None:
    claim = store.claim(db, analysed, 50, "plan-test", 60)
    assert len(claim.messages) == 50
    now = datetime.now(UTC)
    outcomes = [
        Outcome(
            m.id,
            "sent",
            True,
            provider_message_id=f"p{m.id}",
            sent_at=now,
            attempt_outcome="sent",
            started_at=now,
            finished_at=now,
            http_status=200,
        )
        for m in claim.messages
    ]
    statements = captured(db, lambda: store.record(db, claim, outcomes))
    plans = [plan_of(database_url, s, p) for s, p in statements if "messages" in s]
    assert plans
    for plan in plans:
        assert "Seq Scan on messages" not in plan, plan


def test_statistics_never_fail_an_enqueue_that_has_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: the connection itself fails, after the campaign's commit.
    unreachable = sa.create_engine("postgresql+psycopg://root@127.0.0.1:1/test")
    assert analyse_after_load(unreachable, "messages", 1_000_000) is False
    assert "ANALYZE messages skipped" in caplog.text
    unreachable.dispose()
