"""eir.policy.engine: each rule of POLICY.md alone, the rule order, the config checks.

Times are UTC epoch seconds. ``NOW`` is well after the cut-off, so an IMEI
first seen "recently" is not grandfathered unless a test says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eir.policy.engine import (
    DEFAULT_CUTOFF,
    DEFAULT_INVALID_IMEI_PATTERNS,
    DEFAULT_RULE_ORDER,
    PLAIN_LIST_ORDER,
    RULES,
    TERMINAL_RULES,
    DecisionConfig,
    decide,
)
from eir.policy.model import (
    Decision,
    Facts,
    ListEntry,
    ListName,
    Reason,
    Sightings,
    Status,
    normalize_imei,
    to_epoch,
)

DAY = 86_400
GRACE = 30 * DAY

IMEI = "35209900176148"
HOME_IMSI = "401011234567890"  # Kazakhstan, MCC 401
HOME_IMSI_2 = "401029876543210"
ROAM_IMSI = "250011234567890"  # Russia, MCC 250: an inbound roamer by default

DEFAULT = DecisionConfig()
REJECT = DecisionConfig(unknown_equipment="reject")
CUTOFF = to_epoch("2025-05-24T19:00:00Z")  # 2025-05-25T00:00:00+05:00
NOW = to_epoch("2025-10-01T12:00:00Z")

# POLICY.md "Decisions the EIR makes", steps 1 to 12 (9 and 10 are one rule).
POLICY_ORDER = (
    "malformed",  # 1
    "paired_exception",  # 2
    "black",  # 3
    "roaming",  # 4
    "unknown_tac",  # 5
    "exempt_class",  # 6
    "clone",  # 7
    "white",  # 8
    "grey",  # 9, 10
    "grandfathered",  # 11
    "unknown",  # 12
)


def facts(
    imei: str = IMEI,
    *,
    entry: tuple[ListName, str] | None = None,
    pair: bool = False,
    imsi: str | None = HOME_IMSI,
    now: int = NOW,
    since: int | None = None,
    grace_until: int | None = None,
    tac_known: bool | None = None,
    device_class: str | None = None,
    sightings: Sightings | None = None,
    sv: str | None = "01",
) -> Facts:
    return Facts(
        imei=imei,
        imei14=normalize_imei(imei),
        imsi=imsi,
        software_version=sv,
        entry=ListEntry(*entry) if entry is not None else None,
        pair_is_exception=pair,
        now=now,
        entry_since=since,
        entry_grace_until=grace_until,
        tac_known=tac_known,
        device_class=device_class,
        sightings=sightings,
        operator="op1",
    )


def seen(*rows: tuple[str, int, int], config: DecisionConfig = DEFAULT) -> Sightings:
    """Sightings from (imsi or '', first, last) rows, home-ness from the config's MCCs."""
    s = Sightings()
    for imsi, first, last in rows:
        s.add(imsi, first, last, config.is_home(imsi or None))
    return s


def run(name: str, f: Facts, config: DecisionConfig = DEFAULT) -> Decision | None:
    """One rule alone, as the engine calls it."""
    return RULES[name](f, config)


def home_imsi(n: int) -> str:
    return f"40101{n:010d}"


def clone_history(n_home: int, *, first: int = NOW - 20 * DAY, last: int = NOW) -> Sightings:
    """An IMEI seen with ``n_home`` home IMSIs; home_imsi(0) is the first seen."""
    return seen(*((home_imsi(i), first + i * DAY, last) for i in range(n_home)))


# -- step 1: malformed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "imei",
    ["", "12345", "3520990017614", "3520990017614812", "35209900l76148", "35209900176148 ",
     "٣٥٢٠٩٩٠٠١٧٦١٤٨", "+3520990017614"],
)
def test_imei_not_14_or_15_ascii_digits_is_malformed(imei: str) -> None:
    d = decide(facts(imei), DEFAULT)
    assert (d.status, d.reason, d.list, d.rule) == (Status.BLACKLISTED, "malformed", None,
                                                     "malformed")
    assert d.detail is not None and "14 or 15" in d.detail
    assert d.deadline is None


def test_15th_digit_is_ignored_not_checked() -> None:
    # 15 digits with a wrong Luhn digit are still a well-formed IMEI.
    assert run("malformed", facts(IMEI + "0")) is None
    assert run("malformed", facts(IMEI + "9")) is None


@pytest.mark.parametrize("imei", ["00000000000000", "000000000000000", "000000000000009"])
def test_all_zeros_is_malformed_by_default_even_if_listed(imei: str) -> None:
    f = facts(imei, entry=(ListName.WHITE, "registered"), pair=True, imsi=ROAM_IMSI)
    d = decide(f, DEFAULT)
    assert (d.status, d.reason, d.rule) == (Status.BLACKLISTED, "malformed", "malformed")
    assert d.detail is not None and "pattern" in d.detail


def test_default_patterns_take_the_all_zeros_fast_path() -> None:
    assert DEFAULT.invalid_imei_patterns == DEFAULT_INVALID_IMEI_PATTERNS == (r"0{14}",)
    assert DEFAULT._zeros_only
    # The same pattern given as a list is still the default.
    assert DecisionConfig(invalid_imei_patterns=[r"0{14}"])._zeros_only  # type: ignore[arg-type]
    # Any other spelling goes through the regular expression.
    assert not DecisionConfig(invalid_imei_patterns=(r"(?:0{14})",))._zeros_only
    assert not DecisionConfig(invalid_imei_patterns=(r"0{14}", r"00\d{12}"))._zeros_only


