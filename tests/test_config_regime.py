"""The regime's config sections: [policy] rule knobs, [observations], [notifications],
[clock] and the new [log] keys.

Every bad value is a one-line `ConfigError` naming its key; the defaults are
POLICY.md's; the test clock exists only under ``clock.test_mode = true`` and
agrees with any other `ScaledClock` given the same start, speed and anchor.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from eir.clock import ScaledClock, system_clock
from eir.config import ClockSection, Config, ConfigError, from_mapping, load
from eir.policy.engine import DEFAULT_RULE_ORDER, DecisionConfig
from eir.policy.model import to_epoch

DAY = 86_400


def load_toml(tmp_path: Path, toml: str) -> Config:
    path = tmp_path / "eir.toml"
    path.write_text(toml)
    return load(path)


def config_error(tmp_path: Path, toml: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_toml(tmp_path, toml)
    message = str(err.value)
    assert "\n" not in message, message
    return message


# -- every new key: a bad value names the key, in one line -------------------------------------

BAD = [
    # [policy]
    ('[policy]\ncutoff = "2025-05-25T00:00:00"\n', "cutoff"),  # no UTC offset
    ('[policy]\ncutoff = "2025-05-25"\n', "cutoff"),
    ('[policy]\ncutoff = "the 25th of May"\n', "cutoff"),
    ('[policy]\ncutoff = 2025\n', "policy.cutoff"),
    ('[policy]\nrule_order = ["malformed", "black"]\n', "rule_order"),  # no "unknown" last
    ('[policy]\nrule_order = ["unknown", "malformed"]\n', "rule_order"),
    ('[policy]\nrule_order = ["black", "black", "unknown"]\n', "rule_order"),
    ('[policy]\nrule_order = "black"\n', "policy.rule_order"),
    ("[policy]\ngrace_days = -1\n", "grace_days"),
    ("[policy]\ngrace_days = -inf\n", "grace_days"),
    ("[policy]\ngrace_days = inf\n", "grace_days"),
    ("[policy]\ngrace_days = nan\n", "grace_days"),
    ('[policy]\ngrace_days = "30"\n', "policy.grace_days"),
    ("[policy]\nclone_threshold = 0\n", "clone_threshold"),
    ("[policy]\nclone_threshold = 2.5\n", "policy.clone_threshold"),
    ("[policy]\nclone_window_days = 0\n", "clone_window_days"),
    ("[policy]\nclone_window_days = inf\n", "clone_window_days"),
    ("[policy]\nexception_cap = 0\n", "policy.exception_cap"),
    ("[policy]\nexception_cap = -3\n", "policy.exception_cap"),
    ('[policy]\nhome_mccs = [401]\n', "policy.home_mccs"),  # numbers, not strings
    ('[policy]\nexempt_classes = "m2m"\n', "policy.exempt_classes"),
    ("[policy]\nrules = []\n", "unknown key policy.rules"),
    # [observations]
    ("[observations]\nretention_days = 29\n", "observations.retention_days"),  # < grace 30
    ("[policy]\ngrace_days = 200\n", "observations.retention_days"),  # retention 180
    ("[policy]\nclone_window_days = 181\n", "observations.retention_days"),
    ("[observations]\nretention_days = 0\n", "observations.retention_days"),
    ("[observations]\nretention_days = inf\n", "observations.retention_days"),
    ("[observations]\nflush_seconds = 0\n", "observations.flush_seconds"),
    ("[observations]\nflush_seconds = nan\n", "observations.flush_seconds"),
    ("[observations]\ncache_ttl_seconds = -1\n", "observations.cache_ttl_seconds"),
    ("[observations]\nprune_interval_seconds = 0\n", "observations.prune_interval_seconds"),
    ("[observations]\nmax_pending = 0\n", "observations.max_pending"),
    ("[observations]\ncache_imeis = 0\n", "observations.cache_imeis"),
    ("[observations]\ncache_imeis = 1.5\n", "observations.cache_imeis"),
    ("[observations]\nlast_seen_resolution_seconds = -1\n",
     "observations.last_seen_resolution_seconds"),
    ("[observations]\nretention = 10\n", "unknown key observations.retention"),
    # [notifications]
    ('[notifications]\noffsets_days = ["0", "20"]\n', "notifications.offsets_days"),
    ('[notifications]\noffsets_days = [0, true]\n', "notifications.offsets_days"),
    ("[notifications]\noffsets_days = 20\n", "notifications.offsets_days"),
    ("[notifications]\noffsets_days = [0, -1]\n", "notifications.offsets_days"),
    ("[notifications]\noffsets_days = [0, inf]\n", "notifications.offsets_days"),
    ("[notifications]\ninterval_seconds = 0\n", "notifications.interval_seconds"),
    ('[notifications]\nat_expiry = "yes"\n', "notifications.at_expiry"),
    # [log]
    ('[log]\nimsi = "plain"\n', "log.imsi"),
    ('[log]\nimsi = ""\n', "log.imsi"),
    ('[log]\ndecisions = "verbose"\n', "log.decisions"),
    ("[log]\ndecisions = 10\n", "log.decisions"),
    # [clock]
    ('[clock]\ntest_mode = "true"\n', "clock.test_mode"),
    ("[clock]\ntest_mode = true\nspeed = 0\n", "clock.speed"),
    ("[clock]\ntest_mode = true\nspeed = -2\n", "clock.speed"),
    ("[clock]\ntest_mode = true\nspeed = inf\n", "clock.speed"),
    ('[clock]\ntest_mode = true\nanchor = "2026-01-01T00:00:00Z"\n', "clock.anchor"),
    ('[clock]\ntest_mode = true\nstart = "yesterday"\n', "clock.start"),
    ('[clock]\ntest_mode = true\nstart = "2026-13-01T00:00:00Z"\n', "clock.start"),
    ('[clock]\ntest_mode = true\nstart = "2026-01-01T00:00:00Z"\nanchor = "soon"\n',
     "clock.anchor"),
]


@pytest.mark.parametrize(("toml", "names"), BAD)
def test_bad_regime_settings_name_the_key(tmp_path: Path, toml: str, names: str) -> None:
    message = config_error(tmp_path, toml)
    assert names in message, message


def test_policy_errors_name_their_section(tmp_path: Path) -> None:
    # Errors raised by the engine's own checks come back marked as [policy] ones.
    for toml in ('[policy]\ncutoff = "2025-05-25"\n', "[policy]\ngrace_days = -1\n",
                 '[policy]\nrule_order = ["black"]\n', "[policy]\nclone_threshold = 0\n"):
        assert "policy" in config_error(tmp_path, toml)


@pytest.mark.parametrize(("toml", "key"), [
    ('[policy]\nhome_mccs = ["40"]\n', "home_mccs"),
    ('[policy]\nhome_mccs = ["4O1"]\n', "home_mccs"),
    ('[policy]\nrule_order = ["malformed", "blak", "unknown"]\n', "rule_order"),
    ('[policy]\ninvalid_imei_patterns = ["(00"]\n', "invalid_imei_patterns"),
])
def test_engine_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    message = config_error(tmp_path, toml)
    assert key in message, message


def test_engine_errors_still_say_what_is_wrong(tmp_path: Path) -> None:
    # Whatever the key naming, the value at fault is in the one line.
    assert "'40'" in config_error(tmp_path, '[policy]\nhome_mccs = ["40"]\n')
    assert "blak" in config_error(tmp_path,
                                  '[policy]\nrule_order = ["malformed", "blak", "unknown"]\n')


# -- good values ---------------------------------------------------------------------------


def test_good_regime_settings_are_taken(tmp_path: Path) -> None:
    cfg = load_toml(tmp_path, """
