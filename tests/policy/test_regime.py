"""eir.policy.regime (check, dry_run, counts, clock starts, logging) and point_snapshot.

The regime runs over a real SQLite registry and `SqliteObservations`, with
an injected clock and a fake monotonic clock for the cache: no sleeps.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eir.policy.csvio import import_csv
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Status, from_epoch
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime, mask_imei, mask_imsi
from eir.policy.registry import Snapshot
from eir.policy.sqlite import ListVersion, SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations

T0 = 1_748_779_200  # 2025-06-01T12:00:00Z, after the cut-off
DAY = 86_400
GRACE = 30 * DAY
IMEI = "35209900176148"
IMEI15 = IMEI + "2"
OTHER = "49015420323751"
HOME_1 = "401011111111111"
HOME_2 = "401012222222222"
ROAM = "250011234567890"


class Now:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return float(self.t)


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db",
                              clock=lambda: datetime(2025, 6, 1, 12, tzinfo=UTC)) as r:
        yield r


@pytest.fixture
async def obs(reg: SqliteRegistry) -> AsyncIterator[SqliteObservations]:
    o = SqliteObservations(reg)
    yield o
    o.close()


def make(snapshot: Snapshot | None = None, store: SqliteObservations | None = None,
         now: Now | None = None, config: DecisionConfig | None = None,
         **kwargs: object) -> tuple[Regime, SightingCache, Now]:
    cfg = config or DecisionConfig()
    clock = now or Now()
    cache = SightingCache(store, cfg.is_home, monotonic=lambda: 0.0)
    regime = Regime(snapshot or Snapshot.empty(), cfg, cache, clock=clock,
                    **kwargs)  # type: ignore[arg-type]
    return regime, cache, clock


def csv_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


# -- check -----------------------------------------------------------------------------------


async def test_first_check_records_one_sighting_and_answers_grey(
    obs: SqliteObservations,
) -> None:
    regime, cache, _ = make(store=obs)
    d = regime.check(IMEI15, HOME_1, "01", "op-1")
    assert (d.status, d.reason, d.rule, d.deadline) == (
        Status.GREYLISTED, "pending_verification", "unknown", T0 + GRACE)
    assert d.detail == "30 day(s) of grace left"
    assert cache.pending == 1
    assert await cache.flush() == 1
    assert obs.read_sightings(int(IMEI)) == [(HOME_1, T0, T0)]
    assert await obs.history(IMEI) == [{"imsi": HOME_1, "operator": "op-1",
                                        "first_seen": from_epoch(T0),
                                        "last_seen": from_epoch(T0)}]


async def test_repeat_checks_within_the_hour_queue_nothing(obs: SqliteObservations) -> None:
    regime, cache, now = make(store=obs)
    regime.check(IMEI, HOME_1, None, "op-1")
    now.t += 1800
    d = regime.check(IMEI, HOME_1, None, "op-1")
    assert cache.pending == 1
    assert d.deadline == T0 + GRACE  # the clock started at the first sighting
    await cache.flush()
    now.t = T0 + 3599
    regime.check(IMEI, HOME_1, None, "op-1")
    assert cache.pending == 0
    now.t = T0 + 3600  # an hour after the last stored sighting: written again
    regime.check(IMEI, HOME_1, None, "op-1")
    assert cache.pending == 1
    await cache.flush()
    assert obs.read_sightings(int(IMEI)) == [(HOME_1, T0, T0 + 3600)]


async def test_grace_runs_from_the_first_sighting_then_blocks(obs: SqliteObservations) -> None:
    regime, cache, _ = make(store=obs)
    regime.check(IMEI, None, None, "op-1")
    await cache.flush()
    # Another worker, later, with an empty cache: the stored first sighting still wins.
    theirs = SqliteObservations(obs.registry)
    later, _, later_now = make(store=theirs, now=Now(T0 + GRACE - 1))
    d = later.check(IMEI, None, None, "op-2")
    assert (d.status, d.reason, d.deadline) == (Status.GREYLISTED, "pending_verification",
                                                T0 + GRACE)
    later_now.t = T0 + GRACE
    d = later.check(IMEI, None, None, "op-2")
    assert (d.status, d.reason, d.deadline) == (Status.BLACKLISTED, "grace_expired", T0 + GRACE)
    theirs.close()


def test_malformed_imei_is_counted_and_observes_nothing() -> None:
    regime, cache, _ = make()
    d = regime.check("35209900", HOME_1, None, "op-1")
    assert (d.status, d.reason) == (Status.BLACKLISTED, "malformed")
    assert cache.pending == 0 and len(cache) == 0
    assert regime.counts == Counter({("op-1", Status.BLACKLISTED, "malformed"): 1})
    assert regime.take_clock_starts() == []


def test_an_invalid_imsi_is_treated_as_none() -> None:
    regime, _, _ = make()
    regime.check(IMEI, "40101x", None, "op-1")
    assert regime.take_clock_starts() == [(IMEI, "", "pending_verification", T0, T0 + GRACE)]


async def test_list_entries_decide_and_a_stolen_phone_stays_blocked_for_roamers(
    reg: SqliteRegistry,
) -> None:
    await import_csv(reg, csv_bytes("imei,list,reason,imsi",
                                    f"{IMEI},black,stolen,",
                                    f"{IMEI},exception,,{HOME_2}",
                                    f"{OTHER},white,registered,"))
    regime, _, _ = make(await reg.load_snapshot())
    got = {(imei, imsi): regime.check(imei, imsi, None, "op-1")
           for imei, imsi in ((IMEI, ROAM), (IMEI, HOME_1), (IMEI, HOME_2), (OTHER, HOME_1))}
    assert {k: (d.status, d.reason) for k, d in got.items()} == {
        (IMEI, ROAM): (Status.BLACKLISTED, "stolen"),
        (IMEI, HOME_1): (Status.BLACKLISTED, "stolen"),
        (IMEI, HOME_2): (Status.WHITELISTED, "paired_exception"),
        (OTHER, HOME_1): (Status.WHITELISTED, "registered"),
    }
    assert regime.take_clock_starts() == []


# -- counts ----------------------------------------------------------------------------------


async def test_counts_per_operator_status_and_reason(obs: SqliteObservations) -> None:
    regime, _, _ = make()
    regime.check(IMEI, HOME_1, None, "op-1")
    regime.check(IMEI, HOME_1, None, "op-1")
    regime.check(OTHER, HOME_1, None, "op-2")
    regime.check(IMEI, ROAM, None, "op-1")
    regime.check("bad", None, None, "op-2")
    expected = Counter({
        ("op-1", Status.GREYLISTED, "pending_verification"): 2,
        ("op-2", Status.GREYLISTED, "pending_verification"): 1,
        ("op-1", Status.WHITELISTED, "roaming_exempt"): 1,
        ("op-2", Status.BLACKLISTED, "malformed"): 1,
    })
    assert regime.counts == expected
    taken = regime.take_counts()
    assert taken == expected
    assert regime.counts == Counter()
    assert regime.take_counts() == Counter()
    regime.check(IMEI, HOME_1, None, "op-3")
    regime.take_counts()
    assert regime.totals == Counter({
        (Status.GREYLISTED, "pending_verification"): 4,
        (Status.WHITELISTED, "roaming_exempt"): 1,
        (Status.BLACKLISTED, "malformed"): 1,
    })
    # What is taken is what the store persists.
    await obs.write_counts(taken, T0)
    assert sum(c["count"] for c in await obs.counts("2025-06-01")) == 5


def test_unknown_equipment_is_counted_without_a_status() -> None:
    regime, _, _ = make(config=DecisionConfig(unknown_equipment="reject"))
    d = regime.check(IMEI, HOME_1, None, "op-1")
    assert (d.status, d.reason) == (None, "unknown")
    assert regime.take_counts() == Counter({("op-1", None, "unknown"): 1})
    assert regime.take_clock_starts() == []


# -- clock starts ----------------------------------------------------------------------------


def test_a_clock_start_is_noted_once_per_pair() -> None:
    regime, _, now = make()
    regime.check(IMEI, HOME_1, None, "op-1")
    now.t += 10
    regime.check(IMEI, HOME_1, None, "op-2")
    regime.check(IMEI15, HOME_1, None, "op-1")
    assert regime.take_clock_starts() == [(IMEI, HOME_1, "pending_verification", T0,
                                           T0 + GRACE)]
    assert regime.take_clock_starts() == []
    now.t += 100
    regime.check(IMEI, HOME_2, None, "op-1")  # a second SIM: its own warnings, same deadline
    regime.check(IMEI, None, None, "op-1")  # no IMSI: a pair with ''
    regime.check(IMEI, HOME_2, None, "op-1")
    assert regime.take_clock_starts() == [
        (IMEI, HOME_2, "pending_verification", T0, T0 + GRACE),
        (IMEI, "", "pending_verification", T0, T0 + GRACE),
    ]


async def test_a_listed_grey_entry_starts_its_clock_at_its_grace(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes("imei,list,since,grace_until",
                                    f"{IMEI},grey,2025-05-20T00:00:00Z,2025-06-10T00:00:00Z",
                                    f"{OTHER},white,,"))
    regime, _, _ = make(await reg.load_snapshot())
    d = regime.check(IMEI, HOME_1, None, "op-1")
    deadline = T0 + 9 * DAY - 12 * 3600
    assert (d.status, d.reason, d.rule, d.deadline) == (
        Status.GREYLISTED, "pending_verification", "grey", deadline)
    regime.check(OTHER, HOME_1, None, "op-1")
    assert regime.take_clock_starts() == [
        (IMEI, HOME_1, "pending_verification", deadline - GRACE, deadline)]


def test_roaming_imsis_start_no_clock_and_are_no_clones() -> None:
    regime, cache, now = make()
    d = regime.check(IMEI, ROAM, None, "op-1")
    assert (d.status, d.reason) == (Status.WHITELISTED, "roaming_exempt")
    assert cache.pending == 1  # the sighting is still recorded
    assert regime.take_clock_starts() == []
    homes = [f"4010100000000{i:02d}" for i in range(5)]
    for imsi in homes:  # five home SIMs: at the threshold, not over it
        now.t += 60
        regime.check(IMEI, imsi, None, "op-1")
    for i in range(4):  # roamers do not push the IMEI over it
        now.t += 60
        assert regime.check(IMEI, f"25001000000000{i}", None, "op-1").reason == "roaming_exempt"
    now.t += 60
    d = regime.check(IMEI, homes[1], None, "op-1")
    assert (d.status, d.reason) == (Status.GREYLISTED, "pending_verification")
    assert all(s[2] == "pending_verification" for s in regime.take_clock_starts())
    # A sixth home SIM is over it; recorded before deciding, it is suspect on its first check.
    now.t += 60
    d = regime.check(IMEI, "401019999999999", None, "op-1")
    assert (d.status, d.reason, d.rule, d.deadline) == (
        Status.GREYLISTED, "clone_suspected", "clone", now.t + GRACE)
    assert regime.take_clock_starts() == [
        (IMEI, "401019999999999", "clone_suspected", now.t, now.t + GRACE)]
    # The first SIM seen is never the clone.
    assert regime.check(IMEI, homes[0], None, "op-1").reason == "pending_verification"


# -- dry_run ---------------------------------------------------------------------------------


async def test_dry_run_records_nothing(obs: SqliteObservations) -> None:
    regime, cache, _ = make(store=obs)
    d, facts = regime.dry_run(IMEI, HOME_1, "01", operator="op-1")
    assert (d.status, d.reason, d.deadline) == (Status.GREYLISTED, "pending_verification",
                                                T0 + GRACE)
    assert (facts.imei14, facts.imsi, facts.software_version, facts.operator) == (
        IMEI, HOME_1, "01", "op-1")
    assert facts.sightings is not None and facts.sightings.first_home == T0
    assert cache.pending == 0
    assert regime.counts == Counter()
    assert regime.take_clock_starts() == []
    assert await cache.flush() == 0
    assert obs.read_sightings(int(IMEI)) == []


async def test_dry_run_sees_past_sightings_at_any_time(obs: SqliteObservations) -> None:
    regime, cache, _ = make(store=obs)
    regime.check(IMEI, HOME_1, None, "op-1")
    await cache.flush()
    pending_before = cache.pending
    counts_before = Counter(regime.counts)
    d, _ = regime.dry_run(IMEI, HOME_1, at=T0 + 31 * DAY)
    assert (d.status, d.reason, d.deadline) == (Status.BLACKLISTED, "grace_expired", T0 + GRACE)
    d, facts = regime.dry_run(IMEI, HOME_2, at=T0 + DAY)  # a new SIM: the IMEI's clock
    assert (d.reason, d.deadline) == ("pending_verification", T0 + GRACE)
    assert facts.sightings is not None and set(facts.sightings.imsis) == {HOME_1, HOME_2}
    # The cached history itself was not touched by the hypothetical sighting.
    assert set(cache.peek(int(IMEI)).imsis) == {HOME_1}
    d, _ = regime.dry_run(IMEI, HOME_1, config=DecisionConfig(unknown_equipment="reject"))
    assert (d.status, d.reason) == (None, "unknown")
    d, facts = regime.dry_run("123")
    assert (d.reason, facts.sightings) == ("malformed", None)
    assert cache.pending == pending_before == 0
    assert regime.counts == counts_before
    assert regime.take_clock_starts() == [(IMEI, HOME_1, "pending_verification", T0,
                                           T0 + GRACE)]  # the check's, not the dry runs'


# -- logging ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("imsi", "mode", "expected"),
    [
        ("401011234567890", "masked", "40101**********"),
        ("40101", "masked", "40101"),
        ("401011234567890", "clear", "401011234567890"),
        (None, "masked", "-"),
        (None, "hashed", "-"),
        (None, "clear", "-"),
    ],
)
def test_mask_imsi(imsi: str | None, mode: str, expected: str) -> None:
    assert mask_imsi(imsi, mode) == expected  # type: ignore[arg-type]


def test_mask_imsi_hashed_is_salted_and_stable() -> None:
    h = mask_imsi(HOME_1, "hashed", b"salt")
    assert h == "h:" + hmac.new(b"salt", HOME_1.encode(), hashlib.sha256).hexdigest()[:16]
    assert h == mask_imsi(HOME_1, "hashed", b"salt")
    assert h != mask_imsi(HOME_1, "hashed", b"pepper")
    assert h != mask_imsi(HOME_2, "hashed", b"salt")
    assert HOME_1 not in h


@pytest.mark.parametrize(
    ("mode", "shown"),
    [("masked", "40101**********"),
     ("hashed", "h:" + hmac.new(b"k", HOME_1.encode(), hashlib.sha256).hexdigest()[:16]),
     ("clear", HOME_1)],
)
def test_decision_log_line(caplog: pytest.LogCaptureFixture, mode: str, shown: str) -> None:
    caplog.set_level(logging.INFO, logger="eir.decision")
    regime, _, _ = make(log_level=logging.INFO, imsi_log=mode, log_key=b"k")
    regime.check(IMEI15, HOME_1, "07", "op-1")
    logged = [r for r in caplog.records if r.name == "eir.decision"]
    assert len(logged) == 1
    assert logged[0].levelno == logging.INFO
    assert logged[0].getMessage() == (
        f"imei={IMEI15} imsi={shown} sv=07 operator=op-1 -> GREYLISTED "
        f"reason=pending_verification rule=unknown deadline={T0 + GRACE}")
    if mode != "clear":
        assert HOME_1 not in caplog.text
        assert HOME_1[5:] not in caplog.text


def test_decision_log_line_with_the_imei_hashed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eir.decision")
    regime, _, _ = make(log_level=logging.INFO, imsi_log="hashed", imei_log="hashed",
                        log_key=b"k")
    regime.check(IMEI15, HOME_1, "07", "op-1")
    line = next(r.getMessage() for r in caplog.records if r.name == "eir.decision")
    assert line.startswith(f"imei={mask_imei(IMEI15, 'hashed', b'k')} imsi=h:")
    assert IMEI15[:14] not in caplog.text and HOME_1 not in caplog.text
    assert mask_imei(IMEI15, "hashed", b"k") != mask_imei(IMEI15, "hashed", b"other key")


def test_decision_log_below_the_logger_level_is_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="eir.decision")
    regime, _, _ = make()  # logs at DEBUG by default
    regime.check(IMEI, HOME_1, None, "op-1")
    assert [r for r in caplog.records if r.name == "eir.decision"] == []
    caplog.set_level(logging.DEBUG, logger="eir.decision")
    regime.refresh_logging()
    regime.check("0" * 14, None, None, "op-1")
    logged = [r for r in caplog.records if r.name == "eir.decision"]
    assert [(r.levelno, r.getMessage()) for r in logged] == [
        (logging.DEBUG, f"imei={'0' * 14} imsi=- sv=- operator=op-1 -> BLACKLISTED "
                        "reason=malformed rule=malformed")]


# -- point_snapshot == load_snapshot ---------------------------------------------------------


def _imei(tac: int, serial: int) -> str:
    return f"{tac:08d}{serial:06d}"


async def _random_registry(reg: SqliteRegistry, obs: SqliteObservations,
                           rnd: random.Random) -> tuple[list[int], list[str], dict[str, list[str]]]:
    tacs = [35209900, 49015420, 86001203, 1234567, 99999999, 35693803]
    await obs.import_tac([(tacs[0], None, None, "smartphone"), (tacs[1], None, None, "m2m"),
                          (tacs[2], None, None, "feature"), (tacs[4], None, None, "m2m")])
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["imei", "list", "reason", "imsi", "since", "grace_until", "sv"])
    reasons = {"white": ["registered", "legalised"], "grey": ["pending_verification", "audit"],
               "black": ["stolen", "counterfeit", "illegal_import"]}
    interesting: list[str] = []
    exact: set[str] = set()
    for _ in range(80):
        imei = _imei(rnd.choice(tacs), rnd.randrange(1_000_000))
        if imei in exact:
            continue
        exact.add(imei)
        lst = rnd.choice(list(reasons))
        since = from_epoch(T0 + rnd.randrange(-90, 30) * DAY) if rnd.random() < 0.7 else ""
        grace = (from_epoch(T0 + rnd.randrange(-10, 40) * DAY)
                 if lst == "grey" and rnd.random() < 0.5 else "")
        w.writerow([imei, lst, rnd.choice(reasons[lst]), "", since, grace, ""])
        interesting.append(imei)
    ranges: set[tuple[str, str]] = set()
    for tac in (tacs[1], tacs[5]):  # whole TACs
        ranges.add((str(tac), ""))
    for _ in range(25):
        tac = rnd.choice(tacs)
        lo = rnd.randrange(1_000_000)
        hi = min(999_999, lo + rnd.choice([0, 1, 10, 5_000, 200_000]))
        sv = rnd.choice(["", "", "01", "02"])
        key = f"{_imei(tac, lo)}-{_imei(tac, hi)}" if hi != lo or not sv else _imei(tac, lo)
        if hi == lo and not sv:
            continue  # a one-IMEI range without an SV is an exact entry
        ranges.add((key, sv))
        interesting += [_imei(tac, lo), _imei(tac, hi)]
        if lo:
            interesting.append(_imei(tac, lo - 1))
        if hi < 999_999:
            interesting.append(_imei(tac, hi + 1))
    for imei in rnd.sample(sorted(exact), 10):  # exact IMEI + SV beats the exact entry
        ranges.add((imei, rnd.choice(["01", "02"])))
    for key, sv in sorted(ranges):
        lst = rnd.choice(list(reasons))
        grace = (from_epoch(T0 + rnd.randrange(-10, 40) * DAY)
                 if lst == "grey" and rnd.random() < 0.5 else "")
        w.writerow([key, lst, rnd.choice(reasons[lst]), "", "", grace, sv])
    pairs: dict[str, list[str]] = {}
    for imei in rnd.sample(interesting, 25):
        imsis = pairs.setdefault(imei, [])
        imsi = f"40101{rnd.randrange(10**10):010d}"
        if imsi not in imsis:
            imsis.append(imsi)
            w.writerow([imei, "exception", "", imsi, "", "", ""])
    await import_csv(reg, io.BytesIO(out.getvalue().encode()), replace_source=None,
                     list_version=ListVersion("ministry", 12))
    return tacs, interesting, pairs


async def test_point_snapshot_decides_like_the_full_snapshot(
    reg: SqliteRegistry, obs: SqliteObservations
) -> None:
    rnd = random.Random(20250601)
    tacs, interesting, pairs = await _random_registry(reg, obs, rnd)
    full = await reg.load_snapshot()
    assert full.ranges is not None and len(full) > 50 and full.tac.loaded
    cfg = DecisionConfig()
    outcomes: Counter[str] = Counter()
    for i in range(300):
        if i % 3 == 0:
            imei = rnd.choice(interesting)
        elif i % 3 == 1:
            imei = _imei(rnd.choice(tacs), rnd.randrange(1_000_000))
        else:
            imei = f"{rnd.randrange(10**14):014d}"
        imsi = rnd.choice([*pairs.get(imei, []), HOME_1, ROAM, None])
        sv = rnd.choice([None, "01", "02", "07"])
        now = T0 + rnd.randrange(-60 * DAY, 60 * DAY)
        point = await reg.point_snapshot(imei)
        assert (point.version, point.list_versions) == (full.version, {"ministry": 12})
        want = full.facts(imei, imsi, sv, now=now)
        got = point.facts(imei, imsi, sv, now=now)
        assert got == want, (imei, imsi, sv)
        d = decide(got, cfg)
        assert d == decide(want, cfg)
        outcomes[d.reason] += 1
    # The probes reached the interesting parts of the registry.
    assert {"paired_exception", "stolen", "unknown_tac", "exempt_class", "roaming_exempt",
            "pending_verification", "grace_expired", "registered"} <= set(outcomes)


async def test_point_snapshot_without_a_tac_database(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes("imei,list", f"{IMEI},grey"))
    point = await reg.point_snapshot(OTHER)
    assert not point.tac.loaded and len(point) == 0
    assert point.facts(OTHER).tac_known is None
    assert (await reg.point_snapshot(IMEI)).lookup(IMEI)[0] is not None


async def test_point_snapshot_agrees_on_a_class_imported_in_upper_case(
    reg: SqliteRegistry, obs: SqliteObservations
) -> None:
    await obs.import_tac([(35209900, "Acme", "Tracker", "M2M")])
    cfg = DecisionConfig()
    full = decide((await reg.load_snapshot()).facts(IMEI, HOME_1, now=T0), cfg)
    point = decide((await reg.point_snapshot(IMEI)).facts(IMEI, HOME_1, now=T0), cfg)
    assert full == point
    assert full.reason == "exempt_class"


def test_decision_log_line_escapes_what_a_peer_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eir.decision")
    regime, _, _ = make(log_level=logging.INFO, imsi_log="hashed", imei_log="clear",
                        log_key=b"k")
    regime.check("123\nimei=35209900176148 -> WHITELISTED", HOME_1, "0\r7", "op\n1")
    line = next(r.getMessage() for r in caplog.records if r.name == "eir.decision")
    assert "\n" not in line and "\r" not in line
    assert line.startswith("imei=123\\nimei=35209900176148 -> WHITELISTED imsi=h:")
    assert "sv=0\\r7 operator=op\\n1 -> BLACKLISTED reason=malformed" in line
