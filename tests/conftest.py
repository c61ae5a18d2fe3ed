"""Test fixtures on the real services: a PostgreSQL database per run, a Redis database per run."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

pytest_plugins = ["tests.simfixture", "tests.workerproc"]

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
TEST_DB = f"wahero_test_{os.getpid()}"
TABLES = (
    "attempts",
    "dead_letters",
    "messages",
    "campaigns",
    "suppressions",
    "broadcast_recipients",
    "broadcasts",
)
# Marks a Redis database as taken by one test run, so runs side by side never share a queue.
REDIS_CLAIM_KEY = "wahero:test-run"
REDIS_CLAIM_SECONDS = 4 * 3600

# Services first: choosing a Redis database needs Redis.
subprocess.run([str(ROOT / "scripts" / "services.sh")], check=True)


def _claim_redis_db() -> int:
    if "TEST_REDIS_DB" in os.environ:
        return int(os.environ["TEST_REDIS_DB"])
    owner = f"pid:{os.getpid()}"
    for number in range(15, 1, -1):
        client = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        try:
            if client.set(REDIS_CLAIM_KEY, owner, nx=True, ex=REDIS_CLAIM_SECONDS):
                return number
        finally:
            client.close()
    raise RuntimeError("every Redis database from 2 to 15 is taken by another test run")


REDIS_DB = _claim_redis_db()

# The whole process (and every worker it starts) sees the test services.
os.environ["DATABASE_URL"] = (
    make_url(ADMIN_URL).set(database=TEST_DB).render_as_string(hide_password=False)
)
os.environ["REDIS_URL"] = f"{REDIS_BASE}/{REDIS_DB}"
os.environ.pop("WAHERO_API_KEY", None)
os.environ.pop("WAHERO_API_KEY_FILE", None)


def _mark_redis_taken(client: redis.Redis) -> None:
    client.set(REDIS_CLAIM_KEY, f"pid:{os.getpid()}", ex=REDIS_CLAIM_SECONDS)


def wipe_redis(client: redis.Redis) -> None:
    """FLUSHDB this run's Redis database (a Redis that lost everything), keeping it claimed."""
    client.flushdb()
    _mark_redis_taken(client)


def pytest_sessionfinish(session: pytest.Session) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        client.flushdb()  # also gives the database back
    finally:
        client.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, migrated to head, dropped afterwards."""
    from alembic import command

    from migrations import alembic_config

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{TEST_DB}"'))
    url = os.environ["DATABASE_URL"]
    command.upgrade(alembic_config(url), "head")
    yield url
    from models.db import reset_engine

    reset_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def db(database_url: str) -> Iterator[sa.Engine]:
    """The test database's engine, every table emptied before the test."""
    from models.db import get_engine
    from worker.settings import get_settings

    get_settings.cache_clear()
    engine = get_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield engine


@pytest.fixture()
def redis_client() -> Iterator[redis.Redis]:
    """The run's dedicated Redis database, flushed before and after the test."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.flushdb()
    _mark_redis_taken(client)
    yield client
    client.flushdb()
    _mark_redis_taken(client)
    client.close()


@pytest.fixture()
def unique() -> str:
    """A short unique token for names and keys."""
    return uuid.uuid4().hex[:8]
