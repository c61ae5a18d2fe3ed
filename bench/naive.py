"""The naive baseline: what people build first. One Celery task per message, default settings.

Each task posts with `requests.post` and writes its row with a plain UPDATE through psycopg (one
connection per worker process, autocommit). Run by bench/run.py as

    NAIVE_BROKER_URL=redis://127.0.0.1:6379/12 NAIVE_DATABASE_URL=postgresql://... \\
    NAIVE_BASE_URL=http://127.0.0.1:PORT WAHERO_API_KEY=... \\
    PYTHONPATH=bench celery -A naive worker --hostname naive@%h

It is deliberately not tuned: prefork pool, default concurrency (one child per core), default
prefetch, early acks, no batching, no shared HTTP session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import requests
from celery import Celery
from celery.signals import worker_ready

SEND_PATH = "/api/v1/messages/send"
TABLE_DDL = """
CREATE TABLE IF NOT EXISTS naive_messages (
    id bigint PRIMARY KEY,
    phone text NOT NULL,
    body text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    provider_message_id text,
    sent_at timestamptz
)
"""

app = Celery("wahero_naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/12"))

_conn: psycopg.Connection[Any] | None = None


def _db() -> psycopg.Connection[Any]:
    # One connection per worker process, opened lazily after the fork.
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(os.environ["NAIVE_DATABASE_URL"], autocommit=True)
    return _conn


@app.task(name="naive.send")  # type: ignore[untyped-decorator]
def send(row_id: int, phone: str, text: str) -> None:
    """Post one message with requests, then mark its row sent."""
    response = requests.post(
        os.environ["NAIVE_BASE_URL"] + SEND_PATH,
        json={"instanceId": "bench", "phone": phone, "message": text},
        headers={"X-Api-Key": os.environ["WAHERO_API_KEY"]},
        timeout=30,
    )
    response.raise_for_status()
    message_id = response.json()["data"]["messageId"]
    _db().execute(
        "UPDATE naive_messages SET status = 'sent', provider_message_id = %s,"
        " sent_at = clock_timestamp() WHERE id = %s",
        (message_id, row_id),
    )


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce_ready(**_: Any) -> None:
    # The worker logs at WARNING by default, so readiness is signalled through a file.
    path = os.environ.get("NAIVE_READY_FILE")
    if path:
        Path(path).write_text("ready\n")
