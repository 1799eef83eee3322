"""Interop: python-diameter as an independent MME against our EIR as a real process.

The EIR runs as ``eir serve`` (a subprocess started through the CLI, with a
registry imported by ``eir registry import``). The client side is entirely
python-diameter 0.9: its ``Node`` does the TCP connection, CER/CEA (it
advertises S13 as a plain Auth-Application-Id, not inside a
Vendor-Specific-Application-Id), DWR/DWA and DPR/DPA, and its
``MeIdentityCheckRequest``/``MeIdentityCheckAnswer`` classes encode the ECR
and decode the ECA. Nothing of ``eir.diameter`` runs on the client side, so
this checks our encoding against another implementation's reading of
RFC 6733 and TS 29.272 7.2.19-7.2.20.

python-diameter is thread-based; every blocking call here has a timeout.
"""

from __future__ import annotations

import itertools
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

# python-diameter is a declared test dependency (pyproject [test]): a missing
# one is a broken environment and fails here rather than skipping.
from diameter.message import constants as dc
from diameter.message.avp.grouped import TerminalInformation
from diameter.message.commands.me_identity_check import (
    MeIdentityCheckAnswer,
    MeIdentityCheckRequest,
)
from diameter.node import Node
from diameter.node.application import SimpleThreadingApplication
from diameter.node.peer import PEER_READY_STATES, Peer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

EIR_BIN = Path(sys.executable).with_name("eir")
EIR_HOST = "eir.test.local"
MME_HOST = "mme.test.local"
REALM = "test.local"
S13 = dc.APP_3GPP_S13_S13  # 16777252
TGPP = 10415

WHITELISTED, BLACKLISTED, GREYLISTED = 0, 1, 2

WHITE_IMEI = "49015420323751"
WHITE2_IMEI = "35209900176148"
BLACK_IMEI = "35332510123456"  # also one side of the exception pair
BLACK2_IMEI = "35332510123457"
GREY_IMEI = "86768803654321"
PAIR_IMSI = "401011234567890"
OTHER_IMSI = "401019999999999"
UNKNOWN_IMEI = "99000011112222"
MALFORMED_IMEI = "3533251A123456"

REGISTRY_CSV = f"""imei,list,reason,imsi,source,note
{WHITE_IMEI},white,registered,,ministry,interop: registered handset
{WHITE2_IMEI},white,grandfathered,,operator,interop: grandfathered
{BLACK_IMEI},black,stolen,,police,interop: stolen
{BLACK2_IMEI},black,counterfeit,,ministry,interop: counterfeit
{GREY_IMEI},grey,pending_verification,,operator,interop: pending
{BLACK_IMEI},exception,owner_recovered,{PAIR_IMSI},police,interop: owner's SIM
"""

# (IMEI, what it is, IMSI or None, expected Equipment-Status) in the greylist regime
CASES: list[tuple[str, str, str | None, int]] = [
    (WHITE_IMEI, "white list", None, WHITELISTED),
    (WHITE2_IMEI, "white list, second entry", OTHER_IMSI, WHITELISTED),
    (GREY_IMEI, "grey list", None, GREYLISTED),
    (BLACK_IMEI, "black list, no IMSI", None, BLACKLISTED),
    (BLACK_IMEI, "black list, IMSI not in the pair", OTHER_IMSI, BLACKLISTED),
    (BLACK_IMEI, "exception pair (IMEI, IMSI)", PAIR_IMSI, WHITELISTED),
    (BLACK2_IMEI, "black list, counterfeit", PAIR_IMSI, BLACKLISTED),
    (UNKNOWN_IMEI, "unknown IMEI, greylist regime", None, GREYLISTED),
    (MALFORMED_IMEI, "malformed IMEI (a letter)", None, BLACKLISTED),
    ("00000000000000", "malformed IMEI (all zeros)", None, BLACKLISTED),
]

READY_TIMEOUT = 15.0
ANSWER_TIMEOUT = 5  # python-diameter's send_request takes whole seconds
LOAD_COUNT = 500
LOAD_WORKERS = 8


# -- the EIR as a subprocess --


