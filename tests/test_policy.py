"""The retry policy and the outcome table of WAHERO_API.md, as pure functions."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta

import pytest

from models.statuses import MessageStatus
from worker.errors import (
    AmbiguousError,
    ForbiddenError,
    InvalidRequestError,
    PermanentError,
    QuotaExceededError,
    RateLimitedError,
    SendError,
    TransientError,
    UnauthorizedError,
)
from worker.policy import backoff_delay, campaign_effect, decide, is_retryable

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(hours=7)


# ------------------------------------------------------------------ backoff


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 10])
def test_backoff_stays_within_the_exponential_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(900.0, 2.0 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, 2.0, 900.0, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter: the draws spread over the whole range, not just near the ceiling.
    assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_backoff_is_capped_even_for_huge_attempt_numbers() -> None:
    rng = random.Random(0)
    assert all(backoff_delay(10_000, 2.0, 30.0, rng) <= 30.0 for _ in range(100))


def test_backoff_is_deterministic_with_a_seeded_rng() -> None:
    first = [backoff_delay(3, 1.0, 60.0, random.Random(7)) for _ in range(3)]
    assert first == [backoff_delay(3, 1.0, 60.0, random.Random(7)) for _ in range(3)]


def test_backoff_treats_attempt_zero_as_the_first() -> None:
    assert backoff_delay(0, 4.0, 60.0, random.Random(1)) <= 4.0


# ------------------------------------------------------------------ retryability


@pytest.mark.parametrize(
    ("error", "ambiguous_ok", "expected"),
    [
        (TransientError("x"), False, True),
        (RateLimitedError("x"), False, True),
        (QuotaExceededError("x"), False, True),
        (AmbiguousError("x"), False, False),
        (AmbiguousError("x"), True, True),
        (UnauthorizedError("x"), True, False),
        (ForbiddenError("x"), True, False),
        (InvalidRequestError("x"), True, False),
    ],
)
def test_is_retryable(error: SendError, ambiguous_ok: bool, expected: bool) -> None:
    assert is_retryable(error, ambiguous_ok) is expected


# ------------------------------------------------------------------ the outcome table


def test_success_is_sent() -> None:
    decision = decide(None, 1, 5, False, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.SENT and decision.retry_at is None
    assert decision.counts_attempt and decision.error_code is None
    assert campaign_effect(None, NOW).action == "continue"


def test_unauthorized_is_dead_lettered_and_halts_the_campaign() -> None:
    error = UnauthorizedError("bad key", code="UNAUTHORIZED", http_status=401)
    decision = decide(error, 1, 5, True, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.DEAD and decision.dead_letter
    assert decision.retry_at is None and decision.error_code == "UNAUTHORIZED"
    effect = campaign_effect(error, NOW)
    assert effect.action == "halt" and effect.code == "UNAUTHORIZED"


def test_forbidden_fails_the_message_and_halts_the_campaign() -> None:
    error = ForbiddenError("no access", code="FORBIDDEN", http_status=403)
    decision = decide(error, 1, 5, True, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.FAILED and not decision.dead_letter
    assert decision.retry_at is None and decision.error_code == "FORBIDDEN"
    assert campaign_effect(error, NOW).action == "halt"


def test_rate_limited_waits_retry_after_without_counting() -> None:
    error = RateLimitedError("slow down", code="RATE_LIMIT_EXCEEDED", retry_after=42.0)
    decision = decide(error, 5, 5, False, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.PENDING and not decision.counts_attempt
    assert decision.retry_at == NOW + timedelta(seconds=42)
    assert campaign_effect(error, NOW).action == "continue"


def test_quota_pauses_the_campaign_until_the_reset() -> None:
    error = QuotaExceededError("quota", code="QUOTA_EXCEEDED", resume_at=LATER)
    decision = decide(error, 5, 5, False, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.PENDING and not decision.counts_attempt
    assert decision.retry_at == LATER
    effect = campaign_effect(error, NOW)
    assert (effect.action, effect.until, effect.code) == ("pause", LATER, "QUOTA_EXCEEDED")


def test_quota_without_a_reset_time_pauses_for_an_hour() -> None:
    error = QuotaExceededError("quota", code="INSUFFICIENT_BALANCE")
    assert campaign_effect(error, NOW).until == NOW + timedelta(hours=1)
    assert decide(error, 1, 5, False, 2.0, 900.0, NOW).retry_at == NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "BAD_REQUEST"), (422, "VALIDATION_ERROR"), (404, "INSTANCE_NOT_FOUND")],
)
def test_invalid_requests_fail_without_retry(status: int, code: str) -> None:
    error = InvalidRequestError("no", code=code, http_status=status)
    decision = decide(error, 1, 5, True, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.FAILED and decision.error_code == code
    assert decision.retry_at is None
    assert campaign_effect(error, NOW).action == "continue"


@pytest.mark.parametrize("code", ["CONNECT_ERROR", "CONNECT_TIMEOUT", "INTERNAL_ERROR"])
def test_transient_errors_retry_with_backoff(code: str) -> None:
    decision = decide(
        TransientError("x", code=code), 2, 5, False, 2.0, 900.0, NOW, random.Random(3)
    )
    assert decision.status is MessageStatus.PENDING and decision.counts_attempt
    assert decision.retry_at is not None
    assert NOW <= decision.retry_at <= NOW + timedelta(seconds=4)
    assert decision.error_code == code


def test_transient_errors_fail_when_attempts_are_exhausted() -> None:
    decision = decide(TransientError("x", code="INTERNAL_ERROR"), 5, 5, False, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.FAILED and decision.error_code == "INTERNAL_ERROR"
    assert decision.retry_at is None


@pytest.mark.parametrize("code", ["READ_TIMEOUT", "CONNECTION_DROPPED", "UNREADABLE_RESPONSE"])
def test_ambiguous_outcomes_are_unknown_and_not_retried(code: str) -> None:
    decision = decide(AmbiguousError("x", code=code), 1, 5, False, 2.0, 900.0, NOW)
    assert decision.status is MessageStatus.UNKNOWN and decision.retry_at is None
    assert decision.error_code == code


def test_ambiguous_outcomes_retry_when_the_user_accepts_duplicates() -> None:
    retry = decide(AmbiguousError("x"), 1, 5, True, 2.0, 900.0, NOW, random.Random(1))
    assert retry.status is MessageStatus.PENDING and retry.retry_at is not None
    last = decide(AmbiguousError("x"), 5, 5, True, 2.0, 900.0, NOW)
    assert last.status is MessageStatus.FAILED


def test_error_code_falls_back_to_the_outcome_label() -> None:
    assert decide(TransientError("x"), 9, 5, False, 1.0, 1.0, NOW).error_code == "TRANSIENT"


# ------------------------------------------------------------------ the error tree


def test_error_tree_groups_permanent_errors() -> None:
    for kind in (UnauthorizedError, ForbiddenError, InvalidRequestError):
        assert issubclass(kind, PermanentError) and issubclass(kind, SendError)
    labels = {
        kind("x").outcome
        for kind in (
            UnauthorizedError,
            ForbiddenError,
            RateLimitedError,
            QuotaExceededError,
            InvalidRequestError,
            TransientError,
            AmbiguousError,
        )
    }
    assert labels == {
        "unauthorized",
        "forbidden",
        "rate_limited",
        "quota",
        "invalid",
        "transient",
        "ambiguous",
    }


def test_errors_are_one_line_and_survive_pickling() -> None:
    error = QuotaExceededError(
        "quota\n  gone", code="QUOTA_EXCEEDED", http_status=429, resume_at=LATER
    )
    assert str(error) == "QUOTA_EXCEEDED HTTP 429: quota gone"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.http_status, copy.resume_at, copy.detail) == (
        "QUOTA_EXCEEDED",
        429,
        LATER,
        "quota gone",
    )
    limited = pickle.loads(pickle.dumps(RateLimitedError("x", retry_after=3.5)))
    assert limited.retry_after == 3.5
