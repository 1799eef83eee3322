"""End to end over loopback through the command line, as an operator runs it.

``eir registry import`` builds a real SQLite file, ``eir serve`` runs as a process,
our MME-side client sends ECRs over TCP, a second import while serving is picked up
without a restart or a lost request, and SIGTERM ends with a DPR seen by the peer.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.constants import AvpCode, DisconnectCause, EquipmentStatus, Vendor
from eir.diameter.dictionary import default_dictionary
from eir.probe import ecr
from testbed.eirproc import EirProcess, run_cli

W, B, G = EquipmentStatus.WHITELISTED, EquipmentStatus.BLACKLISTED, EquipmentStatus.GREYLISTED

REGISTRY = """imei,list,reason,imsi,source,note
49015420323751,white,registered,,ministry,
35332510123456,black,stolen,,police,reported on 2026-11-01
86768803654321,grey,pending_verification,,operator,
35332510123456,exception,owner_recovered,401011234567890,police,owner's SIM
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def status_of(client: DiameterClient, imei: str, imsi: str | None = None) -> int | None:
    ans = await client.request(ecr("mme.test.local", "test.local", "test.local", imei, "00",
                                   imsi), timeout=5)
    assert default_dictionary().check_message(ans) is None
    rc = ans.find(AvpCode.RESULT_CODE)
    assert rc is not None and rc.as_u32() == 2001
    es = ans.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
    return es.as_u32() if es is not None else None


def client() -> DiameterClient:
    return DiameterClient(m.Identity("mme.test.local", "test.local"), default_dictionary())


def test_import_errors_name_the_line_and_change_nothing(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    ok = run_cli("registry", "import", "--db", str(db), str(write(tmp_path / "a.csv", REGISTRY)))
    assert ok.returncode == 0, ok.stderr
    before = run_cli("registry", "export", "--db", str(db)).stdout

    bad = REGISTRY + "1234,white,,,,\n"
    res = run_cli("registry", "import", "--db", str(db), str(write(tmp_path / "b.csv", bad)))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 6" in lines[0] and "1234" in lines[0], res.stderr
    no_imsi = "imei,list\n49015420323751,white\n35332510123457,exception\n"
    res = run_cli("registry", "import", "--db", str(db), str(write(tmp_path / "c.csv", no_imsi)))
    assert res.returncode == 1 and "line 3" in res.stderr
    missing = run_cli("registry", "import", "--db", str(db), str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    assert run_cli("registry", "export", "--db", str(db)).stdout == before

    shown = json.loads(run_cli("registry", "show", "--db", str(db), "353325101234560").stdout)
    assert shown["list"] == "black" and shown["reason"] == "stolen"
    assert [p["imsi"] for p in shown["pairs"]] == ["401011234567890"]
    assert run_cli("registry", "show", "--db", str(db), "12ab").returncode == 1


def test_export_then_import_is_an_identity(tmp_path: Path) -> None:
    db1, db2 = tmp_path / "one.db", tmp_path / "two.db"
    assert run_cli("registry", "import", "--db", str(db1),
                   str(write(tmp_path / "a.csv", REGISTRY))).returncode == 0
    out = tmp_path / "out.csv"
    assert run_cli("registry", "export", "--db", str(db1), str(out)).returncode == 0
    assert run_cli("registry", "import", "--db", str(db2), str(out)).returncode == 0
    assert run_cli("registry", "export", "--db", str(db2)).stdout == out.read_text()


@pytest.mark.timeout(120)
def test_serve_reload_and_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    res = run_cli("registry", "import", "--db", str(db), str(write(tmp_path / "a.csv", REGISTRY)))
    assert res.returncode == 0, res.stderr
    eir = EirProcess(db, extra=("--log-level", "info"))
    conf = write(tmp_path / "eir.toml", "[registry]\nreload_seconds = 0.2\n")
    eir.config = conf
    with eir:
        took = asyncio.run(_serve_and_reload(eir, tmp_path))
    log = eir.log()
    assert eir.returncode == 0, log
    assert took < 5, f"SIGTERM to exit took {took:.1f} s"
    assert "registry changed" in log, log


async def _serve_and_reload(eir: EirProcess, tmp: Path) -> float:
    main, background = client(), DiameterClient(
        m.Identity("mme2.test.local", "test.local"), default_dictionary())
    await main.connect("127.0.0.1", eir.port)
    await background.connect("127.0.0.1", eir.port)

    assert await status_of(main, "49015420323751") == W
    assert await status_of(main, "490154203237518") == W  # a 15th digit is ignored
    assert await status_of(main, "35332510123456") == B
    assert await status_of(main, "35332510123456", "401011234567890") == W  # exception pair
    assert await status_of(main, "35332510123456", "401019999999999") == B
    assert await status_of(main, "86768803654321") == G
    assert await status_of(main, "11111111111111") == G  # unknown: grey by default
    assert await status_of(main, "12345") == B  # malformed

    # a steady stream on another connection while the registry changes under it
    stop = asyncio.Event()
    answered = [0]

    async def stream() -> None:
        while not stop.is_set():
            futs = [background.send_nowait(_raw_ecr("86768803654321")) for _ in range(50)]
            for f in futs:
                await asyncio.wait_for(f, 5)
                answered[0] += 1

    task = asyncio.create_task(stream())
    moved = "imei,list,reason\n86768803654321,black,counterfeit\n11111111111111,white,legalised\n"
    res = await asyncio.to_thread(run_cli, "registry", "import", "--db", eir.db,
                                  str(write(tmp / "b.csv", moved)))
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 15
    while await status_of(main, "86768803654321") != B:
        assert time.monotonic() < deadline, "the new import was not picked up:\n" + eir.log()
        await asyncio.sleep(0.1)
    assert await status_of(main, "11111111111111") == W
    stop.set()
    await task  # raises if any answer was missing or late
    assert answered[0] >= 50

    # SIGTERM: the EIR tells each peer it is going (DPR, REBOOTING) and exits 0
    t_sig = time.monotonic()
    eir.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while main.disconnect_cause is None or background.disconnect_cause is None:
        assert time.monotonic() < deadline, "no DPR seen after SIGTERM:\n" + eir.log()
        await asyncio.sleep(0.02)
    assert main.disconnect_cause == DisconnectCause.REBOOTING
    assert background.disconnect_cause == DisconnectCause.REBOOTING
    assert eir.proc is not None
    await asyncio.to_thread(eir.proc.wait, 5)
    took = time.monotonic() - t_sig
    eir.stop()
    return took


def _raw_ecr(imei: str):  # type: ignore[no-untyped-def]
    msg = ecr("mme2.test.local", "test.local", "test.local", imei, "00")

    def build(hbh: int, e2e: int) -> bytes:
        msg.hbh, msg.e2e = hbh, e2e
        return msg.encode()

    return build
