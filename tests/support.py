"""Shared builders for the peer, S13 and integration tests.

Imported as ``support`` after the test module puts ``tests/`` on sys.path
(there are no ``__init__.py`` files: pytest runs in rootdir mode).
Everything here builds requests the way an MME would, from the codec's
``Avp``/``Message`` only, so that the code under test is not used to check
itself: the server side (``eir.diameter.peer``, ``eir.s13``) is never
called from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Framer, Message, decode_message
from eir.diameter.constants import Application, AvpCode, CmdFlag, Command, Vendor
from eir.diameter.dictionary import ERROR_ANSWER, default_dictionary

DICT = default_dictionary()
EIR = m.Identity("eir.localdomain", "localdomain")
MME = m.Identity("mme.test", "test")
S13 = int(Application.S13)
TGPP = int(Vendor.TGPP)
RELAY = int(Application.RELAY)


# -- decisions --


@dataclass(frozen=True)
class Decision:
    status: int | None
    reason: str


@dataclass
class StubDecide:
    """decide(imei, imsi, sv, operator) from a table of IMEI prefixes; records every call.

    ``calls`` holds (imei, imsi, sv); ``operators`` the Origin-Realm of each call.
    """

    table: dict[str, int | None] = field(
        default_factory=lambda: {"35": 0, "86": 1, "99": 2, "00": None})
    calls: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)

    def __call__(self, imei: str, imsi: str | None, sv: str | None, operator: str) -> Decision:
        self.calls.append((imei, imsi, sv))
        self.operators.append(operator)
        status = self.table.get(imei[:2], 0)
        return Decision(status, f"stub:{status}")


# -- AVP and message builders --


def ident_avp(code: int, value: str | bytes, flags: int = 0x40) -> Avp:
    data = value.encode("ascii") if isinstance(value, str) else value
    return Avp(code, data, 0, flags)


def origin(host: str = "mme.test", realm: str = "test") -> list[Avp]:
    return [ident_avp(AvpCode.ORIGIN_HOST, host), ident_avp(AvpCode.ORIGIN_REALM, realm)]


def vsai(app: int, vendor: int = TGPP, acct: bool = False) -> Avp:
    code = AvpCode.ACCT_APPLICATION_ID if acct else AvpCode.AUTH_APPLICATION_ID
    return Avp.grouped(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID,
                       [Avp.u32(AvpCode.VENDOR_ID, vendor), Avp.u32(code, app)])


def cer(host: str = "mme.test", realm: str = "test", *, apps: Iterable[Avp] | None = None,
        hbh: int = 0x1001, e2e: int = 0x2001, flags: int = 0x80,
        extra: Iterable[Avp] = ()) -> Message:
    """A CER as an MME sends it; ``apps`` replaces the S13 VSAI."""
    app_avps = [Avp.u32(AvpCode.SUPPORTED_VENDOR_ID, TGPP), vsai(S13)] if apps is None \
        else list(apps)
    avps = [*origin(host, realm), Avp.address(AvpCode.HOST_IP_ADDRESS, "127.0.0.1"),
            Avp.u32(AvpCode.VENDOR_ID, 0), Avp.utf8(AvpCode.PRODUCT_NAME, "mme", mandatory=False),
            *app_avps, *extra]
    return Message(Command.CAPABILITIES_EXCHANGE, 0, flags, hbh, e2e, avps)


def dwr(hbh: int = 0x3001, e2e: int = 0x4001, host: str = "mme.test", realm: str = "test",
        flags: int = 0x80, avps: list[Avp] | None = None, app: int = 0) -> Message:
    return Message(Command.DEVICE_WATCHDOG, app, flags, hbh, e2e,
                   origin(host, realm) if avps is None else avps)


def dpr(hbh: int = 0x5001, e2e: int = 0x6001, cause: int = 0) -> Message:
    return Message(Command.DISCONNECT_PEER, 0, 0x80, hbh, e2e,
                   [*origin(), Avp.u32(AvpCode.DISCONNECT_CAUSE, cause)])


def terminal_information(imei: str | None = "35209900176148", sv: str | None = "01",
                         flags: int = 0xC0, imei_flags: int = 0xC0) -> Avp:
    children = []
    if imei is not None:
        children.append(Avp(AvpCode.IMEI, imei.encode(), TGPP, imei_flags))
    if sv is not None:
        children.append(Avp(AvpCode.SOFTWARE_VERSION, sv.encode(), TGPP, 0xC0))
    return Avp(AvpCode.TERMINAL_INFORMATION, b"".join(a.encode() for a in children), TGPP, flags)


def ecr_avps(imei: str | None = "35209900176148", *, sv: str | None = "01",
             imsi: str | None = "401011234567890", session_id: str = "mme.test;1;2",
             dest_host: str | None = None, dest_realm: str | None = "localdomain",
             route_records: Iterable[str] = (), proxy_infos: Iterable[Avp] = ()) -> list[Avp]:
    avps = [Avp.utf8(AvpCode.SESSION_ID, session_id),
            Avp.u32(AvpCode.AUTH_SESSION_STATE, 1), *origin()]
    if dest_host is not None:
        avps.append(ident_avp(AvpCode.DESTINATION_HOST, dest_host))
    if dest_realm is not None:
        avps.append(ident_avp(AvpCode.DESTINATION_REALM, dest_realm))
    avps.append(terminal_information(imei, sv))
    if imsi is not None:
        avps.append(Avp.utf8(AvpCode.USER_NAME, imsi))
    avps += list(proxy_infos)
    avps += [ident_avp(AvpCode.ROUTE_RECORD, r) for r in route_records]
    return avps


def ecr(imei: str | None = "35209900176148", *, hbh: int = 0x7001, e2e: int = 0x8001,
        flags: int = 0xC0, code: int = Command.ME_IDENTITY_CHECK, app: int = S13,
        avps: list[Avp] | None = None, **kw: object) -> Message:
    return Message(code, app, flags, hbh, e2e,
                   ecr_avps(imei, **kw) if avps is None else avps)  # type: ignore[arg-type]


def proxy_info(host: str, state: bytes) -> Avp:
    return Avp.grouped(AvpCode.PROXY_INFO, [ident_avp(AvpCode.PROXY_HOST, host),
                                            Avp.octets(AvpCode.PROXY_STATE, state)])


def with_length(frame: bytes, length: int) -> bytes:
    """``frame`` with its header Message Length field set to ``length``."""
    return frame[:1] + length.to_bytes(3, "big") + frame[4:]


def fix_length(frame: bytes) -> bytes:
    return with_length(frame, len(frame))


def with_version(frame: bytes, version: int) -> bytes:
    return bytes([version]) + frame[1:]


# -- reading answers --


def decode_all(data: bytes) -> list[Message]:
    """Every message in ``data``, which must frame and decode exactly."""
    framer = Framer()
    frames = framer.feed(data)
    assert framer.pending == 0, f"{framer.pending} trailing bytes"
    out = []
    for f in frames:
        msg = decode_message(f)
        assert isinstance(msg, Message), msg
        out.append(msg)
    return out


def decode_one(data: bytes) -> Message:
    msgs = decode_all(data)
    assert len(msgs) == 1, msgs
    return msgs[0]


def u32(msg: Message, code: int, vendor: int = 0) -> int | None:
    avp = msg.find(code, vendor)
    return None if avp is None else avp.as_u32()


def result_code(msg: Message) -> int | None:
    return u32(msg, AvpCode.RESULT_CODE)


def failed_avps(msg: Message) -> list[Avp]:
    """The AVPs inside the answer's Failed-AVP (exactly one Failed-AVP, or none)."""
    fa = msg.find_all(AvpCode.FAILED_AVP)
    assert len(fa) <= 1
    return fa[0].children() if fa else []


