"""Which campaigns still have a job in Redis: queued, waiting on a countdown, or running.

Read straight from the broker's own structures (kombu's Redis transport keeps queued jobs in one
list per queue and delivered-but-unacknowledged ones in the `unacked` hash), so nothing extra has
to be kept in step with the queue; after a Redis wipe every campaign is simply uncovered.

A job delivered longer ago than `stale_before` allows is not counted: a worker killed with SIGKILL
never acknowledges its jobs, and kombu gives them back only after the one-hour visibility timeout,
so counting them would leave the campaign stalled for that hour. Publishing again is harmless
(claims are atomic); at worst a slow but living job runs beside one more chain.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import cast

import redis

SEND_TASK = "wahero.send_batch"
QUEUES = ("wahero", "wahero.high")
# kombu's Redis transport: delivery tag -> [message, exchange, key], and tag -> delivery time.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


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


def _unacked(client: redis.Redis, stale_before: float | None) -> Iterable[bytes]:
    if stale_before is None:
        yield from cast(list[bytes], client.hvals(UNACKED))
        return
    fresh = cast(list[bytes], client.zrangebyscore(UNACKED_INDEX, stale_before, "+inf"))
    if fresh:
        values = cast(list[bytes | None], client.hmget(UNACKED, fresh))
        yield from (value for value in values if value is not None)


def _raw_jobs(client: redis.Redis, stale_before: float | None) -> Iterable[bytes]:
    for queue in QUEUES:
        # kombu keeps each priority step of a queue in its own list.
        for key in client.scan_iter(match=f"{queue}*", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if (name == queue or name.startswith(queue + "\x06\x16")) and client.type(key) in (
                b"list",
                "list",
            ):
                yield from cast(list[bytes], client.lrange(key, 0, -1))
    yield from _unacked(client, stale_before)


def covered_campaigns(client: redis.Redis, stale_before: float | None = None) -> set[str]:
    """The ids of campaigns that some send job in Redis will still work on.

    With `stale_before` (a Unix time), jobs delivered to a worker before then do not count.
    """
    found = set()
    for raw in _raw_jobs(client, stale_before):
        campaign_id = _campaign_of(raw)
        if campaign_id is not None:
            found.add(campaign_id)
    return found
