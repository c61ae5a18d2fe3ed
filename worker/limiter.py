"""The shared rate limiter: one GCRA schedule per API key in Redis, for every worker process.

Everything runs in ONE Lua script on Redis' own clock (`TIME`), so workers on machines with
skewed clocks still share one schedule. A grant is a run of evenly spaced *slots* (at most
`horizon` seconds ahead): the worker claims exactly that many messages and sends each at its slot.
Wahero's answers feed back: a 429 blocks the key for every worker until its Retry-After, a
`X-RateLimit-Remaining: 0` blocks it until the window resets, and a lower `X-RateLimit-Limit`
replaces the configured count. Redis holds nothing that cannot be rebuilt: a wiped key only
forgets the schedule, the block and the adopted limit.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from worker.client import RateLimitHeaders
from worker.settings import RateLimit, Settings

log = logging.getLogger("wahero_bulk.limiter")

# A zero Remaining whose reset is further away than this is a daily quota, not a rate window.
QUOTA_HORIZON = timedelta(minutes=5)
# How often a process repeats an adopted limit to Redis (a wiped Redis forgets it).
ADOPT_REFRESH_SECONDS = 60.0
# Longest shared block we accept from one answer (a garbage Retry-After must not stall a day).
MAX_BLOCK_SECONDS = 3600.0

_US = 1_000_000

# KEYS[1] = wahero:limit:{fingerprint}, a hash: tat (next free slot), blocked (until), adopted.
# Times are integer microseconds on Redis' clock, written with %.0f so Lua's doubles stay exact.
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(field)
  return tonumber(redis.call('HGET', key, field) or '0') or 0
end
local function keep(until_us)
  local ttl = math.max(0, math.floor((until_us - now) / 1000)) + 3600000
  redis.call('PEXPIRE', key, ttl)
end
local blocked = num('blocked')
if op == 'check' then
  -- KEYS[2], when given, is a campaign's stop flag (-2): one round trip before each send.
  if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
  -- A slot granted under a higher limit than the one now adopted is void (-1): drop it.
  local granted_under, adopted = tonumber(ARGV[2]), num('adopted')
  if adopted > 0 and granted_under > adopted then return -1 end
  return math.max(0, blocked - now)
end
if op == 'block' then
  local until_us = now + tonumber(ARGV[2])
  if until_us <= blocked then return {0, blocked - now} end
  -- The schedule restarts empty after the block: no burst of saved-up slots.
  redis.call('HSET', key, 'blocked', string.format('%.0f', until_us),
             'tat', string.format('%.0f', math.max(num('tat'), until_us)))
  keep(until_us)
  return {1, until_us - now}
end
if op == 'adopt' then
  local limit, configured = tonumber(ARGV[2]), tonumber(ARGV[3])
  local adopted = num('adopted')
  if limit < configured then
    if adopted == limit then return 0 end
    -- Slots reserved at the old pace are void (see 'check'): the new pace starts now.
    redis.call('HSET', key, 'adopted', limit, 'tat', string.format('%.0f', now))
    keep(now)
    return limit
  end
  if adopted > 0 then
    redis.call('HDEL', key, 'adopted')
    return -1
  end
  return 0
end
if op == 'refund' then
  -- Only the newest grant can give slots back; an older one leaves a harmless gap.
  local tat, end_us, give = num('tat'), tonumber(ARGV[2]), tonumber(ARGV[3])
  if tat ~= end_us then return 0 end
  redis.call('HSET', key, 'tat', string.format('%.0f', math.max(now, tat - give)))
  return 1
end
-- op == 'acquire': ARGV = count (0: unlimited), per_us, want, horizon_us, burst
local count, per, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local horizon, burst = tonumber(ARGV[5]), tonumber(ARGV[6])
if blocked > now then return {0, blocked - now, 0, 0, 0} end
if count == 0 then return {want, 0, 0, 0, 0} end
local adopted = num('adopted')
if adopted > 0 and adopted < count then count = adopted end
local interval = math.ceil(per / count)
local start = math.max(num('tat'), now - (burst - 1) * interval)
-- Slots strictly less than `horizon` ahead: a grant holds at most one horizon of sends.
local room = now + horizon - start
if room <= 0 then return {0, 1 - room, interval, 0, count} end
local granted = math.min(want, math.ceil(room / interval))
local tat = start + granted * interval
redis.call('HSET', key, 'tat', string.format('%.0f', tat))
keep(tat)
-- Negative when burst slots lie in the past: those go out at once.
return {granted, start - now, interval, tat, count}
"""


