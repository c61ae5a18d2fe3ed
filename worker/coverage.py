"""Which campaigns still have a job in Redis: queued, waiting on a countdown, or running.

Read straight from the broker's own structures (kombu's Redis transport keeps queued jobs in one
list per queue and delivered-but-unacknowledged ones in the `unacked` hash), so nothing extra has
to be kept in step with the queue; after a Redis wipe every campaign is simply uncovered.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import cast

import redis

SEND_TASK = "wahero.send_batch"
QUEUES = ("wahero", "wahero.high")


def _campaign_of(raw: bytes | str) -> str | None:
    try:
        envelope = json.loads(raw)
        if isinstance(envelope, list):  # the unacked hash stores [message, exchange, key]
            envelope = envelope[0]
        if envelope.get("headers", {}).get("task") != SEND_TASK:
            return None
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _raw_jobs(client: redis.Redis) -> Iterable[bytes]:
    for queue in QUEUES:
        # kombu keeps each priority step of a queue in its own list.
        for key in client.scan_iter(match=f"{queue}*", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if (name == queue or name.startswith(queue + "\x06\x16")) and client.type(key) in (
                b"list",
                "list",
            ):
                yield from cast(list[bytes], client.lrange(key, 0, -1))
    yield from cast(list[bytes], client.hvals("unacked"))


def covered_campaigns(client: redis.Redis) -> set[str]:
    """The ids of campaigns that some send job in Redis will still work on."""
    found = set()
    for raw in _raw_jobs(client):
        campaign_id = _campaign_of(raw)
        if campaign_id is not None:
            found.add(campaign_id)
    return found