@given(st.one_of(st.integers(0, 10**6), st.integers(0, 10**14 - 1)).map(lambda n: f"{n:014d}"))
def test_fast_path_agrees_with_the_regex_path(imei: str) -> None:
    regex_path = DecisionConfig(invalid_imei_patterns=(r"(?:0{14})",))
    assert run("malformed", facts(imei), DEFAULT) == run("malformed", facts(imei), regex_path)


def test_fast_path_agrees_with_the_regex_path_on_zeros() -> None:
    regex_path = DecisionConfig(invalid_imei_patterns=(r"(?:0{14})",))
    for imei in ("00000000000000", "00000000000001", "10000000000000"):
        assert run("malformed", facts(imei)) == run("malformed", facts(imei), regex_path)


def test_invalid_patterns_are_configurable() -> None:
    test_range = DecisionConfig(invalid_imei_patterns=(r"0{14}", r"00\d{12}"))
    d = decide(facts("00123456789012"), test_range)
    assert (d.status, d.reason, d.rule) == (Status.BLACKLISTED, "malformed", "malformed")
    assert decide(facts("000000000000000"), test_range).reason == "malformed"
    # The pattern matches the whole 14 digits, not a substring.
    assert run("malformed", facts("35001234567890"), test_range) is None
    # Not configured by default: reporting body 00 is then an ordinary unknown IMEI.
    assert decide(facts("00123456789012"), DEFAULT).reason == "pending_verification"


def test_no_patterns_lets_all_zeros_through() -> None:
    none = DecisionConfig(invalid_imei_patterns=())
    assert run("malformed", facts("00000000000000"), none) is None
    assert decide(facts("00000000000000"), none).rule == "unknown"
    # The format check still applies.
    assert decide(facts("0000"), none).reason == "malformed"


def test_malformed_comes_before_every_list() -> None:
    for lst in (ListName.BLACK, ListName.WHITE, ListName.GREY):
        d = decide(facts("1234", entry=(lst, "x"), pair=True), DEFAULT)
        assert d.rule == "malformed"


# -- step 2: paired_exception --------------------------------------------------------


def test_paired_exception_lifts_a_black_entry() -> None:
    d = decide(facts(entry=(ListName.BLACK, "stolen"), pair=True), DEFAULT)
    assert d == Decision(Status.WHITELISTED, "paired_exception", "black", None,
                         "paired_exception")


@pytest.mark.parametrize(
    "entry", [None, (ListName.WHITE, "registered"), (ListName.GREY, "pending_verification")]
)
def test_pair_only_lifts_black(entry: tuple[ListName, str] | None) -> None:
    assert run("paired_exception", facts(entry=entry, pair=True)) is None


def test_pair_does_not_change_grey_or_white_answers() -> None:
    grey = decide(facts(entry=(ListName.GREY, "pending_verification"), pair=True,
                        since=NOW - DAY), DEFAULT)
    assert (grey.status, grey.rule) == (Status.GREYLISTED, "grey")
    white = decide(facts(entry=(ListName.WHITE, "legalised"), pair=True), DEFAULT)
    assert white == Decision(Status.WHITELISTED, "legalised", "white", None, "white")
    unknown = decide(facts(pair=True), DEFAULT)
    assert (unknown.reason, unknown.rule) == ("pending_verification", "unknown")


def test_black_without_pair_is_not_an_exception() -> None:
    assert run("paired_exception", facts(entry=(ListName.BLACK, "stolen"))) is None


def test_paired_exception_for_a_roaming_imsi() -> None:
    d = decide(facts(entry=(ListName.BLACK, "stolen"), pair=True, imsi=ROAM_IMSI), DEFAULT)
    assert d.rule == "paired_exception"


# -- step 3: black -------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["stolen", "lost", "counterfeit", "illegal_import",
                                    "cloned", "court order 17/2025"])
def test_black_entry_keeps_its_reason(reason: str) -> None:
    d = decide(facts(entry=(ListName.BLACK, reason)), DEFAULT)
    assert d == Decision(Status.BLACKLISTED, reason, "black", None, "black")
    assert d.deadline is None


def test_black_applies_without_imsi() -> None:
    d = decide(facts(entry=(ListName.BLACK, "lost"), imsi=None), DEFAULT)
    assert (d.status, d.reason, d.rule) == (Status.BLACKLISTED, "lost", "black")


@pytest.mark.parametrize(
    "entry", [None, (ListName.WHITE, "registered"), (ListName.GREY, "pending_verification")]
)
def test_black_rule_ignores_other_lists(entry: tuple[ListName, str] | None) -> None:
    assert run("black", facts(entry=entry)) is None


def test_black_beats_roaming_tac_and_clone_rules() -> None:
    stolen = (ListName.BLACK, "stolen")
    cases = [
        facts(entry=stolen, imsi=ROAM_IMSI),
        facts(entry=stolen, tac_known=False),
        facts(entry=stolen, tac_known=True, device_class="m2m"),
        facts(entry=stolen, imsi=home_imsi(6), sightings=clone_history(7)),
        facts(entry=stolen, sightings=seen((HOME_IMSI, CUTOFF - 400 * DAY, NOW))),
    ]
    for f in cases:
        assert decide(f, DEFAULT) == Decision(Status.BLACKLISTED, "stolen", "black", None, "black")


