"""freeDiameter (Debian's freeDiameterd 1.2.x) as an independent S13 peer, for tests.

Two roles, both driven through the ``ecr_gen`` extension in ``testbed/freediameter/ecr_gen.c``:

* :func:`run_client` -- freeDiameter as an MME: connect to an EIR, CER/CEA, send ECRs with a
  bounded number in flight, optionally stay idle so that DWR/DWA happen, DPR, exit. Returns a
  :class:`ClientResult` with counters and one :class:`RequestRow` per request.
* :func:`start_server` -- freeDiameter as a strict stub EIR (IMEI ``35..`` -> BLACKLISTED,
  ``86..`` -> GREYLISTED, else WHITELISTED) that accepts peers named ``*.test.local``.

freeDiameter checks every message against the command grammar (the extension adds the S13
dictionary and the ECR/ECA ABNF of TS 29.272 7.2.19/7.2.20) and throws away answers that break
it; such answers are reported as ``discarded`` (part of ``lost``).

Needs ``apt-get install freediameter freediameter-extensions libfreediameter-dev openssl gcc``;
:func:`unavailable_reason` says what is missing. Everything runs on 127.0.0.1 and every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "freediameter" / "ecr_gen.c"
CFLAGS = ("-O2", "-fPIC", "-shared")
LIBS = ("-lfdcore", "-lfdproto", "-lpthread")

DEFAULT_IMEI = "49015420323751"
STUB_IDENTITY = "fdeir.test.local"
OMIT = "-"  # in an ``imeis`` entry: leave that AVP (User-Name / Software-Version) out

APT_HINT = "apt-get install -y freediameter freediameter-extensions libfreediameter-dev openssl gcc"
_EXT_DIRS = (
    "/usr/lib/freeDiameter",
    "/usr/lib/x86_64-linux-gnu/freeDiameter",
    "/usr/lib/aarch64-linux-gnu/freeDiameter",
    "/usr/lib64/freeDiameter",
    "/usr/local/lib/freeDiameter",
)
_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")
_NEEDED_EXTENSIONS = ("dict_nasreq.fdx", "dict_dcca.fdx", "dict_dcca_3gpp.fdx", "acl_wl.fdx")


class FdPeerError(RuntimeError):
    """freeDiameter could not be built, started or driven; the message carries its log tail."""


# --------------------------------------------------------------------------- availability


def extension_dir() -> Path | None:
    """The directory holding freeDiameter's stock extensions (dict_*.fdx, acl_wl.fdx)."""
    env = os.environ.get("EIR_FD_EXTDIR")
    for d in ((env,) if env else ()) + _EXT_DIRS:
        if (Path(d) / "dict_dcca_3gpp.fdx").is_file():
            return Path(d)
    return None


def unavailable_reason() -> str | None:
    """None when freeDiameter can be used, else an explicit reason naming what is missing."""
    missing = []
    if not shutil.which("freeDiameterd"):
        missing.append("freeDiameterd (package freediameterd)")
    ext = extension_dir()
    if ext is None:
        missing.append("dict_dcca_3gpp.fdx (package freediameter-extensions)")
    else:
        missing += [
            f"{n} (freediameter-extensions)" for n in _NEEDED_EXTENSIONS if not (ext / n).is_file()
        ]
    if not any((Path(d) / "freeDiameter" / "extension.h").is_file() for d in _INCLUDE_DIRS):
        missing.append("freeDiameter/extension.h (package libfreediameter-dev)")
    for tool in ("gcc", "openssl"):
        if not shutil.which(tool):
            missing.append(tool)
    if not missing:
        return None
    return "freeDiameter harness unavailable, missing: " + ", ".join(missing) + f"; {APT_HINT}"


def available() -> bool:
    """freeDiameterd, its stock extensions, its headers, gcc and openssl are all present."""
    return unavailable_reason() is None


