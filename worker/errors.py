"""One exception tree for everything a send to Wahero can end in (see WAHERO_API.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

_MAX_DETAIL = 300


def _one_line(text: str) -> str:
    """Collapse whitespace and cap the length, so a proxy's HTML page stays one short line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_DETAIL else flat[: _MAX_DETAIL - 1] + "…"


class SendError(Exception):
    """A message could not be confirmed as sent; `outcome` is the label stored in the database."""

    outcome: str = "transient"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        key_fingerprint: str | None = None,
    ) -> None:
        self.detail = _one_line(detail)
        self.code = code
        self.http_status = http_status
        # Which key was used (first 8 hex digits of its SHA-256): never the key itself.
        self.key_fingerprint = key_fingerprint
        super().__init__(self.detail)

    def _extra(self) -> dict[str, Any]:
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments need a custom reduce to survive pickling (Celery results).
        kwargs = {
            "code": self.code,
            "http_status": self.http_status,
            "key_fingerprint": self.key_fingerprint,
            **self._extra(),
        }
        return (_rebuild, (type(self), self.detail, kwargs))

    def __str__(self) -> str:
        status = f"HTTP {self.http_status}" if self.http_status else ""
        where = " ".join(part for part in (self.code, status) if part)
        return f"{where}: {self.detail}" if where else self.detail

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, http_status={self.http_status!r}, "
            f"detail={self.detail!r})"
        )


def _rebuild(cls: type[SendError], detail: str, kwargs: dict[str, Any]) -> SendError:
    return cls(detail, **kwargs)


class PermanentError(SendError):
    """Wahero refused this request for good: retrying the same request cannot succeed."""

    outcome = "invalid"


class UnauthorizedError(PermanentError):
    """401: the API key is invalid, missing, expired or revoked; nothing can be sent with it."""

    outcome = "unauthorized"


class ForbiddenError(PermanentError):
    """403: the key is valid but has no access to this resource (usually the instance)."""

    outcome = "forbidden"


class InvalidRequestError(PermanentError):
    """400/404/422 and other 4xx: this message can never succeed as it is."""

    outcome = "invalid"


class ThrottledError(SendError):
    """Wahero asks us to come back later; the attempt does not count as a failure."""

    outcome = "rate_limited"


class RateLimitedError(ThrottledError):
    """429 RATE_LIMIT_EXCEEDED: too fast; wait `retry_after` seconds."""

    outcome = "rate_limited"

    def __init__(self, detail: str, *, retry_after: float = 60.0, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after

    def _extra(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class QuotaExceededError(ThrottledError):
    """402, or 429 QUOTA_EXCEEDED / INSUFFICIENT_BALANCE: nothing more until `resume_at` (UTC)."""

    outcome = "quota"

    def __init__(self, detail: str, *, resume_at: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.resume_at = resume_at

    def _extra(self) -> dict[str, Any]:
        return {"resume_at": self.resume_at}


class TransientError(SendError):
    """The request never reached Wahero, or Wahero refused it with its own error: safe to retry."""

    outcome = "transient"


class AmbiguousError(SendError):
    """The request may have been delivered and charged (read timeout, dropped answer, proxy 5xx)."""

    outcome = "ambiguous"
