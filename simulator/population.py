"""A reproducible population of handsets, and the registry files that seed an EIR with it.

Owns ``eir-sim population`` (issue 4 item 1): a seeded set of handsets in
the categories of POLICY.md's regime, the files the EIR imports, and the
expected answer of every handset (through `simulator.expect`, the
simulator's own table, never ``eir.policy``: DESIGN.md 3.5).

Reproducible: one ``random.Random(seed)`` drives everything, no clock is
read, so the same seed and options give byte-identical files.

Output directory layout (all UTF-8, ``\\n`` line ends, header row first)::

    population.json   format_version, seed, size, options, start (ISO and
                      epoch), regime (the parameters expectations assume;
                      `simulator.expect.Regime`), counts per category and
                      per role, operators, guard_seconds, ``lists`` and
                      ``imports`` (below), and the SHA-256 of every other
                      file
    handsets.csv      index,category,role,imei,imsi,sv,realm,first_seen,
                      last_seen,cluster,list_version: one row per handset,
                      i.e. per (IMEI, IMSI) pair an MME would send. ``imei``
                      is the string as sent on the wire (14 or 15 digits, or
                      the malformed string); times are UTC epoch seconds or
                      empty; ``cluster`` numbers a clone cluster;
                      ``list_version`` the list version whose entry decides
                      the handset's answer (empty: no list entry does)
    registry.csv      imei,list,reason,imsi,source,since,evidence: for
                      ``eir registry import`` (format: eir/policy/csvio.py);
                      the whole list at its newest version, so importing it
                      alone seeds an up-to-date EIR
    registry-base.csv the same columns: the full list at the base version
    registry-delta-V.csv  the same columns and ``op`` (always ``add``): the
                      entries list version V introduced, V = base + 1 ..
                      newest; base + every delta = registry.csv
    tac.csv           tac,brand,model,class: for ``eir registry import-tac``
    observations.csv  imei,imsi,operator,first_seen,last_seen: for
                      ``eir registry import-observations``, the operators'
                      history of first sightings before the EIR went live
    expected.csv      index,category,role,imei,imsi,expected,reason,
                      changes_at: every handset's expectation at the start
                      time, for people to read (the simulator computes its
                      own at any time with `simulator.expect`)

Categories (roles in brackets; `simulator.expect` has the outcome table):

- ``white`` [registered, legalised]: a white-list entry.
- ``grandfathered`` [observed]: no entry; first home sighting before the
  cut-off, imported as history (POLICY.md step 11).
- ``grey_in_grace``, ``grey_near_expiry``, ``grey_expired`` [listed,
  observed]: first seen after the cut-off, at 3%-75% of the grace before
  the start, with a deadline 6 hours to 3 days after it, or more than the
  grace before it. Half of them carry an explicit grey entry whose
  ``since`` is the first sighting (an operator imported them); the other
  half are enrolled implicitly, by the imported first sighting alone, the
  way POLICY.md says enrolment normally happens. Both are judged alike,
  except that a strict regime answers 5422 for the implicit ones (step 12).
- ``stolen`` [home, roaming]: a black entry, reason stolen, source police;
  one in ten is checked with a roaming SIM (steps 1-3 bind roamers too).
- ``exception`` [owner, other]: a black (stolen) IMEI with an exception
  pair for its owner's IMSI; some IMEIs also have an ``other`` handset, the
  same IMEI with another SIM, which stays blocked.
- ``counterfeit`` [unknown]: a valid IMEI whose TAC is not in tac.csv.
- ``malformed`` [zeros, short, long, letters, separators]: not an IMEI by
  POLICY.md rule 1 (all zeros, 13 or 16 digits, non-digits).
- ``roamer`` [known_tac, unknown_tac]: a foreign IMSI, an IMEI on no list.
- ``m2m`` [module]: a TAC of device class ``m2m`` (exempt, step 6).
- ``clone`` [owner, first, member]: clusters of one IMEI with from the clone
  threshold + 2 to about three times it home IMSIs (POLICY.md speaks of
  50-100; smaller clusters test the same rule), all last seen within the
  two days before the start (so the cluster is active, POLICY.md step 7). The IMEI is on the
  white list (its owner registered it) with an exception pair for the
  owner. In half the clusters another IMSI (``first``) was seen before the
  owner: the first-seen IMSI is never clone-suspected. Members were first
  seen 3 days to twice the grace before the start, so some are grey and
  some already black at the start.
- ``brand_new`` [unseen]: a known TAC, on no list and never observed: grey
  from the run's first check of it.

List versions: the registry is published as a ministry would publish it
(POLICY.md "Who uses it": list-version lag is audited): a full list at
the base version, then ``deltas`` delta lists, each adding the entries of
one later version. The entries whose answer hangs on a list entry alone,
``white``, ``stolen`` and ``exception`` (the black entry and its pair
together, one unit per IMEI), are ranked by ``since``; the newest
``delta_share`` of them go into the deltas, oldest first, in equal parts,
so a recent entry has a recent version. Grey-listed entries and clone
clusters' entries are always in the base: an implicitly enrolled grey
device answers like a listed one, and a clone cluster's answer depends on
its whole history, so neither shows list lag. Every handset with an entry
is tagged with the version that introduced it (``Handset.list_version``):
an EIR that has not applied version V answers its handsets wrongly (a
white or stolen device it has never heard of is brand new to it).

``population.json`` ``imports`` is the ordered recipe to seed an EIR,
one item per file: ``{"file": NAME, "kind": "tac" | "full" | "delta" |
"observations"}`` plus, on ``full`` and ``delta``, ``"list_version": V``
and ``"source": "ministry"`` (the publisher). `import_argv` turns an item
into the ``eir`` command line: ``registry import-tac FILE``; ``registry
import --full SOURCE --list-version V FILE``; ``registry import --delta
SOURCE --list-version V FILE``; ``registry import-observations FILE``.
``lists`` says ``base_version``, ``newest_version`` and the file of each
version. The base file holds the
rows of every source (police reports, operators' grey entries) as the
whole list did at that version; on an empty registry ``--full ministry``
stores them all, each under its own source, and applied again it replaces
only the ministry's own entries (eir/policy/sqlite.py ``import_rows``).

Networks: home handsets belong to MCC 401 operators by market share
(`simulator.imei.HOME_OPERATORS`), roamers to foreign networks. A handset's
``realm`` is the Origin-Realm of the MME that checks it: its own
operator's, and for a roamer the Kazakh network it is visiting (inbound
roamers attach through a home operator's MME, which asks that operator's
EIR), chosen by the same market shares.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import json
import random
import sys
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import Any, Final

from simulator import imei as ids
from simulator.cliparse import Parser
from simulator.expect import DEFAULT_CUTOFF, Regime, expectation

__all__ = [
    "CATEGORIES",
    "DEFAULT_START",
    "DEFAULT_WEIGHTS",
    "FORMAT_VERSION",
    "GUARD_SECONDS",
    "Generated",
    "Handset",
    "Options",
    "Population",
    "generate",
    "import_argv",
    "load",
    "main_population",
    "make",
    "write",
]

FORMAT_VERSION: Final = 2
DAY: Final = 86_400
GUARD_SECONDS: Final = 6 * 3600
"""No grace deadline or clone lapse of the population lies within this of its start."""

DEFAULT_START: Final = "2026-03-02T00:00:00Z"

DEFAULT_WEIGHTS: Final[dict[str, float]] = {
    "white": 0.40,
    "grandfathered": 0.15,
    "grey_in_grace": 0.06,
    "grey_near_expiry": 0.03,
    "grey_expired": 0.04,
    "stolen": 0.04,
    "exception": 0.02,
    "counterfeit": 0.03,
    "malformed": 0.01,
    "roamer": 0.08,
    "m2m": 0.02,
    "clone": 0.04,
    "brand_new": 0.08,
}
CATEGORIES: Final[tuple[str, ...]] = tuple(DEFAULT_WEIGHTS)

HANDSET_COLUMNS: Final = ("index", "category", "role", "imei", "imsi", "sv", "realm",
                          "first_seen", "last_seen", "cluster", "list_version")
REGISTRY_COLUMNS: Final = ("imei", "list", "reason", "imsi", "source", "since", "evidence")
DELTA_COLUMNS: Final = (*REGISTRY_COLUMNS, "op")
LIST_PUBLISHER: Final = "ministry"
IMPORT_KINDS: Final = ("tac", "full", "delta", "observations")
TAC_COLUMNS: Final = ("tac", "brand", "model", "class")
OBSERVATION_COLUMNS: Final = ("imei", "imsi", "operator", "first_seen", "last_seen")
EXPECTED_COLUMNS: Final = ("index", "category", "role", "imei", "imsi", "expected", "reason",
                           "changes_at")


@dataclass(slots=True)
class Handset:
    """One (IMEI, IMSI) pair as an MME sends it, with what the population knows of it.

    ``first_seen`` / ``last_seen``: the imported history (UTC epoch seconds),
    or for a listed grey device the entry's ``since``; None when unseen.
    ``cluster_seen``: the last sighting of every IMSI of the handset's clone
    cluster (this one included), latest first; empty outside clusters.
    ``list_version``: the list version that introduced the entry its answer
    depends on; None when no list entry decides it.
    """

    index: int
    category: str
    role: str
    imei: str
    imsi: str
    sv: str
    realm: str
    first_seen: int | None = None
    last_seen: int | None = None
    cluster: int | None = None
    cluster_seen: tuple[int, ...] = ()
    list_version: int | None = None


@dataclass(frozen=True)
class Options:
    """What ``eir-sim population`` was asked for; `Population.meta` records it.

    ``weights``: relative weight per category (normalised; a category not
    named weighs 0). The command line starts from `DEFAULT_WEIGHTS` and
    overrides the ones it names. ``base_version``, ``deltas``, ``delta_share``:
    the list versions (module docstring).
    """

    size: int
    seed: int
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    start: str = DEFAULT_START
    tacs: int = 1000
    regime: Regime = field(default_factory=Regime)
    base_version: int = 1
    deltas: int = 3
    delta_share: float = 0.25

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "seed": self.seed, "weights": self.weights,
                "start": self.start, "tacs": self.tacs, "base_version": self.base_version,
                "deltas": self.deltas, "delta_share": self.delta_share}


@dataclass
class Population:
    """Handsets with their metadata and the regime their expectations assume."""

    meta: dict[str, Any]
    regime: Regime
    handsets: list[Handset]

    @property
    def start(self) -> int:
        return int(self.meta["start"]["epoch"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def imports(self) -> list[dict[str, Any]]:
        """The ordered recipe to seed an EIR (module docstring; `import_argv`)."""
        return [dict(item) for item in self.meta["imports"]]

    @property
    def base_version(self) -> int:
        return int(self.meta["lists"]["base_version"])

    @property
    def newest_version(self) -> int:
        return int(self.meta["lists"]["newest_version"])

    def by_category(self) -> dict[str, list[Handset]]:
        """Handsets grouped by category, in index order (for stratified samples)."""
        out: dict[str, list[Handset]] = {c: [] for c in CATEGORIES}
        for h in self.handsets:
            out[h.category].append(h)
        return {c: hs for c, hs in out.items() if hs}

    def category(self, name: str) -> list[Handset]:
        if name not in CATEGORIES:
            raise KeyError(f"no category {name!r}; known: {', '.join(CATEGORIES)}")
        return [h for h in self.handsets if h.category == name]

    def clusters(self) -> dict[int, list[Handset]]:
        """Clone clusters by number, each with its owner first."""
        out: dict[int, list[Handset]] = defaultdict(list)
        for h in self.handsets:
            if h.cluster is not None:
                out[h.cluster].append(h)
        for hs in out.values():
            hs.sort(key=lambda h: (h.role != "owner", h.index))
        return dict(out)


@dataclass
class Generated:
    """A population with the rows of the files the EIR imports."""

    population: Population
    tac_rows: list[tuple[str, ...]]
    registry_rows: list[tuple[str, ...]]
    observation_rows: list[tuple[str, ...]]
    row_versions: list[int] = field(default_factory=list)
    """The list version of each registry row (parallel to ``registry_rows``)."""


def iso(t: int) -> str:
    """UTC ``YYYY-MM-DDTHH:MM:SSZ`` of epoch seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _aware(s: str) -> datetime:
    dt = datetime.fromisoformat(s)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_time(s: str) -> int:
    """Epoch seconds of an ISO 8601 instant (no offset means UTC)."""
    return int(_aware(s).timestamp())


