"""Self-check of the interop harness (testbed.fdpeer + testbed.tshark), without our EIR.

freeDiameter plays both ends: a stub EIR (server mode: IMEI 35.. -> BLACKLISTED, 86.. ->
GREYLISTED, else WHITELISTED) and an MME (client mode) sending ECRs from an IMEI list, while
tshark captures the port. If these pass, a failure of the same checks against our EIR is the
EIR's fault, not the harness's. A second test feeds freeDiameter deliberately broken answers
from a tiny raw-socket EIR, to prove the harness *can* report discards, timeouts and
malformed bytes.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from testbed import fdpeer, tshark

pytestmark = pytest.mark.interop

S13 = 16777252
VENDOR_3GPP = 10415


def _require_tools() -> None:
    reasons = [r for r in (fdpeer.unavailable_reason(), tshark.unavailable_reason()) if r]
    if reasons:
        why = "; ".join(reasons)
        if fdpeer.must_not_skip():
            pytest.fail(
                f"interop tools missing where they are required (CI/EIR_REQUIRE_INTEROP set): {why}"
            )
        pytest.skip(why)


def stub_status(imei: str) -> int:
    """The stub EIR's rule (ecr_gen.c, server mode)."""
    return 1 if imei.startswith("35") else 2 if imei.startswith("86") else 0


def _imei_list(n: int, seed: int = 324) -> list[tuple[str, str | None, str | None]]:
    """Distinct IMEIs of every status class, some with an IMSI, some without Software-Version."""
    rng = random.Random(seed)
    out: list[tuple[str, str | None, str | None]] = []
    seen: set[str] = set()
    for _ in range(n * 20):  # bounded
        if len(out) == n:
            break
        imei = rng.choice(["35", "86", "49", "01", "99"]) + f"{rng.randrange(10**12):012d}"
        if imei in seen:
            continue
        seen.add(imei)
        imsi = f"00101{rng.randrange(10**10):010d}" if rng.random() < 0.25 else None
        sv = rng.choice([None, None, "07", fdpeer.OMIT])
        out.append((imei, imsi, sv))
    assert len(out) == n
    return out


def test_stub_eir_selfcheck(tmp_path: Path) -> None:
    """2,000 ECRs from freeDiameter to freeDiameter: nothing lost, every status right, a clean
    capture. Also the reference numbers for a run against our EIR."""
    _require_tools()
    t0 = time.monotonic()
    imeis = _imei_list(400)
    count = 2000
    sent = [imeis[i % len(imeis)] for i in range(count)]
    with (
        fdpeer.start_server() as srv,
        tshark.capture(srv.port, tmp_path / "selfcheck.pcapng") as cap,
    ):
        res = fdpeer.run_client(
            "127.0.0.1", srv.port, srv.identity, count=count, concur=100, imeis=imeis, timeout=5
        )
    stats = srv.stats
    assert stats is not None
    diag = res.summary()

    # freeDiameter as MME: every ECR answered 2001 by the stub, nothing refused
    assert res.completed and res.peer_open, diag
    assert not res.problems(), diag
    assert (res.sent, res.answered, res.rc2001) == (count, count, count), diag
    assert (res.timeout, res.lost, res.discarded, res.local, res.e_bit) == (0, 0, 0, 0, 0), diag
    assert res.result_codes == {2001: count} and res.exp_codes == {} and res.es_missing == 0
    assert res.es == dict(Counter(stub_status(i) for i, _, _ in sent)), diag
    assert res.final_state == "STATE_OPEN", diag
    assert res.peer_msgs.get("dpr_tx") == 1 and res.peer_msgs.get("dpa_rx") == 1, res.peer_msgs

    # per request: the status the stub's rule gives that IMEI, and the request as sent
    assert len(res.rows) == count
    for row, (imei, imsi, sv) in zip(res.rows, sent, strict=True):
        assert row.imei == imei
        assert row.outcome == "answered" and row.result_code == 2001 and row.exp_code is None
        assert row.equipment_status == stub_status(imei), row
        assert row.imsi == imsi
        assert row.sv == ("00" if sv is None else None if sv == fdpeer.OMIT else sv)

    # the stub saw exactly those requests (IMEI, User-Name, Software-Version)
    assert stats.answered == count and stats.parse_errors == 0, stats
    expected_seen = Counter((r.imei, r.imsi, r.sv) for r in res.rows)
    assert Counter((r.imei, r.imsi, r.sv) for r in srv.requests()) == expected_seen

    # the wire, decoded by Wireshark: well-formed, every request answered, same statuses
    rep = tshark.check(cap.path, srv.port)
    wire = rep.summary()
    assert cap.dropped in (None, 0), cap.stderr
    assert rep.malformed == 0 and not rep.diameter_errors and not rep.other_problems, wire
    assert rep.ok, wire
    n = rep.count()
    assert (n["CER"], n["CEA"], n["DPR"], n["DPA"]) == (1, 1, 1, 1), wire
    assert (n["ECR"], n["ECA"]) == (count, count), wire
    assert not rep.unanswered and not rep.orphan_answers, wire
    cer, cea = rep.requests(257)[0], rep.answers(257)[0]
    assert cer.avps["Auth-Application-Id"] == (str(S13),), cer.avps  # S13 only, no Relay
    assert cea.result_code == 2001 and str(S13) in cea.avps["Auth-Application-Id"], cea.avps
    assert all(m.app_id == S13 and not m.e_bit for m in rep.messages if m.cmd_code == 324)
    assert Counter(rep.ecr_results()) == Counter(
        (imei, 2001, None, stub_status(imei)) for imei, _, _ in sent
    )
    elapsed = time.monotonic() - t0
    print(
        f"selfcheck: {count} ECR in {res.elapsed:.3f}s ({res.rate:.0f}/s), freeDiameter run "
        f"{res.wall:.1f}s, whole test {elapsed:.1f}s; wire {dict(n)}"
    )


