"""Sends one claim's messages concurrently and turns each answer into an Outcome.

One process-wide thread pool keeps up to WAHERO_CONCURRENCY requests in flight; every send first
checks the campaign's stop flag, so once a halt is recorded no new request starts for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker import stopflags
from worker.client import SendResult, WaheroClient
from worker.errors import ForbiddenError, QuotaExceededError, SendError, UnauthorizedError
from worker.policy import campaign_effect, decide
from worker.settings import Settings
from worker.store import CampaignChange, Claim, Claimed, Outcome

log = logging.getLogger("wahero_bulk.sender")


@dataclass(frozen=True)
class _Sent:
    message: Claimed
    started_at: datetime
    finished_at: datetime
    result: SendResult | None = None
    error: SendError | None = None


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

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def send_claim(self, claim: Claim) -> BatchResult:
        """Send every claimed message (skipping those after a stop) and decide their outcomes."""
        futures = [self.pool.submit(self._send_one, claim, message) for message in claim.messages]
        done = [future.result() for future in futures]
        outcomes: list[Outcome] = []
        released: list[int] = []
        change: CampaignChange | None = None
        for item in done:
            if isinstance(item, int):
                released.append(item)
                continue
            outcome = self._decide(item)
            outcomes.append(outcome)
            if item.error is not None and change is None:
                change = _campaign_change(item.error)
        return BatchResult(outcomes, released, change)

    def _send_one(self, claim: Claim, message: Claimed) -> _Sent | int:
        reason = stopflags.stopped(claim.campaign_id)
        if reason is not None:
            return message.id
        started = datetime.now(UTC)
        try:
            result = self.client.send(claim.instance_id, message.phone, message.body)
        except SendError as error:
            finished = datetime.now(UTC)
            if isinstance(error, UnauthorizedError | ForbiddenError | QuotaExceededError):
                # Stop every worker before the halt is even written: no request on a dead key.
                stopflags.stop(claim.campaign_id, error.code or error.outcome)
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
        return _Sent(message, started, finished, result=result)

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
