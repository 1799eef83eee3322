"""eir.policy.tac.TacTable, and the TAC facts Snapshot.facts gathers (POLICY.md steps 5, 6)."""

from __future__ import annotations

import hashlib
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Status, to_epoch
from eir.policy.registry import Snapshot
from eir.policy.tac import TacTable

NOW = to_epoch("2025-10-01T12:00:00Z")
HOME_IMSI = "401011234567890"

PHONE_TAC = 35209900
M2M_TAC = 86000001
PHONE = "35209900176148"
M2M = "86000001000017"
NO_TAC = "49015420323751"


def digest(table: TacTable) -> str:
    h = hashlib.sha256()
    table.digest_into(h)
    return h.hexdigest()


# -- TacTable ----------------------------------------------------------------------------


def test_empty_table() -> None:
    table = TacTable.empty()
    assert not table.loaded
    assert len(table) == 0
    assert table.lookup(PHONE_TAC) is None
    assert table.lookup(0) is None


def test_build_and_lookup() -> None:
    table = TacTable.build([(M2M_TAC, "m2m"), (PHONE_TAC, "smartphone"), (1, "feature phone")])
    assert table.loaded
    assert len(table) == 3
    assert table.lookup(PHONE_TAC) == "smartphone"
    assert table.lookup(M2M_TAC) == "m2m"
    assert table.lookup(1) == "feature phone"
    for missing in (0, 2, PHONE_TAC - 1, PHONE_TAC + 1, M2M_TAC + 1, 99_999_999):
        assert table.lookup(missing) is None


def test_build_from_nothing_is_not_loaded() -> None:
    table = TacTable.build([])
    assert not table.loaded and len(table) == 0
    assert digest(table) == digest(TacTable.empty())


def test_classes_are_lower_cased_and_stripped() -> None:
    table = TacTable.build([(PHONE_TAC, "  SmartPhone "), (M2M_TAC, "M2M")])
    assert table.lookup(PHONE_TAC) == "smartphone"
    assert table.lookup(M2M_TAC) == "m2m"


def test_later_duplicate_wins() -> None:
    table = TacTable.build([(PHONE_TAC, "smartphone"), (M2M_TAC, "m2m"), (PHONE_TAC, "M2M")])
    assert len(table) == 2
    assert table.lookup(PHONE_TAC) == "m2m"
    again = TacTable.build([(PHONE_TAC, "m2m"), (PHONE_TAC, "smartphone")])
    assert again.lookup(PHONE_TAC) == "smartphone"


def test_tac_given_as_text_is_taken_as_a_number() -> None:
    table = TacTable.build([("35209900", "smartphone")])  # type: ignore[list-item]
    assert table.lookup(PHONE_TAC) == "smartphone"


def test_constructor_checks_lengths() -> None:
    with pytest.raises(ValueError):
        TacTable(array("I", [1, 2]), array("H", [0]), ("m2m",))


def test_digest_depends_on_content_only() -> None:
    rows = [(PHONE_TAC, "smartphone"), (M2M_TAC, "m2m"), (1, "tablet")]
    assert digest(TacTable.build(rows)) == digest(TacTable.build(reversed(rows)))
    assert digest(TacTable.build(rows)) != digest(TacTable.build(rows[:2]))
    assert digest(TacTable.build(rows)) != digest(TacTable.build([*rows[:2], (1, "m2m")]))
    assert digest(TacTable.build(rows)) != digest(TacTable.build([*rows[:2], (2, "tablet")]))


@given(st.lists(st.tuples(st.integers(0, 99_999_999),
                          st.sampled_from(["m2m", "M2M", "smartphone", "Tablet "])),
                max_size=50),
       st.integers(0, 99_999_999))
def test_lookup_agrees_with_a_dict(rows: list[tuple[int, str]], probe: int) -> None:
    model = {tac: cls.strip().lower() for tac, cls in rows}
    table = TacTable.build(rows)
    assert len(table) == len(model) and table.loaded == bool(model)
    for tac in [probe, *model]:
        assert table.lookup(tac) == model.get(tac)


# -- Snapshot.facts ----------------------------------------------------------------------


def test_facts_without_a_tac_db() -> None:
    snap = Snapshot.build([])
    assert not snap.tac.loaded
    f = snap.facts(PHONE, HOME_IMSI, "01", now=NOW)
    assert (f.tac_known, f.device_class) == (None, None)
    d = decide(f, DecisionConfig())
    assert (d.status, d.reason) == (Status.GREYLISTED, "pending_verification")


def test_facts_with_a_tac_db() -> None:
    snap = Snapshot.build([], tac=TacTable.build([(PHONE_TAC, "SmartPhone"), (M2M_TAC, "M2M")]))
    phone = snap.facts(PHONE, HOME_IMSI, "01", now=NOW)
    assert (phone.tac_known, phone.device_class) == (True, "smartphone")
    m2m = snap.facts(M2M + "7", HOME_IMSI, "01", now=NOW)  # 15 digits: TAC is still digits 1-8
    assert (m2m.tac_known, m2m.device_class) == (True, "m2m")
    unknown = snap.facts(NO_TAC, HOME_IMSI, "01", now=NOW)
    assert (unknown.tac_known, unknown.device_class) == (False, None)
    malformed = snap.facts("12345", HOME_IMSI, "01", now=NOW)
    assert (malformed.tac_known, malformed.device_class) == (None, None)


def test_tac_facts_feed_steps_5_and_6() -> None:
    snap = Snapshot.build([(PHONE, "white", "registered")],
                          tac=TacTable.build([(PHONE_TAC, "smartphone"), (M2M_TAC, "m2m")]))
    config = DecisionConfig()
    assert decide(snap.facts(PHONE, HOME_IMSI, now=NOW), config).reason == "registered"
    m2m = decide(snap.facts(M2M, HOME_IMSI, now=NOW), config)
    assert (m2m.status, m2m.reason, m2m.rule) == (Status.WHITELISTED, "exempt_class",
                                                  "exempt_class")
    unknown = decide(snap.facts(NO_TAC, HOME_IMSI, now=NOW), config)
    assert (unknown.status, unknown.reason, unknown.rule) == (Status.BLACKLISTED, "unknown_tac",
                                                              "unknown_tac")
    # Roamers never reach step 5.
    assert decide(snap.facts(NO_TAC, "250011234567890", now=NOW), config).reason == (
        "roaming_exempt")


def test_facts_carries_the_other_inputs() -> None:
    snap = Snapshot.build([], tac=TacTable.build([(PHONE_TAC, "smartphone")]))
    f = snap.facts(PHONE, "not-an-imsi", "07", now=NOW, operator="op9")
    assert (f.imei, f.imei14, f.imsi, f.software_version, f.now, f.operator) == (
        PHONE, PHONE, None, "07", NOW, "op9")
    assert f.sightings is None