def codes(msg: Message) -> list[int]:
    return [a.code for a in msg.avps]


def is_error(msg: Message) -> bool:
    return bool(msg.flags & CmdFlag.ERROR)


def dwa_for(req: Message, host: str = "mme.test", realm: str = "test") -> Message:
    return Message(req.code, 0, 0x00, req.hbh, req.e2e,
                   [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin(host, realm)])


# -- a raw asyncio Diameter client (no eir.diameter.peer involved) --


class RawClient:
    """A bare TCP client: write bytes, read whole messages with timeouts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer(1 << 24)
        self.queue: list[Message] = []
        self.server_dwrs: list[Message] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        return cls(reader, writer)

    @classmethod
    async def open(cls, port: int, host: str = "mme.test", hbh: int = 0x1001) -> RawClient:
        """Connect and exchange CER/CEA; the CEA must be a 2001."""
        client = await cls.connect(port)
        client.send(cer(host, hbh=hbh).encode())
        cea = await client.read()
        assert cea.code == Command.CAPABILITIES_EXCHANGE and result_code(cea) == 2001, cea
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, timeout: float = 5.0, answer_dwr: bool = True) -> Message:
        """The next message; raises EOFError if the server closed the connection.

        The server's own DWRs (it sends one right after the CEA to a peer that
        comes back after a failure, RFC 3539 REOPEN) are answered and skipped
        unless ``answer_dwr`` is false; they are kept in ``server_dwrs``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while not self.queue:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError("no message from the server")
                data = await asyncio.wait_for(self.reader.read(65536), left)
                if not data:
                    raise EOFError("server closed the connection")
                for f in self.framer.feed(data):
                    msg = decode_message(f)
                    assert isinstance(msg, Message), msg
                    self.queue.append(msg)
            msg = self.queue.pop(0)
            if answer_dwr and msg.is_request and msg.code == Command.DEVICE_WATCHDOG:
                self.server_dwrs.append(msg)
                self.send(dwa_for(msg).encode())
                continue
            return msg

    async def reset_by_server(self, timeout: float = 3.0) -> bool:
        """True once the server has reset the connection (not a plain EOF)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
            if not data:
                return False
        return False

    async def closed_by_server(self, timeout: float = 3.0) -> bool:
        """True once the server has closed (EOF or reset); any data before it is discarded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
            if not data:
                return True

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)