# -- step 4: roaming -----------------------------------------------------------------


def test_inbound_roamer_is_exempt() -> None:
    d = decide(facts(imsi=ROAM_IMSI), DEFAULT)
    assert d == Decision(Status.WHITELISTED, "roaming_exempt", None, None, "roaming")


def test_home_imsi_and_no_imsi_pass_the_roaming_rule() -> None:
    assert run("roaming", facts(imsi=HOME_IMSI)) is None
    assert run("roaming", facts(imsi=None)) is None
    no_imsi = decide(facts(imsi=None), DEFAULT)
    assert (no_imsi.status, no_imsi.rule) == (Status.GREYLISTED, "unknown")


def test_home_mccs_are_configurable() -> None:
    two_homes = DecisionConfig(home_mccs=("401", "250"))
    assert run("roaming", facts(imsi=ROAM_IMSI), two_homes) is None
    assert run("roaming", facts(imsi="31026012345678"), two_homes) is not None
    only_250 = DecisionConfig(home_mccs=("250",))
    assert decide(facts(imsi=HOME_IMSI), only_250).reason == "roaming_exempt"


def test_roamers_are_exempt_from_steps_5_to_12() -> None:
    r = ROAM_IMSI
    cases = [
        facts(imsi=r, tac_known=False),
        facts(imsi=r, imei="00123456789012"),  # not malformed by default
        facts(imsi=r, sightings=clone_history(7)),
        facts(imsi=r, entry=(ListName.GREY, "pending_verification"), since=NOW - 90 * DAY),
        facts(imsi=r, sightings=seen((HOME_IMSI, NOW - 90 * DAY, NOW - 80 * DAY))),
    ]
    for f in cases:
        assert decide(f, DEFAULT).reason == "roaming_exempt"
    assert decide(facts(imsi=r), REJECT).reason == "roaming_exempt"


def test_black_beats_roaming() -> None:
    d = decide(facts(entry=(ListName.BLACK, "stolen"), imsi=ROAM_IMSI), DEFAULT)
    assert (d.status, d.reason, d.rule) == (Status.BLACKLISTED, "stolen", "black")


# -- step 5: unknown_tac -------------------------------------------------------------


def test_unknown_tac_is_blacklisted_when_a_tac_db_is_loaded() -> None:
    d = decide(facts(tac_known=False), DEFAULT)
    assert (d.status, d.reason, d.list, d.rule) == (Status.BLACKLISTED, "unknown_tac", None,
                                                     "unknown_tac")
    assert d.detail is not None


def test_unknown_tac_needs_a_loaded_tac_db() -> None:
    assert run("unknown_tac", facts(tac_known=None)) is None
    assert run("unknown_tac", facts(tac_known=True, device_class="smartphone")) is None
    assert decide(facts(tac_known=None), DEFAULT).reason == "pending_verification"


def test_unknown_tac_beats_the_white_list() -> None:
    d = decide(facts(entry=(ListName.WHITE, "registered"), tac_known=False), DEFAULT)
    assert d.reason == "unknown_tac"


# -- step 6: exempt_class ------------------------------------------------------------


def test_exempt_class_is_whitelisted() -> None:
    d = decide(facts(tac_known=True, device_class="m2m"), DEFAULT)
    assert d == Decision(Status.WHITELISTED, "exempt_class", None, None, "exempt_class")


def test_exempt_classes_config_is_case_insensitive() -> None:
    config = DecisionConfig(exempt_classes=(" M2M ", "IoT"))
    assert config.exempt_classes == ("m2m", "iot")
    assert config == DecisionConfig(exempt_classes=("m2m", "iot"))
    for cls in ("m2m", "iot"):
        assert decide(facts(tac_known=True, device_class=cls), config).reason == "exempt_class"


def test_non_exempt_class_or_no_tac_db_passes() -> None:
    assert run("exempt_class", facts(tac_known=True, device_class="smartphone")) is None
    assert run("exempt_class", facts(tac_known=True, device_class=None)) is None
    assert run("exempt_class", facts(tac_known=None, device_class="m2m")) is None
    assert run("exempt_class", facts(tac_known=True, device_class="m2m"),
               DecisionConfig(exempt_classes=())) is None


def test_exempt_class_beats_the_grey_list() -> None:
    f = facts(entry=(ListName.GREY, "pending_verification"), since=NOW - 90 * DAY,
              tac_known=True, device_class="m2m")
    assert decide(f, DEFAULT).reason == "exempt_class"


# -- step 7: clone -------------------------------------------------------------------


def test_more_than_threshold_home_imsis_make_a_clone_suspect() -> None:
    history = clone_history(6)
    imsi = home_imsi(5)
    d = decide(facts(imsi=imsi, sightings=history), DEFAULT)
    pair_first = history.pair_first_seen(imsi)
    assert pair_first is not None
    assert (d.status, d.reason, d.list, d.rule) == (Status.GREYLISTED, "clone_suspected", None,
                                                     "clone")
    assert d.deadline == pair_first + GRACE


def test_exactly_threshold_home_imsis_is_not_suspect() -> None:
    assert run("clone", facts(imsi=home_imsi(4), sightings=clone_history(5))) is None
    assert decide(facts(imsi=home_imsi(4), sightings=clone_history(5)), DEFAULT).rule == "unknown"


def test_first_seen_imsi_is_never_suspected() -> None:
    history = clone_history(8)
    assert history.first_imsi == home_imsi(0)
    assert run("clone", facts(imsi=home_imsi(0), sightings=history)) is None


