"""The RFC 6733 peer state machine for one transport connection, without I/O.

Owns RFC 6733 section 5.6 (peer state machine: responder and initiator
sides, no election since the EIR never dials out and the simulator never
listens), 5.3 (capabilities exchange and the common-application rule),
5.4 (DPR/DPA), 5.5 (DWR/DWA, with the RFC 3539 watchdog of ``watchdog``)
and 6.2 (answers never answered; unknown Hop-by-Hop ids dropped).

Like h11, a ``PeerConnection`` never touches a socket: bytes go in through
``feed``, bytes to write come out of ``data_to_send``, and everything else
the transport must act on comes back as events. Time is passed in; the
transport calls ``on_timer`` at ``deadline``.

For metrics, a connection counts the messages it has framed (``received``:
one addition per read) and, in a `MessageStats` its node shares, the
requests that take the general path (every base-protocol request; the
application's requests go to its handler, which counts its own) and the
Result-Code of each answer it sends them.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase

from . import messages as m
from .codec import DecodeError, Framer, FramingError, Message, decode_message
from .constants import (
    Application,
    AvpCode,
    CmdFlag,
    Command,
    DisconnectCause,
    ResultCode,
)
from .dictionary import Dictionary, Problem
from .watchdog import Watchdog, WatchdogAction

# An application handler gets one framed request and the connection's peer, the
# Origin-Host of its CER (or CEA) in lower case (RFC 6733 5.3: the CER identifies the
# peer), and returns the answer bytes (or None when nothing is to be sent). It
# produces its own error answers.
AppHandler = Callable[[bytes, bytes], bytes | None]


class Role(Enum):
    RESPONDER = "responder"
    INITIATOR = "initiator"


class State(Enum):
    WAIT_CER = "Wait-CER"  # responder: connection accepted, no CER yet (5.6.1)
    WAIT_CEA = "Wait-I-CEA"  # initiator: CER sent
    OPEN = "Open"
    CLOSING = "Closing"
    CLOSED = "Closed"


_SERVING = (State.OPEN, State.CLOSING)


@dataclass(frozen=True, slots=True)
class PeerOpened:
    origin_host: str
    origin_realm: str
    applications: frozenset[int]
    reconnected: bool


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The transport must close; ``abort`` asks for a TCP RST (RFC 6733 2.1)."""

    reason: str
    abort: bool = False
    clean: bool = False  # ended by a DPR/DPA exchange


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    hbh: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class DisconnectRequested:
    """The peer sent a DPR (RFC 6733 5.4.3 says whether it will come back)."""

    cause: int


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a log line that needs no action."""

    text: str


@dataclass(frozen=True, slots=True)
class PeerDenied:
    """A CER from a host or address the allow-list does not admit (answered 3010)."""

    origin_host: str
    source_ip: str


Event = (PeerOpened | CloseConnection | AnswerReceived | DisconnectRequested | Notice
         | PeerDenied)


@dataclass(frozen=True, slots=True)
class Admission:
    """Which peers may connect: Origin-Host patterns and source networks.

    By default any Origin-Host is accepted from a loopback address only.
    """

    host_patterns: tuple[str, ...] = ("*",)
    networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    def allows(self, origin_host: str, source_ip: str) -> bool:
        if not any(fnmatchcase(origin_host.lower(), p.lower()) for p in self.host_patterns):
            return False
        try:
            ip = ipaddress.ip_address(source_ip.split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.networks)


MAX_REMEMBERED_FAILURES = 10_000


@dataclass
class MessageStats:
    """Requests answered by the peer machine itself (not by an application handler).

    Commands are counted by ``counted_command``: the codes of this node's commands, and
    ``OTHER_COMMAND`` for any other, so that a peer sending made-up command codes (2^24
    of them) cannot grow the counters without bound.
    """

    requests: Counter[int] = field(default_factory=Counter)  # command -> requests
    answers: Counter[tuple[int, int]] = field(default_factory=Counter)  # (command, result)


OTHER_COMMAND = -1  # never a wire value (command codes are 24-bit unsigned)
COUNTED_COMMANDS = frozenset(int(c) for c in Command)


def counted_command(code: int) -> int:
    """``code`` if it is one of this node's commands, else ``OTHER_COMMAND``."""
    return code if code in COUNTED_COMMANDS else OTHER_COMMAND