def assert_answers(ans: Message, req: Message, ident: m.Identity = EIR) -> None:
    """The rules every answer follows (PROTOCOL.md 1.9.1, 1.9.2, 1.8)."""
    assert not ans.flags & CmdFlag.REQUEST
    assert not ans.flags & CmdFlag.RETRANSMIT
    assert ans.flags & 0x0F == 0
    assert (ans.code, ans.app_id, ans.hbh, ans.e2e) == (req.code, req.app_id, req.hbh, req.e2e)
    assert ans.flags & CmdFlag.PROXIABLE == req.flags & CmdFlag.PROXIABLE
    assert ans.find(AvpCode.ORIGIN_HOST).data == ident.origin_host.encode()
    assert ans.find(AvpCode.ORIGIN_REALM).data == ident.origin_realm.encode()
    assert ans.find(AvpCode.DESTINATION_HOST) is None
    assert ans.find(AvpCode.DESTINATION_REALM) is None
    rc = result_code(ans)
    if rc is not None:
        assert bool(ans.flags & CmdFlag.ERROR) == (3000 <= rc < 4000) or \
            (ans.flags & CmdFlag.ERROR and rc >= 5000), (rc, ans.flags)
    sid = [a for a in req.avps if a.code == AvpCode.SESSION_ID]
    if sid:
        assert ans.avps[0].code == AvpCode.SESSION_ID and ans.avps[0].data == sid[0].data
    assert [a for a in ans.avps if a.code == AvpCode.PROXY_INFO] == \
        [a for a in req.avps if a.code == AvpCode.PROXY_INFO]
    if ans.flags & CmdFlag.ERROR:
        assert DICT.check_avps(ans.avps, ERROR_ANSWER) is None
    elif DICT.command(ans.code, ans.app_id) is not None:
        assert DICT.check_message(ans) is None, DICT.check_message(ans)


def damage_btree_page(db: Path, table: str) -> None:
    """Overwrite the header of ``table``'s root B-tree page with garbage (after a checkpoint)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
                            ).fetchone()[0]
    with db.open("r+b") as f:
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)


async def import_text(db: Path, text: str) -> None:
    """Import a list CSV given as text into the registry file ``db``."""
    from eir.policy.csvio import import_csv
    from eir.policy.sqlite import SqliteRegistry

    async with SqliteRegistry(db) as reg:
        await import_csv(reg, io.BytesIO(text.encode()))


async def curl(*args: str) -> tuple[int, str]:
    """Run curl (an independent HTTP/1.1 and HTTP/2 client): (exit code, body or error)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out or err).decode()