def test_exception_pair_is_never_suspected() -> None:
    assert run("clone", facts(imsi=home_imsi(5), sightings=clone_history(6), pair=True)) is None


def test_roaming_imsis_are_not_counted() -> None:
    history = clone_history(5)
    for i in range(3):
        history.add(f"25001{i:010d}", NOW - DAY, NOW, False)
    assert len(history.imsis) == 8
    assert run("clone", facts(imsi=home_imsi(4), sightings=history)) is None


def test_the_empty_imsi_is_not_counted() -> None:
    history = clone_history(5)
    history.add("", NOW - DAY, NOW, True)
    assert len(history.imsis) == 6
    assert run("clone", facts(imsi=home_imsi(4), sightings=history)) is None


def test_imsis_last_seen_before_the_window_are_not_counted() -> None:
    window_start = NOW - 30 * DAY
    history = clone_history(5)
    history.add(home_imsi(9), NOW - 60 * DAY, window_start - 1, True)
    assert run("clone", facts(imsi=home_imsi(4), sightings=history)) is None
    # Last seen exactly at the start of the window counts.
    history.add(home_imsi(8), NOW - 60 * DAY, window_start, True)
    assert run("clone", facts(imsi=home_imsi(4), sightings=history)) is not None


def test_clone_needs_an_imsi_and_sightings() -> None:
    assert run("clone", facts(imsi=None, sightings=clone_history(8))) is None
    assert run("clone", facts(imsi=home_imsi(5), sightings=None)) is None


def test_clone_grace_runs_per_pair_then_black() -> None:
    history = clone_history(6)
    imsi = home_imsi(5)
    pair_first = history.pair_first_seen(imsi)
    assert pair_first is not None
    deadline = pair_first + GRACE
    # Keep the window populated whatever "now" is: last seen = now.
    for t in (deadline - DAY, deadline - 1):
        for rec in history.imsis.values():
            rec[1] = t
        d = decide(facts(imsi=imsi, sightings=history, now=t), DEFAULT)
        assert (d.status, d.reason, d.deadline) == (Status.GREYLISTED, "clone_suspected",
                                                    deadline)
    for t in (deadline, deadline + DAY):
        for rec in history.imsis.values():
            rec[1] = t
        d = decide(facts(imsi=imsi, sightings=history, now=t), DEFAULT)
        assert (d.status, d.reason, d.rule, d.deadline) == (
            Status.BLACKLISTED, "clone_suspected", "clone", deadline)


def test_clone_pair_never_seen_starts_its_clock_now() -> None:
    # A read-only question about a new IMSI: the pair is not in the history.
    d = decide(facts(imsi=home_imsi(42), sightings=clone_history(6)), DEFAULT)
    assert (d.status, d.deadline) == (Status.GREYLISTED, NOW + GRACE)


def test_clone_threshold_and_window_are_configurable() -> None:
    strict = DecisionConfig(clone_threshold=1, clone_window_days=1)
    two = seen((home_imsi(0), NOW - 5 * DAY, NOW), (home_imsi(1), NOW - 2 * DAY, NOW))
    assert decide(facts(imsi=home_imsi(1), sightings=two), strict).reason == "clone_suspected"
    stale = seen((home_imsi(0), NOW - 5 * DAY, NOW), (home_imsi(1), NOW - 5 * DAY,
                                                        NOW - DAY - 1))
    assert run("clone", facts(imsi=home_imsi(1), sightings=stale), strict) is None


def test_clone_beats_the_white_list_and_names_it() -> None:
    f = facts(entry=(ListName.WHITE, "registered"), imsi=home_imsi(5), sightings=clone_history(6))
    d = decide(f, DEFAULT)
    assert (d.reason, d.list, d.rule) == ("clone_suspected", "white", "clone")


# -- step 8: white -------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["registered", "legalised", "grandfathered"])
def test_white_entry_is_whitelisted_with_its_reason(reason: str) -> None:
    d = decide(facts(entry=(ListName.WHITE, reason)), DEFAULT)
    assert d == Decision(Status.WHITELISTED, reason, "white", None, "white")


def test_white_rule_ignores_other_lists() -> None:
    assert run("white", facts()) is None
    assert run("white", facts(entry=(ListName.GREY, "x"))) is None
    assert run("white", facts(entry=(ListName.BLACK, "x"))) is None


def test_white_entry_without_imsi() -> None:
    assert decide(facts(entry=(ListName.WHITE, "registered"), imsi=None), DEFAULT).rule == "white"


# -- steps 9 and 10: grey --------------------------------------------------------------


def test_grey_entry_runs_its_grace_from_since() -> None:
    since = NOW - 10 * DAY
    d = decide(facts(entry=(ListName.GREY, "pending_verification"), since=since), DEFAULT)
    assert d == Decision(Status.GREYLISTED, "pending_verification", "grey",
                         "20 day(s) of grace left", "grey", since + GRACE)


def test_grey_entry_keeps_its_reason_while_in_grace() -> None:
    d = decide(facts(entry=(ListName.GREY, "import_unconfirmed"), since=NOW), DEFAULT)
    assert (d.status, d.reason) == (Status.GREYLISTED, "import_unconfirmed")


