"""``eir-sim audit``: score an EIR, ours or a vendor's, over the wire, and sign the scorecard.

Owns issue 4 item 5 (the compliance audit): the stratified sample, the
enforcement and list-lag judgements, latency, the scorecard's content and
verdict, and the ``audit`` command line; ``verify`` and ``keygen`` are
`simulator.scorecard`'s and are re-exported here. The EIR is a black box
(DESIGN.md 3.5): what it should answer comes from the population through
`simulator.expect`, never from ``eir.policy``.

The scorecard's sections:

1. **Conformance** (`simulator.conformance`): the CEA, DWR/DWA and a fixed
   set of malformed requests, each judged against PROTOCOL.md.
2. **Enforcement per category**: a stratified sample of the population,
   ``--per-category`` handsets of each category (fewer if it has fewer),
   chosen by ``--seed`` (default: the population's seed) so the same audit
   picks the same handsets. Within a category the handsets are grouped by
   (list version, role), the newest version first, and picked round-robin,
   so every role and every list version is in the sample. Each is sent as
   an ECR (TS 29.272 7.2.19) and its answer compared with
   ``expect.expectation`` at the simulated time ``--at``; handsets within
   ``--margin`` of a change of their expected answer are counted as
   unjudged and not sent (``expect.ambiguous``).
3. **List lag**: the sampled handsets tagged with a list version
   (`simulator.population`) are tallied per version; the newest version
   fully enforced is the highest V such that every sent handset of V and
   of every older version matched (POLICY.md "Who uses it": the ministry
   checks list-version lag). None when even the base version is not.
4. **Latency**: p50, p99 and max (nearest rank) of the sample's answers;
   ECRs go one at a time, so it is the EIR's service time plus the path.

``--at`` defaults to the population's start time: the scenario runs the
EIR with a test clock (``[clock] test_mode``) starting there, so the
EIR's "now" is the population's start plus the seconds the run has
taken, well inside the default margin of an hour (the population keeps
every deadline six hours clear of its start). Against an EIR on real time,
give ``--at now`` and a population generated with ``--start`` near today.

Verdict: PASS when every conformance case passed, no judged handset
mismatched (a timeout is a mismatch) and the newest published list
version is fully enforced; otherwise FAIL, with the reasons. Score, out of
100: 30 x conformance pass rate + 60 x enforcement match rate + 10 x (no
list lag). Exit status: 0 PASS, 1 FAIL (the scorecard is written either
way), 2 when the audit could not run (a bad population, key, output path
or target), with one line naming the problem.

ECRs carry the auditor's Origin-Host and Origin-Realm (``--origin-host``,
``--origin-realm``; an EIR may admit only known peers) and the
Destination-Realm ``--operator-realm``, the realm of the operator whose
EIR is audited (default: the Origin-Realm of the EIR's CEA).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from eir.diameter import messages as m
from eir.diameter.codec import Message
from simulator import expect
from simulator.cliparse import Parser
from simulator.conformance import (
    Conformance,
    ProbeError,
    open_probe,
    outcome,
    result_code,
    run_conformance,
)
from simulator.expect import Regime
from simulator.mme import MmeIdentity, ecr_message, parse_target
from simulator.population import Handset, Population, load
from simulator.scorecard import (
    FORMAT,
    KeyFileError,
    load_private_key,
    main_keygen,
    main_verify,
    sign,
    write_signed,
)

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_PER_CATEGORY",
    "AuditInput",
    "Check",
    "audit",
    "build_scorecard",
    "latency",
    "list_lag",
    "main_audit",
    "main_keygen",
    "main_verify",
    "sample",
]

DEFAULT_PER_CATEGORY: Final = 20
DEFAULT_MARGIN: Final = 3600.0
DEFAULT_TIMEOUT: Final = 5.0
EXAMPLES: Final = 10  # mismatch examples kept per category
W_CONFORMANCE, W_ENFORCEMENT, W_LAG = 30.0, 60.0, 10.0


@dataclass
class Check:
    """One sampled handset: what was expected, whether it was judged, what came back."""

    handset: Handset
    expected: str
    reason: str
    judged: bool
    got: str | None = None
    latency_ms: float | None = None

    @property
    def matched(self) -> bool:
        return self.judged and self.got == self.expected


# -- the sample ---------------------------------------------------------------------------


def sample(pop: Population, per_category: int, seed: int) -> list[Handset]:
    """Up to ``per_category`` handsets of each category, stratified by (list version, role).

    Deterministic for (population, per_category, seed), in any process: the
    generator of each category is seeded with a string (hashed with SHA-512
    by ``random``, never with the per-process string hash).
    """
    out: list[Handset] = []
    for category, handsets in pop.by_category().items():
        rng = random.Random(f"eir-sim audit/{seed}/{category}")
        groups: dict[tuple[int, str], list[Handset]] = defaultdict(list)
        for h in handsets:
            groups[(-(h.list_version or 0), h.role)].append(h)
        queues = []
        for key in sorted(groups):
            g = groups[key]
            rng.shuffle(g)
            queues.append(g)
        picked: list[Handset] = []
        while len(picked) < per_category and any(queues):
            for q in queues:
                if q and len(picked) < per_category:
                    picked.append(q.pop())
        out += picked
    return out


# -- enforcement ------------------------------------------------------------------------


async def _enforce(host: str, port: int, ident: m.Identity, realm: str, checks: list[Check],
                   timeout: float) -> None:
    """Send the judged checks one at a time on one connection; fill in got and latency."""
    todo = [c for c in checks if c.judged]
    if not todo:
        return
    probe, _, cea = await open_probe(host, port, ident, timeout)
    if result_code(cea) != 2001:
        await probe.close()
        raise ProbeError(f"{host}:{port} refused the capabilities exchange "
                         f"(CEA Result-Code {result_code(cea)})")
    mme = MmeIdentity(ident.origin_host, ident.origin_realm)
    stamp = int(time.time())
    try:
        for n, c in enumerate(todo):
            if probe.ended is not None:  # lost: carry on over a new connection
                lost = probe.ended
                try:
                    probe, _, _ = await open_probe(host, port, ident, timeout)
                except ProbeError:  # gone for good: the rest got no answer
                    for rest in todo[n:]:
                        rest.got = lost
                    break
            h = c.handset
            hbh, e2e = probe.next_ids()
            frame = ecr_message(mme, realm, f"{ident.origin_host};{stamp};{n}", h.imei,
                                h.sv or None, h.imsi or None, hbh, e2e).encode()
            t0 = time.perf_counter()
            reply = await probe.ask(frame, hbh, timeout)
            if isinstance(reply, Message):
                c.latency_ms = (time.perf_counter() - t0) * 1000.0
            c.got = outcome(reply)
    finally:
        await probe.close()


def _enforcement_section(checks: Sequence[Check]) -> dict[str, Any]:
    cats: dict[str, dict[str, Any]] = {}
    for c in checks:
        h = c.handset
        s = cats.setdefault(h.category, {"sampled": 0, "unjudged": 0, "sent": 0, "matched": 0,
                                         "mismatched": 0, "no_answer": 0, "examples": []})
        s["sampled"] += 1
        if not c.judged:
            s["unjudged"] += 1
            continue
        s["sent"] += 1
        if c.matched:
            s["matched"] += 1
            continue
        s["mismatched"] += 1
        if c.latency_ms is None:  # timeout, or the connection went away
            s["no_answer"] += 1
        if len(s["examples"]) < EXAMPLES:
            s["examples"].append({"imei": h.imei, "imsi": h.imsi, "role": h.role,
                                  "list_version": h.list_version, "expected": c.expected,
                                  "reason": c.reason, "got": c.got})
    total = {k: sum(s[k] for s in cats.values())
             for k in ("sampled", "unjudged", "sent", "matched", "mismatched", "no_answer")}
    return {"categories": cats, **total,
            "mismatched_categories": sorted(k for k, s in cats.items() if s["mismatched"])}


def list_lag(checks: Sequence[Check], base: int, newest: int) -> dict[str, Any]:
    """Per list version: sent, matched, mismatched; and the newest version fully enforced."""
    counts = {v: [0, 0] for v in range(base, newest + 1)}  # matched, mismatched
    for c in checks:
        v = c.handset.list_version
        if v is not None and c.judged and v in counts:
            counts[v][0 if c.matched else 1] += 1
    versions: dict[str, dict[str, Any]] = {}
    enforced: int | None = None
    broken = False
    for v, (ok, bad) in counts.items():
        versions[str(v)] = {"sent": ok + bad, "matched": ok, "mismatched": bad,
                            "match_rate": round(ok / (ok + bad), 4) if ok + bad else None}
        broken = broken or bad > 0
        if not broken:
            enforced = v
    return {"base_version": base, "newest_version": newest,
            "newest_fully_enforced": enforced,
            "behind": None if enforced is None else newest - enforced,
            "versions": versions}


def latency(values: Sequence[float]) -> dict[str, Any]:
    """p50, p99 (nearest rank) and max in milliseconds, rounded to the microsecond."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(p: float) -> float:
        return round(s[max(0, math.ceil(p / 100 * len(s)) - 1)], 3)
    return {"count": len(s), "p50": rank(50), "p99": rank(99), "max": round(s[-1], 3)}


