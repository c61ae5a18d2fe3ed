"""Phone numbers: whatever people type, to the digits-only E.164 form Wahero wants."""

from __future__ import annotations

import functools
import re
import unicodedata

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

from worker.inputerrors import InputError

DEFAULT_REGION = "ID"

# E.164 allows at most 15 digits; no real mobile number anywhere is shorter than 8.
MIN_DIGITS = 8
MAX_DIGITS = 15

# Longer input is not a phone number; stop before phonenumbers scans a megabyte of text.
_MAX_INPUT_CHARS = 64

# WhatsApp runs on mobiles. Some plans (US, Canada, ...) cannot tell mobile from fixed line, so
# phonenumbers says FIXED_LINE_OR_MOBILE for every number there: accept those too.
_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})

# Digits and the characters people format numbers with, one optional leading '+'. Anything else
# (letters above all) means "not a number": phonenumbers would turn letters into digits
# (1-800-FLOWERS), which is never what a CSV cell means.
_SHAPE = re.compile(r"\+?[\d \t\-.()/\u00a0]+")
_NOT_DIGIT = re.compile(r"\D")

_POSSIBLE_REASONS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "wrong length for its country",
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
}

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}


class InvalidPhoneError(InputError):
    """A recipient's phone number cannot be a WhatsApp number; ``reason`` says why."""


def normalise_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """Return ``raw`` as E.164 digits without '+' (``6281234567890``), else InvalidPhoneError.

    Numbers without '+' are read as national numbers of ``region``, or as already carrying the
    country code (``62...``) or the generic ``00`` international prefix when that gives a valid one.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhoneError("empty phone number", field="phone")
    if len(text) > _MAX_INPUT_CHARS:
        raise InvalidPhoneError("too long to be a phone number", field="phone")
    if not _SHAPE.fullmatch(text):
        raise InvalidPhoneError(f"not a phone number: {text!r}", field="phone")
    digits = _NOT_DIGIT.sub("", text)
    if not digits:
        raise InvalidPhoneError(f"not a phone number: {text!r}", field="phone")
    if not digits.isascii():
        # \d matched Arabic-Indic, full-width, ... digits: they are digits, just spelled otherwise.
        digits = "".join(str(unicodedata.decimal(ch)) for ch in digits)

    plus = text[0] == "+"
    fast = _fast_path(digits, plus, region)
    if fast is not None:
        return fast
    return _slow_path(digits, plus, region)


def _fast_path(digits: str, plus: bool, region: str) -> str | None:
    """The common case (a valid mobile) without phonenumbers.parse, which costs ~50 µs a call.

    Returns None whenever the number is not plainly a valid mobile; the slow path then decides
    and says why. Tests check both paths agree.
    """
    if plus:
        code, nsn = _split_country_code(digits)
        if code is None:
            return None
        return _mobile_digits(code, nsn)
    code = _simple_trunk_code(region)
    if code is None:
        return None
    if digits.startswith("00"):
        # "0062 812 ...": the usual international prefix; a national number never starts so.
        abroad, nsn = _split_country_code(digits[2:])
        return None if abroad is None else _mobile_digits(abroad, nsn)
    # Same order as the slow path: the national reading first, then "country code included".
    nsn = digits[1:] if digits[0] == "0" else digits
    result = _mobile_digits(code, nsn)
    if result is None and digits.startswith(str(code)):
        result = _mobile_digits(code, digits[len(str(code)) :])
    return result


def _split_country_code(digits: str) -> tuple[int | None, str]:
    """Split international digits into (country code, national number); (None, "") if unknown."""
    # Country codes are prefix-free and 1 to 3 digits long, so the first known prefix is it.
    for length in (1, 2, 3):
        if len(digits) <= length:
            break
        code = int(digits[:length])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE and code != 0:
            return code, digits[length:]
    return None, ""


def _mobile_digits(code: int, nsn: str) -> str | None:
    """``code`` + ``nsn`` if that is a valid mobile; None if not (or if in doubt)."""
    # A leading 0 is a trunk prefix or an Italian-style significant zero: leave both to parse().
    if not nsn or nsn[0] == "0" or not MIN_DIGITS <= len(str(code)) + len(nsn) <= MAX_DIGITS:
        return None
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(nsn))
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        return None
    return f"{code}{nsn}"


@functools.lru_cache(maxsize=64)
def _simple_trunk_code(region: str) -> int | None:
    """Country code of ``region`` if its national numbers only lose a plain '0' trunk prefix."""
    # Regions with fancier rules (Argentina's "15", the US's "1") are left to parse().
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if (
        meta is not None
        and meta.national_prefix == "0"
        and meta.national_prefix_for_parsing in (None, "0")
        and meta.national_prefix_transform_rule is None
    ):
        return meta.country_code
    return None


def _slow_path(digits: str, plus: bool, region: str) -> str:
    """Ask phonenumbers about every plausible reading; raise the first reading's reason."""
    if plus:
        candidates: list[tuple[str, str | None]] = [("+" + digits, None)]
    else:
        candidates = _national_candidates(digits, region)
    first_error: InvalidPhoneError | None = None
    for number_text, parse_region in candidates:
        try:
            return _check(number_text, parse_region)
        except InvalidPhoneError as exc:
            first_error = first_error or exc
    assert first_error is not None  # candidates is never empty
    raise first_error


def _national_candidates(digits: str, region: str) -> list[tuple[str, str | None]]:
    """Readings of a number typed without '+', most likely first."""
    out: list[tuple[str, str | None]] = [(digits, region)]
    # "0062 812..." : 00 is the international prefix in most of the world, but phonenumbers only
    # knows Indonesia's carrier-specific ones (001, 007, 008, ...), so read it ourselves.
    if digits.startswith("00"):
        out.append(("+" + digits[2:], None))
    code = str(phonenumbers.country_code_for_region(region))
    if code != "0" and digits.startswith(code):
        out.append(("+" + digits, None))
        # "62 0812 ..." : country code plus the national trunk 0 people keep out of habit.
        if digits[len(code) : len(code) + 1] == "0":
            out.append(("+" + code + digits[len(code) + 1 :], None))
    return out


def _check(number_text: str, region: str | None) -> str:
    """Parse one reading and return its digits, or raise InvalidPhoneError saying why not."""
    try:
        number = phonenumbers.parse(number_text, region)
    except NumberParseException as exc:
        reason = _PARSE_REASONS.get(exc.error_type, "not a phone number")
        raise InvalidPhoneError(reason, field="phone") from exc
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE:
        reason = _POSSIBLE_REASONS.get(possible, "not a valid number")
        raise InvalidPhoneError(reason, field="phone")
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneError("not a valid number", field="phone")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidPhoneError("not a mobile number (WhatsApp needs one)", field="phone")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    result: str = e164[1:]
    # Belt and braces: whatever the metadata says, never hand Wahero something that isn't E.164.
    if not (result.isascii() and result.isdigit() and MIN_DIGITS <= len(result) <= MAX_DIGITS):
        raise InvalidPhoneError("not a valid number", field="phone")
    return result