def test_grey_until_the_exact_deadline_then_black() -> None:
    since = NOW - 100 * DAY
    deadline = since + GRACE
    entry = (ListName.GREY, "pending_verification")
    before = decide(facts(entry=entry, since=since, now=deadline - 1), DEFAULT)
    assert (before.status, before.deadline) == (Status.GREYLISTED, deadline)
    assert before.detail == "1 day(s) of grace left"
    at = decide(facts(entry=entry, since=since, now=deadline), DEFAULT)
    assert at == Decision(Status.BLACKLISTED, "grace_expired", "grey", "grace period over",
                          "grey", deadline)
    after = decide(facts(entry=entry, since=since, now=deadline + 365 * DAY), DEFAULT)
    assert (after.status, after.reason, after.deadline) == (Status.BLACKLISTED,
                                                           "grace_expired", deadline)


def test_explicit_grace_until_wins_over_since() -> None:
    entry = (ListName.GREY, "pending_verification")
    since = NOW - 10 * DAY
    shorter = decide(facts(entry=entry, since=since, grace_until=NOW - 1), DEFAULT)
    assert (shorter.status, shorter.reason, shorter.deadline) == (
        Status.BLACKLISTED, "grace_expired", NOW - 1)
    extended = decide(facts(entry=entry, since=NOW - 60 * DAY, grace_until=NOW + DAY), DEFAULT)
    assert (extended.status, extended.deadline) == (Status.GREYLISTED, NOW + DAY)
    no_since = decide(facts(entry=entry, grace_until=NOW + 5 * DAY), DEFAULT)
    assert no_since.deadline == NOW + 5 * DAY


def test_grey_without_since_starts_now() -> None:
    d = decide(facts(entry=(ListName.GREY, "pending_verification")), DEFAULT)
    assert (d.status, d.deadline) == (Status.GREYLISTED, NOW + GRACE)


def test_grace_days_is_configurable() -> None:
    entry = (ListName.GREY, "pending_verification")
    week = DecisionConfig(grace_days=7)
    assert week.grace_seconds == 7 * DAY
    assert decide(facts(entry=entry, since=NOW - 6 * DAY), week).status is Status.GREYLISTED
    assert decide(facts(entry=entry, since=NOW - 7 * DAY), week).status is Status.BLACKLISTED
    none = DecisionConfig(grace_days=0)
    assert decide(facts(entry=entry, since=NOW), none).reason == "grace_expired"
    assert DecisionConfig(grace_days=0.5).grace_seconds == DAY // 2


def test_grey_rule_ignores_other_lists() -> None:
    assert run("grey", facts()) is None
    assert run("grey", facts(entry=(ListName.WHITE, "registered"))) is None
    assert run("grey", facts(entry=(ListName.BLACK, "stolen"))) is None


# -- step 11: grandfathered ----------------------------------------------------------


def test_default_cutoff_is_the_extended_date() -> None:
    assert DEFAULT_CUTOFF == DEFAULT.cutoff == "2025-05-25T00:00:00+05:00"
    assert DEFAULT.cutoff_epoch == CUTOFF


def test_first_home_sighting_before_the_cutoff_is_grandfathered() -> None:
    d = decide(facts(sightings=seen((HOME_IMSI, CUTOFF - 1, NOW))), DEFAULT)
    assert d == Decision(Status.WHITELISTED, "grandfathered", None,
                         "first seen before the cut-off", "grandfathered")
    no_imsi = decide(facts(imsi=None, sightings=seen(("", CUTOFF - 90 * DAY, NOW))), DEFAULT)
    assert no_imsi.reason == "grandfathered"


def test_first_home_sighting_exactly_at_the_cutoff_is_not_grandfathered() -> None:
    f = facts(sightings=seen((HOME_IMSI, CUTOFF, NOW)))
    assert run("grandfathered", f) is None
    d = decide(f, DEFAULT)
    assert (d.status, d.reason, d.rule, d.deadline) == (
        Status.BLACKLISTED, "grace_expired", "unknown", CUTOFF + GRACE)


def test_roaming_sightings_before_the_cutoff_do_not_grandfather() -> None:
    history = seen((ROAM_IMSI, CUTOFF - 100 * DAY, CUTOFF - 90 * DAY), (HOME_IMSI, NOW, NOW))
    assert history.first_home == NOW
    assert run("grandfathered", facts(sightings=history)) is None


def test_listed_imeis_are_not_grandfathered() -> None:
    old = seen((HOME_IMSI, CUTOFF - 100 * DAY, NOW))
    f = facts(entry=(ListName.GREY, "pending_verification"), since=NOW - 40 * DAY, sightings=old)
    assert run("grandfathered", f) is None
    assert decide(f, DEFAULT).reason == "grace_expired"


def test_never_seen_is_not_grandfathered() -> None:
    assert run("grandfathered", facts()) is None


def test_cutoff_is_configurable() -> None:
    first_cutoff = DecisionConfig(cutoff="2025-03-24T00:00:00+05:00")
    between = seen((HOME_IMSI, to_epoch("2025-04-01T00:00:00Z"), NOW))
    assert decide(facts(sightings=between), DEFAULT).reason == "grandfathered"
    assert run("grandfathered", facts(sightings=between), first_cutoff) is None
    utc = DecisionConfig(cutoff="2025-05-25T00:00:00Z")
    assert utc.cutoff_epoch == CUTOFF + 5 * 3600


# -- step 12: unknown ----------------------------------------------------------------


def test_never_seen_unknown_imei_is_grey_from_now() -> None:
    d = decide(facts(), DEFAULT)
    assert d == Decision(Status.GREYLISTED, "pending_verification", None,
                         "30 day(s) of grace left", "unknown", NOW + GRACE)