[policy]
unknown_equipment = "reject"
rule_order = ["malformed", "black", "white", "grey", "unknown"]
invalid_imei_patterns = ["0{14}", "00\\\\d{12}"]
home_mccs = ["401", "250"]
exempt_classes = ["M2M", "iot"]
grace_days = 0
cutoff = "2025-03-24T00:00:00+05:00"
clone_threshold = 1
clone_window_days = 7
exception_cap = 1
[observations]
retention_days = 30
last_seen_resolution_seconds = 0
[notifications]
offsets_days = [0, 1.5, 20]
at_expiry = false
[log]
imsi = "hashed"
decisions = "INFO"
""")
    dc = cfg.decision_config()
    assert dc.unknown_equipment == "reject"
    assert dc.rule_order == ("malformed", "black", "white", "grey", "unknown")
    assert dc.home_mccs == ("401", "250") and dc.is_home("250011234567890")
    assert dc.exempt_classes == ("m2m", "iot")
    assert dc.grace_seconds == 0 and dc.clone_window_seconds == 7 * DAY
    assert dc.cutoff_epoch == to_epoch("2025-03-23T19:00:00Z")
    assert dc.invalid_imei_patterns == ("0{14}", r"00\d{12}")
    assert cfg.policy.exception_cap == 1
    assert cfg.notifications.offsets_days == (0.0, 1.5, 20.0)
    assert cfg.notifications.at_expiry is False
    assert cfg.observations.retention_days == 30.0  # == the longest window: allowed
    assert cfg.log.imsi == "hashed"


def test_retention_may_equal_the_longest_window(tmp_path: Path) -> None:
    cfg = load_toml(tmp_path, "[policy]\ngrace_days = 180\n")
    assert cfg.observations.retention_days == 180.0 == cfg.policy.grace_days


# -- defaults: POLICY.md's -----------------------------------------------------------------


def test_decision_config_defaults_are_policy_md() -> None:
    dc = Config().decision_config()
    assert dc == DecisionConfig()
    assert dc.grace_days == 30.0 and dc.grace_seconds == 30 * DAY
    assert dc.cutoff == "2025-05-25T00:00:00+05:00"
    assert dc.cutoff_epoch == int(datetime.fromisoformat("2025-05-24T19:00:00+00:00")
                                  .timestamp())
    assert dc.clone_threshold == 5 and dc.clone_window_seconds == 30 * DAY
    assert dc.home_mccs == ("401",)
    assert dc.is_home("401011234567890") and not dc.is_home("250011234567890")
    assert dc.is_home(None)  # no IMSI: the roaming rule cannot apply
    assert dc.exempt_classes == ("m2m",)
    assert dc.unknown_equipment == "greylist"
    assert dc.invalid_imei_patterns == ("0{14}",)
    # POLICY.md's table, steps 1 to 12 (9-10 are one rule)
    assert dc.rule_order == DEFAULT_RULE_ORDER == (
        "malformed", "paired_exception", "black", "roaming", "unknown_tac", "exempt_class",
        "clone", "white", "grey", "grandfathered", "unknown")


def test_other_regime_defaults_are_the_readme_ones() -> None:
    cfg = load(None)
    assert cfg.policy.exception_cap == 10
    assert cfg.observations.retention_days == 180.0
    assert cfg.observations.flush_seconds == 1.0
    assert cfg.observations.max_pending == 200_000
    assert cfg.observations.cache_imeis == 1_000_000
    assert cfg.observations.cache_ttl_seconds == 30.0
    assert cfg.observations.last_seen_resolution_seconds == 3600
    assert cfg.notifications.offsets_days == (0.0, 20.0, 27.0)
    assert cfg.notifications.at_expiry is True
    assert cfg.log.decisions == "debug" and cfg.log.imsi == "hashed" and cfg.log.imei == "hashed"
    assert cfg.clock == ClockSection()
    assert cfg.make_clock() is system_clock


# -- the test clock --------------------------------------------------------------------------


@pytest.mark.parametrize("clock", [
    'start = "2026-01-01T00:00:00Z"',
    "speed = 86400",
    "speed = 2.0",
    'start = "2026-01-01T00:00:00Z"\nanchor = "2026-01-01T00:00:00Z"',
    'anchor = "2026-01-01T00:00:00Z"',
    'start = "2026-01-01T00:00:00Z"\ntest_mode = false',
])
def test_the_test_clock_needs_test_mode(tmp_path: Path, clock: str) -> None:
    message = config_error(tmp_path, f"[clock]\n{clock}\n")
    assert "clock.test_mode" in message, message


def test_test_mode_alone_keeps_the_system_clock(tmp_path: Path) -> None:
    cfg = load_toml(tmp_path, "[clock]\ntest_mode = true\n")
    assert cfg.make_clock() is system_clock


def test_test_clock_starts_at_start_and_runs_at_speed(tmp_path: Path) -> None:
    cfg = load_toml(tmp_path, '[clock]\ntest_mode = true\nstart = "2030-01-01T00:00:00Z"\n'
                              "speed = 86400\n")
    t0 = time.time()
    clock = cfg.make_clock()
    assert isinstance(clock, ScaledClock)
    start = to_epoch("2030-01-01T00:00:00Z")
    assert clock.start == start and clock.speed == 86400
    assert t0 - 1 <= clock.anchor <= time.time() + 1  # default anchor: now
    elapsed = time.time() - clock.anchor
    assert abs(clock() - (start + elapsed * 86400)) < 86400 * 0.5


def test_test_clock_agrees_with_another_built_from_the_same_three(tmp_path: Path) -> None:
    anchor = int(time.time()) - 5
    stamp = datetime.fromtimestamp(anchor).astimezone().isoformat()  # local offset on purpose
    cfg = load_toml(tmp_path, f"""
