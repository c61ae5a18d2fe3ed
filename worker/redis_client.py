"""The process's Redis client for stop flags, the limiter and queue inspection."""

from __future__ import annotations

import os
from functools import lru_cache

import redis

from worker.settings import get_settings


@lru_cache(maxsize=4)
def _client(url: str, pid: int) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def get_redis() -> redis.Redis:
    """A pooled client for REDIS_URL (a forked child gets its own)."""
    return _client(get_settings().redis_url, os.getpid())