def _verdict(conf: Conformance, enf: dict[str, Any], lag: dict[str, Any]
             ) -> tuple[str, float, list[str]]:
    reasons = []
    total = len(conf.results)
    failed = [r.name for r in conf.results if not r.passed]
    if failed:
        reasons.append(f"{len(failed)} of {total} conformance cases failed "
                       f"({', '.join(failed)})")
    if enf["mismatched"]:
        reasons.append(f"{enf['mismatched']} of {enf['sent']} handsets answered wrongly, in "
                       f"{', '.join(enf['mismatched_categories'])}")
    if enf["sent"] == 0:
        reasons.append("no handset could be judged")
    lag_ok = lag["newest_fully_enforced"] == lag["newest_version"]
    if not lag_ok:
        got = lag["newest_fully_enforced"]
        reasons.append(f"list lag: newest version fully enforced is "
                       f"{'none' if got is None else got}, of {lag['newest_version']}")
    conf_rate = conf.passed / total if total else 0.0
    enf_rate = enf["matched"] / enf["sent"] if enf["sent"] else 0.0
    score = round(W_CONFORMANCE * conf_rate + W_ENFORCEMENT * enf_rate
                  + W_LAG * (1.0 if lag_ok else 0.0), 1)
    return ("FAIL" if reasons else "PASS"), score, reasons


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class AuditInput:
    """What one audit is asked to do."""

    host: str
    port: int
    population: Population
    population_sha256: str
    ident: m.Identity
    operator_realm: str | None
    at: float
    per_category: int
    seed: int
    timeout: float
    margin: float
    regime: Regime