def test_unknown_grace_runs_from_the_first_home_sighting() -> None:
    first = NOW - 10 * DAY
    history = seen((ROAM_IMSI, first - 50 * DAY, first - 40 * DAY), (HOME_IMSI, first, NOW))
    d = decide(facts(sightings=history), DEFAULT)
    assert (d.status, d.reason, d.rule, d.deadline) == (
        Status.GREYLISTED, "pending_verification", "unknown", first + GRACE)
    assert d.detail == "20 day(s) of grace left"


def test_unknown_turns_black_at_first_sighting_plus_30_days() -> None:
    first = NOW - 10 * DAY
    history = seen((HOME_IMSI, first, first))
    deadline = first + 30 * DAY
    before = decide(facts(sightings=history, now=deadline - 1), DEFAULT)
    assert (before.status, before.reason) == (Status.GREYLISTED, "pending_verification")
    at = decide(facts(sightings=history, now=deadline), DEFAULT)
    assert at == Decision(Status.BLACKLISTED, "grace_expired", None, "grace period over",
                          "unknown", deadline)


def test_only_roaming_sightings_start_no_clock() -> None:
    history = seen((ROAM_IMSI, NOW - 100 * DAY, NOW - 90 * DAY))
    d = decide(facts(sightings=history), DEFAULT)
    assert (d.status, d.deadline) == (Status.GREYLISTED, NOW + GRACE)


def test_unknown_can_be_rejected_as_equipment_unknown() -> None:
    expected = Decision(None, "unknown", None, None, "unknown")
    assert decide(facts(), REJECT) == expected
    assert decide(facts(sightings=seen((HOME_IMSI, NOW - 90 * DAY, NOW))), REJECT) == expected
    assert decide(facts(imsi=None, pair=True), REJECT) == expected
    # Only step 12 changes: lists, grandfathering and roaming still answer.
    old = seen((HOME_IMSI, CUTOFF - DAY, NOW))
    assert decide(facts(sightings=old), REJECT).reason == "grandfathered"
    assert decide(facts(entry=(ListName.WHITE, "registered")), REJECT).status is Status.WHITELISTED


def test_unknown_is_always_a_decision() -> None:
    assert run("unknown", facts()) is not None
    assert run("unknown", facts(entry=(ListName.BLACK, "stolen"))) is not None


# -- rule order ----------------------------------------------------------------------


def test_default_order_is_policy_md_order() -> None:
    assert DEFAULT_RULE_ORDER == POLICY_ORDER
    assert tuple(RULES) == POLICY_ORDER
    assert DEFAULT.rule_order == DEFAULT_RULE_ORDER
    assert DecisionConfig(rule_order=()).rule_order == DEFAULT_RULE_ORDER
    assert sorted(TERMINAL_RULES) == ["unknown"]


def test_plain_list_order_is_a_valid_subsequence() -> None:
    assert PLAIN_LIST_ORDER[-1] == "unknown"
    it = iter(DEFAULT_RULE_ORDER)
    assert all(name in it for name in PLAIN_LIST_ORDER)
    plain = DecisionConfig(rule_order=PLAIN_LIST_ORDER)
    assert decide(facts(imsi=ROAM_IMSI), plain).rule == "unknown"
    assert decide(facts(tac_known=True, device_class="m2m"), plain).rule == "unknown"
    assert decide(facts(entry=(ListName.BLACK, "stolen"), pair=True), plain).rule == (
        "paired_exception")


# A Facts that each non-terminal rule decides under the default order.
TRIGGERS: dict[str, Facts] = {
    "malformed": facts("12345"),
    "paired_exception": facts(entry=(ListName.BLACK, "stolen"), pair=True),
    "black": facts(entry=(ListName.BLACK, "stolen")),
    "roaming": facts(imsi=ROAM_IMSI),
    "unknown_tac": facts(tac_known=False),
    "exempt_class": facts(tac_known=True, device_class="m2m"),
    "clone": facts(imsi=home_imsi(5), sightings=clone_history(6)),
    "white": facts(entry=(ListName.WHITE, "registered")),
    "grey": facts(entry=(ListName.GREY, "pending_verification"), since=NOW),
    "grandfathered": facts(sightings=seen((HOME_IMSI, CUTOFF - DAY, NOW))),
}


def test_every_rule_has_a_trigger() -> None:
    assert set(TRIGGERS) == set(RULES) - TERMINAL_RULES


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_each_rule_decides_its_trigger_and_names_itself(name: str) -> None:
    d = decide(TRIGGERS[name], DEFAULT)
    assert d.rule == name
    assert run(name, TRIGGERS[name]) == d


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_leaving_a_rule_out_switches_it_off(name: str) -> None:
    without = DecisionConfig(rule_order=tuple(n for n in DEFAULT_RULE_ORDER if n != name))
    assert name not in without.rule_order
    assert decide(TRIGGERS[name], without).rule != name


def test_leaving_out_paired_exception_blocks_the_pair() -> None:
    without = DecisionConfig(rule_order=tuple(n for n in DEFAULT_RULE_ORDER
                                              if n != "paired_exception"))
    d = decide(TRIGGERS["paired_exception"], without)
    assert (d.status, d.reason, d.rule) == (Status.BLACKLISTED, "stolen", "black")


def _moved(name: str, before: str) -> tuple[str, ...]:
    order = [n for n in DEFAULT_RULE_ORDER if n != name]
    order.insert(order.index(before), name)
    return tuple(order)


