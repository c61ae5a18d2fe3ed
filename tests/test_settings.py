"""Settings: every variable read, validated, and the key never shown."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from worker.settings import ConfigError, RateLimit, describe, load_settings, parse_rate_limit

CONTRACT_VARIABLES = {
    "WAHERO_API_KEY",
    "WAHERO_API_KEY_FILE",
    "WAHERO_BASE_URL",
    "DATABASE_URL",
    "REDIS_URL",
    "WAHERO_RATE_LIMIT",
    "WAHERO_PRICE_PER_MESSAGE",
    "WAHERO_CURRENCY",
    "WAHERO_MAX_ATTEMPTS",
    "WAHERO_RETRY_AMBIGUOUS",
}


def test_every_contract_variable_is_a_described_setting() -> None:
    described = {name: text for name, text, _ in describe()}
    assert described.keys() >= CONTRACT_VARIABLES
    assert all(text for text in described.values())


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.base_url == "https://api.wahero.id"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.rate_limit == RateLimit(60, 60.0)
    assert settings.currency == "IDR"
    assert settings.max_attempts == 5
    assert settings.retry_ambiguous is False
    assert settings.price_per_message is None
    assert settings.database_url.endswith("/wahero")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300/min", RateLimit(300, 60.0)),
        ("5/s", RateLimit(5, 1.0)),
        ("0", None),
        ("1000/h", RateLimit(1000, 3600.0)),
        (" 180 / minute ", RateLimit(180, 60.0)),
    ],
)
def test_rate_limits_parse(text: str, expected: RateLimit | None) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WAHERO_RATE_LIMIT", "fast"),
        ("WAHERO_RATE_LIMIT", "-5/s"),
        ("WAHERO_RATE_LIMIT", "5"),
        ("WAHERO_BASE_URL", "api.wahero.id"),
        ("WAHERO_BASE_URL", "ftp://x"),
        ("WAHERO_MAX_ATTEMPTS", "0"),
        ("WAHERO_MAX_ATTEMPTS", "lots"),
        ("WAHERO_CURRENCY", "rupiah"),
        ("WAHERO_PRICE_PER_MESSAGE", "-1"),
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "http://x"),
        ("WAHERO_TIMEZONE", "Mars/Olympus"),
        ("WAHERO_CONCURRENCY", "100000"),
    ],
)
def test_a_malformed_value_is_a_one_line_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_the_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAHERO_API_KEY", "wahero_test_fake-secret-value")
    settings = load_settings()
    assert settings.api_key is not None
    for text in (
        str(settings),
        repr(settings),
        str(settings.api_key),
        repr(settings.api_key),
        settings.model_dump_json(),
    ):
        assert "fake-secret-value" not in text
    assert settings.api_key.get_secret_value() == "wahero_test_fake-secret-value"


def test_a_missing_key_is_an_error_only_for_what_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAHERO_API_KEY", raising=False)
    settings = load_settings()  # reading settings without a key is fine
    with pytest.raises(ConfigError, match=r"^WAHERO_API_KEY is not set"):
        settings.require_api_key()


def test_the_key_file_counts_as_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    monkeypatch.setenv("WAHERO_API_KEY_FILE", str(key_file))
    with pytest.raises(ConfigError, match=r"^WAHERO_API_KEY_FILE: no such file"):
        load_settings().require_api_key()
    key_file.write_text("wahero_test_fromfile\n")
    load_settings().require_api_key()


def test_price_is_an_exact_decimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAHERO_PRICE_PER_MESSAGE", "350.10")
    assert load_settings().price_per_message == Decimal("350.10")


def test_env_file_in_the_working_folder_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WAHERO_MAX_ATTEMPTS", raising=False)
    (tmp_path / ".env").write_text("WAHERO_MAX_ATTEMPTS=9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().max_attempts == 9
