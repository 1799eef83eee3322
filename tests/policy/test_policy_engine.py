"""eir.policy.engine: every rule of the plain list lookup, and the config checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.policy.engine import DEFAULT_RULE_ORDER, RULES, DecisionConfig, decide
from eir.policy.model import Decision, Facts, ListEntry, ListName, Status, normalize_imei

IMEI = "35209900176148"
IMSI = "250011234567890"
DEFAULT = DecisionConfig()


def facts(
    imei: str = IMEI,
    *,
    entry: tuple[ListName, str] | None = None,
    pair: bool = False,
    imsi: str | None = IMSI,
) -> Facts:
    return Facts(
        imei=imei,
        imei14=normalize_imei(imei),
        imsi=imsi,
        software_version="01",
        entry=ListEntry(*entry) if entry is not None else None,
        pair_is_exception=pair,
    )


def test_malformed_imei_is_blacklisted() -> None:
    d = decide(facts("12345"), DEFAULT)
    assert (d.status, d.reason, d.list) == (Status.BLACKLISTED, "malformed", None)
    assert d.detail is not None and "14 or 15" in d.detail


def test_all_zeros_is_malformed_by_default_even_if_listed() -> None:
    d = decide(facts("000000000000000", entry=(ListName.WHITE, "registered")), DEFAULT)
    assert (d.status, d.reason) == (Status.BLACKLISTED, "malformed")
    assert d.detail is not None and "pattern" in d.detail


def test_invalid_patterns_are_configurable() -> None:
    test_range = DecisionConfig(invalid_imei_patterns=(r"0{14}", r"00\d{12}"))
    assert decide(facts("00123456789012"), test_range).reason == "malformed"
    assert decide(facts("00123456789012"), DEFAULT).reason == "unknown"
    no_patterns = DecisionConfig(invalid_imei_patterns=())
    assert decide(facts("00000000000000"), no_patterns).reason == "unknown"


def test_paired_exception_lifts_a_black_entry() -> None:
    d = decide(facts(entry=(ListName.BLACK, "stolen"), pair=True), DEFAULT)
    assert d == Decision(Status.WHITELISTED, "paired_exception", "black")


def test_black_entry_without_pair_is_blacklisted_with_its_reason() -> None:
    d = decide(facts(entry=(ListName.BLACK, "stolen"), pair=False), DEFAULT)
    assert d == Decision(Status.BLACKLISTED, "stolen", "black")


def test_black_entry_keeps_any_reason_string() -> None:
    d = decide(facts(entry=(ListName.BLACK, "court order 17/2025")), DEFAULT)
    assert d == Decision(Status.BLACKLISTED, "court order 17/2025", "black")


def test_grey_entry_is_greylisted_with_its_reason() -> None:
    d = decide(facts(entry=(ListName.GREY, "pending_verification")), DEFAULT)
    assert d == Decision(Status.GREYLISTED, "pending_verification", "grey")


def test_pair_does_not_lift_a_grey_entry() -> None:
    # POLICY.md step 2 applies to black-listed IMEIs only.
    d = decide(facts(entry=(ListName.GREY, "pending_verification"), pair=True), DEFAULT)
    assert d.status is Status.GREYLISTED


def test_white_entry_is_whitelisted_with_its_reason() -> None:
    d = decide(facts(entry=(ListName.WHITE, "legalised"), pair=True), DEFAULT)
    assert d == Decision(Status.WHITELISTED, "legalised", "white")


def test_unknown_is_greylisted_by_default() -> None:
    assert decide(facts(), DEFAULT) == Decision(Status.GREYLISTED, "unknown", None)


def test_unknown_with_pair_is_still_unknown() -> None:
    assert decide(facts(pair=True), DEFAULT).reason == "unknown"


def test_unknown_can_be_rejected_as_equipment_unknown() -> None:
    d = decide(facts(), DecisionConfig(unknown_equipment="reject"))
    assert d == Decision(None, "unknown", None)


def test_without_imsi_lists_still_apply() -> None:
    d = decide(facts(entry=(ListName.BLACK, "lost"), imsi=None), DEFAULT)
    assert d == Decision(Status.BLACKLISTED, "lost", "black")


def test_rule_order_is_configurable() -> None:
    no_pairs = DecisionConfig(rule_order=("malformed", "black", "grey", "white", "unknown"))
    d = decide(facts(entry=(ListName.BLACK, "stolen"), pair=True), no_pairs)
    assert d.status is Status.BLACKLISTED
    assert no_pairs.rule_order == ("malformed", "black", "grey", "white", "unknown")
    assert DEFAULT.rule_order == DEFAULT_RULE_ORDER


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unknown_equipment": "allow"},
        {"rule_order": ("malformed", "nonsense", "unknown")},
        {"rule_order": ("black", "black", "unknown")},
        {"rule_order": ("malformed", "black")},
        {"invalid_imei_patterns": ("(",)},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DecisionConfig(**kwargs)  # type: ignore[arg-type]


def test_configs_compare_by_their_settings() -> None:
    assert DecisionConfig() == DecisionConfig(rule_order=DEFAULT_RULE_ORDER)
    assert DecisionConfig() != DecisionConfig(unknown_equipment="reject")


def test_rule_table_names_match_default_order() -> None:
    assert set(DEFAULT_RULE_ORDER) == set(RULES)


entries = st.none() | st.tuples(
    st.sampled_from([ListName.WHITE, ListName.GREY, ListName.BLACK]),
    st.sampled_from(["stolen", "registered", "pending_verification", "x"]),
)


@given(
    imei=st.one_of(
        st.text(alphabet="0123456789", min_size=14, max_size=15),
        st.text(max_size=16),
    ),
    entry=entries,
    pair=st.booleans(),
    reject=st.booleans(),
)
def test_decide_is_total_and_matches_the_table(
    imei: str, entry: tuple[ListName, str] | None, pair: bool, reject: bool
) -> None:
    config = DecisionConfig(unknown_equipment="reject" if reject else "greylist")
    f = facts(imei, entry=entry, pair=pair)
    d = decide(f, config)
    assert d == decide(f, config)  # pure: same facts, same answer
    assert d.reason
    if f.imei14 is None or f.imei14 == "0" * 14:
        assert (d.status, d.reason) == (Status.BLACKLISTED, "malformed")
    elif entry is None:
        assert d.status is (None if reject else Status.GREYLISTED)
    elif entry[0] is ListName.BLACK:
        expected = Status.WHITELISTED if pair else Status.BLACKLISTED
        assert d.status is expected
        assert d.reason == ("paired_exception" if pair else entry[1])
    else:
        assert d.status is (Status.GREYLISTED if entry[0] is ListName.GREY else Status.WHITELISTED)
        assert (d.reason, d.list) == (entry[1], entry[0].value)
