"""Stop flags: how every worker learns within one request that a campaign must not send.

PostgreSQL holds the campaign's status; the flag in Redis (and a copy in this process) only lets
workers stop *between* sends without a database round trip. A flag lost with Redis costs at most
one batch: the next claim checks the campaign's status in PostgreSQL.
"""

from __future__ import annotations

import threading

from worker.redis_client import get_redis

_TTL_SECONDS = 7 * 24 * 3600
# Every worker process sees a raised flag within this long (its send check is shared that long).
VISIBLE_WITHIN_SECONDS = 0.02
_local: dict[str, str] = {}
_lock = threading.Lock()


def key(campaign_id: str) -> str:
    """The Redis key of a campaign's stop flag (the limiter checks it in the same call)."""
    return f"wahero:stop:{campaign_id}"


def stop(campaign_id: str, reason: str) -> None:
    """Tell every worker to start no new send for this campaign."""
    # Redis first: a worker that drops its local copy (forget_local) must still find the flag.
    get_redis().set(key(campaign_id), reason, ex=_TTL_SECONDS)
    with _lock:
        _local[campaign_id] = reason


def clear(campaign_id: str) -> None:
    """Let the campaign send again (after resume)."""
    with _lock:
        _local.pop(campaign_id, None)
    get_redis().delete(key(campaign_id))


def forget_local(campaign_id: str) -> None:
    """Drop this process's copy so the next check asks Redis again."""
    with _lock:
        _local.pop(campaign_id, None)


def stopped_here(campaign_id: str) -> bool:
    """Whether this process already knows the campaign must not send (no Redis call)."""
    return campaign_id in _local


def stopped(campaign_id: str) -> str | None:
    """The reason the campaign must not send, or None; asks Redis unless this process knows."""
    reason = _local.get(campaign_id)
    if reason is not None:
        return reason
    value = get_redis().get(key(campaign_id))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