[clock]
test_mode = true
start = "2025-06-01T12:00:00+05:00"
speed = 86400
anchor = "{stamp}"
""")
    ours = cfg.make_clock()
    assert isinstance(ours, ScaledClock)
    theirs = ScaledClock(datetime.fromisoformat("2025-06-01T07:00:00+00:00").timestamp(),
                         86400.0, float(anchor))
    # sampled back to back, so they may differ only by the time between the two reads
    for _ in range(3):
        a, b = ours(), theirs()
        assert abs(a - b) < 86400 * 0.05, (a, b)
    assert ours.real_time_of(ours.start) == pytest.approx(anchor)
    assert ours.real_time_of(ours.start + 86400) == pytest.approx(anchor + 1)


def test_test_clock_keeps_the_fraction_of_the_anchor(tmp_path: Path) -> None:
    anchor = int(time.time()) - 5 + 0.5
    stamp = datetime.fromtimestamp(anchor).astimezone().isoformat()
    cfg = load_toml(tmp_path, f'[clock]\ntest_mode = true\nstart = "2025-06-01T00:00:00Z"\n'
                              f'speed = 86400\nanchor = "{stamp}"\n')
    ours = cfg.make_clock()
    theirs = ScaledClock(datetime.fromisoformat("2025-06-01T00:00:00+00:00").timestamp(),
                         86400.0, anchor)
    assert abs(ours() - theirs()) < 86400 * 0.05


def test_the_clock_section_can_be_set_by_mapping() -> None:
    cfg = from_mapping({"clock": {"test_mode": True, "start": "2026-02-01T00:00:00Z",
                                  "speed": 1}}).validate()
    assert cfg.clock.speed == 1.0 and isinstance(cfg.clock.speed, float)
    clock = cfg.make_clock()
    assert abs(clock() - to_epoch("2026-02-01T00:00:00Z")) < 5
