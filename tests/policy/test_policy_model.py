"""eir.policy.model: Luhn (TS 23.003 Annex B), IMEI/IMSI normalization, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.policy.model import (
    REASON_CODES,
    Decision,
    ListName,
    Reason,
    Status,
    imei_to_int,
    imsi_key,
    luhn_check_digit,
    normalize_imei,
    normalize_imsi,
    parse_timestamp,
    utc_timestamp,
)

digits14 = st.text(alphabet="0123456789", min_size=14, max_size=14)


def luhn_valid(number: str) -> bool:
    """Textbook Luhn validation, written independently of the code under test."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@pytest.mark.parametrize(
    ("body", "check"),
    [("26053179311383", 7), ("49015420323751", 8), ("35209900176148", 1)],
)
def test_luhn_vectors(body: str, check: int) -> None:
    assert luhn_check_digit(body) == check


@given(digits14)
def test_luhn_digit_makes_number_valid(body: str) -> None:
    assert luhn_valid(body + str(luhn_check_digit(body)))


@pytest.mark.parametrize(
    "bad", ["", "1234567890123", "123456789012345", "1234567890123a", "٣" * 14]
)
def test_luhn_rejects_non_14_digit_input(bad: str) -> None:
    with pytest.raises(ValueError):
        luhn_check_digit(bad)


def test_status_numbers_match_ts29272_equipment_status() -> None:
    assert (Status.WHITELISTED, Status.BLACKLISTED, Status.GREYLISTED) == (0, 1, 2)


def test_reason_and_list_vocabulary() -> None:
    assert Reason.PAIRED_EXCEPTION.value == "paired_exception"
    assert "clone_suspected" in REASON_CODES
    assert [x.value for x in ListName] == ["white", "grey", "black", "exception"]


def test_decision_is_frozen_and_defaults() -> None:
    d = Decision(Status.BLACKLISTED, "stolen")
    assert d.list is None and d.detail is None
    with pytest.raises(AttributeError):
        d.reason = "lost"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("35209900176148", "35209900176148"),
        ("352099001761481", "35209900176148"),
        # The 15th digit is never Luhn-checked (POLICY.md rule 1).
        ("352099001761489", "35209900176148"),
        ("00000000000000", "00000000000000"),
        ("3520990017614", None),
        ("3520990017614812", None),
        ("3520990017614a", None),
        (" 35209900176148", None),
        ("+35209900176148", None),
        ("٣٥٢٠٩٩٠٠١٧٦١٤٨", None),  # Arabic-Indic digits pass str.isdigit()
        ("", None),
    ],
)
def test_normalize_imei(raw: str, expected: str | None) -> None:
    assert normalize_imei(raw) == expected


@given(st.text(max_size=20))
def test_normalize_imei_accepts_exactly_14_or_15_ascii_digits(s: str) -> None:
    ok = len(s) in (14, 15) and all(c in "0123456789" for c in s)
    assert normalize_imei(s) == (s[:14] if ok else None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("250011234567890", "250011234567890"),
        ("00101", "00101"),
        ("0010", None),
        ("2500112345678901", None),
        ("25001x", None),
        (None, None),
    ],
)
def test_normalize_imsi(raw: str | None, expected: str | None) -> None:
    assert normalize_imsi(raw) == expected


@given(st.integers(min_value=0, max_value=10**14 - 1))
def test_imei_to_int_round_trips_with_leading_zeros(n: int) -> None:
    assert imei_to_int(f"{n:014d}") == n


def test_imei_to_int_rejects_malformed() -> None:
    with pytest.raises(ValueError):
        imei_to_int("123")


@given(
    st.text(alphabet="0123456789", min_size=5, max_size=15),
    st.text(alphabet="0123456789", min_size=5, max_size=15),
)
def test_imsi_key_is_injective_and_small(a: str, b: str) -> None:
    assert (imsi_key(a) == imsi_key(b)) == (a == b)
    assert imsi_key(a) < 2**51


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-05-25T00:00:00+05:00", "2025-05-24T19:00:00Z"),
        ("2025-05-24T19:00:00Z", "2025-05-24T19:00:00Z"),
        ("2025-05-24T19:00:00.999999Z", "2025-05-24T19:00:00Z"),
        ("2025-05-24 19:00:00", "2025-05-24T19:00:00Z"),  # no offset: UTC
        ("2025-05-24", "2025-05-24T00:00:00Z"),
    ],
)
def test_parse_timestamp_normalizes_to_utc(raw: str, expected: str) -> None:
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize("bad", ["yesterday", "2025-13-01", ""])
def test_parse_timestamp_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(bad)


def test_utc_timestamp_requires_aware_datetime() -> None:
    tz = timezone(timedelta(hours=5))
    assert utc_timestamp(datetime(2025, 5, 25, tzinfo=tz)) == "2025-05-24T19:00:00Z"
    assert utc_timestamp(datetime(2025, 5, 25, tzinfo=UTC)) == "2025-05-25T00:00:00Z"
    with pytest.raises(ValueError):
        utc_timestamp(datetime(2025, 5, 25))
