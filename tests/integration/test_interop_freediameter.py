"""Interop with freeDiameter (Debian's freeDiameterd) as the MME, captured and decoded by tshark.

freeDiameter checks every answer against the ECA grammar and discards the ones that
break it, so "0 lost" here means every one of our answers is standard-exact in the eyes
of an independent, strict implementation. The registry holds every list; the statuses
freeDiameter decoded are compared, request by request, with what the registry says.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from testbed import fdpeer, tshark
from testbed.eirproc import EirProcess, run_cli

pytestmark = pytest.mark.interop

if not fdpeer.available():
    if fdpeer.must_not_skip():
        raise RuntimeError(f"interop tools missing in CI: {fdpeer.unavailable_reason()}")
    pytest.skip(fdpeer.unavailable_reason() or "freeDiameter missing", allow_module_level=True)

EIR_HOST = "eir.test.local"
WHITE, BLACK, GREY = 0, 1, 2


def build_registry(tmp: Path, n: int = 400, seed: int = 7
                   ) -> tuple[Path, list[tuple[str, str | None, str | None]], list[int]]:
    """A registry with every list, and a query plan with the status each query must get."""
    rng = random.Random(seed)
    rows = ["imei,list,reason,imsi,source,note"]
    queries: list[tuple[str, str | None, str | None]] = []
    expected: list[int] = []
    for i in range(n):
        imei = f"{35000000 + i:08d}{rng.randrange(10**6):06d}"
        kind = i % 5
        if kind == 0:
            rows.append(f"{imei},white,registered,,ministry,")
            queries.append((imei, None, None))
            expected.append(WHITE)
        elif kind == 1:
            rows.append(f"{imei},black,stolen,,police,")
            queries.append((imei, None, None))
            expected.append(BLACK)
        elif kind == 2:
            rows.append(f"{imei},grey,pending_verification,,operator,")
            queries.append((imei + "0", "401770000000001", "07"))  # 15 digits, IMSI, SV
            expected.append(GREY)
        elif kind == 3:
            imsi = f"40101{i:010d}"
            rows.append(f"{imei},black,stolen,,police,")
            rows.append(f"{imei},exception,owner,{imsi},police,")
            queries.append((imei, imsi, None))  # the owner's SIM: allowed
            expected.append(WHITE)
        else:
            queries.append((imei, fdpeer.OMIT, fdpeer.OMIT))  # unknown: grey by default
            expected.append(GREY)
    queries.append(("0000000000000", None, None))  # 13 digits: malformed
    expected.append(BLACK)
    path = tmp / "registry.csv"
    path.write_text("\n".join(rows) + "\n")
    db = tmp / "eir.db"
    res = run_cli("registry", "import", "--db", str(db), str(path))
    assert res.returncode == 0, res.stderr
    return db, queries, expected


@pytest.mark.timeout(240)
def test_freediameter_mme_20000_ecr_none_lost(tmp_path: Path) -> None:
    db, queries, expected = build_registry(tmp_path)
    count = 20_000
    with EirProcess(db, origin_host=EIR_HOST, origin_realm="test.local") as eir, \
            tshark.capture(eir.port, tmp_path / "s13.pcapng") as cap:
        res = fdpeer.run_client("127.0.0.1", eir.port, EIR_HOST, count=count, concur=200,
                                imeis=queries, timeout=10, run_timeout=180)
    log = eir.log()
    assert not res.problems(), res.summary() + "\n--- EIR log ---\n" + log[-3000:]
    assert (res.sent, res.answered, res.lost, res.timeout) == (count, count, 0, 0)
    assert res.rc2001 == count and res.e_bit == 0
    assert len(res.rows) == count
    for i, row in enumerate(res.rows):
        want = expected[i % len(expected)]
        assert row.imei.startswith(queries[i % len(queries)][0][:14])
        assert row.equipment_status == want, (i, row)
    assert eir.returncode == 0, log

    report = tshark.check(cap.path, eir.port)
    assert report.ok, report.summary()
    assert not report.malformed_frames and not report.diameter_errors, report.summary()
    counts = report.count()
    assert counts.get("ECR") == count and counts.get("ECA") == count, counts
    assert counts.get("CER") == 1 and counts.get("CEA") == 1, counts
    assert counts.get("DPR") == 1 and counts.get("DPA") == 1, counts
    assert not report.unanswered, report.summary()


@pytest.mark.timeout(120)
def test_freediameter_watchdog_and_unknown_rejected(tmp_path: Path) -> None:
    """DWR/DWA while idle (freeDiameter Tw = 6 s), and 5422 when the registry says so."""
    db, _, _ = build_registry(tmp_path, n=10)
    conf = tmp_path / "eir.toml"
    conf.write_text('[policy]\nunknown_equipment = "reject"\n')
    with EirProcess(db, origin_host=EIR_HOST, origin_realm="test.local", config=conf) as eir:
        res = fdpeer.run_client("127.0.0.1", eir.port, EIR_HOST, count=200, concur=20,
                                imei="86000000000000", imei_vary=True, idle_before=8,
                                timeout=10, run_timeout=90)
    assert res.lost == 0 and res.timeout == 0, res.summary()
    assert res.experimental == 200 and res.exp_codes == {5422: 200}, res.summary()
    assert sum(res.es.values()) == 0, "no Equipment-Status with 5422"
    assert res.dwr_tx >= 1 and res.dwa_rx >= 1, res.summary()
