"""The API key never leaks: not in worker logs at DEBUG, the database, Redis, job payloads,
exception texts or the simulator's records, after a campaign with failures, retries and a 401.

(The settings object's str/repr: tests/test_settings.py::test_the_key_is_never_shown.)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import random
import string
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.simfixture import SimControl, SimProcess
from tests.test_pipeline import INSTANCE, recipients, worker_env
from tests.workerproc import Workers, counts, wait_for, wait_status
from worker.apikey import fingerprint
from worker.producer import enqueue_campaign


def fake_key() -> str:
    return "wahero_test_" + "".join(random.choices(string.ascii_letters, k=24))


def texts(value: Any) -> Iterator[str]:
    """Every string inside a Redis value or JSON document, plus base64-decoded forms of each."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        yield value
        with contextlib.suppress(ValueError):
            yield from texts(json.loads(value))
        with contextlib.suppress(binascii.Error, ValueError):
            yield base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from texts(k)
            yield from texts(v)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from texts(item)
    elif value is not None:
        yield str(value)


def redis_texts(client: redis.Redis) -> Iterator[str]:
    """Every key name and every value (of every type) in the client's database."""
    for key in client.scan_iter(count=1000):
        yield from texts(key)
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            yield from texts(client.get(key))
        elif kind == "list":
            yield from texts(client.lrange(key, 0, -1))
        elif kind == "hash":  # includes kombu's `unacked`: the jobs workers hold
            yield from texts(client.hgetall(key))
        elif kind == "set":
            yield from texts(client.smembers(key))
        elif kind == "zset":
            yield from texts(client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            yield from texts(client.xrange(key))


def database_text(engine: sa.Engine) -> str:
    """Every row of every table in the test database, as text."""
    with engine.connect() as conn:
        tables = conn.scalars(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        assert {"campaigns", "messages", "attempts", "dead_letters"} <= set(tables)
        return "\n".join(
            row
            for table in tables
            for row in conn.scalars(sa.text(f'SELECT t::text FROM "{table}" t'))
        )


def pg_dump_text(engine: sa.Engine) -> str:
    """`pg_dump --data-only` of the test database."""
    import subprocess

    url = engine.url
    done = subprocess.run(
        [
            "pg_dump",
            "--data-only",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "root",
            url.database or "",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PGPASSWORD": url.password or "", "PATH": "/usr/bin:/bin"},
    )
    return done.stdout


def assert_no_key(where: str, haystack: Any, *keys: str) -> None:
    for text in texts(haystack) if not isinstance(haystack, str) else [haystack]:
        for key in keys:
            assert key not in text, f"the API key appears in {where}"
            # Not even a recognisable part of it.
            assert key[len("wahero_test_") :] not in text, f"part of the key appears in {where}"


@pytest.mark.slow
@pytest.mark.parametrize("source", ["env", "file"])
def test_the_key_appears_nowhere_after_failures_retries_and_a_401(
    db: sa.Engine,
    workers: Workers,
    sim_process: Callable[..., SimProcess],
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    from worker import control
    from worker.settings import get_settings

    key, rotated = fake_key(), fake_key()
    sim = sim_process(
        keys=[key, rotated],
        revoke_after=40,
        error_500_rate=0.2,
        timeout_rate=0.05,
        hang_seconds=1.0,
        seed=7,
    )
    env = worker_env(
        sim, WAHERO_LOG_LEVEL="DEBUG", WAHERO_MAX_ATTEMPTS="30", WAHERO_READ_TIMEOUT="0.5"
    )
    key_file = tmp_path / "secret" / "key"
    key_file.parent.mkdir()
    if source == "file":
        key_file.write_text(key + "\n")
        del env["WAHERO_API_KEY"]
        env["WAHERO_API_KEY_FILE"] = str(key_file)
    else:
        env["WAHERO_API_KEY"] = key
    # The producer too runs with the key configured: it must not put it in a job.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    result = enqueue_campaign(
        instance_id=INSTANCE, message="Halo {{ name }}", recipients=recipients(150)
    )
    campaign = str(result.campaign_id)
    queued = redis_client.lrange("wahero", 0, -1)
    assert queued
    assert_no_key("the queued job payloads", queued, key)

    worker = workers.start(env)
    wait_status(db, campaign, "halted", timeout=90)
    wait_for(lambda: counts(db, campaign).get("sending", 0) == 0, 30)
    if source == "file":
        key_file.write_text(rotated + "\n")
        sim.configure(revoke_after=0, error_500_rate=0.0, timeout_rate=0.0)
        control.resume(result.campaign_id)
        wait_status(db, campaign, "completed", timeout=90)
    with db.connect() as conn:
        outcomes = set(conn.scalars(sa.text("SELECT DISTINCT outcome FROM attempts")))
        errors = conn.scalars(
            sa.text(
                "SELECT error_message FROM messages WHERE error_message IS NOT NULL "
                "UNION ALL SELECT error_message FROM attempts WHERE error_message IS NOT NULL "
                "UNION ALL SELECT reason_message FROM dead_letters"
            )
        ).all()
        fingerprints = set(conn.scalars(sa.text("SELECT DISTINCT key_fingerprint FROM attempts")))
    # The campaign really went through failures, retries and a 401.
    assert {"sent", "transient", "unauthorized"} <= outcomes, outcomes
    assert errors
    assert fingerprint(key) in fingerprints
    keys = (key, rotated)
    assert_no_key("error messages", errors, *keys)
    log = worker.log()
    assert " DEBUG " in log  # the worker really logged at DEBUG
    assert_no_key("the worker's log", log, *keys)
    assert_no_key("the database", database_text(db), *keys)
    assert_no_key("pg_dump --data-only", pg_dump_text(db), *keys)
    assert_no_key("Redis", list(redis_texts(redis_client)), *keys)
    assert_no_key("the simulator's records", [sim.received(), sim.config(), sim.stats()], *keys)
    assert {m["key_fingerprint"] for m in sim.received()} <= {fingerprint(k) for k in keys}
    if source == "file":
        assert fingerprint(rotated) in fingerprints


def test_send_errors_never_carry_the_key(sim_thread: Callable[..., SimControl]) -> None:
    from worker.client import WaheroClient
    from worker.errors import SendError
    from worker.settings import load_settings

    key = fake_key()
    for knobs in (
        {"revoked_keys": [key]},
        {"keys": [key], "error_500_rate": 1.0},
        {"keys": [key], "error_502_rate": 1.0},
        {"keys": [key], "drop_rate": 1.0},
    ):
        sim = sim_thread(**knobs)
        client = WaheroClient(load_settings(WAHERO_API_KEY=key, WAHERO_BASE_URL=sim.url))
        with pytest.raises(SendError) as caught:
            client.send(INSTANCE, "6281234567890", "Hi")
        error = caught.value
        rendered = [
            str(error),
            repr(error),
            error.detail,
            vars(error),
            "".join(traceback.format_exception(error)),
        ]
        assert_no_key(f"a SendError after {knobs}", rendered, key)
        assert repr(client).find(key) == -1
        client.close()