def test_reordering_changes_the_winner() -> None:
    stolen_roamer = facts(entry=(ListName.BLACK, "stolen"), imsi=ROAM_IMSI)
    assert decide(stolen_roamer, DEFAULT).rule == "black"
    roaming_first = DecisionConfig(rule_order=_moved("roaming", before="black"))
    d = decide(stolen_roamer, roaming_first)
    assert (d.status, d.reason, d.rule) == (Status.WHITELISTED, "roaming_exempt", "roaming")

    white_clone = facts(entry=(ListName.WHITE, "legalised"), imsi=home_imsi(5),
                        sightings=clone_history(6))
    assert decide(white_clone, DEFAULT).rule == "clone"
    white_first = DecisionConfig(rule_order=_moved("white", before="clone"))
    assert decide(white_clone, white_first) == Decision(Status.WHITELISTED, "legalised", "white",
                                                        None, "white")

    old_unknown_tac = facts(tac_known=False, sightings=seen((HOME_IMSI, CUTOFF - DAY, NOW)))
    assert decide(old_unknown_tac, DEFAULT).rule == "unknown_tac"
    grandfather_first = DecisionConfig(rule_order=_moved("grandfathered", before="unknown_tac"))
    assert decide(old_unknown_tac, grandfather_first).rule == "grandfathered"


def test_minimal_order_is_only_unknown() -> None:
    only = DecisionConfig(rule_order=("unknown",))
    assert decide(facts("garbage", entry=(ListName.BLACK, "stolen")), only).rule == "unknown"


# -- DecisionConfig validation -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unknown_equipment": "allow"}, "unknown_equipment"),
        ({"home_mccs": ("40",)}, "home_mccs"),
        ({"home_mccs": ("4011",)}, "home_mccs"),
        ({"home_mccs": ("40a",)}, "home_mccs"),
        ({"home_mccs": ("٤٠١",)}, "home_mccs"),  # Arabic-Indic digits are not decimal ASCII
        ({"home_mccs": ("401", "")}, "home_mccs"),
        ({"cutoff": "2025-05-25T00:00:00"}, "offset"),
        ({"cutoff": "2025-05-25"}, "offset"),
        ({"cutoff": "tomorrow"}, "ISO 8601"),
        ({"grace_days": -1}, "grace_days"),
        ({"grace_days": math.nan}, "grace_days"),
        ({"clone_window_days": 0}, "clone_window_days"),
        ({"clone_window_days": math.nan}, "clone_window_days"),
        ({"clone_threshold": 0}, "clone_threshold"),
        ({"rule_order": ("malformed", "nonsense", "unknown")}, "unknown rule"),
        ({"rule_order": ("black", "black", "unknown")}, "twice"),
        ({"rule_order": ("unknown", "unknown")}, "twice"),
        ({"rule_order": ("malformed", "black")}, "must end"),
        ({"rule_order": ("unknown", "black")}, "must end"),
        ({"invalid_imei_patterns": ("(",)}, "pattern"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecisionConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["grace_days", "clone_window_days"])
