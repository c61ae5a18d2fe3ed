"""Stop flags: how every worker learns within one request that a campaign must not send.

PostgreSQL holds the campaign's status; the flag in Redis (and a copy in this process) only lets
workers stop *between* sends without a database round trip. A flag lost with Redis costs at most
one batch: the next claim checks the campaign's status in PostgreSQL.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import redis

from worker.settings import get_settings

_TTL_SECONDS = 7 * 24 * 3600
_local: dict[str, str] = {}
_lock = threading.Lock()


def _key(campaign_id: str) -> str:
    return f"wahero:stop:{campaign_id}"


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().redis_url,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def stop(campaign_id: str, reason: str) -> None:
    """Tell every worker to start no new send for this campaign."""
    with _lock:
        _local[campaign_id] = reason
    _redis().set(_key(campaign_id), reason, ex=_TTL_SECONDS)


def clear(campaign_id: str) -> None:
    """Let the campaign send again (after resume)."""
    with _lock:
        _local.pop(campaign_id, None)
    _redis().delete(_key(campaign_id))


def forget_local(campaign_id: str) -> None:
    """Drop this process's copy so the next check asks Redis again."""
    with _lock:
        _local.pop(campaign_id, None)


def stopped(campaign_id: str) -> str | None:
    """The reason the campaign must not send, or None; asks Redis unless this process knows."""
    reason = _local.get(campaign_id)
    if reason is not None:
        return reason
    value = _redis().get(_key(campaign_id))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