async def audit(a: AuditInput) -> dict[str, Any]:
    """Run the audit; returns the (unsigned) scorecard. Raises `ProbeError` if the EIR
    cannot be reached or refuses the capabilities exchange."""
    conf, realm = await run_conformance(a.host, a.port, a.ident,
                                        destination_realm=a.operator_realm, timeout=a.timeout)
    checks = []
    for h in sample(a.population, a.per_category, a.seed):
        e = expect.expectation(h, a.at, None, a.regime)
        judged = not expect.ambiguous(h, a.at, None, a.regime, a.margin)
        checks.append(Check(h, e.outcome, e.reason, judged))
    await _enforce(a.host, a.port, a.ident, realm, checks, a.timeout)
    return build_scorecard(a, conf, realm, checks)


def build_scorecard(a: AuditInput, conf: Conformance, realm: str, checks: Sequence[Check]
                    ) -> dict[str, Any]:
    pop = a.population
    enf = _enforcement_section(checks)
    lag = list_lag(checks, pop.base_version, pop.newest_version)
    verdict, score, reasons = _verdict(conf, enf, lag)
    return {
        "format": FORMAT,
        "target": f"{a.host}:{a.port}",
        "peer": conf.peer,
        "auditor": {"origin_host": a.ident.origin_host, "origin_realm": a.ident.origin_realm,
                    "destination_realm": realm},
        "time": {"audited_at": _iso(time.time()), "simulated_at": _iso(a.at),
                 "simulated_epoch": int(a.at), "margin_s": a.margin},
        "population": {"seed": pop.seed, "size": len(pop.handsets),
                       "start": pop.meta["start"]["iso"], "sha256": a.population_sha256},
        "regime": a.regime.to_json(),
        "sample": {"seed": a.seed, "per_category": a.per_category, "handsets": len(checks)},
        "conformance": {"cases": [r.to_json() for r in conf.results], "passed": conf.passed,
                        "total": len(conf.results)},
        "enforcement": enf,
        "list_lag": lag,
        "latency_ms": latency([c.latency_ms for c in checks if c.latency_ms is not None]),
        "verdict": verdict,
        "score": score,
        "reasons": reasons,
    }


# -- command line -------------------------------------------------------------------------