@dataclass
class PeerTable:
    """The peers known to a node across connections; a peer is its Origin-Host (5.6)."""

    connected: dict[str, object] = field(default_factory=dict)
    # peers whose last connection ended without a DPR: they come back through REOPEN
    failed: set[str] = field(default_factory=set)

    def claim(self, host: str, conn: object) -> bool:
        key = host.lower()
        if key in self.connected and self.connected[key] is not conn:
            return False
        self.connected[key] = conn
        return True

    def release(self, host: str, conn: object, clean: bool) -> None:
        key = host.lower()
        if self.connected.get(key) is conn:
            del self.connected[key]
            if clean:
                self.failed.discard(key)
            else:
                self.failed.add(key)
                if len(self.failed) > MAX_REMEMBERED_FAILURES:
                    # bounded memory: forgetting one only skips that peer's REOPEN
                    self.failed.pop()


@dataclass(frozen=True, slots=True)
class Timers:
    cer: float = 10.0  # responder: close if no CER comes
    cea: float = 10.0  # initiator: close if no CEA comes
    dpa: float = 5.0  # Closing: close if no DPA / disconnect comes
    tw: float = 30.0  # RFC 3539 Tw
    # a message begun must be whole within this: a peer trickling bytes holds a
    # connection (and its buffer) open forever otherwise; a busy peer whose reads end
    # mid-message restarts it with every message it completes
    message: float = 10.0