def _with_offset(s: str) -> str:
    """The instant with an explicit UTC offset, as `Regime` requires."""
    return _aware(s).isoformat()


# Device makers by class, with model name stems; all invented catalogue
# lines, plausible for the Kazakh market (RBI 35 and 86 dominate real TACs).
_MAKERS: Final[dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]]] = {
    "smartphone": (
        ("Samsung", "Galaxy A", ("35",)), ("Apple", "iPhone ", ("35", "01")),
        ("Xiaomi", "Redmi Note ", ("86",)), ("Huawei", "nova ", ("86",)),
        ("Honor", "X", ("86",)), ("Oppo", "A", ("86",)), ("Vivo", "Y", ("86",)),
        ("Realme", "C", ("86",)), ("Tecno", "Spark ", ("35", "86")),
        ("Infinix", "Hot ", ("35",)), ("Google", "Pixel ", ("35", "01")),
        ("Motorola", "moto g", ("35",)),
    ),
    "feature_phone": (
        ("Nokia", "Classic ", ("35",)), ("Philips", "Xenium E", ("86",)), ("itel", "it", ("35",)),
    ),
    "tablet": (("Samsung", "Galaxy Tab A", ("35",)), ("Apple", "iPad ", ("35",)),
               ("Lenovo", "Tab M", ("86",))),
    "m2m": (("Quectel", "EC", ("86",)), ("Telit", "LE", ("35",)),
            ("u-blox", "SARA-R", ("35",)), ("SIMCom", "SIM", ("86",))),
}
_CLASS_SHARES: Final = (("smartphone", 0.80), ("feature_phone", 0.09), ("tablet", 0.06),
                        ("m2m", 0.05))