class UsageError(Exception):
    """A bad input file, key, target or path: one line, exit 2."""


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="eir-sim audit",
        description="Audit an EIR over S13: conformance, enforcement per category, list lag "
                    "and latency, in a scorecard signed with the ministry's key.")
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="the EIR to audit")
    p.add_argument("--population", required=True, type=Path, metavar="DIR",
                   help="a population written by eir-sim population")
    p.add_argument("--key", required=True, type=Path, metavar="PRIVATE.pem",
                   help="the ministry's Ed25519 private key (eir-sim keygen)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write DIR/scorecard.json and DIR/scorecard.html")
    p.add_argument("--scorecard", type=Path, metavar="FILE.json", help="the JSON scorecard")
    p.add_argument("--html", type=Path, metavar="FILE.html", help="the HTML scorecard")
    p.add_argument("--per-category", type=int, default=DEFAULT_PER_CATEGORY, metavar="N",
                   help=f"handsets sampled per category (default {DEFAULT_PER_CATEGORY})")
    p.add_argument("--at", metavar="ISO|now",
                   help="simulated time the answers are judged at (default: the population's "
                        "start, where the scenario's EIR test clock starts)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, metavar="SECONDS",
                   help="handsets this close to a change of answer are not judged "
                        f"(default {DEFAULT_MARGIN:g})")
    p.add_argument("--origin-host", default="audit.eir-sim.localdomain",
                   help="the auditor's Origin-Host (default audit.eir-sim.localdomain)")
    p.add_argument("--origin-realm", default="eir-sim.localdomain",
                   help="the auditor's Origin-Realm (default eir-sim.localdomain)")
    p.add_argument("--operator-realm", metavar="REALM",
                   help="Destination-Realm of the ECRs (default: the EIR's CEA Origin-Realm)")
    p.add_argument("--seed", type=int, help="sampling seed (default: the population's seed)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"per-request timeout (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--regime", type=Path, metavar="FILE.json",
                   help="judge against this regime (simulator.expect.Regime as JSON) instead "
                        "of the population's")
    return p


def _outputs(a: argparse.Namespace) -> tuple[Path | None, Path | None]:
    json_path, html_path = a.scorecard, a.html
    if a.out is not None:
        try:
            a.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{a.out}: {exc.strerror or exc}") from None
        json_path = json_path or a.out / "scorecard.json"
        html_path = html_path or a.out / "scorecard.html"
    if json_path is None and html_path is None:
        raise UsageError("say where the scorecard goes: --out DIR, or --scorecard FILE.json "
                         "and/or --html FILE.html")
    for p in (json_path, html_path):
        if p is not None and not p.parent.is_dir():
            raise UsageError(f"{p}: no such directory {p.parent}")
    return json_path, html_path


def _population(d: Path) -> tuple[Population, str]:
    try:
        pop = load(d)
        digest = hashlib.sha256((d / "population.json").read_bytes()).hexdigest()
    except FileNotFoundError as exc:
        raise UsageError(f"{d}: not a population ({Path(exc.filename or d).name} "
                         "missing)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{d}: not a usable population: {exc}") from None
    return pop, digest


def _at(text: str | None, pop: Population) -> float:
    if text is None:
        return float(pop.start)
    if text == "now":
        return time.time()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO 8601 instant or 'now'") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _regime(path: Path | None, pop: Population) -> Regime:
    if path is None:
        return pop.regime
    try:
        return Regime.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: not a regime: {exc}") from None


def main_audit(argv: Sequence[str] | None = None) -> int:
    """``eir-sim audit ...``; 0 PASS, 1 FAIL, 2 could not audit (module docstring)."""
    a = parser().parse_args(argv)
    try:
        target = parse_target(a.target)
    except ValueError as exc:
        return _fail(f"--target {exc}")
    try:
        if a.per_category < 1 or a.timeout <= 0 or a.margin < 0:
            raise UsageError("--per-category must be >= 1, --timeout > 0 and --margin >= 0")
        json_path, html_path = _outputs(a)
        key = load_private_key(a.key)
        pop, digest = _population(a.population)
        job = AuditInput(target.host, target.port, pop, digest,
                         m.Identity(a.origin_host, a.origin_realm, product_name="eir-sim audit"),
                         a.operator_realm, _at(a.at, pop), a.per_category,
                         pop.seed if a.seed is None else a.seed, a.timeout, a.margin,
                         _regime(a.regime, pop))
        card = asyncio.run(audit(job))
        envelope = sign(card, key)
        write_signed(envelope, key, json_path=json_path, html_path=html_path)
    except (UsageError, KeyFileError, ProbeError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or 'output'}: {exc.strerror or exc}")
    enf, lag = card["enforcement"], card["list_lag"]
    written = " and ".join(str(p) for p in (json_path, html_path) if p is not None)
    print(f"eir-sim audit: {card['verdict']} score {card['score']}: conformance "
          f"{card['conformance']['passed']}/{card['conformance']['total']}, enforcement "
          f"{enf['matched']}/{enf['sent']} matched ({enf['unjudged']} unjudged), newest list "
          f"version fully enforced {lag['newest_fully_enforced']} of {lag['newest_version']}; "
          f"wrote {written}", file=sys.stderr)
    return 0 if card["verdict"] == "PASS" else 1


def _fail(message: str) -> int:
    print(f"eir-sim audit: {message}", file=sys.stderr)
    return 2