def must_not_skip() -> bool:
    """True in CI (``CI`` or ``EIR_REQUIRE_INTEROP`` set): missing tools are then a failure."""
    return any(
        os.environ.get(v, "").strip() not in ("", "0", "false")
        for v in ("EIR_REQUIRE_INTEROP", "CI")
    )


# --------------------------------------------------------------------------- building


def cache_dir() -> Path:
    env = os.environ.get("EIR_TESTBED_CACHE")
    d = Path(env) if env else Path(tempfile.gettempdir()) / f"eir-testbed-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_extension(workdir: Path | str | None = None) -> Path:
    """Compile ecr_gen.c into ``ecr_gen-<hash>.fdx`` (cached by source + flags + header hash).

    ``workdir`` is the cache directory (default: ``$EIR_TESTBED_CACHE`` or
    ``<tmp>/eir-testbed-<uid>``). Safe to call concurrently: the result appears atomically.
    """
    out_dir = Path(workdir) if workdir is not None else cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(CFLAGS + LIBS).encode())
    for d in _INCLUDE_DIRS:
        hdr = Path(d) / "freeDiameter" / "libfdcore.h"
        if hdr.is_file():
            h.update(hdr.read_bytes())
            break
    target = out_dir / f"ecr_gen-{h.hexdigest()[:16]}.fdx"
    if target.is_file():
        return target
    if not shutil.which("gcc"):
        raise FdPeerError(f"gcc not found; {APT_HINT}")
    tmp = out_dir / f".{target.name}.{os.getpid()}.{random.randrange(1 << 30)}"
    cmd = ["gcc", *CFLAGS, "-o", str(tmp), str(SOURCE), *LIBS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise FdPeerError(f"building ecr_gen.fdx failed ({' '.join(cmd)}):\n{res.stderr}")
    os.replace(tmp, target)
    return target


# --------------------------------------------------------------------------- ports and files


def _port_free(port: int) -> bool:
    """Nothing bound to PORT on 0.0.0.0 (freeDiameter 1.2.1 ignores ListenOn and binds all)."""
    for addr in ("0.0.0.0", "127.0.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, port))
            except OSError:
                return False
    return True


def free_port(lo: int = 20000, hi: int = 32000, tries: int = 200) -> int:
    """A random TCP port in [lo, hi) that is free now (below Linux's ephemeral range)."""
    rng = random.Random()
    for _ in range(tries):
        port = rng.randrange(lo, hi)
        if _port_free(port):
            return port
    raise FdPeerError(f"no free TCP port found in {lo}-{hi} after {tries} tries")


def _listening(port: int) -> bool:
    """PORT is in LISTEN state on some IPv4 address (from /proc/net/tcp, no connection made)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


def _make_cert(workdir: Path, identity: str) -> tuple[Path, Path]:
    """freeDiameter will not start without a certificate named after its identity (even with no
    TLS in use): make a throw-away self-signed EC one."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    cmd = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "30",
        "-subj",
        f"/CN={identity}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise FdPeerError(f"openssl failed: {res.stderr}")
    return cert, key


@dataclass(frozen=True)
class FdTls:
    """freeDiameter's TLS credentials for a connection over TLS (RFC 6733 2.1).

    ``cert``/``key``: its own certificate (the name in it must be its Identity) and
    key, presented to the EIR as the client certificate; ``ca``: the CAs it trusts
    for the EIR's certificate, whose subjectAltName must carry the EIR's Origin-Host.
    """

    cert: Path
    key: Path
    ca: Path


def _conf_common(identity: str, realm: str, port: int, cert: Path, key: Path, ext: Path,
                 ca: Path | None = None) -> str:
    return "\n".join(
        [
            f'Identity = "{identity}";',
            f'Realm = "{realm}";',
            f"Port = {port};",  # 0 = no listening socket at all
            "SecPort = 0;",
            "No_SCTP;",
            "No_IPv6;",
            'ListenOn = "127.0.0.1";',
            "TcTimer = 5;",
            "TwTimer = 6;",
            f'TLS_Cred = "{cert}", "{key}";',
            f'TLS_CA = "{ca or cert}";',
            f'LoadExtension = "{ext}/dict_nasreq.fdx";',
            f'LoadExtension = "{ext}/dict_dcca.fdx";',
            f'LoadExtension = "{ext}/dict_dcca_3gpp.fdx";',
            "",
        ]
    )


def _check_name(value: str, what: str) -> None:
    if not value or any(c in value for c in '";\n\r ,'):
        raise ValueError(f"{what} {value!r}: empty or contains a character not allowed here")


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM (freeDiameter then sends DPR to its peers), bounded wait, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class RequestRow:
    """One ECR and what came back (None = AVP absent).

    outcome: ``answered`` | ``local`` (answer made by our own freeDiameter, e.g. 3002 because the
    EIR was unreachable or did not advertise S13) | ``timeout`` | ``discarded`` (answer thrown
    away by freeDiameter's grammar check; the codes shown are read from the refused answer) |
    ``lost`` (no callback at all).
    """

    imei: str
    result_code: int | None
    exp_code: int | None
    equipment_status: int | None
    outcome: str
    e_bit: bool
    imsi: str | None
    sv: str | None


@dataclass
class ClientResult:
    sent: int = 0
    answered: int = 0
    rc2001: int = 0  # answers with Result-Code 2001
    experimental: int = 0  # answers with an Experimental-Result-Code (and no 2001)
    other: int = 0  # any other answer
    timeout: int = 0
    lost: int = 0  # sent - answered - timeout = discarded + unaccounted
    discarded: int = 0  # answers freeDiameter threw away (broke the ECA/base grammar)
    unaccounted: int = 0  # neither answer, timeout nor discard notice (should stay 0)
    local: int = 0  # answers generated by our freeDiameter itself (e.g. 3002)
    e_bit: int = 0  # answers with the E bit
    es: dict[int, int] = field(default_factory=dict)  # Equipment-Status -> answers
    es_missing: int = 0  # answers without Equipment-Status
    result_codes: dict[int, int] = field(default_factory=dict)  # Result-Code -> answers
    exp_codes: dict[int, int] = field(default_factory=dict)  # Experimental-Result-Code -> answers
    elapsed: float = 0.0  # seconds from first ECR to last answer (ecr_gen's clock)
    rate: float = 0.0  # answers per second over ``elapsed``
    rows: list[RequestRow] = field(default_factory=list)  # one per request, in send order
    events: dict[str, int] = field(default_factory=dict)  # "parse: why" / "drop: why" -> count
    dwr_tx: int = 0  # DWR we sent / DWA we got / DWR we got / DWA we sent (until DETAIL)
    dwa_rx: int = 0
    dwr_rx: int = 0
    dwa_tx: int = 0
    peer_msgs: dict[str, int] = field(default_factory=dict)  # cer_tx..dpa_rx over the whole run
    final_state: str = ""  # peer state after idle_after (STATE_OPEN if the EIR kept the link)
    peer_open: bool = False  # the EIR reached STATE_OPEN (CER/CEA accepted)
    completed: bool = False  # the RESULT line was printed
    error: str | None = None  # why not completed
    returncode: int | None = None
    wall: float = 0.0  # whole freeDiameterd run, seconds
    log: str = ""  # freeDiameterd's log, for diagnostics
    workdir: Path | None = None  # kept only if run_client(workdir=...) was given

    def problems(self) -> list[str]:
        """Everything short of "every request answered by the EIR, nothing refused"."""
        p = []
        if not self.completed:
            p.append(f"not completed: {self.error}")
        for name in ("timeout", "lost", "discarded", "unaccounted", "local"):
            if getattr(self, name):
                p.append(f"{name}={getattr(self, name)}")
        if self.answered != self.sent:
            p.append(f"answered {self.answered} of {self.sent}")
        p += [f"{k} (x{n})" for k, n in self.events.items()]
        return p

    def summary(self, log_lines: int = 30) -> str:
        """Counters plus the log tail: meant for assertion messages."""
        return (
            f"sent={self.sent} answered={self.answered} rc2001={self.rc2001} "
            f"experimental={self.experimental} other={self.other} timeout={self.timeout} "
            f"lost={self.lost} discarded={self.discarded} local={self.local} es={self.es} "
            f"rc={self.result_codes} erc={self.exp_codes} events={self.events} "
            f"peer_open={self.peer_open} final_state={self.final_state} error={self.error}\n"
            f"--- freeDiameter log tail ---\n{_tail(self.log, log_lines)}"
        )


ImeiEntry = str | tuple[str, str | None, str | None]

_RESULT_RE = re.compile(
    r"ecr_gen: RESULT sent=(\d+) answered=(\d+) rc2001=(\d+) experimental=(\d+) other=(\d+) "
    r"timeout=(\d+) lost\(discarded\)=(-?\d+) ES0=(\d+) ES1=(\d+) ES2=(\d+) "
    r"elapsed=([\d.]+)s rate=([\d.]+)/s"
)
_KV_RE = re.compile(r"(\w+)=(\S*)")


def _hist(text: str) -> tuple[dict[int, int], int]:
    out: dict[int, int] = {}
    none = 0
    if text in ("", "-"):
        return out, none
    for item in text.split(","):
        k, _, n = item.partition(":")
        if k == "none":
            none = int(n)
        else:
            out[int(k)] = int(n)
    return out, none


def _opt_int(s: str) -> int | None:
    return int(s) if s else None


def _parse_rows(path: Path) -> list[RequestRow]:
    rows: list[RequestRow] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split(",")
        rows.append(
            RequestRow(
                imei=f[0],
                result_code=_opt_int(f[1]),
                exp_code=_opt_int(f[2]),
                equipment_status=_opt_int(f[3]),
                outcome=f[4],
                e_bit=f[5] == "1",
                imsi=f[6] or None,
                sv=f[7] or None,
            )
        )
    return rows


def _parse_events(log: str) -> dict[str, int]:
    ev: dict[str, int] = {}
    for m in re.finditer(r"ecr_gen: EVENT kind=(\w+) count=(\d+) reason=(.*)", log):
        key = f"{m.group(1)}: {m.group(3).strip()}"
        ev[key] = ev.get(key, 0) + int(m.group(2))
    return ev


def _parse_peermsgs(log: str) -> dict[str, int]:
    m = re.search(r"ecr_gen: PEERMSGS (.*)", log)
    return {k: int(v) for k, v in _KV_RE.findall(m.group(1))} if m else {}


def _parse_client_log(log: str, res: ClientResult) -> None:
    res.peer_open = "ecr_gen: peer " in log and " OPEN, " in log
    m = _RESULT_RE.search(log)
    if m:
        g = m.groups()
        (res.sent, res.answered, res.rc2001, res.experimental, res.other, res.timeout, res.lost) = (
            int(x) for x in g[:7]
        )
        res.es = {i: int(g[7 + i]) for i in range(3) if int(g[7 + i])}
        res.elapsed, res.rate = float(g[10]), float(g[11])
        res.completed = True
    d = re.search(r"ecr_gen: DETAIL (.*)", log)
    if d:
        kv = dict(_KV_RE.findall(d.group(1)))
        res.result_codes, _ = _hist(kv.get("rc", ""))
        res.exp_codes, _ = _hist(kv.get("erc", ""))
        es, res.es_missing = _hist(kv.get("es", ""))
        res.es = es
        for k in ("local", "discarded", "unaccounted", "dwr_tx", "dwa_rx", "dwr_rx", "dwa_tx"):
            setattr(res, k, int(kv.get(k, "0")))
        res.e_bit = int(kv.get("ebit", "0"))
        res.final_state = kv.get("final_state", "")
    res.events = _parse_events(log)
    res.peer_msgs = _parse_peermsgs(log)
    if not res.completed:
        never = re.search(r"ecr_gen: peer .* never reached STATE_OPEN.*", log)
        if never:
            res.error = never.group(0)
        elif "ecr_gen: loaded" not in log:
            res.error = "freeDiameterd did not load ecr_gen (configuration or start-up error)"
        else:
            res.error = "no RESULT line (freeDiameterd stopped or was killed before the end)"


def _write_imei_file(path: Path, imeis: Iterable[ImeiEntry]) -> int:
    n = 0
    with path.open("w") as f:
        for entry in imeis:
            if isinstance(entry, str):
                imei, imsi, sv = entry, None, None
            else:
                imei, imsi, sv = entry
            for v in (imei, imsi, sv):
                if v is not None and (not v or any(c in v for c in ",\n\r#") or len(v) > 39):
                    raise ValueError(
                        f"imeis entry {entry!r}: field empty, too long or has , # or newline"
                    )
            f.write(",".join([imei, imsi or "", sv or ""]) + "\n")
            n += 1
    if not n:
        raise ValueError("imeis is empty")
    return n


def run_client(
    host: str,
    port: int,
    eir_identity: str,
    *,
    count: int = 1000,
    concur: int = 100,
    imeis: Sequence[ImeiEntry] | None = None,
    imei: str = DEFAULT_IMEI,
    imei_vary: bool = False,
    sv: str | None = "00",
    imsi: str | None = None,
    timeout: int = 5,
    idle_before: int = 0,
    idle_after: int = 0,
    realm: str = "test.local",
    identity: str = "mme.test.local",
    dest_realm: str | None = None,
    dest_host: str | None = None,
    open_timeout: int = 30,
    relay: bool = False,
    run_timeout: float | None = None,
    workdir: Path | str | None = None,
    tls: FdTls | None = None,
) -> ClientResult:
    """Run freeDiameter as an MME against the EIR at host:port whose Origin-Host is eir_identity.

    CER/CEA as ``identity``/``realm``; ``count`` ECRs with at most ``concur`` in flight, each
    with Destination-Realm ``dest_realm`` (default: ``realm``) and, if given, Destination-Host.
    IMEIs come from ``imeis`` (cycled; entries ``imei`` or ``(imei, imsi|None, sv|None)``, None
    = the ``imsi``/``sv`` default, :data:`OMIT` = no such AVP), else ``imei`` (plus i for
    request i when ``imei_vary``). ``timeout`` is the per-request answer timeout (s);
    ``idle_before``/``idle_after`` keep the connection idle that long before the first ECR /
    after the last answer (TwTimer is 6, so >= 8 s of idleness shows a DWR/DWA); then DPR.
    ``relay=True`` lets freeDiameter advertise the Relay application (0xFFFFFFFF) in its CER,
    as it does by default; the default (False) advertises S13 only, like an MME.
    ``run_timeout`` bounds the whole run (default grows with count and idle times).
    The result's ``log`` holds freeDiameter's log; ``workdir`` keeps all files there.
    ``tls``: connect over TLS, negotiated at once on connecting (freeDiameter's default
    "RFC 6733 method", the opposite of its ``TLS_old_method``), with these credentials;
    ``port`` is then the EIR's TLS port.
    """
    _check_name(eir_identity, "eir_identity")
    _check_name(identity, "identity")
    _check_name(realm, "realm")
    dest_realm = dest_realm or realm
    _check_name(dest_realm, "dest_realm")
    if dest_host is not None:
        _check_name(dest_host, "dest_host")
    for name, v in (("timeout", timeout), ("open_timeout", open_timeout)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1 s")
    if count < 0 or concur < 1 or idle_before < 0 or idle_after < 0:
        raise ValueError("count >= 0, concur >= 1, idle_before/idle_after >= 0 required")
    if run_timeout is None:
        run_timeout = open_timeout + idle_before + idle_after + 3 * timeout + 40 + count / 200
    # the extension stops sending in time to drain, idle, report and DPR before we kill it
    deadline = max(5, int(run_timeout - open_timeout - idle_after - timeout - 12))

    ext_dir = extension_dir()
    if ext_dir is None or not shutil.which("freeDiameterd"):
        raise FdPeerError(unavailable_reason() or "freeDiameter not available")
    fdx = build_extension()

    keep = workdir is not None
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fdpeer-client-"))
    wd.mkdir(parents=True, exist_ok=True)
    res = ClientResult(workdir=wd if keep else None)
    try:
        cert, key = (tls.cert, tls.key) if tls is not None else _make_cert(wd, identity)
        result_file = wd / "results.csv"
        result_file.unlink(missing_ok=True)
        conf = [
            "mode=client",
            f"peer={eir_identity}",
            f"dest_realm={dest_realm}",
            f"count={count}",
            f"concur={concur}",
            f"imei={imei}",
            f"imei_vary={int(imei_vary)}",
            f"sv={sv if sv is not None else OMIT}",
            f"imsi={imsi if imsi is not None else OMIT}",
            f"timeout={int(timeout)}",
            f"open_timeout={int(open_timeout)}",
            f"deadline={deadline + idle_before}",
            f"idle_before={int(idle_before)}",
            f"idle_after={int(idle_after)}",
            f"result_file={result_file}",
            "shutdown=1",
        ]
        if dest_host:
            conf.append(f"dest_host={dest_host}")
        if imeis is not None:
            _write_imei_file(wd / "imeis.txt", imeis)
            conf.append(f"imei_file={wd / 'imeis.txt'}")
        (wd / "ecr_gen.conf").write_text("\n".join(conf) + "\n")
        # Port = 0: the client opens no listening socket at all
        # without No_TLS and TLS_old_method, freeDiameter starts TLS as soon as it is
        # connected (RFC 6733 2.1), before the CER
        fd_conf = _conf_common(identity, realm, 0, cert, key, ext_dir,
                               tls.ca if tls is not None else None) + "\n".join(
            [
                "" if relay else "NoRelay;",
                f'LoadExtension = "{fdx}" : "{wd / "ecr_gen.conf"}";',
                f'ConnectPeer = "{eir_identity}" {{ ConnectTo = "{host}"; Port = {int(port)}; '
                + ("" if tls is not None else "No_TLS; ") + "No_SCTP; No_IPv6; };",
                "",
            ]
        )
        (wd / "fd.conf").write_text(fd_conf)
        log_path = wd / "fd.log"
        t0 = time.monotonic()
        with log_path.open("wb") as logf:
            proc = subprocess.Popen(
                ["freeDiameterd", "-c", str(wd / "fd.conf")],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=run_timeout)
            except subprocess.TimeoutExpired:
                _stop_process(proc, grace=15)
            finally:
                if proc.poll() is None:
                    _stop_process(proc, grace=5)
        res.wall = time.monotonic() - t0
        res.returncode = proc.returncode
        res.log = log_path.read_text(errors="replace")
        _parse_client_log(res.log, res)
        res.rows = _parse_rows(result_file)
        if (
            res.returncode not in (0, None)
            and res.completed
            and res.error is None
            and res.returncode < 0
        ):
            res.error = f"freeDiameterd killed by signal {-res.returncode} after the run"
    finally:
        if not keep:
            shutil.rmtree(wd, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class ServerRow:
    """One ECR the stub EIR answered (None = AVP absent in the request)."""

    imei: str
    imsi: str | None
    sv: str | None
    equipment_status: int


@dataclass
class ServerStats:
    answered: int = 0
    es: dict[int, int] = field(default_factory=dict)
    parse_errors: int = 0  # requests freeDiameter refused (it answered them with an error)
    events: dict[str, int] = field(default_factory=dict)
    peer_msgs: dict[str, int] = field(default_factory=dict)


class FdServer:
    """A running freeDiameter stub EIR; use as a context manager or call :meth:`stop`."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        identity: str,
        realm: str,
        workdir: Path,
        keep: bool,
    ) -> None:
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = port
        self.identity = identity
        self.realm = realm
        self.workdir = workdir
        self.log_path = workdir / "fd.log"
        self.requests_path = workdir / "requests.csv"
        self._keep = keep
        self._log_text: str | None = None
        self._rows: list[ServerRow] | None = None
        self.stats: ServerStats | None = None

    def log(self) -> str:
        if self._log_text is not None:
            return self._log_text
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> ServerStats:
        """SIGTERM (freeDiameter sends DPR to its peers), bounded wait; returns its counters."""
        if self.stats is not None:
            return self.stats
        _stop_process(self.proc, grace)
        text = self.log()
        self._log_text = text
        self._rows = self._read_rows()
        st = ServerStats(events=_parse_events(text), peer_msgs=_parse_peermsgs(text))
        m = re.search(r"ecr_gen: SERVER (.*)", text)
        if m:
            kv = {k: int(v) for k, v in _KV_RE.findall(m.group(1))}
            st.answered = kv.get("answered", 0)
            st.parse_errors = kv.get("parse_errors", 0)
            st.es = {i: kv[f"es{i}"] for i in range(3) if kv.get(f"es{i}")}
        self.stats = st
        if not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return st

    def _read_rows(self) -> list[ServerRow]:
        rows = []
        if self.requests_path.is_file():
            for line in self.requests_path.read_text().splitlines():
                f = line.split(",")
                if len(f) == 4:
                    rows.append(ServerRow(f[0], f[1] or None, f[2] or None, int(f[3])))
        return rows

    def requests(self) -> list[ServerRow]:
        """The ECRs answered, in order (complete after :meth:`stop`)."""
        return self._rows if self._rows is not None else self._read_rows()

    def __enter__(self) -> FdServer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_server(
    port: int | None = None,
    *,
    identity: str = STUB_IDENTITY,
    realm: str = "test.local",
    allow: str = "*.test.local",
    startup_timeout: float = 20.0,
    workdir: Path | str | None = None,
) -> FdServer:
    """Start freeDiameter as a stub EIR on ``port`` (default: a random free one).

    It accepts peers whose Origin-Host matches ``allow`` (acl_wl pattern), answers ECRs with
    2001 and Equipment-Status by the IMEI rule, and answers broken ECRs the way freeDiameter
    does (5005/5001/3007...). Returns once the port is listening. Note: freeDiameter 1.2.1
    binds 0.0.0.0 whatever ListenOn says; connect to 127.0.0.1.
    """
    _check_name(identity, "identity")
    _check_name(realm, "realm")
    if not allow or any(c in allow for c in '";\n'):
        raise ValueError(f"allow {allow!r}")
    ext_dir = extension_dir()
    if ext_dir is None or not shutil.which("freeDiameterd"):
        raise FdPeerError(unavailable_reason() or "freeDiameter not available")
    fdx = build_extension()
    keep = workdir is not None
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fdpeer-server-"))
    wd.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    last_log = ""
    try:
        cert, key = _make_cert(wd, identity)
        (wd / "acl_wl.conf").write_text(f"ALLOW_IPSEC {allow}\n")
        (wd / "ecr_gen.conf").write_text(f"mode=server\nresult_file={wd / 'requests.csv'}\n")
        for _ in range(attempts):
            p = port if port is not None else free_port()
            if port is not None and not _port_free(p):
                raise FdPeerError(f"port {p} is already in use")
            (wd / "fd.conf").write_text(
                _conf_common(identity, realm, p, cert, key, ext_dir)
                + "\n".join(
                    [
                        "NoRelay;",
                        f'LoadExtension = "{ext_dir}/acl_wl.fdx" : "{wd / "acl_wl.conf"}";',
                        f'LoadExtension = "{fdx}" : "{wd / "ecr_gen.conf"}";',
                        "",
                    ]
                )
            )
            with (wd / "fd.log").open("wb") as logf:
                proc = subprocess.Popen(
                    ["freeDiameterd", "-c", str(wd / "fd.conf")],
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            server = FdServer(proc, p, identity, realm, wd, keep)
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if "daemon initialized" in server.log() and _listening(p):
                    return server
                time.sleep(0.05)
            last_log = server.log()
            _stop_process(proc, grace=5)
        raise FdPeerError(f"freeDiameter stub EIR did not start listening:\n{_tail(last_log)}")
    except BaseException:
        if not keep:
            shutil.rmtree(wd, ignore_errors=True)
        raise


@contextlib.contextmanager
def stub_eir(port: int | None = None, **kw: object) -> Iterator[FdServer]:
    """``with stub_eir() as srv:`` -- :func:`start_server`, stopped on exit."""
    srv = start_server(port, **kw)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------- command line

_INT_KEYS = {"count", "concur", "timeout", "idle_before", "idle_after", "open_timeout"}
_STR_KEYS = {"imei", "sv", "imsi", "realm", "identity", "dest_realm", "dest_host", "workdir"}
USAGE = """usage:
  python -m testbed.fdpeer client HOST:PORT EIR_ORIGIN_HOST [key=value ...]
      keys: count concur timeout idle_before idle_after open_timeout (integers),
            imei sv imsi realm identity dest_realm dest_host workdir (strings; sv=- / imsi=-
            leave the AVP out), imei_vary=0|1, imei_file=PATH (lines: imei[,imsi[,sv]])
  python -m testbed.fdpeer server [PORT] [duration=SECONDS]   (stub EIR; Ctrl-C stops it)"""


def _cli_client(argv: list[str]) -> int:
    host, _, port = argv[0].rpartition(":")
    kwargs: dict[str, object] = {}
    for kv in argv[2:]:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"bad argument {kv!r}\n{USAGE}")
        if k in _INT_KEYS:
            kwargs[k] = int(v)
        elif k in _STR_KEYS:
            kwargs[k] = None if v in ("", OMIT) and k in ("sv", "imsi") else v
        elif k in ("imei_vary", "relay"):
            kwargs[k] = v not in ("0", "", "false")
        elif k == "imei_file":
            entries: list[ImeiEntry] = []
            for line in Path(v).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    f = [*line.strip().split(","), "", ""][:3]
                    entries.append((f[0], f[1] or None, f[2] or None))
            kwargs["imeis"] = entries
        else:
            raise SystemExit(f"unknown key {k!r}\n{USAGE}")
    res = run_client(host or "127.0.0.1", int(port), argv[1], **kwargs)  # type: ignore[arg-type]
    for line in res.log.splitlines():
        if "ecr_gen: RESULT" in line or "ecr_gen: DETAIL" in line or "ecr_gen: EVENT" in line:
            print(line[line.index("ecr_gen: ") :])
    problems = res.problems()
    if problems:
        print("problems: " + "; ".join(problems))
        if not res.completed:
            print(_tail(res.log))
    return 1 if problems else 0


def _cli_server(argv: list[str]) -> int:
    port = None
    duration = 3600.0
    for a in argv:
        if a.startswith("duration="):
            duration = float(a.split("=", 1)[1])
        else:
            port = int(a)
    srv = start_server(port)
    print(
        f"stub EIR {srv.identity} (realm {srv.realm}) listening on 127.0.0.1:{srv.port}; "
        f"accepts peers *.test.local; stops after {duration:.0f} s or Ctrl-C",
        flush=True,
    )
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end and srv.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    st = srv.stop()
    print(f"answered={st.answered} es={st.es} parse_errors={st.parse_errors} events={st.events}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    reason = unavailable_reason()
    if reason:
        print(reason)
        return 2
    if len(args) >= 2 and args[0] == "client":
        return _cli_client(args[1:])
    if args and args[0] == "server":
        return _cli_server(args[1:])
    print(USAGE)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