def test_watchdog_while_idle(tmp_path: Path) -> None:
    """idle_before keeps the link idle past TwTimer (6 s +- 2): a DWR/DWA pair happens before
    the first ECR, and the ECRs after it are still answered."""
    _require_tools()
    with (
        fdpeer.start_server() as srv,
        tshark.capture(srv.port, tmp_path / "watchdog.pcapng") as cap,
    ):
        res = fdpeer.run_client(
            "127.0.0.1", srv.port, srv.identity, count=20, concur=5, imei_vary=True, idle_before=9
        )
    assert res.completed and not res.problems(), res.summary()
    assert res.dwr_tx + res.dwr_rx >= 1, res.summary()
    assert res.dwa_rx == res.dwr_tx and res.dwa_tx == res.dwr_rx, res.summary()
    rep = tshark.check(cap.path, srv.port)
    assert rep.ok and not rep.unanswered, rep.summary()
    dw = [(r, a) for r, a in rep.pairs if r.cmd_code == 280]
    first_ecr = min(m.time for m in rep.requests(324))
    assert dw and dw[0][0].time < first_ecr, rep.summary()
    assert all(a is not None and a.result_code == 2001 for _, a in dw), rep.summary()


# --------------------------------------------------------------------------- a broken EIR


def _avp(code: int, data: bytes, vendor: int | None = None) -> bytes:
    flags = 0x40 | (0x80 if vendor else 0)
    head = struct.pack(">II", code, (flags << 24) | ((12 if vendor else 8) + len(data)))
    if vendor:
        head += struct.pack(">I", vendor)
    return head + data + b"\0" * (-len(data) % 4)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


def _message(cmd: int, flags: int, app: int, hbh: int, e2e: int, avps: list[bytes]) -> bytes:
    body = b"".join(avps)
    return (
        struct.pack(">IIIII", (1 << 24) | (20 + len(body)), (flags << 24) | cmd, app, hbh, e2e)
        + body
    )


def _avps(buf: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """(code, vendor, data, raw padded AVP) of each AVP in buf."""
    out: list[tuple[int, int, bytes, bytes]] = []
    off = 0
    while off + 8 <= len(buf) and len(out) < 200:
        code, fl_len = struct.unpack(">II", buf[off : off + 8])
        flags, ln = fl_len >> 24, fl_len & 0xFFFFFF
        hl = 12 if flags & 0x80 else 8
        if ln < hl:
            break
        vendor = struct.unpack(">I", buf[off + 8 : off + 12])[0] if flags & 0x80 else 0
        out.append((code, vendor, buf[off + hl : off + ln], buf[off : off + ln + (-ln % 4)]))
        off += ln + (-ln % 4)
    return out


class BrokenEir:
    """A raw-socket EIR answering each ECR the way ``modes[imei]`` says:
    ok | noass (no Auth-Session-State) | sidlast (Session-Id not first) | exp (5422, no
    Result-Code) | drop (no answer) | badhbh (wrong hop-by-hop id)."""

    ORIGIN = b"broken.test.local"

    def __init__(self, modes: dict[str, str]) -> None:
        self.modes = modes
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = fdpeer.free_port()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.threads) < 6:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c: socket.socket) -> None:
        c.settimeout(0.5)
        buf, host, realm = b"", _avp(264, self.ORIGIN), _avp(296, b"test.local")
        deadline = time.monotonic() + 120
        with c:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    data = c.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while len(buf) >= 20:
                    ln = struct.unpack(">I", buf[:4])[0] & 0xFFFFFF
                    if ln < 20:
                        return  # garbage: hang up
                    if len(buf) < ln:
                        break
                    m, buf = buf[:ln], buf[ln:]
                    fl_cmd, _app, hbh, e2e = struct.unpack(">IIII", m[4:20])
                    flags, cmd = fl_cmd >> 24, fl_cmd & 0xFFFFFF
                    if not flags & 0x80:
                        continue
                    out = self._answer(cmd, hbh, e2e, _avps(m[20:]), host, realm)
                    if out:
                        c.sendall(out)
                    if cmd == 282:
                        return

    def _answer(
        self,
        cmd: int,
        hbh: int,
        e2e: int,
        avps: list[tuple[int, int, bytes, bytes]],
        host: bytes,
        realm: bytes,
    ) -> bytes | None:
        ok = _avp(268, _u32(2001))
        if cmd == 257:
            return _message(
                257,
                0,
                0,
                hbh,
                e2e,
                [
                    ok,
                    host,
                    realm,
                    _avp(257, b"\x00\x01\x7f\x00\x00\x01"),
                    _avp(266, _u32(0)),
                    _avp(269, b"broken-eir"),
                    _avp(260, _avp(266, _u32(VENDOR_3GPP)) + _avp(258, _u32(S13))),
                ],
            )
        if cmd in (280, 282):
            return _message(cmd, 0, 0, hbh, e2e, [ok, host, realm])
        if cmd != 324:
            return None
        sid = next((raw for code, _, _, raw in avps if code == 263), None)
        ti = next((data for code, v, data, _ in avps if code == 1401 and v == VENDOR_3GPP), b"")
        imei = next((d for code, _, d, _ in _avps(ti) if code == 1402), b"").decode()
        mode = self.modes.get(imei, "drop")
        if sid is None:
            return None
        es = _avp(1445, _u32(stub_status(imei)), VENDOR_3GPP)
        ass = _avp(277, _u32(1))
        body = {
            "ok": [sid, ass, host, realm, ok, es],
            "noass": [sid, host, realm, ok, es],
            "sidlast": [ass, host, realm, ok, es, sid],
            "exp": [
                sid,
                ass,
                host,
                realm,
                _avp(297, _avp(266, _u32(VENDOR_3GPP)) + _avp(298, _u32(5422))),
            ],
            "badhbh": [sid, ass, host, realm, ok, es],
        }.get(mode)
        if body is None:  # drop
            return None
        return _message(324, 0x40, S13, hbh ^ 0x5A5A if mode == "badhbh" else hbh, e2e, body)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        self.sock.close()


