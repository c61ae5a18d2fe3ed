"""The Wahero HTTP client: one send, one typed result or one SendError.

Every assumption about Wahero's answers lives in `classify_response`; every assumption about
what a transport failure means lives in `classify_transport_error`. Fix the real API there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.request import getproxies, proxy_bypass

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

import worker
from worker.apikey import ApiKeySource, fingerprint
from worker.errors import (
    AmbiguousError,
    ForbiddenError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitedError,
    SendError,
    TransientError,
    UnauthorizedError,
)
from worker.settings import Settings

log = logging.getLogger(__name__)

SEND_PATH = "/api/v1/messages/send"
DEFAULT_RETRY_AFTER = 60.0
QUOTA_CODES = frozenset(
    {"QUOTA_EXCEEDED", "INSUFFICIENT_BALANCE", "DAILY_QUOTA_EXCEEDED", "INSUFFICIENT_CREDIT"}
)
NOT_CONNECTED_CODES = frozenset({"INSTANCE_NOT_CONNECTED", "INSTANCE_DISCONNECTED"})
INVALID_CODES = frozenset(
    {"VALIDATION_ERROR", "INVALID_PHONE", "MESSAGE_TOO_LONG", "INSTANCE_NOT_FOUND", "NOT_FOUND"}
)
_ID_PATHS: tuple[tuple[str, ...], ...] = (
    ("message_id",),
    ("messageId",),
    ("data", "message_id"),
    ("data", "messageId"),
    ("data", "id"),
)


@dataclass(frozen=True)
class RateLimitHeaders:
    """Wahero's X-RateLimit-* headers, as far as they were present and readable."""

    limit: int | None
    remaining: int | None
    reset: datetime | None


@dataclass(frozen=True)
class SendResult:
    """An accepted message: Wahero's id for it, what it cost, and how the exchange went."""

    provider_message_id: str | None
    cost: Decimal | None
    currency: str | None
    http_status: int
    elapsed: float
    key_fingerprint: str
    rate_limit: RateLimitHeaders | None


@dataclass(frozen=True)
class Pricing:
    """The configured fallback price, used when a response carries no cost."""

    price_per_message: Decimal | None = None
    currency: str = "IDR"


# ---------------------------------------------------------------- header parsing


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _reset_time(value: str | None, now: datetime) -> datetime | None:
    """X-RateLimit-Reset is documented as unix time; small numbers are read as seconds from now."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    if number is None or number < 0:
        return None
    if number < 1_000_000_000:
        return now + timedelta(seconds=number)
    return datetime.fromtimestamp(number, UTC)


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds, or as an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def parse_rate_limit_headers(headers: Mapping[str, str], now: datetime) -> RateLimitHeaders | None:
    """The X-RateLimit-* headers; None when none of them is present."""
    low = {k.lower(): v for k, v in headers.items()}
    raw = [low.get(f"x-ratelimit-{name}") for name in ("limit", "remaining", "reset")]
    if all(value is None for value in raw):
        return None
    return RateLimitHeaders(_int(raw[0]), _int(raw[1]), _reset_time(raw[2], now))


# ---------------------------------------------------------------- body parsing


def _parse_json(body: bytes) -> Any:
    """The decoded body with exact decimals, or None when it is not JSON."""
    try:
        return json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _dig(body: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(body, dict):
            return None
        body = body.get(name)
    return body


def _message_id(body: Any) -> str | None:
    for path in _ID_PATHS:
        value = _dig(body, path)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        return None
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def _cost(body: Any, pricing: Pricing) -> tuple[Decimal | None, str | None]:
    """Cost and currency from the body (top level or under data), else the configured price."""
    for holder in (body, _dig(body, ("data",))):
        if not isinstance(holder, dict):
            continue
        for name in ("cost", "price"):
            cost = _decimal(holder.get(name))
            if cost is not None:
                currency = holder.get("currency")
                if not isinstance(currency, str) or not currency.strip():
                    currency = pricing.currency
                return cost, currency.strip().upper()
    if pricing.price_per_message is not None:
        return pricing.price_per_message, pricing.currency
    return None, None


def _error_fields(body: Any) -> tuple[str | None, str | None]:
    """(code, message) from Wahero's error shape, tolerating near-misses."""
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    holder = error if isinstance(error, dict) else body
    code, message = holder.get("code"), holder.get("message")
    if isinstance(error, str) and message is None:
        message = error
    code = str(code).strip().upper() if isinstance(code, str | int) and str(code) else None
    return code, (str(message) if isinstance(message, str | int) else None)