def test_infinite_durations_are_a_value_error(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        DecisionConfig(**{key: math.inf})  # type: ignore[arg-type]


def test_derived_values() -> None:
    mccs: list[str] = ["401", "402"]  # a list, as a TOML config gives it
    c = DecisionConfig(grace_days=10, clone_window_days=2.5, home_mccs=mccs,  # type: ignore[arg-type]
                       cutoff="2025-01-01T05:00:00+05:00")
    assert c.grace_seconds == 10 * DAY
    assert c.clone_window_seconds == 2 * DAY + DAY // 2
    assert c.home_mccs == ("401", "402")
    assert c.cutoff_epoch == to_epoch("2025-01-01T00:00:00Z")
    assert c.is_home(None) and c.is_home("40201") and not c.is_home(ROAM_IMSI)


def test_configs_compare_by_their_settings() -> None:
    assert DecisionConfig() == DecisionConfig(rule_order=DEFAULT_RULE_ORDER)
    assert DecisionConfig() != DecisionConfig(unknown_equipment="reject")
    assert DecisionConfig() != DecisionConfig(grace_days=7)
    assert hash(DecisionConfig()) == hash(DecisionConfig(rule_order=DEFAULT_RULE_ORDER))


def test_replace_revalidates() -> None:
    week = dataclasses.replace(DEFAULT, grace_days=7)
    assert week.grace_seconds == 7 * DAY
    with pytest.raises(ValueError):
        dataclasses.replace(DEFAULT, home_mccs=("x",))


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.grace_days = 1  # type: ignore[misc]


# -- properties ----------------------------------------------------------------------

CONFIGS: Sequence[DecisionConfig] = (
    DEFAULT,
    REJECT,
    DecisionConfig(rule_order=PLAIN_LIST_ORDER),
    DecisionConfig(invalid_imei_patterns=(r"0{14}", r"00\d{12}"), home_mccs=("401", "250")),
    DecisionConfig(rule_order=_moved("roaming", before="black"), grace_days=0),
    DecisionConfig(clone_threshold=1, clone_window_days=1, exempt_classes=()),
    DecisionConfig(rule_order=("unknown",), unknown_equipment="reject"),
)

T_MIN, T_MAX = CUTOFF - 400 * DAY, CUTOFF + 400 * DAY
times = st.integers(T_MIN, T_MAX)
imsis = st.sampled_from([HOME_IMSI, HOME_IMSI_2, ROAM_IMSI, home_imsi(3), "25002000000001"])
any_imsi = st.none() | imsis | st.from_regex(r"[0-9]{5,15}", fullmatch=True)
reasons = st.sampled_from(["stolen", "registered", "pending_verification", "x"]) | st.text(
    min_size=1, max_size=20)
entries = st.none() | st.tuples(
    st.sampled_from([ListName.WHITE, ListName.GREY, ListName.BLACK]), reasons)
imeis = st.one_of(
    st.from_regex(r"[0-9]{14,15}", fullmatch=True),
    st.sampled_from([IMEI, "00000000000000", "00123456789012"]),
    st.text(max_size=16),
)


@st.composite
def histories(draw: st.DrawFn) -> Sightings | None:
    rows = draw(st.lists(st.tuples(st.just("") | imsis, times, st.integers(0, 90 * DAY)),
                         max_size=10))
    if not rows and draw(st.booleans()):
        return None
    home = draw(st.sampled_from([("401",), ("401", "250")]))
    s = Sightings()
    for imsi, first, extra in rows:
        s.add(imsi, first, first + extra, imsi[:3] in home or not imsi)
    return s


@st.composite
def any_facts(draw: st.DrawFn) -> Facts:
    imei = draw(imeis)
    entry = draw(entries)
    tac_known = draw(st.none() | st.booleans())
    return Facts(
        imei=imei,
        imei14=normalize_imei(imei),
        imsi=draw(any_imsi),
        software_version=draw(st.none() | st.sampled_from(["01", "99"])),
        entry=None if entry is None else ListEntry(*entry),
        pair_is_exception=draw(st.booleans()),
        now=draw(times),
        entry_since=draw(st.none() | times),
        entry_grace_until=draw(st.none() | times),
        tac_known=tac_known,
        device_class=draw(st.none() | st.sampled_from(["m2m", "smartphone", "iot"])),
        sightings=draw(histories()),
        operator=draw(st.none() | st.just("op1")),
    )


@st.composite
def random_orders(draw: st.DrawFn) -> DecisionConfig:
    optional = [n for n in DEFAULT_RULE_ORDER if n not in TERMINAL_RULES]
    chosen = draw(st.lists(st.sampled_from(optional), unique=True))
    return DecisionConfig(rule_order=(*chosen, "unknown"),
                          unknown_equipment=draw(st.sampled_from(["greylist", "reject"])))


@settings(max_examples=400)
@given(f=any_facts(), config=st.sampled_from(CONFIGS) | random_orders())
def test_decide_is_total_and_auditable(f: Facts, config: DecisionConfig) -> None:
    d = decide(f, config)
    assert isinstance(d, Decision)
    assert isinstance(d.reason, str) and d.reason
    assert d.rule in RULES and d.rule in config.rule_order
    assert d == decide(f, config)  # pure: same facts, same answer
    # The named rule decided, and every rule before it passed.
    position = config.rule_order.index(d.rule)
    assert all(run(name, f, config) is None for name in config.rule_order[:position])
    assert run(d.rule, f, config) == d
    if d.status is None:
        assert (d.reason, d.rule, config.unknown_equipment) == ("unknown", "unknown", "reject")
    else:
        assert isinstance(d.status, Status)
    if d.status is Status.GREYLISTED:
        assert d.deadline is not None and f.now < d.deadline
    if d.deadline is not None:
        assert d.rule in ("clone", "grey", "unknown")
        assert d.status is Status.GREYLISTED or f.now >= d.deadline
    if f.imei14 is None and config.rule_order[0] == "malformed":
        assert (d.status, d.reason) == (Status.BLACKLISTED, "malformed")


@given(imei=imeis, entry=entries, pair=st.booleans(), reject=st.booleans(),
       imsi=st.none() | st.just(HOME_IMSI))
def test_plain_lists_match_the_table(
    imei: str, entry: tuple[ListName, str] | None, pair: bool, reject: bool, imsi: str | None
) -> None:
    """Home IMSI or none, no TAC db, never seen, no grace clock running yet."""
    config = REJECT if reject else DEFAULT
    # The snapshot only reports a pair for an IMSI it was given.
    f = facts(imei, entry=entry, pair=pair and imsi is not None, imsi=imsi)
    d = decide(f, config)
    if f.imei14 is None or f.imei14 == "0" * 14:
        assert (d.status, d.reason) == (Status.BLACKLISTED, "malformed")
    elif entry is None:
        if reject:
            assert (d.status, d.reason) == (None, "unknown")
        else:
            assert (d.status, d.reason, d.deadline) == (
                Status.GREYLISTED, "pending_verification", NOW + GRACE)
    elif entry[0] is ListName.BLACK:
        if pair and imsi is not None:
            assert (d.status, d.reason) == (Status.WHITELISTED, "paired_exception")
        else:
            assert (d.status, d.reason) == (Status.BLACKLISTED, entry[1])
    else:
        status = Status.GREYLISTED if entry[0] is ListName.GREY else Status.WHITELISTED
        assert (d.status, d.reason, d.list) == (status, entry[1], entry[0].value)


def test_reason_vocabulary_covers_engine_reasons() -> None:
    produced = {
        decide(f, DEFAULT).reason for f in TRIGGERS.values() if f.entry is None
    } | {"grace_expired", "pending_verification", "unknown"}
    assert produced <= {r.value for r in Reason}
