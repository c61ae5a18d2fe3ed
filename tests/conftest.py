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
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))
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

# The whole process (and every worker it starts) sees the test services.
os.environ["DATABASE_URL"] = (
    make_url(ADMIN_URL).set(database=TEST_DB).render_as_string(hide_password=False)
)
os.environ["REDIS_URL"] = f"{REDIS_BASE}/{REDIS_DB}"
os.environ.pop("WAHERO_API_KEY", None)
os.environ.pop("WAHERO_API_KEY_FILE", None)


def pytest_sessionstart(session: pytest.Session) -> None:
    subprocess.run([str(ROOT / "scripts" / "services.sh")], check=True)


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
    yield client
    client.flushdb()
    client.close()


@pytest.fixture()
def unique() -> str:
    """A short unique token for names and keys."""
    return uuid.uuid4().hex[:8]
