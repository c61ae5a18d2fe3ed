"""The shared limiter's Lua script against the real Redis: rate, burst, blocks, adoption, clock."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from tests.workerproc import PrivateRedis
from worker.client import RateLimitHeaders
from worker.limiter import Grant, Limiter, LimiterUnavailable, quota_reset
from worker.settings import RateLimit

FP = "0badc0de"


@pytest.fixture()
def redis_client(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    """A redis-server of the test's own: timing checks that no other test run can disturb."""
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


def limiter(client: redis.Redis, count: int | None = 20, per: float = 1.0, **kw: Any) -> Limiter:
    rate = RateLimit(count, per) if count else None
    return Limiter(client, rate, **kw)


def headers(limit: int | None, remaining: int | None, reset_in: float | None) -> RateLimitHeaders:
    now = datetime.now(UTC)
    reset = now + timedelta(seconds=reset_in) if reset_in is not None else None
    return RateLimitHeaders(limit, remaining, reset)


def slots(grant: Grant) -> list[float]:
    """Each slot as a time.monotonic() instant."""
    return [grant.at + offset for offset in grant.offsets()]


def redis_slots(grant: Grant) -> list[float]:
    """Each slot on Redis' clock, in seconds: exact, whatever the load on this machine."""
    end = grant.end / 1_000_000
    return [end - (grant.count - i) * grant.interval for i in range(grant.count)]


def test_a_grant_is_evenly_spaced_and_at_most_one_horizon_deep(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, 20)
    grant = lim.acquire(FP, 100)
    assert grant.count == 20  # one second's worth at 20/s, though 100 were asked for
    assert grant.interval == pytest.approx(0.05)
    assert grant.offsets()[:3] == pytest.approx([0.0, 0.05, 0.10], abs=1e-3)
    assert grant.limit == 20
    more = lim.acquire(FP, 100)
    # The next slot follows the first grant's last (a horizon ahead), or there is a wait.
    if more.count:
        assert redis_slots(more)[0] == pytest.approx(redis_slots(grant)[-1] + 0.05, abs=1e-5)
    else:
        assert 0 < more.first_wait <= 0.05 + 1e-3
    small = limiter(redis_client, 20).acquire("other", 3)
    assert small.count == 3  # another key has its own schedule


def test_many_threads_and_clients_share_one_rate(redis_client: redis.Redis) -> None:
    url = redis_client.get_connection_kwargs()
    found: list[float] = []
    lock = threading.Lock()
    until = time.monotonic() + 1.5

    def run() -> None:
        own = limiter(
            redis.Redis(host=url["host"], port=url["port"]), 40
        )  # each thread like its own process
        while time.monotonic() < until:
            grant = own.acquire_blocking(FP, 3, max_wait=2.0)
            with lock:
                found.extend(redis_slots(grant))
            time.sleep(max(0.0, slots(grant)[-1] - time.monotonic()))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found.sort()
    gaps = [b - a for a, b in itertools.pairwise(found)]
    # 40/s: never two slots closer than 25 ms, whichever client or thread holds them.
    assert min(gaps) >= 0.025 - 1e-5
    achieved = (len(found) - 1) / (found[-1] - found[0])
    assert achieved == pytest.approx(40, rel=0.05)


def test_bursts_are_bounded_after_an_idle_spell(redis_client: redis.Redis) -> None:
    even = limiter(redis_client, 10).acquire(FP, 50)
    assert even.offsets()[:2] == pytest.approx([0.0, 0.1], abs=1e-3)  # default: no burst
    bursty = limiter(redis_client, 10, burst=3).acquire("idle", 50)
    offsets = bursty.offsets()
    assert offsets[:3] == [0.0, 0.0, 0.0]
    assert offsets[3] == pytest.approx(0.1, abs=1e-3)
    # The horizon still caps the grant: 3 burst slots plus one second at 10/s.
    assert bursty.count == 12


def test_a_block_stops_every_client_and_restarts_without_a_burst(
    redis_client: redis.Redis,
) -> None:
    first, second = limiter(redis_client, 10, burst=3), limiter(redis_client, 10, burst=3)
    assert first.block(FP, 0.3, "429")
    assert not second.block(FP, 0.1, "429")  # a shorter block never shortens a longer one
    assert 0.2 < second.blocked_for(FP) <= 0.3
    waiting = second.acquire(FP, 5)
    assert waiting.count == 0 and 0.15 < waiting.first_wait <= 0.3
    unlimited = limiter(redis_client, None).acquire(FP, 5)
    assert unlimited.count == 0  # no limit of our own still honours Wahero's block
    started = time.monotonic()
    grant = second.acquire_blocking(FP, 5, max_wait=2.0)
    assert time.monotonic() - started >= 0.1
    assert grant.count == 5
    # Saved-up burst slots do not survive a block: one at once, then evenly spaced.
    assert grant.offsets()[0] == 0
    assert redis_slots(grant)[1] - redis_slots(grant)[0] == pytest.approx(0.1, abs=1e-5)
    assert second.blocked_for(FP) == 0


