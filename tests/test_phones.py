"""normalise_phone: what people type in, to Wahero's digits-only E.164."""

from __future__ import annotations

import pickle
import time

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from worker.inputerrors import InputError
from worker.phones import (
    _SHAPE,
    MAX_DIGITS,
    MIN_DIGITS,
    InvalidPhoneError,
    _slow_path,
    normalise_phone,
)


@pytest.mark.parametrize(
    "raw",
    [
        "0812-3456-7890",
        "+62 812 3456 7890",
        "6281234567890",
        "(0812) 3456 7890",
        "0062 812 3456 7890",
        "62 0812 3456 7890",
        "+62 0812 3456 7890",
        "+62-812-3456-7890",
        "0812.3456.7890",
        "  0812 3456 7890\n",
        "8123456789 0",
        "0812\u00a03456\u00a07890",
        "٠٨١٢٣٤٥٦٧٨٩٠",  # Arabic-Indic digits
    ],
)
def test_indonesian_mobile_forms(raw: str) -> None:
    assert normalise_phone(raw) == "6281234567890"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+65 9123 4567", "6591234567"),  # Singapore mobile
        ("+1 212 555 1234", "12125551234"),  # US: FIXED_LINE_OR_MOBILE
        ("+44 7911 123456", "447911123456"),  # UK mobile
        ("+60 12-345 6789", "60123456789"),  # Malaysia mobile
    ],
)
def test_foreign_mobiles_with_plus(raw: str, expected: str) -> None:
    assert normalise_phone(raw) == expected


def test_other_default_region() -> None:
    assert normalise_phone("012-345 6789", region="MY") == "60123456789"
    assert normalise_phone("(212) 555-1234", region="US") == "12125551234"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "not a phone number"),
        ("0812-3456-789O", "not a phone number"),  # letter O
        ("0812 3456 7890 ext 1", "not a phone number"),
        ("1-800-FLOWERS", "not a phone number"),
        ("+", "not a phone number"),
        ("++6281234567890", "not a phone number"),
        ("0812+3456", "not a phone number"),
        ("081", "too short"),
        ("0812345678901234567", "too long"),
        ("1" * 100, "too long"),
        ("021 5555 1234", "not a mobile"),  # Jakarta landline
        ("+44 20 7946 0958", "not a mobile"),  # London landline
        ("+999 1234567", "unknown country code"),
        ("+62 999 9999 9999", "not a valid number"),
    ],
)
def test_invalid(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPhoneError) as info:
        normalise_phone(raw)
    assert reason in info.value.reason
    assert info.value.field == "phone"
    assert "\n" not in str(info.value)


def test_invalid_phone_error_is_an_input_error_and_pickles() -> None:
    with pytest.raises(InputError) as info:
        normalise_phone("abc")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is InvalidPhoneError
    assert str(copy) == str(info.value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
@example("\x00")
@example("+0")
@example("00")
@example("+" + "9" * 30)
def test_any_text_gives_digits_or_invalid_phone_error(raw: str) -> None:
    try:
        result = normalise_phone(raw)
    except InvalidPhoneError:
        return
    assert result.isascii() and result.isdigit()
    assert MIN_DIGITS <= len(result) <= MAX_DIGITS


_phone_like = st.text(alphabet="0123456789 +-()", min_size=1, max_size=20)
_digit_runs = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["0", "08", "62", "628", "0062", "+62", "+6", "+1", "+44", "+65", "00", ""]),
    st.text(alphabet="0123456789", min_size=0, max_size=14),
)


@settings(max_examples=800, deadline=None)
@given(st.one_of(_phone_like, _digit_runs), st.sampled_from(["ID", "MY", "US", "GB", "AR"]))
def test_fast_path_agrees_with_phonenumbers(raw: str, region: str) -> None:
    # The fast path skips phonenumbers.parse; it must never accept what parse() would not, nor
    # give a different answer.
    try:
        fast = normalise_phone(raw, region)
    except InvalidPhoneError:
        fast = None
    text = raw.strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    try:
        slow: str | None = _slow_path(digits, text[:1] == "+", region) if digits else None
    except InvalidPhoneError:
        slow = None
    assume(_SHAPE.fullmatch(text) is not None)  # otherwise rejected before either path
    assert fast == slow


def test_speed_of_the_common_case() -> None:
    # Runs for every recipient: 100,000 rows must take seconds, not minutes. Generous bound.
    numbers = [f"0812-{i:04d}-{i % 97:04d}" for i in range(2000)]
    start = time.perf_counter()
    for number in numbers:
        normalise_phone(number)
    per_call = (time.perf_counter() - start) / len(numbers)
    assert per_call < 500e-6