class LimiterUnavailable(Exception):
    """Redis (and so the shared limit) cannot be reached: nothing may be sent until it can."""


@dataclass(frozen=True)
class Grant:
    """Slots to send in: `count` sends, the first after `first_wait` s, then every `interval` s.

    With count 0, `first_wait` is how long until a slot may be free again; a negative one means
    the first slots (a burst after an idle spell) are already due.
    """

    fingerprint: str
    count: int
    first_wait: float
    interval: float
    # The schedule's end after this grant (Redis µs), so unused slots can be given back.
    end: int = 0
    # The per-period count in force (configured, or a lower one adopted from Wahero).
    limit: int = 0
    # time.monotonic() when Redis answered: the slots count from here.
    at: float = 0.0

    def offsets(self) -> list[float]:
        """Seconds from the grant until each slot (0: at once)."""
        return [max(0.0, self.first_wait + i * self.interval) for i in range(self.count)]


class Limiter:
    """The shared limit of WAHERO_RATE_LIMIT (None: none of our own; Wahero's blocks still hold)."""

    def __init__(
        self,
        client: redis.Redis,
        rate: RateLimit | None,
        *,
        horizon: float = 1.0,
        burst: int = 1,
    ) -> None:
        self.client = client
        self.rate = rate
        # How far ahead one grant may reserve slots: bounds what a worker claims before sending.
        self.horizon = horizon
        # Slots that may go out back to back after an idle spell; 1 = evenly spaced, which keeps
        # any window of the plan's length within the plan's count.
        self.burst = max(1, burst)
        self._script = client.register_script(_SCRIPT)
        # Per key: the lower limit this process last told Redis, and when.
        self._adopted_seen: dict[str, tuple[int | None, float]] = {}

    @staticmethod
    def key(fingerprint: str) -> str:
        """The Redis key of a key's schedule; the plan's limit belongs to the API key."""
        return f"wahero:limit:{fingerprint}"

    def _call(self, fingerprint: str, *args: Any, also: str | None = None) -> Any:
        keys = [self.key(fingerprint)] if also is None else [self.key(fingerprint), also]
        try:
            return self._script(keys=keys, args=list(args))
        except redis.RedisError as error:
            raise LimiterUnavailable(f"rate limiter unreachable: {type(error).__name__}") from error

    def acquire(self, fingerprint: str, want: int) -> Grant:
        """One try: up to `want` slots now (count 0 and a wait when none is free)."""
        count = self.rate.count if self.rate else 0
        per_us = round(self.rate.per_seconds * _US) if self.rate else 0
        horizon_us = round(self.horizon * _US)
        granted, wait, interval, end, limit = self._call(
            fingerprint, "acquire", count, per_us, max(1, want), horizon_us, self.burst
        )
        return Grant(
            fingerprint,
            int(granted),
            wait / _US,
            interval / _US,
            int(end),
            int(limit),
            time.monotonic(),
        )

    def acquire_blocking(
        self, fingerprint: str, want: int, max_wait: float, stop: threading.Event | None = None
    ) -> Grant:
        """Wait (up to `max_wait` s) until at least one slot is granted.

        Returns a Grant of count 0 when the wait ran out; its `first_wait` says how much longer.
        Redis errors are retried within the wait; LimiterUnavailable when it never answered.
        """
        deadline = time.monotonic() + max_wait
        pause = 0.1
        while True:
            try:
                grant = self.acquire(fingerprint, want)
            except LimiterUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("rate limiter unreachable; not sending, retrying in %.1fs", pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            left = deadline - time.monotonic()
            if grant.count > 0 or grant.first_wait > left or (stop and stop.is_set()):
                return grant
            # A little jitter so workers woken by the same block do not all ask at once.
            nap = min(grant.first_wait, left) + random.uniform(0, 0.005)
            time.sleep(max(0.001, nap))

    def refund(self, grant: Grant, unused: int) -> bool:
        """Give back the last `unused` slots of the newest grant (fewer messages than slots)."""
        if unused <= 0 or grant.interval <= 0 or grant.end <= 0:
            return False
        give = round(unused * grant.interval * _US)
        return bool(self._call(grant.fingerprint, "refund", grant.end, give))

    def may_send(self, grant: Grant, stop_key: str | None = None) -> bool:
        """Whether a slot of this grant may still be used: no block, no lower limit since, and
        (with `stop_key`) no stop flag on the campaign; one round trip for all three."""
        return int(self._call(grant.fingerprint, "check", grant.limit, also=stop_key)) == 0

    def may_send_now(self, fingerprint: str, stop_key: str | None = None) -> bool:
        """Without a grant: whether the key is not blocked and the campaign not stopped."""
        return int(self._call(fingerprint, "check", 0, also=stop_key)) == 0

    def blocked_for(self, fingerprint: str) -> float:
        """Seconds until the key may send again (0 when not blocked)."""
        return max(0.0, float(self._call(fingerprint, "check", 0)) / _US)

    def block(self, fingerprint: str, seconds: float, reason: str) -> bool:
        """Stop every worker sending with this key for `seconds`; True if that extended a block."""
        seconds = min(max(seconds, 0.0), MAX_BLOCK_SECONDS)
        changed, left = self._call(fingerprint, "block", round(seconds * _US))
        if changed:
            log.warning(
                "rate limit: every worker waits %.1fs key=***%s reason=%s",
                left / _US,
                fingerprint,
                reason,
            )
        return bool(changed)

    def observe(self, fingerprint: str, headers: RateLimitHeaders | None, now: datetime) -> None:
        """Feed one answer's X-RateLimit-* headers back into the shared schedule."""
        if headers is None:
            return
        if headers.limit is not None and headers.limit > 0 and self.rate is not None:
            self._maybe_adopt(fingerprint, headers, now)
        if headers.remaining == 0 and headers.reset is not None:
            left = (headers.reset - now).total_seconds()
            # Further away is a daily quota: the campaign pauses (see quota_reset), no block.
            if 0 < left <= QUOTA_HORIZON.total_seconds():
                self.block(fingerprint, left, "remaining=0")

    def _maybe_adopt(self, fingerprint: str, headers: RateLimitHeaders, now: datetime) -> None:
        assert self.rate is not None and headers.limit is not None
        # Read the header as a count per our configured period, but only when its window is no
        # longer than that period: a daily quota's Limit must not become a per-minute rate.
        if headers.reset is not None:
            window = (headers.reset - now).total_seconds()
            if window > self.rate.per_seconds + 1.0:
                return
        lower = headers.limit if headers.limit < self.rate.count else None
        seen = self._adopted_seen.get(fingerprint)
        if (
            seen is not None
            and seen[0] == lower
            and time.monotonic() - seen[1] < ADOPT_REFRESH_SECONDS
        ):
            return  # this process already told Redis: no round trip per answer
        result = int(self._call(fingerprint, "adopt", headers.limit, self.rate.count))
        self._adopted_seen[fingerprint] = (lower, time.monotonic())
        if result > 0:
            log.warning(
                "rate limit: Wahero allows %d per %gs, below WAHERO_RATE_LIMIT=%s; following it",
                result,
                self.rate.per_seconds,
                self.rate,
            )
        elif result < 0:
            log.info("rate limit: Wahero's limit is back to at least %s", self.rate)


def quota_reset(headers: RateLimitHeaders | None, now: datetime) -> datetime | None:
    """When a successful answer says the daily quota is spent: the reset time, else None."""
    if headers is None or headers.remaining != 0 or headers.reset is None:
        return None
    return headers.reset if headers.reset - now > QUOTA_HORIZON else None


_limiter: Limiter | None = None
_limiter_pid: int | None = None
_lock = threading.Lock()


def get_limiter(settings: Settings) -> Limiter:
    """The process's limiter on REDIS_URL (a forked child builds its own)."""
    global _limiter, _limiter_pid
    from worker.redis_client import get_redis

    with _lock:
        if _limiter is None or _limiter_pid != os.getpid():
            _limiter = Limiter(get_redis(), settings.rate_limit)
            _limiter_pid = os.getpid()
        return _limiter