# ---------------------------------------------------------------- the one place for API facts


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    elapsed: float = 0.0,
    key_fingerprint: str = "",
    pricing: Pricing | None = None,
    now: datetime | None = None,
) -> SendResult:
    """A SendResult for an accepted message; otherwise raises the matching SendError."""
    now = now or datetime.now(UTC)
    pricing = pricing or Pricing()
    data = _parse_json(body)
    code, message = _error_fields(data)
    is_dict = isinstance(data, dict)
    success = data.get("success") if is_dict else None
    rate = parse_rate_limit_headers(headers, now)
    fp = key_fingerprint or None

    def fail(
        kind: type[SendError], default: str, *, code: str | None = code, **more: Any
    ) -> NoReturn:
        raise kind(message or default, code=code, http_status=status, key_fingerprint=fp, **more)

    if 200 <= status < 300:
        accepted = success is True or (success is None and _message_id(data) is not None)
        if is_dict and accepted:
            cost, currency = _cost(data, pricing)
            return SendResult(
                _message_id(data), cost, currency, status, elapsed, key_fingerprint, rate
            )
        if not is_dict or success is not False:
            # A 2xx we cannot read may still have been accepted by Wahero.
            unreadable = code or "UNREADABLE_RESPONSE"
            fail(AmbiguousError, f"HTTP {status}: a body that is not Wahero's", code=unreadable)
    # From here on the answer is a refusal (an error status, or success: false).
    low = {k.lower(): v for k, v in headers.items()}
    if status == 402 or code in QUOTA_CODES:
        resume = _reset_time(low.get("x-ratelimit-reset"), now)
        if resume is None and (after := _retry_after(low.get("retry-after"), now)) is not None:
            resume = now + timedelta(seconds=after)
        fail(QuotaExceededError, "quota or balance exhausted", resume_at=resume)
    if status == 429 or code == "RATE_LIMIT_EXCEEDED":
        after = _retry_after(low.get("retry-after"), now)
        if after is None and rate is not None and rate.reset is not None:
            after = max(0.0, (rate.reset - now).total_seconds())
        fail(RateLimitedError, "rate limit exceeded", retry_after=_or(after, DEFAULT_RETRY_AFTER))
    if status == 401 or code == "UNAUTHORIZED":
        fail(UnauthorizedError, "the API key was rejected")
    if status == 403 or code == "FORBIDDEN":
        fail(ForbiddenError, "the API key has no access to this instance")
    if code in NOT_CONNECTED_CODES or status == 408:
        fail(TransientError, "the instance is not connected")
    if status in (502, 504):
        fail(AmbiguousError, f"HTTP {status} from a gateway: the message may have been sent")
    if status >= 500:
        if is_dict and (success is False or code is not None):
            fail(TransientError, f"Wahero refused the message (HTTP {status})")
        unreadable = code or "UNREADABLE_RESPONSE"
        fail(AmbiguousError, f"HTTP {status} without Wahero's error body", code=unreadable)
    if 300 <= status < 500 or code in INVALID_CODES:
        fail(InvalidRequestError, f"HTTP {status}: the request was refused")
    # success: false at 2xx with a code we do not know: refused, so not sent; retry to the limit.
    fail(TransientError, f"HTTP {status} with success: false")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def classify_transport_error(error: HTTPError, fp: str) -> SendError:
    """Whether a failed exchange never reached Wahero (transient) or may have been sent."""
    text = f"{type(error).__name__}: {error}"
    # NewConnectionError and NameResolutionError are ConnectTimeoutErrors in urllib3 2.
    if isinstance(error, ConnectTimeoutError):
        code = "CONNECT_TIMEOUT" if type(error) is ConnectTimeoutError else "CONNECT_ERROR"
        return TransientError(text, code=code, key_fingerprint=fp)
    if isinstance(error, ReadTimeoutError):
        return AmbiguousError(text, code="READ_TIMEOUT", key_fingerprint=fp)
    if isinstance(error, SSLError | ProxyError):
        # The TLS handshake (or the proxy's CONNECT) precedes the request: nothing was written.
        return TransientError(text, code="CONNECT_ERROR", key_fingerprint=fp)
    if isinstance(error, ProtocolError):
        return AmbiguousError(text, code="CONNECTION_DROPPED", key_fingerprint=fp)
    if isinstance(error, LocationValueError):
        return InvalidRequestError(text, code="BAD_URL", key_fingerprint=fp)
    # Anything else happened somewhere on the way: assume it may have been sent.
    return AmbiguousError(text, code="TRANSPORT_ERROR", key_fingerprint=fp)