def test_harness_reports_broken_answers(tmp_path: Path) -> None:
    """The harness is not blind: answers freeDiameter refuses show up as discarded (with the
    reason), unmatched/missing answers as timeouts, and bad bytes as malformed in tshark."""
    _require_tools()
    modes = ["ok", "noass", "sidlast", "exp", "drop", "badhbh"]
    prefixes = ["35", "86", "49"]
    imeis = [f"{prefixes[i % 3]}{i:012d}" for i in range(12)]
    mode_of = {imei: modes[i % len(modes)] for i, imei in enumerate(imeis)}
    eir = BrokenEir(mode_of)
    try:
        with tshark.capture(eir.port, tmp_path / "broken.pcapng") as cap:
            res = fdpeer.run_client(
                "127.0.0.1",
                eir.port,
                BrokenEir.ORIGIN.decode(),
                count=24,
                concur=8,
                imeis=imeis,
                timeout=2,
            )
            # plus a second connection carrying a Diameter message with a bad AVP length
            bad = bytearray(_message(324, 0x80, S13, 7, 7, [_avp(263, b"x;1"), _avp(277, _u32(1))]))
            bad[20 + 12 + 5 : 20 + 12 + 8] = (60).to_bytes(3, "big")
            with socket.create_connection(("127.0.0.1", eir.port), timeout=5) as s:
                s.sendall(bytes(bad))
                time.sleep(0.2)
    finally:
        eir.close()
    diag = res.summary()
    want = {
        "ok": "answered",
        "exp": "answered",
        "noass": "discarded",
        "sidlast": "discarded",
        "drop": "timeout",
        "badhbh": "timeout",
    }
    assert res.completed and res.sent == 24, diag
    assert [(r.imei, r.outcome) for r in res.rows] == [
        (imeis[i % 12], want[mode_of[imeis[i % 12]]]) for i in range(24)
    ], diag
    assert (res.rc2001, res.experimental, res.discarded, res.timeout) == (4, 4, 8, 8), diag
    assert res.lost == 8 and res.unaccounted == 0 and res.local == 0, diag
    assert res.exp_codes == {5422: 4}, diag
    for row in res.rows:
        if mode_of[row.imei] == "ok":
            assert row.equipment_status == stub_status(row.imei), row
    reasons = " | ".join(res.events)
    for why in (
        "DIAMETER_MISSING_AVP",
        "not in its fixed position",
        "no corresponding sent request",
    ):
        assert why in reasons, reasons
    assert res.problems()

    rep = tshark.check(cap.path, eir.port)
    # Wireshark does not check the grammar: the refused ECAs are well-formed bytes...
    assert rep.count()["ECA"] == 20, rep.summary()
    assert len(rep.orphan_answers) == 4  # badhbh
    assert len([r for r in rep.unanswered if r.imei in mode_of]) == 8  # drop + badhbh
    # ...but the bad AVP length is caught
    assert rep.malformed >= 1 and rep.diameter_errors and not rep.ok, rep.summary()
