"""What happens after a send: pure functions implementing WAHERO_API.md's outcome table."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from models.statuses import MessageStatus
from worker.errors import (
    AmbiguousError,
    ForbiddenError,
    PermanentError,
    QuotaExceededError,
    RateLimitedError,
    SendError,
    TransientError,
    UnauthorizedError,
)

# When Wahero says the quota is gone but not until when, look again in an hour.
DEFAULT_QUOTA_PAUSE = timedelta(hours=1)


@dataclass(frozen=True)
class CampaignEffect:
    """What one send's outcome does to its whole campaign."""

    action: Literal["continue", "halt", "pause"]
    code: str | None = None
    message: str | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class MessageDecision:
    """The message's next state after one send."""

    status: MessageStatus
    counts_attempt: bool
    retry_at: datetime | None = None
    dead_letter: bool = False
    error_code: str | None = None


def is_retryable(error: SendError, retry_ambiguous: bool) -> bool:
    """Whether sending the same message again later may succeed without risking a duplicate."""
    if isinstance(error, AmbiguousError):
        return retry_ambiguous
    return not isinstance(error, PermanentError)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt `attempt` (1-based): uniform(0, min(cap, base * 2**(n-1)))."""
    exponent = min(max(attempt, 1) - 1, 64)  # bounded so huge attempt numbers cannot overflow
    ceiling = min(cap, base * 2.0**exponent)
    return (rng or random).uniform(0.0, ceiling)


def _code(error: SendError) -> str:
    return error.code or error.outcome.upper()


def campaign_effect(error: SendError | None, now: datetime | None = None) -> CampaignEffect:
    """UNAUTHORIZED/FORBIDDEN halt the campaign, an exhausted quota pauses it, the rest continue."""
    if isinstance(error, UnauthorizedError | ForbiddenError):
        return CampaignEffect("halt", _code(error), str(error))
    if isinstance(error, QuotaExceededError):
        until = error.resume_at or (now or datetime.now(UTC)) + DEFAULT_QUOTA_PAUSE
        return CampaignEffect("pause", _code(error), str(error), until)
    return CampaignEffect("continue")


def decide(
    error: SendError | None,
    attempts_done: int,
    max_attempts: int,
    retry_ambiguous: bool,
    base: float,
    cap: float,
    now: datetime,
    rng: random.Random | None = None,
) -> MessageDecision:
    """The message's next state; `attempts_done` includes the attempt that just ended."""
    if error is None:
        return MessageDecision(MessageStatus.SENT, counts_attempt=True)
    code = _code(error)
    if isinstance(error, UnauthorizedError):
        return MessageDecision(MessageStatus.DEAD, True, dead_letter=True, error_code=code)
    if isinstance(error, RateLimitedError):
        retry_at = now + timedelta(seconds=error.retry_after)
        return MessageDecision(MessageStatus.PENDING, False, retry_at, error_code=code)
    if isinstance(error, QuotaExceededError):
        retry_at = error.resume_at or now + DEFAULT_QUOTA_PAUSE
        return MessageDecision(MessageStatus.PENDING, False, retry_at, error_code=code)
    if isinstance(error, PermanentError):
        return MessageDecision(MessageStatus.FAILED, True, error_code=code)
    if isinstance(error, AmbiguousError) and not retry_ambiguous:
        return MessageDecision(MessageStatus.UNKNOWN, True, error_code=code)
    if isinstance(error, TransientError | AmbiguousError) and attempts_done < max_attempts:
        delay = backoff_delay(attempts_done, base, cap, rng)
        return MessageDecision(
            MessageStatus.PENDING, True, now + timedelta(seconds=delay), error_code=code
        )
    if isinstance(error, TransientError | AmbiguousError):
        return MessageDecision(MessageStatus.FAILED, True, error_code=code)
    # A SendError of no known kind: it may have been sent, so never risk a duplicate.
    return MessageDecision(MessageStatus.UNKNOWN, True, error_code=code)
