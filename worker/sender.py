"""Sends one claim's messages concurrently and turns each answer into an Outcome.

One process-wide thread pool keeps up to WAHERO_CONCURRENCY requests in flight. Messages go out
at the slots the shared limiter granted (worker/limiter.py); every send first checks the
campaign's stop flag and the key's shared block, so once a halt or a 429 is known no new request
starts. Each answer's rate-limit headers and 429s are fed back into the limiter at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import RedisError

from worker import stopflags
from worker.client import SendResult, WaheroClient
from worker.errors import (
    ForbiddenError,
    QuotaExceededError,
    RateLimitedError,
    SendError,
    UnauthorizedError,
)
from worker.limiter import Grant, LimiterUnavailable, get_limiter, quota_reset
from worker.policy import campaign_effect, decide
from worker.settings import ConfigError, Settings
from worker.store import CampaignChange, Claim, Claimed, Outcome

log = logging.getLogger("wahero_bulk.sender")

# How long one Redis answer on "may this campaign send now?" serves this process's sends.
CHECK_TTL_SECONDS = stopflags.VISIBLE_WITHIN_SECONDS


@dataclass(frozen=True)
class _Sent:
    message: Claimed
    started_at: datetime
    finished_at: datetime
    result: SendResult | None = None
    error: SendError | None = None
    # Set when a successful answer said the daily quota is now spent: pause until then.
    quota_until: datetime | None = None


@dataclass(frozen=True)
class BatchResult:
    """What happened to a claim: outcomes to record, ids to release, and any campaign change."""

    outcomes: list[Outcome]
    released: list[int]
    change: CampaignChange | None


class Sender:
    """A process's client, thread pool and identity; built once per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = WaheroClient(settings, pool_size=settings.concurrency)
        self.pool = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="wahero-send"
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.limiter = get_limiter(settings)
        # (campaign, key fingerprint, pace) -> (valid until, may send): see _may_send.
        self._checks: dict[tuple[str, str, int], tuple[float, bool]] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def acquire(self, want: int, max_wait: float) -> Grant:
        """Slots for up to `want` sends from the shared limiter (count 0 if none within max_wait).

        Raises LimiterUnavailable when Redis cannot be reached: then nothing may be sent.
        """
        return self.limiter.acquire_blocking(self.client.key_fingerprint, want, max_wait)

    def send_claim(self, claim: Claim, grant: Grant | None = None) -> BatchResult:
        """Send every claimed message at its slot (skipping those after a stop); decide outcomes."""
        futures: list[Future[_Sent | int]] = []
        offsets = grant.offsets() if grant is not None else []
        origin = grant.at if grant is not None else time.monotonic()
        fp = grant.fingerprint if grant is not None else self.client.key_fingerprint
        for index, message in enumerate(claim.messages):
            # The job's own thread paces the pool, so no pool thread sleeps and slots keep order.
            delay = origin + (offsets[index] if index < len(offsets) else 0.0) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self._send_one, claim, message, fp, grant))
        done = [future.result() for future in futures]
        outcomes: list[Outcome] = []
        released: list[int] = []
        change: CampaignChange | None = None
        quota_until: datetime | None = None
        for item in done:
            if isinstance(item, int):
                released.append(item)
                continue
            outcome = self._decide(item)
            outcomes.append(outcome)
            if item.error is not None and change is None:
                change = _campaign_change(item.error)
            if item.quota_until is not None:
                quota_until = max(quota_until or item.quota_until, item.quota_until)
        if change is None and quota_until is not None:
            why = "the daily quota is spent (X-RateLimit-Remaining: 0)"
            change = CampaignChange("pause", "QUOTA_EXCEEDED", why, quota_until)
        return BatchResult(outcomes, released, change)

    def _may_send(self, claim: Claim, fp: str, grant: Grant | None) -> bool:
        """Whether the campaign is not stopped and the slot still holds; unsure means no."""
        if stopflags.stopped_here(claim.campaign_id):
            return False
        # One answer from Redis serves every send of this campaign, key and pace for a few ms:
        # a flag set by another process reaches this one within CHECK_TTL_SECONDS, long before
        # the halting batch is even recorded, and sends need not queue on Redis one by one.
        cache_key = (claim.campaign_id, fp, grant.limit if grant is not None else 0)
        now = time.monotonic()
        cached = self._checks.get(cache_key)
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            # One thread asks Redis; the others keep the last answer for that round trip.
            self._checks[cache_key] = (now + CHECK_TTL_SECONDS, cached[1])
        stop_key = stopflags.key(claim.campaign_id)
        try:
            if grant is None:
                allowed = self.limiter.may_send_now(fp, stop_key)
            else:
                allowed = self.limiter.may_send(grant, stop_key)
            if len(self._checks) > 1000:
                self._checks.clear()  # old campaigns' answers: never let the cache grow
            self._checks[cache_key] = (now + CHECK_TTL_SECONDS, allowed)
            return allowed
        except (LimiterUnavailable, RedisError) as error:
            # Without Redis there is no shared limit: never send unlimited.
            log.warning(
                "redis unreachable before a send campaign=%s error=%s; not sending",
                claim.campaign_id,
                type(error).__name__,
            )
            return False

    def _send_one(
        self, claim: Claim, message: Claimed, fp: str, grant: Grant | None = None
    ) -> _Sent | int:
        if not self._may_send(claim, fp, grant):
            return message.id
        started = datetime.now(UTC)
        try:
            result = self.client.send(claim.instance_id, message.phone, message.body)
        except ConfigError as error:
            # No key to send with (the key file vanished): nothing left; the message waits.
            log.warning("no API key before a send campaign=%s: %s", claim.campaign_id, error)
            return message.id
        except SendError as error:
            finished = datetime.now(UTC)
            if isinstance(error, UnauthorizedError | ForbiddenError | QuotaExceededError):
                # Stop every worker before the halt is even written: no request on a dead key.
                stopflags.stop(claim.campaign_id, error.code or error.outcome)
                self._checks.clear()
            if isinstance(error, RateLimitedError):
                # Every worker waits it out, not only this one.
                wait = error.retry_after
                self._feedback(lambda: self.limiter.block(fp, wait, "429"))
                self._checks.clear()
            log.info(
                "send failed campaign=%s message=%s outcome=%s code=%s http=%s",
                claim.campaign_id,
                message.id,
                error.outcome,
                error.code,
                error.http_status,
            )
            return _Sent(message, started, finished, error=error)
        finished = datetime.now(UTC)
        log.debug(
            "sent campaign=%s message=%s provider_id=%s",
            claim.campaign_id,
            message.id,
            result.provider_message_id,
        )
        self._feedback(lambda: self.limiter.observe(fp, result.rate_limit, finished))
        quota_until = quota_reset(result.rate_limit, finished)
        if quota_until is not None:
            # This send went through, but the next would be refused: stop the rest of the batch.
            stopflags.stop(claim.campaign_id, "QUOTA_EXCEEDED")
        return _Sent(message, started, finished, result=result, quota_until=quota_until)

    @staticmethod
    def _feedback(call: Callable[[], object]) -> None:
        # Losing one answer's feedback only costs a few 429s; the outcome must still be recorded.
        try:
            call()
        except LimiterUnavailable as error:
            log.warning("rate limiter feedback lost: %s", error)

    def _decide(self, item: _Sent) -> Outcome:
        s = self.settings
        error = item.error
        decision = decide(
            error,
            item.message.attempts + 1,
            s.max_attempts,
            s.retry_ambiguous,
            s.retry_base_delay,
            s.retry_max_delay,
            item.finished_at,
        )
        if error is None:
            result = item.result
            assert result is not None
            return Outcome(
                message_id=item.message.id,
                status=str(decision.status),
                counts_attempt=True,
                provider_message_id=result.provider_message_id,
                cost=result.cost,
                currency=result.currency,
                http_status=result.http_status,
                sent_at=item.finished_at,
                attempt_outcome="sent",
                started_at=item.started_at,
                finished_at=item.finished_at,
                key_fingerprint=result.key_fingerprint,
            )
        return Outcome(
            message_id=item.message.id,
            status=str(decision.status),
            counts_attempt=decision.counts_attempt,
            next_attempt_at=decision.retry_at,
            error_code=error.code or error.outcome.upper(),
            error_message=error.detail,
            http_status=error.http_status,
            attempt_outcome=error.outcome,
            started_at=item.started_at,
            finished_at=item.finished_at,
            key_fingerprint=error.key_fingerprint,
            dead_letter=decision.dead_letter,
        )


def _campaign_change(error: SendError) -> CampaignChange | None:
    effect = campaign_effect(error)
    if effect.action == "continue":
        return None
    until = effect.until
    if effect.action == "pause" and until is None:
        until = datetime.now(UTC) + timedelta(hours=1)
    return CampaignChange(
        effect.action, effect.code or error.outcome.upper(), effect.message or error.detail, until
    )


_sender: Sender | None = None
_sender_pid: int | None = None
_sender_lock = threading.Lock()


def get_sender(settings: Settings) -> Sender:
    """The process's Sender (a forked child builds its own)."""
    global _sender, _sender_pid
    with _sender_lock:
        if _sender is None or _sender_pid != os.getpid():
            _sender = Sender(settings)
            _sender_pid = os.getpid()
        return _sender