_WIRE_15_SHARE: Final = 0.5  # MMEs send 14 digits or 15 (TS 29.272 7.3.4): use both
_SVS: Final = tuple(f"{n:02d}" for n in range(99))  # SVN 99 is reserved (TS 23.003 6.2.2)
_SV_CUM: Final = tuple(accumulate(1.0 / (n + 1) for n in range(99)))  # most run early versions
_MALFORMED_ROLES: Final = ("zeros", "short", "long", "letters", "separators")


def _cum(weights: Iterable[float]) -> list[float]:
    return list(accumulate(weights))


class _Builder:
    """One generation run: the RNG, the uniqueness sets, the rows being built."""

    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.r = opts.regime
        self.rng = random.Random(opts.seed)
        self.start = parse_time(opts.start)
        self.used_imei: set[int] = set()
        self.used_imsi: set[str] = set()
        self.handsets: list[Handset] = []
        self.registry: list[tuple[str, ...]] = []
        self.row_unit: list[int] = []  # per registry row: its version unit, -1 = base
        self.units: list[tuple[int, list[Handset]]] = []  # (since, handsets it decides)
        self.observations: list[tuple[str, ...]] = []
        home_mcc = self.r.home_mccs[0]
        self.home_ops = tuple(ids.Network(home_mcc, n.mnc, n.name, n.share)
                              for n in ids.HOME_OPERATORS)
        self.home_cum = _cum(n.share for n in self.home_ops)
        self.roam_nets = tuple(n for n in ids.ROAMING_NETWORKS if n.mcc not in self.r.home_mccs)
        self.roam_cum = _cum(n.share for n in self.roam_nets)
        self.realms = tuple(n.realm for n in self.home_ops)
        self._make_tacs()

    # -- identities ---------------------------------------------------------

    def _make_tacs(self) -> None:
        rng, n = self.rng, self.o.tacs
        classes = [c for c, _ in _CLASS_SHARES]
        counts = _apportion(n, [s for _, s in _CLASS_SHARES])
        counts[classes.index("m2m")] = max(1, counts[classes.index("m2m")])
        taken: set[int] = set()
        self.tac_rows: list[tuple[str, ...]] = []
        self.phone_tacs: list[int] = []
        self.m2m_tacs: list[int] = []
        for cls, count in zip(classes, counts, strict=True):
            for _ in range(count):
                brand, stem, bodies = rng.choice(_MAKERS[cls])
                tac = self._fresh_tac(rng.choice(bodies), taken)
                model = f"{stem}{rng.randrange(2, 80)}"
                self.tac_rows.append((f"{tac:08d}", brand, model, cls))
                (self.m2m_tacs if cls == "m2m" else self.phone_tacs).append(tac)
        self.tac_rows.sort()
        # Popularity falls with rank (a few models sell most), Zipf-like.
        self.phone_cum = _cum(1.0 / (i + 1) for i in range(len(self.phone_tacs)))
        self.m2m_cum = _cum(1.0 / (i + 1) for i in range(len(self.m2m_tacs)))
        self.fake_tacs = [self._fresh_tac(rng.choice(("86", "35")), taken)
                          for _ in range(max(1, n // 20))]
        self.tac_sums = {t: ids.tac_part(t)
                         for t in (*self.phone_tacs, *self.m2m_tacs, *self.fake_tacs)}

    def _fresh_tac(self, body: str, taken: set[int]) -> int:
        while True:
            tac = int(body) * 10**6 + self.rng.randrange(10**6)
            if tac not in taken:
                taken.add(tac)
                return tac

    def imei15(self, tac: int) -> str:
        """A new 15-digit IMEI of this TAC, unique in the population, valid check digit."""
        rnd, used = self.rng.random, self.used_imei
        base = tac * 1_000_000
        while True:
            serial = int(rnd() * 1_000_000)  # random() is C; randrange costs 3x more
            if base + serial not in used:
                used.add(base + serial)
                return f"{tac:08d}{serial:06d}{ids.check_digit_fast(self.tac_sums[tac], serial)}"

    def wire(self, imei15: str) -> str:
        return imei15 if self.rng.random() < _WIRE_15_SHARE else imei15[:14]

    def imsi(self, net: ids.Network) -> str:
        """A new IMSI of this network, unique in the population (TS 23.003 2.2: 15 digits)."""
        rnd, used, plmn = self.rng.random, self.used_imsi, net.plmn
        width = 15 - len(plmn)
        top = 10**width
        while True:
            value = f"{plmn}{int(rnd() * top):0{width}d}"
            if value not in used:
                used.add(value)
                return value

    def home(self) -> ids.Network:
        return self.home_ops[bisect_right(self.home_cum, self.rng.random() * self.home_cum[-1])]

    def roaming(self) -> ids.Network:
        return self.roam_nets[bisect_right(self.roam_cum, self.rng.random() * self.roam_cum[-1])]

    def phone_tac(self) -> int:
        return self.phone_tacs[bisect_right(self.phone_cum,
                                            self.rng.random() * self.phone_cum[-1])]

    def sv(self) -> str:
        return _SVS[bisect_right(_SV_CUM, self.rng.random() * _SV_CUM[-1])]

    def ago(self, lo: float, hi: float) -> int:
        """An instant between ``hi`` and ``lo`` seconds before the start."""
        return self.start - round(self.rng.uniform(lo, hi))

    def add(self, category: str, role: str, imei: str, imsi: str, realm: str,
            first_seen: int | None = None, last_seen: int | None = None,
            cluster: int | None = None) -> Handset:
        h = Handset(0, category, role, imei, imsi, self.sv(), realm, first_seen, last_seen,
                    cluster)
        self.handsets.append(h)
        return h

    def home_handset(self, category: str, role: str, tac: int | None = None,
                     first_seen: int | None = None, last_seen: int | None = None
                     ) -> tuple[Handset, str]:
        net = self.home()
        full = self.imei15(self.phone_tac() if tac is None else tac)
        h = self.add(category, role, self.wire(full), self.imsi(net), net.realm,
                     first_seen, last_seen)
        return h, full

    def observe(self, imei15: str, h: Handset, first: int, last: int) -> None:
        self.observations.append((imei15, h.imsi, h.realm, iso(first), iso(last)))

    def entry(self, imei15: str, list_: str, reason: str, source: str, since: int,
              evidence: str = "", imsi: str = "", unit: int = -1) -> None:
        self.registry.append((imei15, list_, reason, imsi, source, iso(since), evidence))
        self.row_unit.append(unit)

    def unit(self, since: int, *handsets: Handset) -> int:
        """A new set of entries published together in one list version (module docstring)."""
        self.units.append((since, list(handsets)))
        return len(self.units) - 1

    def assign_versions(self) -> list[int]:
        """Give every unit its list version, tag the handsets; the version of each row."""
        o = self.o
        base = o.base_version
        order = sorted(range(len(self.units)), key=lambda u: (self.units[u][0], u))
        n = len(order)
        k = min(max(round(n * o.delta_share), o.deltas), n // 2) if o.deltas else 0
        version = [base] * n
        pos = n - k
        for i, size in enumerate(_apportion(k, [1.0] * o.deltas) if k else ()):
            for u in order[pos:pos + size]:
                version[u] = base + 1 + i
            pos += size
        for u, (_, handsets) in enumerate(self.units):
            for h in handsets:
                h.list_version = version[u]
        for h in self.handsets:
            if h.category == "clone" or (h.category.startswith("grey_") and h.role == "listed"):
                h.list_version = base
        return [base if u < 0 else version[u] for u in self.row_unit]

    # -- categories ---------------------------------------------------------

    def white(self, n: int) -> None:
        for _ in range(n):
            legal = self.rng.random() < 0.15
            h, full = self.home_handset("white", "legalised" if legal else "registered")
            since = self.ago(DAY, 700 * DAY)
            u = self.unit(since, h)
            if legal:
                self.entry(full, "white", "legalised", "ministry", since,
                           f"customs declaration {self.rng.randrange(10**8):08d}", unit=u)
            else:
                self.entry(full, "white", "registered", "ministry", since, unit=u)

    def grandfathered(self, n: int) -> None:
        cut = self.r.cutoff_epoch
        for _ in range(n):
            first = cut - round(self.rng.uniform(GUARD_SECONDS, 730 * DAY))
            last = first + round(self.rng.uniform(0, self.start - first))
            h, full = self.home_handset("grandfathered", "observed", first_seen=first,
                                        last_seen=last)
            self.observe(full, h, first, last)

    def grey(self, category: str, n: int) -> None:
        g = self.r.grace_s
        for _ in range(n):
            if category == "grey_in_grace":
                first = self.ago(0.03 * g, 0.75 * g)
            elif category == "grey_near_expiry":
                first = self.start + round(self.rng.uniform(GUARD_SECONDS,
                                                            min(3 * DAY, 0.25 * g))) - g
            else:
                lo = self.r.cutoff_epoch + GUARD_SECONDS
                first = self.ago(g + GUARD_SECONDS, min(self.start - lo, g + 365 * DAY))
            last = first + round(self.rng.uniform(0, self.start - first))
            listed = self.rng.random() < 0.5
            h, full = self.home_handset(category, "listed" if listed else "observed",
                                        first_seen=first, last_seen=last)
            if listed:
                self.entry(full, "grey", "pending_verification", "operator", first)
            self.observe(full, h, first, last)

    def stolen(self, n: int) -> None:
        for _ in range(n):
            full = self.imei15(self.phone_tac())
            if self.rng.random() < 0.1:
                net, realm, role = self.roaming(), self.home().realm, "roaming"
            else:
                net = self.home()
                realm, role = net.realm, "home"
            h = self.add("stolen", role, self.wire(full), self.imsi(net), realm)
            since = self.ago(3600, 400 * DAY)
            self.entry(full, "black", "stolen", "police", since,
                       f"police case KZ-{self.rng.randrange(10**7):07d}",
                       unit=self.unit(since, h))

    def exception(self, n: int) -> None:
        made = 0
        while made < n:
            h, full = self.home_handset("exception", "owner")
            case = f"police case KZ-{self.rng.randrange(10**7):07d}"
            since = self.ago(3600, 400 * DAY)
            u = self.unit(since, h)  # the block and its pair: one unit, one version
            self.entry(full, "black", "stolen", "police", since, case, unit=u)
            self.entry(full, "exception", "owner_verified", "police", self.ago(0, 3600), case,
                       imsi=h.imsi, unit=u)
            made += 1
            if made < n and self.rng.random() < 0.5:
                net = self.home()
                other = self.add("exception", "other", self.wire(full), self.imsi(net),
                                 net.realm)
                self.units[u][1].append(other)
                made += 1

    def counterfeit(self, n: int) -> None:
        for _ in range(n):
            self.home_handset("counterfeit", "unknown", tac=self.rng.choice(self.fake_tacs))

    def malformed(self, n: int) -> None:
        rng = self.rng
        for i in range(n):
            role = _MALFORMED_ROLES[i % len(_MALFORMED_ROLES)]
            full = self.imei15(self.phone_tac())
            if role == "zeros":
                bad = "0" * rng.choice((14, 15))
            elif role == "short":
                bad = full[:13]
            elif role == "long":
                bad = full[:14] + rng.choice(_SVS)  # an IMEISV in the IMEI AVP
            elif role == "letters":
                k = rng.randrange(8, 14)
                bad = full[:k] + rng.choice("ABCDEF") + full[k + 1:]
            else:
                bad = f"{full[:2]}-{full[2:8]}-{full[8:14]}-{full[14]}"
            net = self.home()
            self.add("malformed", role, bad, self.imsi(net), net.realm)

    def roamer(self, n: int) -> None:
        for _ in range(n):
            fake = self.rng.random() < 0.15
            full = self.imei15(self.rng.choice(self.fake_tacs) if fake else self.phone_tac())
            net = self.roaming()
            self.add("roamer", "unknown_tac" if fake else "known_tac", self.wire(full),
                     self.imsi(net), self.home().realm)

    def m2m(self, n: int) -> None:
        for _ in range(n):
            tac = self.m2m_tacs[bisect_right(self.m2m_cum, self.rng.random() * self.m2m_cum[-1])]
            self.home_handset("m2m", "module", tac=tac)

    def brand_new(self, n: int) -> None:
        for _ in range(n):
            self.home_handset("brand_new", "unseen")

    def clone(self, n: int) -> None:
        rng, g, thr = self.rng, self.r.grace_s, self.r.clone_threshold
        sizes: list[int] = []
        left = n
        while left > 0:
            size = rng.randint(thr + 2, 3 * thr)
            if left - size < thr + 2:  # the last cluster takes the rest
                size = left
            sizes.append(size)
            left -= size
        for cluster, size in enumerate(sizes):
            full = self.imei15(self.phone_tac())
            owner_first = self.ago(60 * DAY, 700 * DAY)
            firsts = [owner_first]
            with_first = rng.random() < 0.5
            if with_first:
                firsts.append(owner_first - round(rng.uniform(DAY, 30 * DAY)))
            while len(firsts) < size:
                age = rng.uniform(3 * DAY, 2 * g)
                if abs(age - g) > GUARD_SECONDS:  # no grace deadline right at the start
                    firsts.append(self.start - round(age))
            seen = []
            for i, first in enumerate(firsts):
                role = "owner" if i == 0 else "first" if i == 1 and with_first else "member"
                last = max(first, self.ago(0, 2 * DAY))
                h, _ = self._clone_handset(full, role, first, last, cluster)
                seen.append(last)
                self.observe(full, h, first, last)
                if role == "owner":
                    self.entry(full, "white", "registered", "ministry", first)
                    self.entry(full, "exception", "registered_owner", "ministry", first,
                               imsi=h.imsi)
            cluster_seen = tuple(sorted(seen, reverse=True))
            for h in self.handsets[-size:]:
                h.cluster_seen = cluster_seen

    def _clone_handset(self, full: str, role: str, first: int, last: int,
                       cluster: int) -> tuple[Handset, str]:
        net = self.home()
        return self.add("clone", role, self.wire(full), self.imsi(net), net.realm, first, last,
                        cluster), full


def _round_clones(counts: dict[str, int], floor: int) -> None:
    """Make the clone count 0 or at least ``floor``: one cluster must exceed the threshold.

    Rounded up, one handset at a time from the largest other category, when
    the population can spare it (four clusters' worth); otherwise the clone
    handsets go to the largest category.
    """
    clones = counts["clone"]
    if clones == 0 or clones >= floor:
        return
    others = [c for c in CATEGORIES if c != "clone"]
    if sum(counts.values()) >= 4 * floor:
        for _ in range(floor - clones):
            counts[max(others, key=lambda c: counts[c])] -= 1
        counts["clone"] = floor
    else:
        counts[max(others, key=lambda c: counts[c])] += clones
        counts["clone"] = 0


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic collector while building millions of objects, none of them garbage.

    It would only rescan them over and over: a fifth of a million-handset
    generation, and most of a load done while another population is alive.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``total`` by ``weights``; ties go to the earlier one."""
    s = sum(weights)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _check(opts: Options) -> None:
    """Refuse options under which a category cannot be placed as documented."""
    r, start = opts.regime, parse_time(opts.start)
    if opts.size < 0:
        raise ValueError("size must not be negative")
    if opts.tacs < 1:
        raise ValueError("tacs must be at least 1")
    if opts.base_version < 1 or opts.deltas < 0:
        raise ValueError("the base list version must be at least 1 and deltas not negative")
    if not 0 <= opts.delta_share <= 1:
        raise ValueError("delta_share must be between 0 and 1")
    if opts.size > 200_000 * opts.tacs:
        raise ValueError(f"{opts.size} handsets need more than {opts.tacs} TAC(s) "
                         "(at most 200,000 handsets per TAC)")
    unknown = set(opts.weights) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    if any(w < 0 for w in opts.weights.values()) or not any(opts.weights.values()):
        raise ValueError("weights must be >= 0 and not all zero")
    w = opts.weights
    if w.get("grey_near_expiry") and 0.25 * r.grace_s <= GUARD_SECONDS:
        raise ValueError("grey_near_expiry needs a grace of more than a day")
    if (w.get("grey_in_grace") or w.get("grey_near_expiry")) and \
            start - r.grace_s <= r.cutoff_epoch:
        raise ValueError("grey_in_grace and grey_near_expiry need the start to be more than "
                         "the grace after the cut-off")
    if w.get("grey_expired") and start - r.grace_s - r.cutoff_epoch <= 2 * GUARD_SECONDS:
        raise ValueError("grey_expired needs start - grace to be well after the cut-off")
    if w.get("clone") and r.window_s <= 2 * DAY + GUARD_SECONDS:
        raise ValueError("clone needs a clone window of more than 2.25 days")
    if w.get("clone") and 2 * r.grace_s <= 3 * DAY + 2 * GUARD_SECONDS:
        raise ValueError("clone needs a grace of more than 2 days")


def generate(opts: Options) -> Generated:
    """Build a population and its import files in memory (reads no clock)."""
    _check(opts)
    with _no_gc():
        return _generate(opts)


def _generate(opts: Options) -> Generated:
    b = _Builder(opts)
    weights = [opts.weights.get(c, 0.0) for c in CATEGORIES]
    counts = dict(zip(CATEGORIES, _apportion(opts.size, weights), strict=True))
    _round_clones(counts, opts.regime.clone_threshold + 2)
    for category in CATEGORIES:
        n = counts[category]
        if category.startswith("grey_"):
            b.grey(category, n)
        else:
            getattr(b, category)(n)
    row_versions = b.assign_versions()
    hs = b.handsets
    b.rng.shuffle(hs)
    for i, h in enumerate(hs):
        h.index = i
    start = b.start
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "generator": "simulator.population",
        "seed": opts.seed,
        "size": len(hs),
        "options": opts.to_json(),
        "start": {"iso": iso(start), "epoch": start},
        "regime": opts.regime.to_json(),
        "guard_seconds": GUARD_SECONDS,
        "counts": {c: n for c, n in counts.items() if n},
        "roles": _roles(hs),
        "operators": [{"mcc": n.mcc, "mnc": n.mnc, "name": n.name, "share": n.share,
                       "realm": n.realm} for n in b.home_ops],
        **_lists(opts, row_versions),
    }
    pop = Population(meta, opts.regime, hs)
    return Generated(pop, b.tac_rows, b.registry, b.observations, row_versions)


def _delta_file(version: int) -> str:
    return f"registry-delta-{version}.csv"


def _lists(opts: Options, row_versions: Sequence[int]) -> dict[str, Any]:
    """The ``lists`` and ``imports`` entries of population.json (module docstring)."""
    base, newest = opts.base_version, opts.base_version + opts.deltas
    rows = Counter(row_versions)
    versions = {str(base): {"file": "registry-base.csv", "kind": "full", "rows": rows[base]}}
    imports: list[dict[str, Any]] = [
        {"file": "tac.csv", "kind": "tac"},
        {"file": "registry-base.csv", "kind": "full", "list_version": base,
         "source": LIST_PUBLISHER},
    ]
    for v in range(base + 1, newest + 1):
        versions[str(v)] = {"file": _delta_file(v), "kind": "delta", "rows": rows[v]}
        imports.append({"file": _delta_file(v), "kind": "delta", "list_version": v,
                        "source": LIST_PUBLISHER})
    imports.append({"file": "observations.csv", "kind": "observations"})
    return {"lists": {"base_version": base, "newest_version": newest, "source": LIST_PUBLISHER,
                      "full": "registry.csv", "versions": versions},
            "imports": imports}


def import_argv(item: Mapping[str, Any], directory: str | Path, db: str | None = None
                ) -> list[str]:
    """The ``eir`` arguments that apply one ``imports`` item (module docstring).

    ``db``: the registry file (``--db``), or None for the EIR's default.
    """
    path = str(Path(directory) / str(item["file"]))
    kind = item.get("kind")
    dbo = ["--db", db] if db is not None else []
    if kind == "tac":
        return ["registry", "import-tac", *dbo, path]
    if kind == "observations":
        return ["registry", "import-observations", *dbo, path]
    if kind == "full":
        return ["registry", "import", "--quiet", *dbo, "--full", str(item["source"]),
                "--list-version", str(int(item["list_version"])), path]
    if kind == "delta":
        return ["registry", "import", "--quiet", *dbo, "--delta", str(item["source"]),
                "--list-version", str(int(item["list_version"])), path]
    raise ValueError(f"imports item {dict(item)!r}: kind is not one of {', '.join(IMPORT_KINDS)}")


def _roles(hs: Iterable[Handset]) -> dict[str, dict[str, int]]:
    c = Counter((h.category, h.role) for h in hs)
    out: dict[str, dict[str, int]] = {}
    for (cat, role), n in sorted(c.items()):
        out.setdefault(cat, {})[role] = n
    return out


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _opt(v: int | None) -> str:
    return "" if v is None else str(v)


def write(gen: Generated, out: Path) -> None:
    """Write the population's files to ``out`` (created if missing; files replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    pop = gen.population
    start, regime = pop.start, pop.regime
    with _no_gc():
        digests = _write_files(gen, out, start, regime)
    pop.meta["files"] = digests
    (out / "population.json").write_text(json.dumps(pop.meta, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")


def _write_files(gen: Generated, out: Path, start: int, regime: Regime) -> dict[str, str]:
    pop = gen.population
    lists = pop.meta["lists"]
    base = lists["base_version"]
    versions = gen.row_versions
    deltas = {
        _delta_file(v): _write_csv(out / _delta_file(v), DELTA_COLUMNS, (
            (*row, "add") for row, rv in zip(gen.registry_rows, versions, strict=True)
            if rv == v))
        for v in range(base + 1, lists["newest_version"] + 1)}
    return {
        "handsets.csv": _write_csv(out / "handsets.csv", HANDSET_COLUMNS, (
            (h.index, h.category, h.role, h.imei, h.imsi, h.sv, h.realm, _opt(h.first_seen),
             _opt(h.last_seen), _opt(h.cluster), _opt(h.list_version)) for h in pop.handsets)),
        "registry.csv": _write_csv(out / "registry.csv", REGISTRY_COLUMNS, gen.registry_rows),
        "registry-base.csv": _write_csv(out / "registry-base.csv", REGISTRY_COLUMNS, (
            row for row, rv in zip(gen.registry_rows, versions, strict=True) if rv == base)),
        **deltas,
        "tac.csv": _write_csv(out / "tac.csv", TAC_COLUMNS, gen.tac_rows),
        "observations.csv": _write_csv(out / "observations.csv", OBSERVATION_COLUMNS,
                                       gen.observation_rows),
        "expected.csv": _write_csv(out / "expected.csv", EXPECTED_COLUMNS, (
            (h.index, h.category, h.role, h.imei, h.imsi, *_expected_cols(h, start, regime))
            for h in pop.handsets)),
    }


def _expected_cols(h: Handset, at: int, regime: Regime) -> tuple[str, str, str]:
    e = expectation(h, at, None, regime)
    return e.outcome, e.reason, "" if e.until is None else iso(e.until)


def make(opts: Options, out: Path) -> Population:
    """Generate and write; returns the population."""
    gen = generate(opts)
    write(gen, out)
    return gen.population


def load(directory: str | Path) -> Population:
    """Read a population written by `write` (handsets, metadata, regime)."""
    d = Path(directory)
    meta = json.loads((d / "population.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{d}: population format {meta.get('format_version')!r}, "
                         f"this simulator reads {FORMAT_VERSION}")
    handsets: list[Handset] = []
    clusters: dict[int, list[Handset]] = defaultdict(list)
    with _no_gc(), (d / "handsets.csv").open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        if tuple(next(rows)) != HANDSET_COLUMNS:
            raise ValueError(f"{d / 'handsets.csv'}: unexpected header")
        intern = sys.intern
        for idx, cat, role, imei, imsi, sv, realm, first, last, cluster, version in rows:
            h = Handset(int(idx), intern(cat), intern(role), imei, imsi, intern(sv),
                        intern(realm), int(first) if first else None,
                        int(last) if last else None, int(cluster) if cluster else None,
                        list_version=int(version) if version else None)
            handsets.append(h)
            if h.cluster is not None:
                clusters[h.cluster].append(h)
    for members in clusters.values():
        seen = tuple(sorted((h.last_seen for h in members if h.last_seen is not None),
                            reverse=True))
        for h in members:
            h.cluster_seen = seen
    return Population(meta, Regime.from_json(meta["regime"]), handsets)


# -- command line -------------------------------------------------------------

def _weights(text: str) -> dict[str, float]:
    out = dict(DEFAULT_WEIGHTS)
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in DEFAULT_WEIGHTS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected CATEGORY=WEIGHT with CATEGORY one of {', '.join(CATEGORIES)}")
        try:
            w = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: weight is not a number") from None
        if not w >= 0 or w == float("inf"):
            raise argparse.ArgumentTypeError(f"{item!r}: weight must be a finite number >= 0")
        out[name.strip()] = w
    return out


def _iso_arg(text: str) -> str:
    try:
        parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 instant") from None
    return text


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="eir-sim population",
        description="Write a reproducible handset population and the EIR's registry seed "
                    "(tac.csv, registry.csv,\nobservations.csv); the same seed gives the same "
                    "files, byte for byte.",
        epilog="examples:\n  eir-sim population --size 5000 --seed 1 --out pop\n"
               "  eir registry import-tac --db eir.db pop/tac.csv\n"
               "  eir registry import --db eir.db pop/registry.csv")
    p.add_argument("--size", type=int, required=True, help="number of handsets")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--weights", type=_weights, default=dict(DEFAULT_WEIGHTS),
                   help="CATEGORY=WEIGHT,... overriding the defaults (0 drops a category); "
                        f"categories: {', '.join(CATEGORIES)}")
    p.add_argument("--start", type=_iso_arg, default=DEFAULT_START,
                   help=f"simulated start time, ISO 8601 (default {DEFAULT_START})")
    p.add_argument("--tacs", type=int, default=1000, help="TACs in the TAC table (default 1000)")
    p.add_argument("--grace-days", type=float, default=30.0, help="grace period (default 30)")
    p.add_argument("--cutoff", type=_iso_arg, default=DEFAULT_CUTOFF,
                   help=f"grandfathering cut-off (default {DEFAULT_CUTOFF})")
    p.add_argument("--home-mcc", default="401",
                   help="home MCC(s), comma-separated; the first is the population's (default 401)")
    p.add_argument("--clone-threshold", type=int, default=5,
                   help="clone threshold the EIR uses (default 5)")
    p.add_argument("--clone-window-days", type=float, default=30.0,
                   help="clone window the EIR uses (default 30)")
    p.add_argument("--base-version", type=int, default=1,
                   help="list version of the base full list (default 1)")
    p.add_argument("--deltas", type=int, default=3,
                   help="delta lists after the base, one version each (default 3)")
    p.add_argument("--delta-share", type=float, default=0.25,
                   help="share of the versioned entries, the newest, in the deltas "
                        "(default 0.25)")
    p.add_argument("--strict", action="store_true",
                   help="the EIR answers 5422 for unknown devices (POLICY.md step 12)")
    return p


def main_population(argv: list[str] | None = None) -> int:
    """``eir-sim population --size N --seed S --out DIR [...]``; returns the exit status."""
    p = parser()
    a = p.parse_args(argv)
    try:
        regime = Regime(grace_days=a.grace_days, cutoff=_with_offset(a.cutoff),
                        home_mccs=tuple(m.strip() for m in a.home_mcc.split(",") if m.strip()),
                        strict=a.strict, clone_threshold=a.clone_threshold,
                        clone_window_days=a.clone_window_days)
        opts = Options(size=a.size, seed=a.seed, weights=a.weights, start=a.start, tacs=a.tacs,
                       regime=regime, base_version=a.base_version, deltas=a.deltas,
                       delta_share=a.delta_share)
        t0 = time.perf_counter()
        pop = make(opts, a.out)
    except (ValueError, OSError) as exc:
        print(f"eir-sim population: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{c} {n:,}" for c, n in pop.meta["counts"].items())
    print(f"eir-sim: wrote {len(pop.handsets):,} handsets to {a.out} in "
          f"{time.perf_counter() - t0:.1f} s ({counts})", file=sys.stderr)
    return 0
