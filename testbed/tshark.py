"""Wireshark's decoder as an independent check of what went over the wire.

* :func:`capture` -- context manager running ``tshark -i lo -f "tcp port PORT" -w PATH``; it
  yields only once tshark is really capturing and stops it with SIGINT (bounded waits).
* :func:`check` -- decode a capture (``-d tcp.port==PORT,diameter`` so any port works) and
  return a :class:`CaptureReport`: every Diameter message with its header and key AVPs,
  request/answer pairing by hop-by-hop id, malformed frames and Wireshark's expert infos
  split into Diameter problems and transport (TCP) remarks.

Wireshark checks encoding (lengths, padding, types), not the command grammar: freeDiameter
(testbed.fdpeer) does that. Needs ``apt-get install tshark`` and capture rights (root, or
dumpcap with capabilities); :func:`unavailable_reason` says what is missing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

COMMAND_NAMES = {
    257: "CE",
    258: "RA",
    271: "AC",
    274: "AS",
    275: "ST",
    280: "DW",
    282: "DP",
    324: "EC",
}

# -z expert severities / Wireshark's numeric severity values (-e _ws.expert.severity)
SEVERITIES = {"Errors": "error", "Warnings": "warning", "Notes": "note", "Chats": "chat"}
_SEVERITY_CODES = {
    0x00800000: "error",
    0x00600000: "warning",
    0x00400000: "note",
    0x00200000: "chat",
    0x00100000: "comment",
}
# TCP remarks that say nothing about the Diameter bytes (connection life cycle)
_BENIGN_TRANSPORT = (
    "Connection establish",
    "Connection finish",
    "connection closing",
    "Connection reset",
    "This frame is a (suspected) retransmission",
    "Window update",
    "keep-alive",
    "Keep-Alive",
    "Duplicate ACK",
)


class TsharkError(RuntimeError):
    pass


@functools.lru_cache(maxsize=4)
def unavailable_reason(interface: str = "lo") -> str | None:
    """None when tshark can capture on ``interface``, else an explicit reason."""
    if not shutil.which("tshark"):
        return "tshark not installed; apt-get install -y tshark"
    try:
        res = subprocess.run(
            ["tshark", "-D"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"tshark -D failed: {e}"
    names = [ln.split(" ", 1)[1].split(" ", 1)[0] for ln in res.stdout.splitlines() if ". " in ln]
    if interface not in names:
        return (
            f"tshark cannot capture on {interface!r} (interfaces seen: {names}); run as root "
            f"or give dumpcap capture rights (dpkg-reconfigure wireshark-common)"
        )
    return None


def available(interface: str = "lo") -> bool:
    return unavailable_reason(interface) is None


# --------------------------------------------------------------------------- capture


@dataclass
class Capture:
    path: Path
    port: int
    interface: str
    stderr: str = ""
    packets: int | None = None  # "N packets captured" (known after the block)
    dropped: int | None = None  # "N packets dropped" if tshark reported any


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def capture(
    port: int,
    path: Path | str,
    *,
    interface: str = "lo",
    start_timeout: float = 20.0,
    settle: float = 0.3,
    buffer_mib: int = 32,
) -> Iterator[Capture]:
    """Capture TCP port ``port`` on ``interface`` into ``path`` for the duration of the block.

    Yields once tshark has printed "Capturing on" plus ``settle`` seconds; on exit waits
    ``settle`` seconds (so the last segments are in), stops tshark (its process group: tshark
    and its dumpcap) with SIGINT, then SIGTERM/SIGKILL if needed, all bounded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    cap = Capture(path=path, port=int(port), interface=interface)
    cmd = [
        "tshark",
        "-i",
        interface,
        "-f",
        f"tcp port {int(port)}",
        "-B",
        str(buffer_mib),
        "-w",
        str(path),
        "-q",
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def reader() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            lines.append(line)
            if "Capturing on" in line:
                started.set()
        started.set()  # EOF: tshark ended

    t = threading.Thread(target=reader, name=f"tshark-stderr-{port}", daemon=True)
    t.start()

    def stop() -> None:
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        t.join(timeout=5)
        cap.stderr = "".join(lines)
        m = re.search(r"(\d+) packets? captured", cap.stderr)
        cap.packets = int(m.group(1)) if m else None
        m = re.search(r"(\d+) packets? dropped", cap.stderr)
        cap.dropped = int(m.group(1)) if m else None

    try:
        if not started.wait(timeout=start_timeout) or proc.poll() is not None:
            stop()
            raise TsharkError(f"tshark did not start capturing ({' '.join(cmd)}):\n{cap.stderr}")
        time.sleep(settle)
        yield cap
        time.sleep(settle)
    finally:
        stop()


# --------------------------------------------------------------------------- check


@dataclass(frozen=True)
class DiameterMessage:
    frame: int
    index: int  # position of this message inside the frame (several per TCP segment)
    time: float
    stream: int  # tcp.stream
    src_port: int
    dst_port: int
    cmd_code: int
    is_request: bool
    e_bit: bool
    app_id: int
    hbh: int
    e2e: int
    avps: dict[str, tuple[str, ...]]  # AVP name -> values, as Wireshark names them

    def avp(self, name: str) -> str | None:
        v = self.avps.get(name)
        return v[0] if v else None

    def _int(self, name: str) -> int | None:
        v = self.avp(name)
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    @property
    def name(self) -> str:
        base = COMMAND_NAMES.get(self.cmd_code, str(self.cmd_code))
        return base + ("R" if self.is_request else "A")

    @property
    def result_code(self) -> int | None:
        return self._int("Result-Code")

    @property
    def exp_result_code(self) -> int | None:
        return self._int("Experimental-Result-Code")

    @property
    def equipment_status(self) -> int | None:
        return self._int("Equipment-Status")

    @property
    def imei(self) -> str | None:
        return self.avp("IMEI")

    @property
    def sv(self) -> str | None:
        return self.avp("Software-Version")

    @property
    def user_name(self) -> str | None:
        return self.avp("User-Name")

    @property
    def origin_host(self) -> str | None:
        return self.avp("Origin-Host")

    @property
    def session_id(self) -> str | None:
        return self.avp("Session-Id")


@dataclass(frozen=True)
class ExpertItem:
    severity: str  # error | warning | note | chat
    group: str
    protocol: str
    summary: str
    count: int

    @property
    def is_diameter(self) -> bool:
        return self.protocol.upper() == "DIAMETER"

    @property
    def benign(self) -> bool:
        """A transport-level remark (TCP connection life cycle), not about Diameter bytes."""
        if self.is_diameter or self.group == "Malformed" or self.severity == "error":
            return False
        return self.severity in ("chat", "note") or any(
            b in self.summary for b in _BENIGN_TRANSPORT
        )


@dataclass
class CaptureReport:
    path: Path
    port: int
    frames: int = 0
    messages: list[DiameterMessage] = field(default_factory=list)
    malformed_frames: list[int] = field(default_factory=list)
    expert: list[ExpertItem] = field(default_factory=list)
    expert_frames: list[tuple[int, str, str]] = field(default_factory=list)  # (frame, sev, msg)
    pairs: list[tuple[DiameterMessage, DiameterMessage | None]] = field(default_factory=list)
    orphan_answers: list[DiameterMessage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems of the analysis itself

    @property
    def malformed(self) -> int:
        return len(self.malformed_frames)

    @property
    def diameter_errors(self) -> list[ExpertItem]:
        """Expert infos of severity error/warning raised by the Diameter dissector, or malformed."""
        return [
            e
            for e in self.expert
            if (e.is_diameter or e.group == "Malformed") and e.severity in ("error", "warning")
        ]

    @property
    def other_problems(self) -> list[ExpertItem]:
        """Non-Diameter expert infos that are not benign (e.g. segments not captured)."""
        return [e for e in self.expert if not e.benign and e not in self.diameter_errors]

    @property
    def unanswered(self) -> list[DiameterMessage]:
        return [r for r, a in self.pairs if a is None]

    @property
    def ok(self) -> bool:
        """No malformed frame, no Diameter error/warning, no non-benign remark, no notes."""
        return not (
            self.malformed_frames or self.diameter_errors or self.other_problems or self.notes
        )

    def count(self) -> Counter[str]:
        """Messages per kind: {"CER": 1, "CEA": 1, "ECR": 2000, "ECA": 2000, "DWR": ...}."""
        return Counter(m.name for m in self.messages)

    def requests(self, cmd: int) -> list[DiameterMessage]:
        return [m for m in self.messages if m.cmd_code == cmd and m.is_request]

    def answers(self, cmd: int) -> list[DiameterMessage]:
        return [m for m in self.messages if m.cmd_code == cmd and not m.is_request]

    def ecr_results(self) -> list[tuple[str | None, int | None, int | None, int | None]]:
        """(IMEI, Result-Code, Experimental-Result-Code, Equipment-Status) per ECR, as seen on
        the wire (codes None when unanswered or absent)."""
        out: list[tuple[str | None, int | None, int | None, int | None]] = []
        for req, ans in self.pairs:
            if req.cmd_code != 324:
                continue
            if ans is None:
                out.append((req.imei, None, None, None))
            else:
                out.append((req.imei, ans.result_code, ans.exp_result_code, ans.equipment_status))
        return out

    def summary(self) -> str:
        lines = [
            f"capture {self.path} port {self.port}: {self.frames} frames, "
            f"{len(self.messages)} Diameter messages {dict(sorted(self.count().items()))}, "
            f"malformed={self.malformed}, unanswered={len(self.unanswered)}, "
            f"orphan answers={len(self.orphan_answers)}"
        ]
        lines += [
            f"  DIAMETER {e.severity}: {e.summary} (x{e.count})" for e in self.diameter_errors
        ]
        lines += [
            f"  other {e.severity} [{e.protocol}/{e.group}]: {e.summary} (x{e.count})"
            for e in self.other_problems
        ]
        lines += [
            f"  benign {e.severity} [{e.protocol}]: {e.summary} (x{e.count})"
            for e in self.expert
            if e.benign
        ]
        lines += [
            f"  frame {f} {sev}: {msg}"
            for f, sev, msg in self.expert_frames[:20]
            if sev in ("error", "warning")
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_EXPERT_ROW = re.compile(r"^\s*(\d+)\s+(Response Code|Request Code|\S+)\s+(\S+)\s\s(.*)$")
_TAP_KV = re.compile(r"([\w.-]+)='([^']*)'")
_FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "tcp.stream",
    "tcp.srcport",
    "tcp.dstport",
    "diameter.cmd.code",
    "diameter.flags.request",
    "diameter.flags.error",
    "diameter.applicationId",
    "diameter.hopbyhopid",
    "diameter.endtoendid",
    "_ws.expert.severity",
    "_ws.expert.message",
    "_ws.malformed",
)
_TAP_AVPS = (
    "Session-Id",
    "Origin-Host",
    "Origin-Realm",
    "Result-Code",
    "Experimental-Result-Code",
    "Equipment-Status",
    "IMEI",
    "Software-Version",
    "User-Name",
    "Auth-Session-State",
    "Error-Message",
    "Disconnect-Cause",
    "Auth-Application-Id",
    "Acct-Application-Id",
    "Vendor-Id",
    "Supported-Vendor-Id",
    "Host-IP-Address",
    "Product-Name",
    "Origin-State-Id",
    "Failed-AVP",
)


def _tshark(args: list[str], timeout: float) -> str:
    res = subprocess.run(
        ["tshark", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        raise TsharkError(f"tshark {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res.stdout


def _int(s: str, base: int = 10) -> int:
    return int(s, 16) if s.startswith("0x") else int(s, base)


def parse_expert(text: str) -> list[ExpertItem]:
    """Parse ``tshark -q -z expert`` output."""
    items = []
    sev = None
    for line in text.splitlines():
        m = re.match(r"^(Errors|Warnings|Notes|Chats|Comments) \(\d+\)", line)
        if m:
            sev = SEVERITIES.get(m.group(1), m.group(1).lower())
            continue
        r = _EXPERT_ROW.match(line)
        if sev and r:
            items.append(
                ExpertItem(
                    severity=sev,
                    group=r.group(2),
                    protocol=r.group(3),
                    summary=r.group(4).strip(),
                    count=int(r.group(1)),
                )
            )
    return items


def check(path: Path | str, port: int, *, timeout: float = 300.0) -> CaptureReport:
    """Decode the capture at ``path`` (Diameter on TCP ``port``) and report what Wireshark saw."""
    path = Path(path)
    rep = CaptureReport(path=path, port=int(port))
    if not path.is_file():
        rep.notes.append(f"no capture file {path}")
        return rep
    decode = ["-d", f"tcp.port=={int(port)},diameter"]
    # pass 1: per frame, the header fields of every Diameter message in it (aligned by index)
    args = [
        "-r",
        str(path),
        *decode,
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
        "-E",
        "separator=\t",
    ]
    for f in _FIELDS:
        args += ["-e", f]
    headers: dict[int, list[dict[str, object]]] = {}
    for line in _tshark(args, timeout).splitlines():
        cols = line.split("\t")
        if len(cols) < len(_FIELDS):
            cols += [""] * (len(_FIELDS) - len(cols))
        (fno, ftime, stream, sport, dport, cmd, req, err, app, hbh, e2e, esev, emsg, malformed) = (
            cols[: len(_FIELDS)]
        )
        if not fno:
            continue
        frame = int(fno)
        rep.frames += 1
        if malformed:
            rep.malformed_frames.append(frame)
        if esev:
            for s, msg in zip(esev.split("|"), emsg.split("|"), strict=False):
                sev = _SEVERITY_CODES.get(_int(s), s) if s else "?"
                rep.expert_frames.append((frame, sev, msg))
        if not cmd:
            continue
        parts = [p.split("|") for p in (cmd, req, err, app, hbh, e2e)]
        n = len(parts[0])
        if any(len(p) != n for p in parts):
            rep.notes.append(f"frame {frame}: Diameter header fields do not align")
            continue
        headers[frame] = [
            {
                "time": float(ftime or 0),
                "stream": int(stream or -1),
                "src_port": int(sport or 0),
                "dst_port": int(dport or 0),
                "cmd_code": int(parts[0][i]),
                "is_request": parts[1][i] in ("1", "True"),
                "e_bit": parts[2][i] in ("1", "True"),
                "app_id": _int(parts[3][i]) if parts[3][i] else 0,
                "hbh": _int(parts[4][i]) if parts[4][i] else 0,
                "e2e": _int(parts[5][i]) if parts[5][i] else 0,
            }
            for i in range(n)
        ]
    # pass 2: the AVPs of every message, one line per message (frame + msgnr)
    tap = "diameter,avp,," + ",".join(_TAP_AVPS)
    avps: dict[tuple[int, int], dict[str, tuple[str, ...]]] = {}
    for line in _tshark(["-r", str(path), *decode, "-q", "-z", tap], timeout).splitlines():
        if not line.startswith("frame='"):
            continue
        kv = _TAP_KV.findall(line)
        d: dict[str, list[str]] = {}
        for k, v in kv:
            d.setdefault(k, []).append(v)
        key = (int(d["frame"][0]), int(d.get("msgnr", ["0"])[0]))
        avps[key] = {k: tuple(v) for k, v in d.items() if k in _TAP_AVPS}
    for frame in sorted(headers):
        for i, h in enumerate(headers[frame]):
            a = avps.get((frame, i))
            if a is None:
                rep.notes.append(f"frame {frame} message {i}: no AVP line from the diameter tap")
                a = {}
            rep.messages.append(DiameterMessage(frame=frame, index=i, avps=a, **h))  # type: ignore[arg-type]
    # pairing: same TCP stream, same hop-by-hop id and command, opposite direction
    open_reqs: dict[tuple[int, int, int, int], DiameterMessage] = {}
    order: list[DiameterMessage] = []
    answered: dict[int, DiameterMessage] = {}
    for m in rep.messages:
        if m.is_request:
            open_reqs[(m.stream, m.src_port, m.cmd_code, m.hbh)] = m
            order.append(m)
        else:
            matched = open_reqs.pop((m.stream, m.dst_port, m.cmd_code, m.hbh), None)
            if matched is None:
                rep.orphan_answers.append(m)
            else:
                answered[id(matched)] = m
    rep.pairs = [(r, answered.get(id(r))) for r in order]
    # expert infos, summarized by Wireshark
    rep.expert = parse_expert(_tshark(["-r", str(path), *decode, "-q", "-z", "expert"], timeout))
    return rep


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.tshark check CAPTURE PORT``: print the report, exit 1 if not ok."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "check":
        print("usage: python -m testbed.tshark check CAPTURE.pcapng PORT")
        return 2
    rep = check(args[1], int(args[2]))
    print(rep.summary())
    return 0 if rep.ok and not rep.unanswered else 1


if __name__ == "__main__":
    raise SystemExit(main())
