"""Every environment variable the product reads, in one typed, validated settings object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


@dataclass(frozen=True)
class RateLimit:
    """A number of sends allowed per period, across every worker."""

    count: int
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.per_seconds:g}s"


_RATE_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.I
)
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_rate_limit(text: str) -> RateLimit | None:
    """Parse `300/min`, `5/s`, `1000/h` (or `0` for no limit of our own)."""
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"expected N/s, N/min or N/h, or 0 for none; got {text!r}")
    number, unit = match.groups()
    if float(number) == 0 and unit is None:
        return None
    if unit is None:
        raise ValueError(f"a non-zero rate needs a period (N/s, N/min, N/h); got {text!r}")
    count = float(number)
    if count <= 0 or count != int(count):
        raise ValueError(f"the count must be a positive whole number; got {text!r}")
    return RateLimit(int(count), _PERIODS[unit.lower()])


PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Configuration from the environment (and a `.env` file in the working folder)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=False)

    api_key: SecretStr | None = Field(
        None,
        validation_alias="WAHERO_API_KEY",
        description="The Wahero API key; secret, never logged.",
    )
    api_key_file: Path | None = Field(
        None,
        validation_alias="WAHERO_API_KEY_FILE",
        description="A file holding the key; re-read when it changes (rotation needs no restart).",
    )
    base_url: str = Field(
        "https://api.wahero.id",
        validation_alias="WAHERO_BASE_URL",
        description="Base URL of the Wahero API.",
    )
    database_url: str = Field(
        "postgresql+psycopg://localhost/wahero",
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL of the PostgreSQL database (the source of truth).",
    )
    redis_url: str = Field(
        "redis://localhost:6379/0",
        validation_alias="REDIS_URL",
        description="Redis URL: the Celery broker and the shared rate limiter.",
    )
    rate_limit_text: str = Field(
        "60/min",
        validation_alias="WAHERO_RATE_LIMIT",
        description="Sends allowed across all workers (300/min, 5/s); 0 = no limit of our own.",
    )
    price_per_message: Decimal | None = Field(
        None,
        validation_alias="WAHERO_PRICE_PER_MESSAGE",
        ge=0,
        description="Cost recorded when a response carries none; unset leaves the cost empty.",
    )
    currency: str = Field(
        "IDR",
        validation_alias="WAHERO_CURRENCY",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 currency of WAHERO_PRICE_PER_MESSAGE.",
    )
    max_attempts: int = Field(
        5,
        validation_alias="WAHERO_MAX_ATTEMPTS",
        ge=1,
        le=100,
        description="Attempts before a transient failure becomes failed.",
    )
    retry_ambiguous: bool = Field(
        False,
        validation_alias="WAHERO_RETRY_AMBIGUOUS",
        description="Retry outcomes that may have been sent (a duplicate risk) instead of unknown.",
    )
    connect_timeout: PositiveFloat = Field(
        5.0,
        validation_alias="WAHERO_CONNECT_TIMEOUT",
        description="Seconds to wait for a connection to Wahero.",
    )
    read_timeout: PositiveFloat = Field(
        30.0,
        validation_alias="WAHERO_READ_TIMEOUT",
        description="Seconds to wait for Wahero's answer once the request is sent.",
    )
    concurrency: int = Field(
        128,
        validation_alias="WAHERO_CONCURRENCY",
        ge=1,
        le=1024,
        description="Sends in flight at once in one worker process.",
    )
    batch_size: int = Field(
        50,
        validation_alias="WAHERO_BATCH_SIZE",
        ge=1,
        le=1000,
        description="Messages one job claims and sends together.",
    )
    worker_processes: int = Field(
        0,
        validation_alias="WAHERO_WORKER_PROCESSES",
        ge=0,
        le=256,
        description="Sending processes one `wahero-bulk worker` runs; 0 = one per CPU core.",
    )
    jobs_per_campaign: int = Field(
        8,
        validation_alias="WAHERO_JOBS_PER_CAMPAIGN",
        ge=1,
        le=256,
        description="Job chains a running campaign keeps in the queue (its share of the workers).",
    )
    lease_seconds: int = Field(
        300,
        validation_alias="WAHERO_LEASE_SECONDS",
        ge=10,
        le=86400,
        description="How long a claimed message belongs to its worker before the sweep takes over.",
    )
    retry_base_delay: PositiveFloat = Field(
        2.0,
        validation_alias="WAHERO_RETRY_BASE_DELAY",
        description="Backoff before the second attempt, in seconds; doubles each attempt.",
    )
    retry_max_delay: PositiveFloat = Field(
        900.0,
        validation_alias="WAHERO_RETRY_MAX_DELAY",
        description="Longest backoff between attempts, in seconds.",
    )
    beat_interval: PositiveFloat = Field(
        5.0,
        validation_alias="WAHERO_BEAT_INTERVAL",
        description="Seconds between two ticks of the scheduler (beat).",
    )
    timezone: str = Field(
        "Asia/Jakarta",
        validation_alias="WAHERO_TIMEZONE",
        description="Zone for showing times and reading naive --at times; storage is UTC.",
    )
    log_level: str = Field(
        "INFO",
        validation_alias="WAHERO_LOG_LEVEL",
        pattern=r"^(?i:DEBUG|INFO|WARNING|ERROR)$",
        description="Log level of the worker, beat and CLI (logs go to stderr).",
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/:]+(:\d{1,5})?(/[^\s]*)?$", value):
            raise ValueError(f"expected an http(s) URL; got {value!r}")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError(f"expected a postgresql:// URL; got {value.split('://')[0]}://…")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not re.match(r"^rediss?://", value):
            raise ValueError("expected a redis:// or rediss:// URL")
        return value

    @field_validator("rate_limit_text")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rate_limit(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def rate_limit(self) -> RateLimit | None:
        """The parsed WAHERO_RATE_LIMIT; None when our own limit is off."""
        return parse_rate_limit(self.rate_limit_text)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def api_key_configured(self) -> bool:
        return self.api_key is not None or self.api_key_file is not None

    def require_api_key(self) -> None:
        """Refuse to go on, with a one-line error, when nothing that sends could authenticate."""
        if self.api_key_file is not None:
            if not self.api_key_file.is_file():
                raise ConfigError(f"WAHERO_API_KEY_FILE: no such file: {self.api_key_file}")
            return
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise ConfigError(
                "WAHERO_API_KEY is not set: set it (or WAHERO_API_KEY_FILE) to send messages"
            )


def describe() -> list[tuple[str, str, str]]:
    """(variable, description, default) for every setting, for docs and checks."""
    rows = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        name = alias if isinstance(alias, str) else str(alias)
        default = "" if field.default is None else str(field.default)
        rows.append((name, field.description or "", default))
    return rows


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = first["loc"][0] if first["loc"] else "settings"
    field = Settings.model_fields.get(str(loc))
    name = field.validation_alias if field is not None else loc
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{name}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; a bad value raises ConfigError naming its variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