def test_a_long_block_gives_up_at_max_wait(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, 10)
    lim.block(FP, 30, "429")
    started = time.monotonic()
    grant = lim.acquire_blocking(FP, 5, max_wait=0.5)
    assert time.monotonic() - started < 0.2  # a wait longer than allowed returns at once
    assert grant.count == 0 and grant.first_wait == pytest.approx(30, abs=0.1)


def test_remaining_zero_blocks_until_reset_and_far_reset_is_a_quota(
    redis_client: redis.Redis,
) -> None:
    lim = limiter(redis_client, 20)
    now = datetime.now(UTC)
    lim.observe(FP, headers(20, 3, 0.5), now)
    assert lim.blocked_for(FP) == 0
    lim.observe(FP, headers(20, 0, 0.5), now)
    assert 0.3 < lim.blocked_for(FP) <= 0.6
    far = headers(1000, 0, 6 * 3600)
    assert quota_reset(far, now) == far.reset
    assert quota_reset(headers(20, 0, 0.5), now) is None
    assert quota_reset(headers(20, 1, 6 * 3600), now) is None
    other = limiter(redis_client, 20)
    other.observe("day", far, now)
    assert other.blocked_for("day") == 0  # a spent day pauses campaigns; it blocks no key


def test_a_lower_limit_from_wahero_is_followed_and_logged_once(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wahero_bulk.limiter")
    one, two = limiter(redis_client, 20), limiter(redis_client, 20)
    now = datetime.now(UTC)
    before = one.acquire(FP, 50)  # slots reserved at our 20/s, a second's worth
    assert one.may_send(before)
    one.observe(FP, headers(8, 7, 1.0), now)
    one.observe(FP, headers(8, 6, 1.0), now)
    assert not one.may_send(before)  # reserved at the old pace: void, not sent
    two.observe(FP, headers(8, 5, 1.0), now)  # another process sees the same: no second log
    lowered = [r for r in caplog.records if "below WAHERO_RATE_LIMIT" in r.getMessage()]
    assert len(lowered) == 1
    grant = two.acquire(FP, 50)
    assert grant.limit == 8 and grant.interval == pytest.approx(0.125)
    assert grant.count == 8 and grant.offsets()[0] == 0  # the new pace starts at once
    assert two.may_send(grant)
    # A daily quota's Limit (its window far longer than ours) is not a rate.
    one.observe("quota", headers(5, 4, 6 * 3600), now)
    assert one.acquire("quota", 50).limit == 20
    # Wahero raising the limit again restores ours (never above it).
    one._adopted_seen.clear()
    one.observe(FP, headers(300, 299, 1.0), now)
    assert one.acquire("fresh", 1).limit == 20
    redis_client.delete(Limiter.key(FP))
    assert one.acquire(FP, 50).limit == 20


def test_unused_slots_go_back_only_from_the_newest_grant(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, 10)
    older = lim.acquire(FP, 4)
    newer = lim.acquire(FP, 4)
    assert not lim.refund(older, 2)  # someone reserved after it: leave a gap, move nothing
    assert lim.refund(newer, 3)
    again = lim.acquire(FP, 1)
    assert again.count == 1
    assert redis_slots(again)[0] == pytest.approx(redis_slots(newer)[0] + 0.1, abs=1e-5)


def test_the_schedule_runs_on_redis_clock_not_the_workers(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this worker's clock is an hour off
    grant = limiter(redis_client, 10).acquire(FP, 5)
    seconds, micros = redis_client.time()
    redis_now = seconds * 1_000_000 + micros
    stored = int(redis_client.hget(Limiter.key(FP), "tat") or 0)
    assert stored == grant.end
    assert 0 < stored - redis_now <= 500_000  # 5 slots of 100 ms ahead of *Redis'* now
    ttl = redis_client.pttl(Limiter.key(FP))
    assert 3_600_000 <= ttl <= 3_601_000  # the state is rebuildable: it expires when idle


def test_an_unreachable_redis_never_means_unlimited() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    lim = limiter(dead, None)
    with pytest.raises(LimiterUnavailable):
        lim.acquire(FP, 5)
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        lim.acquire_blocking(FP, 5, max_wait=0.5)
    assert time.monotonic() - started < 2.0
    with pytest.raises(LimiterUnavailable):
        lim.blocked_for(FP)


def test_redis_holds_fingerprints_only(redis_client: redis.Redis) -> None:
    lim = limiter(redis_client, 10)
    lim.acquire(FP, 1)
    lim.block(FP, 0.1, "429")
    assert [k.decode() for k in redis_client.keys("wahero:limit:*")] == [f"wahero:limit:{FP}"]


def test_a_stop_flag_is_checked_in_the_same_call(redis_client: redis.Redis) -> None:
    from worker import stopflags

    lim = limiter(redis_client, None)
    grant = lim.acquire(FP, 3)
    flag = stopflags.key("campaign-x")
    assert lim.may_send(grant, flag) and lim.may_send_now(FP, flag)
    redis_client.set(flag, "UNAUTHORIZED")
    assert not lim.may_send(grant, flag)
    assert not lim.may_send_now(FP, flag)
    assert lim.may_send(grant)  # other campaigns on the same key are not stopped