def _pool_manager(url: str, size: int) -> urllib3.PoolManager:
    """A connection pool of `size` per host, through the environment's proxy if it names one."""
    scheme = url.split("://", 1)[0]
    host = urllib3.util.parse_url(url).host or ""
    proxy = getproxies().get(scheme)
    if proxy and not proxy_bypass(host):
        return urllib3.ProxyManager(proxy, num_pools=4, maxsize=size, block=False)
    return urllib3.PoolManager(num_pools=4, maxsize=size, block=False)


def _direct_pool(manager: urllib3.PoolManager, url: str) -> urllib3.HTTPConnectionPool | None:
    """The host's own pool when no proxy is in the way (None through a proxy).

    A send through it skips the manager's URL parsing and pool lookup: a fifth of the client's
    CPU per send.
    """
    if isinstance(manager, urllib3.ProxyManager):
        return None
    return manager.connection_from_url(url)


# ---------------------------------------------------------------- the client


class WaheroClient:
    """Sends one message at a time over a pooled, thread-safe HTTP session; never retries."""

    def __init__(self, settings: Settings, pool_size: int | None = None) -> None:
        self._settings = settings
        self._keys = ApiKeySource.from_settings(settings)
        self._url = settings.base_url + SEND_PATH
        self._timeout = urllib3.Timeout(
            connect=settings.connect_timeout, read=settings.read_timeout
        )
        self._pricing = Pricing(settings.price_per_message, settings.currency)
        # urllib3 directly (the transport under requests): half the CPU per send of a Session.
        self._pool = _pool_manager(self._url, pool_size or settings.concurrency)
        self._direct = _direct_pool(self._pool, self._url)
        self._target = urllib3.util.parse_url(self._url).request_uri
        self._headers = {
            "User-Agent": f"wahero-bulk/{worker.__version__}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

    @property
    def key_fingerprint(self) -> str:
        """Fingerprint of the key the next send will use."""
        return self._keys.fingerprint()

    def send(self, instance_id: str, phone: str, message: str) -> SendResult:
        """POST one message; returns the accepted result or raises a SendError subclass."""
        key = self._keys.get()
        fp = fingerprint(key)
        payload = {"instanceId": instance_id, "phone": phone, "message": message}
        if log.isEnabledFor(logging.DEBUG):
            log.debug("POST %s headers={'X-Api-Key': '***%s'}", self._url, fp)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        started = time.monotonic()
        headers = {**self._headers, "X-Api-Key": key}
        try:
            # No retries: they are the policy's to decide, never the transport's. No redirects:
            # one would turn the POST into a GET.
            options: dict[str, Any] = {
                "body": body,
                "headers": headers,
                "timeout": self._timeout,
                "retries": False,
                "redirect": False,
            }
            if self._direct is not None:
                response = self._direct.urlopen("POST", self._target, **options)
            else:
                response = self._pool.request("POST", self._url, **options)
        except HTTPError as error:
            raise classify_transport_error(error, fp) from error
        elapsed = time.monotonic() - started
        log.debug("HTTP %s in %.3fs", response.status, elapsed)
        try:
            return classify_response(
                response.status,
                response.headers,
                response.data,
                elapsed=elapsed,
                key_fingerprint=fp,
                pricing=self._pricing,
            )
        except SendError as error:
            if key in error.detail:
                error.detail = error.detail.replace(key, f"***{fp}")
                error.args = (error.detail,)
            raise

    def close(self) -> None:
        """Close the pooled connections."""
        if self._direct is not None:
            self._direct.close()
        self._pool.clear()

    def __enter__(self) -> WaheroClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WaheroClient(url={self._url!r}, keys={self._keys!r})"