class EirProcess:
    """``eir serve`` in a subprocess, its stderr collected line by line."""

    def __init__(self, tmp: Path, config_toml: str | None = None) -> None:
        self.tmp = tmp
        self.db = tmp / "registry.db"
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._reader: threading.Thread | None = None
        self.config: Path | None = None
        if config_toml is not None:
            self.config = tmp / "eir.toml"
            self.config.write_text(config_toml)

    # -- start --

    def import_registry(self, csv_text: str) -> None:
        csv = self.tmp / "registry.csv"
        csv.write_text(csv_text)
        done = subprocess.run(
            [str(EIR_BIN), "registry", "import", "--quiet", "--db", str(self.db), str(csv)],
            capture_output=True, text=True, timeout=30, cwd=self.tmp)
        assert done.returncode == 0, (
            f"eir registry import failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        # Port 0: the kernel picks a free port and the ready line names it,
        # so there is no window in which another process can take it.
        cmd = [str(EIR_BIN), "serve", "--db", str(self.db), "--listen", "127.0.0.1:0",
               "--origin-host", EIR_HOST, "--origin-realm", REALM, "--log-level", "info"]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=self.tmp)
        self._reader = threading.Thread(target=self._read, name="eir-stderr", daemon=True)
        self._reader.start()
        line = self.wait_for(r"EIR ready: S13 on [\d.]+:(\d+)", READY_TIMEOUT)
        if line is None:
            why = "exited" if self.proc.poll() is not None else f"not ready in {READY_TIMEOUT} s"
            pytest.fail(f"eir serve {why}: {' '.join(cmd)}\n{self.log()}")
        m = re.search(r"EIR ready: S13 on [\d.]+:(\d+)", line)
        assert m is not None
        self.port = int(m.group(1))
        assert self.port > 0, self.log()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # -- observe --

    def wait_for(self, pattern: str, timeout: float) -> str | None:
        """The first stderr line matching ``pattern``, waiting up to ``timeout`` s."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                exited = self.proc is not None and self.proc.poll() is not None
                if left <= 0 or (exited and not (self._reader and self._reader.is_alive())):
                    return None
                self._cond.wait(min(left, 0.2))

    def log(self) -> str:
        with self._cond:
            text = "\n".join(self.lines)
        rc = self.proc.poll() if self.proc is not None else None
        state = "running" if rc is None else f"exited {rc}"
        return f"--- EIR stderr ({state}) ---\n{text}\n--- end of EIR stderr ---"

    # -- stop --

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code. Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def make_eir(tmp_path: Path) -> Iterator[Callable[..., EirProcess]]:
    started: list[EirProcess] = []

    def make(config_toml: str | None = None) -> EirProcess:
        eir = EirProcess(tmp_path, config_toml)
        started.append(eir)
        eir.import_registry(REGISTRY_CSV)
        eir.start()
        return eir

    if not EIR_BIN.exists():
        pytest.fail(f"{EIR_BIN} is not installed (pip install -e '.[test]')")
    try:
        yield make
    finally:
        for eir in started:
            eir.stop()


# -- python-diameter as the MME --


@dataclass
class Mme:
    node: Node
    peer: Peer
    app: SimpleThreadingApplication
    eir: EirProcess
    _ids: threading.Lock
    _session: Iterator[int]
    stopper: threading.Thread | None = None

    def ecr(self, imei: str, sv: str | None = "00", imsi: str | None = None,
            **header: int) -> MeIdentityCheckRequest:
        req = MeIdentityCheckRequest()
        with self._ids:
            # python-diameter's sequence generators are not thread-safe; the
            # load test sends from several threads, so take the ids here.
            n = next(self._session)
            req.header.end_to_end_identifier = self.node.end_to_end_seq.next_sequence()
            conn = self.peer.connection
            assert conn is not None, "no connection to the EIR\n" + self.eir.log()
            req.header.hop_by_hop_identifier = conn.hop_by_hop_seq.next_sequence()
        req.session_id = f"{MME_HOST};interop;{n}"
        req.auth_session_state = dc.E_AUTH_SESSION_STATE_NO_STATE_MAINTAINED
        req.origin_host = MME_HOST.encode()
        req.origin_realm = REALM.encode()
        req.destination_realm = REALM.encode()
        req.destination_host = EIR_HOST.encode()
        req.terminal_information = TerminalInformation(imei=imei, software_version=sv)
        if imsi is not None:
            req.user_name = imsi
        return req

    def send(self, req: MeIdentityCheckRequest) -> MeIdentityCheckAnswer:
        try:
            ans = self.app.send_request(req, timeout=ANSWER_TIMEOUT)
        except Exception as exc:  # TimeoutError, NotRoutable, EmptyAnswer
            pytest.fail(f"ECR {req.session_id} got no answer: {exc!r}\n{self.eir.log()}")
        assert isinstance(ans, MeIdentityCheckAnswer), (
            f"answer is {type(ans).__name__}, not an ECA: {ans}\n{self.eir.log()}")
        return ans

    def start_stop(self, force: bool = False) -> None:
        """python-diameter's ``Node.stop`` in a thread: DPR (cause REBOOTING) to the
        EIR, wait for the DPA, close. Its threads take 2-6 s more to wind down
        (queue polls of 2-3 s), which need not hold up the test."""
        if self.stopper is None:
            self.stopper = threading.Thread(
                target=self.node.stop, kwargs={"wait_timeout": 5, "force": force},
                name="python-diameter-stop", daemon=True)
            self.stopper.start()

    def wait_dpa(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.peer.counters.dpa == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(self.peer.counters.dpa > 0)

    def join(self, timeout: float = 12.0) -> bool:
        """Stop (if not yet) and wait for ``Node.stop`` to return; False if it did not."""
        self.start_stop()
        assert self.stopper is not None
        self.stopper.join(timeout)
        return not self.stopper.is_alive()


def start_mme(eir: EirProcess) -> Mme:
    node = Node(MME_HOST, REALM)  # no listen addresses: a client-only node
    node.wakeup_interval = 1  # its select timeout: timers and stop() react within 1 s
    node.idle_timeout = 1  # send a DWR after 1-2 s of silence
    node.cea_timeout = 5
    node.dwa_timeout = 5
    peer = node.add_peer(f"aaa://{EIR_HOST}:{eir.port};transport=tcp", REALM,
                         ["127.0.0.1"], is_persistent=True)
    app = SimpleThreadingApplication(S13, is_auth_application=True)
    node.add_application(app, [peer])
    node.start()
    mme = Mme(node, peer, app, eir, threading.Lock(), itertools.count(1))
    try:
        app.wait_for_ready(timeout=READY_TIMEOUT)
    except Exception as exc:
        mme.start_stop(force=True)
        mme.join()
        pytest.fail(f"python-diameter did not complete CER/CEA with the EIR: {exc!r}; "
                    f"peer disconnect reason {peer.disconnect_reason}\n{eir.log()}")
    return mme


@pytest.fixture(autouse=True)
def _quiet_python_diameter() -> Iterator[None]:
    # its per-message INFO logs are noise in a failure report; warnings stay
    names = ("diameter.node", "diameter.connection", "diameter.peer", "diameter.application",
             "diameter.stats")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)


def describe(ans: MeIdentityCheckAnswer) -> str:
    er = ans.experimental_result
    return (f"Result-Code={ans.result_code} Experimental-Result="
            f"{(er.vendor_id, er.experimental_result_code) if er else None} "
            f"Equipment-Status={ans.equipment_status} E-bit={ans.header.is_error}")


def check_eca_common(req: MeIdentityCheckRequest, ans: MeIdentityCheckAnswer) -> None:
    """What every ECA must carry (RFC 6733 6.2, TS 29.272 7.2.20)."""
    assert ans.header.hop_by_hop_identifier == req.header.hop_by_hop_identifier
    assert ans.header.end_to_end_identifier == req.header.end_to_end_identifier
    assert ans.header.application_id == S13
    assert ans.header.command_code == 324
    assert not ans.header.is_request
    assert ans.header.is_proxyable  # P bit copied from the request
    assert ans.session_id == req.session_id
    assert ans.origin_host == EIR_HOST.encode()
    assert ans.origin_realm == REALM.encode()
    assert ans.auth_session_state == dc.E_AUTH_SESSION_STATE_NO_STATE_MAINTAINED
    # TS 29.272 7.2.20: S13 answers carry no Vendor-Specific-Application-Id
    assert ans.vendor_specific_application_id is None


# -- tests --


def test_python_diameter_mme_against_eir(make_eir: Callable[..., EirProcess]) -> None:
    eir = make_eir()
    mme = start_mme(eir)
    try:
        # CER/CEA: python-diameter considers the connection open for S13
        conn = mme.peer.connection
        assert conn is not None and conn.state in PEER_READY_STATES
        assert conn.host_identity == EIR_HOST
        assert S13 in conn.auth_application_ids, (
            f"python-diameter found no S13 in our CEA: {conn.auth_application_ids}")
        assert eir.wait_for(rf"peer {re.escape(MME_HOST)} \(realm {re.escape(REALM)}\) "
                            rf"open from 127\.0\.0\.1:\d+, applications \[{S13}\]", 5), (
            "the EIR did not log the python-diameter peer as open with S13\n" + eir.log())

        # one ECR per list and rule, decoded by python-diameter
        for imei, what, imsi, status in CASES:
            req = mme.ecr(imei, imsi=imsi)
            ans = mme.send(req)
            check_eca_common(req, ans)
            assert (ans.result_code, ans.equipment_status, ans.experimental_result) == (
                dc.E_RESULT_CODE_DIAMETER_SUCCESS, status, None), (
                f"{what}: IMEI {imei} IMSI {imsi}: {describe(ans)}\n{eir.log()}")
            assert not ans.header.is_error

        # 15 digits (a check digit: ignored), no Software-Version, no Destination-Host
        req = mme.ecr(BLACK_IMEI + "4", sv=None, imsi=PAIR_IMSI)
        req.destination_host = None
        ans = mme.send(req)
        check_eca_common(req, ans)
        assert (ans.result_code, ans.equipment_status) == (2001, WHITELISTED), describe(ans)

        # DWR from python-diameter (idle 1 s), DWA from the EIR
        dwa_before = mme.peer.counters.dwa
        deadline = time.monotonic() + 8
        while mme.peer.counters.dwa == dwa_before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mme.peer.counters.dwa > dwa_before, (
            "python-diameter got no DWA for its DWR\n" + eir.log())
        assert mme.peer.connection is not None
        assert mme.peer.connection.state in PEER_READY_STATES

        # a few hundred ECRs from several threads at once: none lost, none mixed up
        plan = [CASES[i % len(CASES)] for i in range(LOAD_COUNT)]
        reqs = [mme.ecr(imei, imsi=imsi) for imei, _, imsi, _ in plan]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(LOAD_WORKERS) as pool:
            answers = list(pool.map(mme.send, reqs, timeout=30))
        took = time.perf_counter() - t0
        assert len(answers) == LOAD_COUNT
        assert len({r.header.hop_by_hop_identifier for r in reqs}) == LOAD_COUNT
        wrong = []
        for (_, what, _, status), req, ans in zip(plan, reqs, answers, strict=True):
            if (ans.header.hop_by_hop_identifier != req.header.hop_by_hop_identifier or
                    ans.session_id != req.session_id or ans.result_code != 2001 or
                    ans.equipment_status != status):
                wrong.append(f"{req.session_id} {what}: {describe(ans)}")
        assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:5]}\n{eir.log()}"
        print(f"python-diameter: {LOAD_COUNT} ECRs over {LOAD_WORKERS} threads in {took:.2f} s")

        sent = len(CASES) + 1 + LOAD_COUNT
        assert mme.peer.connection is not None
        assert mme.peer.connection.state in PEER_READY_STATES, "the connection did not survive"
        # python-diameter's stop: DPR (REBOOTING) to the EIR, DPA back, close
        mme.start_stop()
        assert mme.wait_dpa(5), "python-diameter got no DPA for its DPR\n" + eir.log()
        assert eir.wait_for(rf"peer {re.escape(MME_HOST)} sent DPR \(cause 0\)", 5), (
            "the EIR did not log python-diameter's DPR\n" + eir.log())
        assert mme.peer.counters.dpa == 1

        # our EIR answered exactly what was sent, then stops cleanly on SIGTERM
        rc = eir.stop()
        assert rc == 0, f"eir serve exited {rc}\n{eir.log()}"
        assert eir.wait_for(rf"stopped: {sent} ECR answered", 1), (
            f"the EIR did not count {sent} answered ECRs\n{eir.log()}")
        assert not [ln for ln in eir.lines if " ERROR " in ln or "Traceback" in ln], eir.log()
    finally:
        stopped = mme.join()
    assert stopped, "python-diameter's Node.stop did not return"


def test_python_diameter_unknown_equipment_reject(make_eir: Callable[..., EirProcess]) -> None:
    eir = make_eir('[policy]\nunknown_equipment = "reject"\n')
    mme = start_mme(eir)
    try:
        req = mme.ecr(UNKNOWN_IMEI, imsi=OTHER_IMSI)
        ans = mme.send(req)
        check_eca_common(req, ans)
        er = ans.experimental_result
        assert er is not None, f"no Experimental-Result: {describe(ans)}\n{eir.log()}"
        assert (er.vendor_id, er.experimental_result_code) == (TGPP, 5422), describe(ans)
        assert ans.result_code is None, describe(ans)
        assert ans.equipment_status is None, describe(ans)
        # 5422 is a permanent failure in the answer, not a protocol error: no E bit
        assert not ans.header.is_error

        # listed IMEIs still decide as usual in the reject regime
        for imei, imsi, status in [(WHITE_IMEI, None, WHITELISTED),
                                   (GREY_IMEI, None, GREYLISTED),
                                   (BLACK_IMEI, None, BLACKLISTED),
                                   (BLACK_IMEI, PAIR_IMSI, WHITELISTED),
                                   (MALFORMED_IMEI, None, BLACKLISTED)]:
            req = mme.ecr(imei, imsi=imsi)
            ans = mme.send(req)
            check_eca_common(req, ans)
            assert (ans.result_code, ans.equipment_status, ans.experimental_result) == (
                2001, status, None), f"{imei}/{imsi}: {describe(ans)}"
        mme.start_stop()
        assert mme.wait_dpa(5), "python-diameter got no DPA for its DPR\n" + eir.log()
        assert eir.wait_for(rf"peer {re.escape(MME_HOST)} sent DPR", 5), eir.log()
        assert eir.stop() == 0, eir.log()
        assert eir.wait_for(r"stopped: 6 ECR answered", 1), eir.log()
    finally:
        stopped = mme.join()
    assert stopped, "python-diameter's Node.stop did not return"