class PeerConnection:
    """One transport connection and the peer behind it."""

    def __init__(self, role: Role, ident: m.Identity, apps: m.Applications,
                 dictionary: Dictionary, now: float, *,
                 handlers: dict[int, AppHandler] | None = None,
                 admission: Admission | None = None, peers: PeerTable | None = None,
                 source_ip: str = "127.0.0.1", timers: Timers = Timers(),
                 rand: Callable[[], float] = random.random, max_message: int = 1 << 20,
                 wall_time: float | None = None, stats: MessageStats | None = None) -> None:
        self.role = role
        self.ident = ident
        self.apps = apps
        self.dictionary = dictionary
        self.handlers = handlers or {}
        self.admission = admission or Admission()
        self.peers = peers if peers is not None else PeerTable()
        self.source_ip = source_ip
        self.timers = timers
        self.framer = Framer(max_message)
        self.watchdog = Watchdog(timers.tw, rand=rand)
        self.state = State.WAIT_CER if role is Role.RESPONDER else State.CLOSED
        self.peer_host: str | None = None
        self.peer_realm: str | None = None
        self._peer_id = b""  # peer_host as the handlers get it
        self.common: frozenset[int] = frozenset()
        self._app_ids: frozenset[int] = frozenset()
        self._out: list[bytes] = []
        self._state_deadline: float | None = now + timers.cer if role is Role.RESPONDER else None
        self._partial_since: float | None = None  # when the unfinished message began
        self._pending: dict[int, str] = {}  # hbh -> what we asked (CER, DWR, DPR, app)
        self._hbh = rand_u32(rand)
        # RFC 6733 3: the high 12 bits of the first End-to-End id are the low 12 bits of
        # the time of day (``wall_time``, Unix seconds), the low 20 random; then +1 each
        start = int(now if wall_time is None else wall_time)
        self._e2e = ((start & 0xFFF) << 20) | (rand_u32(rand) & 0xFFFFF)
        self._dpr_sent = False
        self._stats_dropped_answers = 0
        self.stats = stats if stats is not None else MessageStats()
        self.received = 0  # messages framed on this connection

    # -- outputs --

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def deadline(self) -> float | None:
        d = self._state_deadline
        if self.state is State.OPEN:
            w = self.watchdog.deadline
            d = w if d is None else min(d, w)
        if self._partial_since is not None:
            p = self._partial_since + self.timers.message
            d = p if d is None else min(d, p)
        return d

    def next_ids(self, now: float) -> tuple[int, int]:
        """The next Hop-by-Hop and End-to-End ids (RFC 6733 3), both incrementing."""
        self._hbh = (self._hbh + 1) & 0xFFFFFFFF
        self._e2e = (self._e2e + 1) & 0xFFFFFFFF
        return self._hbh, self._e2e

    # -- initiator --

    def start(self, now: float) -> None:
        """Initiator: the connection is up; send the CER (Wait-Conn-Ack -> Wait-I-CEA)."""
        assert self.role is Role.INITIATOR
        hbh, e2e = self.next_ids(now)
        self._pending[hbh] = "CER"
        self._out.append(m.cer(self.ident, self.apps, hbh, e2e).encode())
        self.state = State.WAIT_CEA
        self._state_deadline = now + self.timers.cea

    def send_request(self, frame: bytes, hbh: int) -> None:
        """Queue an application request whose ids came from ``next_ids``."""
        self._pending[hbh] = "app"
        self._out.append(frame)

    def forget(self, hbh: int) -> None:
        """The caller gave up waiting for this answer; a late one will be dropped."""
        self._pending.pop(hbh, None)

    # -- both sides --

    def stop(self, now: float, cause: int = DisconnectCause.REBOOTING) -> list[Event]:
        """Local stop: send DPR and wait for the DPA (R-Open/I-Open -> Closing)."""
        if self.state is not State.OPEN:
            self.state = State.CLOSED
            return [CloseConnection("stopped before the peer was open")]
        hbh, e2e = self.next_ids(now)
        self._pending[hbh] = "DPR"
        self._out.append(m.dpr(self.ident, hbh, e2e, cause).encode())
        self._dpr_sent = True
        self.state = State.CLOSING
        self._state_deadline = now + self.timers.dpa
        return []

    def connection_lost(self) -> None:
        if self.peer_host is not None and self.role is Role.RESPONDER:
            self.peers.release(self.peer_host, self, clean=self._dpr_sent)
        self.watchdog.stop()
        self.state = State.CLOSED
        self._state_deadline = None
        self._partial_since = None

    def on_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        if (self._partial_since is not None and self.state is not State.CLOSED
                and now >= self._partial_since + self.timers.message):
            self.state = State.CLOSED
            self._partial_since = None
            return [CloseConnection(f"a message begun {self.timers.message:g} s ago is still "
                                    "incomplete (a peer trickling bytes)")]
        if self._state_deadline is not None and now >= self._state_deadline:
            self._state_deadline = None
            reason = {State.WAIT_CER: "no CER received in time",
                      State.WAIT_CEA: "no CEA received in time",
                      State.CLOSING: "no DPA / disconnect in time"}.get(self.state, "timer")
            self.state = State.CLOSED
            return [CloseConnection(reason, clean=self._dpr_sent)]
        if self.state is State.OPEN and now >= self.watchdog.deadline:
            action = self.watchdog.on_timer(now)
            if action is WatchdogAction.SEND_DWR:
                self._send_dwr(now)
            elif action is WatchdogAction.CLOSE:
                self.state = State.CLOSED
                events.append(CloseConnection("watchdog: no answer to DWR within 2 Tw"))
        return events

    def feed(self, data: bytes, now: float) -> list[Event]:
        """Bytes from the transport; framing loss ends the connection abortively."""
        state = self.state
        if state is State.CLOSED:
            return []  # the connection is over: what still arrives is ignored
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            self.state = State.CLOSED
            return [CloseConnection(f"framing lost: {exc}", abort=True)]
        if not frames:
            if self._partial_since is None:
                self._partial_since = now
            return []
        self.received += len(frames)
        self._partial_since = now if self.framer.pending else None
        if self.state is State.OPEN:
            self.watchdog.on_traffic(now)
        events: list[Event] = []
        handlers = self.handlers
        out = self._out
        for frame in frames:
            flags = frame[4]
            if flags & 0x80 and self.state in _SERVING:  # R bit; 0x80 avoids an IntFlag
                app = int.from_bytes(frame[8:12], "big")
                if app in self._app_ids:
                    answer = handlers[app](frame, self._peer_id)
                    if answer:
                        out.append(answer)
                    continue
            events += self._receive(frame, now)
            if self.state is State.CLOSED:
                break
        if self.framer.lost is not None and self.state is not State.CLOSED:
            self.state = State.CLOSED
            events.append(CloseConnection(f"framing lost: {self.framer.lost}", abort=True))
        return events

    # -- the general path --

    def _receive(self, frame: bytes, now: float) -> list[Event]:
        decoded = decode_message(frame)
        is_request = bool(frame[4] & CmdFlag.REQUEST)
        if is_request:
            self.stats.requests[counted_command(int.from_bytes(frame[5:8], "big"))] += 1
        if self.state is State.WAIT_CER:
            # 5.6.1: whatever the first message is, request or answer, it must be a CER
            return self._first_message(decoded, now)
        if self.state is State.WAIT_CEA and (
                is_request or int.from_bytes(frame[5:8], "big") != Command.CAPABILITIES_EXCHANGE):
            # 5.6 Wait-I-CEA + I-Rcv-Non-CEA: Error -> Closed
            self.state = State.CLOSED
            return [CloseConnection("a message other than the CEA came before it")]
        if not is_request:
            return self._answer(decoded, frame, now)
        if isinstance(decoded, DecodeError):
            self._send_error(decoded.message, m.problem_from_decode_error(decoded))
            return []
        msg = decoded
        served = {Application.COMMON} | set(self._app_ids)
        problem = self.dictionary.check_header(msg, served)
        if problem is None and msg.app_id == Application.COMMON:
            problem = self.dictionary.check_message(msg)
        if problem is not None:
            self._send_error(msg, problem)
            return []
        if msg.code == Command.DEVICE_WATCHDOG:
            self._out.append(m.dwa(msg, self.ident).encode())
            self.stats.answers[(counted_command(msg.code), ResultCode.SUCCESS)] += 1
            return []
        if msg.code == Command.DISCONNECT_PEER:
            return self._dpr(msg, now)
        if msg.code == Command.CAPABILITIES_EXCHANGE:
            self._send_error(msg, Problem(ResultCode.UNABLE_TO_COMPLY, [],
                                          "capabilities already exchanged on this connection"))
            return []
        # an application we serve but whose handler is missing: never expected
        self._send_error(msg, Problem(ResultCode.APPLICATION_UNSUPPORTED, [], "no handler"))
        return []

    def _send_error(self, msg: Message, problem: Problem) -> None:
        if not msg.is_request:
            return  # answers are never answered (RFC 6733 6.2)
        self.stats.answers[(counted_command(msg.code), problem.result_code)] += 1
        if problem.protocol_error or msg.app_id != Application.COMMON:
            ans = m.protocol_error(msg, self.ident, problem)
        elif msg.code == Command.CAPABILITIES_EXCHANGE:
            ans = m.cea(msg, self.ident, self.apps, problem.result_code, problem)
        elif msg.code == Command.DEVICE_WATCHDOG:
            ans = m.dwa(msg, self.ident, problem.result_code, problem)
        elif msg.code == Command.DISCONNECT_PEER:
            ans = m.dpa(msg, self.ident, problem.result_code, problem)
        else:
            ans = m.protocol_error(msg, self.ident, problem)
        self._out.append(ans.encode())

    def _first_message(self, decoded: Message | DecodeError, now: float) -> list[Event]:
        """Closed + R-Conn-CER (5.6): the first message must be a CER (5.6.1)."""
        msg = decoded.message if isinstance(decoded, DecodeError) else decoded
        if (not msg.is_request or msg.code != Command.CAPABILITIES_EXCHANGE
                or msg.app_id != Application.COMMON):
            self.state = State.CLOSED
            return [CloseConnection(f"first message is command {msg.code}, not a CER")]
        problem = (m.problem_from_decode_error(decoded) if isinstance(decoded, DecodeError)
                   else self.dictionary.check_message(msg))
        if problem is not None:
            return self._reject_cer(msg, problem.result_code, problem)
        host = _identity(msg, AvpCode.ORIGIN_HOST)
        realm = _identity(msg, AvpCode.ORIGIN_REALM)
        if not self.admission.allows(host, self.source_ip):
            # RFC 6733 5.3: an unknown peer gets CEA 3010, then the connection closes
            return [PeerDenied(host, self.source_ip), *self._reject_cer(
                msg, ResultCode.UNKNOWN_PEER, Problem(
                    ResultCode.UNKNOWN_PEER, [], f"peer {host} from {self.source_ip} not allowed"))]
        common = m.common_applications(self.apps.ids(), m.advertised_applications(msg))
        if not common:
            return self._reject_cer(msg, ResultCode.NO_COMMON_APPLICATION, Problem(
                ResultCode.NO_COMMON_APPLICATION, [], "no common application"))
        if not self.peers.claim(host, self):
            # R-Open + R-Conn-CER: R-Reject, the new connection is closed (5.6)
            self.state = State.CLOSED
            return [CloseConnection(f"peer {host} is already connected")]
        reconnected = host.lower() in self.peers.failed
        self.peer_host, self.peer_realm = host, realm
        self._peer_id = host.lower().encode("ascii", "replace")
        self._out.append(m.cea(msg, self.ident, self.apps, ResultCode.SUCCESS).encode())
        self.stats.answers[(counted_command(msg.code), ResultCode.SUCCESS)] += 1
        self._set_open(frozenset(common), now, reconnected)
        return [PeerOpened(host, realm, self.common, reconnected)]

    def _reject_cer(self, msg: Message, code: int, problem: Problem) -> list[Event]:
        self._out.append(m.cea(msg, self.ident, self.apps, code, problem).encode())
        self.stats.answers[(counted_command(msg.code), code)] += 1
        self.state = State.CLOSED
        return [CloseConnection(f"CER rejected with {code}: {problem.reason}")]

    def _set_open(self, common: frozenset[int], now: float, reconnected: bool) -> None:
        self.common = common
        self._app_ids = frozenset(a for a in common if a in self.handlers)
        self.state = State.OPEN
        self._state_deadline = None
        if self.watchdog.start(now, reconnected=reconnected) is WatchdogAction.SEND_DWR:
            self._send_dwr(now)

    def _send_dwr(self, now: float) -> None:
        hbh, e2e = self.next_ids(now)
        self._pending[hbh] = "DWR"
        self._out.append(m.dwr(self.ident, hbh, e2e).encode())

    def _dpr(self, msg: Message, now: float) -> list[Event]:
        """R-Open + Rcv-DPR: send DPA; the DPR's sender closes once it has it (5.4)."""
        self._out.append(m.dpa(msg, self.ident).encode())
        self.stats.answers[(counted_command(msg.code), ResultCode.SUCCESS)] += 1
        cause_avp = msg.find(AvpCode.DISCONNECT_CAUSE)
        cause = cause_avp.as_u32() if cause_avp is not None else DisconnectCause.REBOOTING
        self._dpr_sent = True  # a clean goodbye: no REOPEN on its return
        self.state = State.CLOSING
        self._state_deadline = now + self.timers.dpa
        return [DisconnectRequested(cause)]

    def _answer(self, decoded: Message | DecodeError, frame: bytes, now: float) -> list[Event]:
        hdr = decoded.message if isinstance(decoded, DecodeError) else decoded
        what = self._pending.pop(hdr.hbh, None)
        if what is None:
            self._stats_dropped_answers += 1
            return [Notice(f"answer with unknown Hop-by-Hop id {hdr.hbh:#x} dropped")]
        if what == "app":
            return [AnswerReceived(hdr.hbh, frame)]
        if isinstance(decoded, DecodeError):
            if what == "CER":
                self.state = State.CLOSED
                return [CloseConnection(f"CEA undecodable: {decoded.reason}")]
            return [Notice(f"{what} answer undecodable: {decoded.reason}")]
        msg = decoded
        code = m.result_code_of(msg)
        if what == "CER":
            return self._cea(msg, code, now)
        if what == "DWR":
            if code == ResultCode.SUCCESS:
                self.watchdog.on_dwa(now)
            return []
        if what == "DPR":
            self.state = State.CLOSED
            return [CloseConnection("DPA received", clean=True)]
        return []

    def _cea(self, msg: Message, code: int | None, now: float) -> list[Event]:
        """Wait-I-CEA + I-Rcv-CEA (5.6): open on success, close otherwise."""
        if self.state is not State.WAIT_CEA:
            return [Notice("unexpected CEA dropped")]
        problem = self.dictionary.check_message(msg)
        if code != ResultCode.SUCCESS or problem is not None:
            self.state = State.CLOSED
            why = problem.reason if problem else f"Result-Code {code}"
            return [CloseConnection(f"CER refused by the peer: {why}")]
        common = m.common_applications(self.apps.ids(), m.advertised_applications(msg))
        if not common:
            self.state = State.CLOSED
            return [CloseConnection("no common application in the CEA")]
        self.peer_host = _identity(msg, AvpCode.ORIGIN_HOST)
        self.peer_realm = _identity(msg, AvpCode.ORIGIN_REALM)
        self._peer_id = (self.peer_host or "").lower().encode("ascii", "replace")
        self._set_open(frozenset(common), now, False)
        return [PeerOpened(self.peer_host, self.peer_realm, self.common, False)]

    @property
    def dropped_answers(self) -> int:
        return self._stats_dropped_answers

    @property
    def pending(self) -> Iterable[int]:
        return self._pending.keys()


def _identity(msg: Message, code: int) -> str:
    avp = msg.find(code)
    return avp.data.decode("ascii", "replace") if avp is not None else ""


def rand_u32(rand: Callable[[], float]) -> int:
    return int(rand() * 0x100000000) & 0xFFFFFFFF
