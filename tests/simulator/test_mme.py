"""simulator.mme: the MME-side client pool, over real loopback sockets.

Two kinds of peer: ``FakeEir``, a small answering server written here
(framing with ``eir.diameter.codec``, answers chosen per test: busy,
silent, slow, overloaded, dropping connections), which records everything
it receives so each test can check the wire; and the real EIR, started as
a process with a small registry imported (``testbed.eirproc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Framer, Message, decode_message
from eir.diameter.constants import (
    Application,
    AvpCode,
    CmdFlag,
    Command,
    DisconnectCause,
    Vendor,
)
from eir.diameter.dictionary import default_dictionary
from simulator.mme import (
    NO_PEER,
    SENT,
    THROTTLED,
    MmeIdentity,
    MmePool,
    PoolConfig,
    Target,
    classify,
    ecr_message,
    encode_tail,
    parse_target,
)
from testbed.eirproc import EirProcess, free_port, run_cli

TGPP = int(Vendor.TGPP)
S13 = int(Application.S13)
REALM1 = "epc.mnc001.mcc401.3gppnetwork.org"
REALM2 = "epc.mnc002.mcc401.3gppnetwork.org"
DICT = default_dictionary()


# -- a minimal answering server ---------------------------------------------------------


@dataclass
class Seen:
    conn: int  # which accepted connection (0, 1, ...)
    msg: Message


@dataclass
class FakeEir:
    """An S13 peer whose ECR behaviour the test sets; it records every message."""

    origin_host: str = "eir1.test"
    mode: str = "answer"  # answer | busy | silent | drop | slow
    drop_after: int = 0  # "drop": abort the connection after this many ECRs
    drop_connections: int = 1  # "drop": only the first N connections drop
    delay: float = 0.0  # "slow": answer after this long
    olr: tuple[int, int, int] | None = None  # (seq, reduction %, validity s) in every ECA
    status: Callable[[str], int | None] = lambda imei: 0  # Equipment-Status; None: 5422
    seen: list[Seen] = field(default_factory=list)
    conns: int = 0
    dwr_to_send: bool = False  # send a DWR right after the CEA
    dpr_cause: int | None = None  # send a DPR with this cause after the CEA
    # a graceful stop on the first connection (a worker of a rolling restart): DPR
    # (REBOOTING) after answering this many ECRs, answer on until the DPA, then close
    dpr_after: int = 0
    server: asyncio.Server | None = None
    port: int = 0

    @property
    def ident(self) -> m.Identity:
        return m.Identity(self.origin_host, "test", ("127.0.0.1",))

    def ecrs(self, conn: int | None = None) -> list[Message]:
        return [s.msg for s in self.seen if s.msg.code == Command.ME_IDENTITY_CHECK
                and s.msg.is_request and (conn is None or s.conn == conn)]

    def of(self, code: int, request: bool = True) -> list[Message]:
        return [s.msg for s in self.seen if s.msg.code == code and s.msg.is_request == request]

    async def start(self) -> FakeEir:
        """Listen (again, after ``close``: on the same port)."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def target(self) -> Target:
        return Target("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def answer(self, req: Message) -> Message:
        imei = ""
        ti = req.find(AvpCode.TERMINAL_INFORMATION, TGPP)
        if ti is not None:
            i = ti.find(AvpCode.IMEI, TGPP)
            imei = i.as_str() if i is not None else ""
        if self.mode == "busy":
            return m.protocol_error(req, self.ident, _problem(3004))
        status = self.status(imei)
        if status is None:
            result = [Avp.grouped(AvpCode.EXPERIMENTAL_RESULT,
                                  [Avp.u32(AvpCode.VENDOR_ID, TGPP),
                                   Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE, 5422)])]
            after: list[Avp] = []
        else:
            result = [Avp.u32(AvpCode.RESULT_CODE, 2001)]
            after = [Avp.u32(AvpCode.EQUIPMENT_STATUS, status, TGPP)]
        if self.olr is not None and req.find(AvpCode.OC_SUPPORTED_FEATURES) is not None:
            seq, pct, validity = self.olr
            after.append(Avp.grouped(AvpCode.OC_OLR, [
                Avp.u64(AvpCode.OC_SEQUENCE_NUMBER, seq, mandatory=False),
                Avp.u32(AvpCode.OC_REPORT_TYPE, 0, mandatory=False),
                Avp.u32(AvpCode.OC_REDUCTION_PERCENTAGE, pct, mandatory=False),
                Avp.u32(AvpCode.OC_VALIDITY_DURATION, validity, mandatory=False)],
                mandatory=False))
        return m.session_answer(req, self.ident, result=result,
                                before_origin=[Avp.u32(AvpCode.AUTH_SESSION_STATE, 1)],
                                after_origin=after)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.conns
        self.conns += 1
        framer = Framer()
        got = 0
        dpr_sent = False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for frame in framer.feed(data):
                    msg = decode_message(frame)
                    assert isinstance(msg, Message)
                    self.seen.append(Seen(conn, msg))
                    if not msg.is_request:
                        if dpr_sent and msg.code == Command.DISCONNECT_PEER:
                            # the DPA: everything the peer sent before it was answered
                            await writer.drain()
                            writer.close()
                            return
                        continue
                    if msg.code == Command.CAPABILITIES_EXCHANGE:
                        writer.write(m.cea(msg, self.ident, m.S13_APPLICATIONS, 2001).encode())
                        if self.dwr_to_send:
                            writer.write(m.dwr(self.ident, 0x777, 0x888).encode())
                        if self.dpr_cause is not None:
                            writer.write(m.dpr(self.ident, 0x999, 0xAAA,
                                               self.dpr_cause).encode())
                    elif msg.code == Command.DEVICE_WATCHDOG:
                        writer.write(m.dwa(msg, self.ident).encode())
                    elif msg.code == Command.DISCONNECT_PEER:
                        writer.write(m.dpa(msg, self.ident).encode())
                        await writer.drain()
                        writer.close()
                        return
                    elif msg.code == Command.ME_IDENTITY_CHECK:
                        got += 1
                        if conn == 0 and got == self.dpr_after:
                            writer.write(self.answer(msg).encode())
                            writer.write(m.dpr(self.ident, 0x999, 0xAAA,
                                               DisconnectCause.REBOOTING).encode())
                            dpr_sent = True
                            continue
                        if self.mode == "silent":
                            continue
                        if self.mode == "drop" and conn < self.drop_connections:
                            if got >= self.drop_after:
                                writer.transport.abort()
                                return
                            continue
                        if self.mode == "slow":
                            asyncio.get_running_loop().call_later(
                                self.delay, _write_if_open, writer, self.answer(msg).encode())
                            continue
                        writer.write(self.answer(msg).encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def _write_if_open(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


def _problem(code: int) -> object:
    from eir.diameter.dictionary import Problem

    return Problem(code, [], "test")


# -- helpers --------------------------------------------------------------------------


class Outcomes:
    """The pool's handler: every outcome by token."""

    def __init__(self) -> None:
        self.keys: dict[int, list[str]] = {}
        self.count = 0
        self.event = asyncio.Event()
        self.want = 0

    def __call__(self, token: int, key: str, t_sent: int, now: int) -> None:
        self.keys.setdefault(token, []).append(key)
        self.count += 1
        if self.count >= self.want:
            self.event.set()

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        self.want = n
        if self.count < n:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), timeout)

    def flat(self) -> list[str]:
        return [k for ks in self.keys.values() for k in ks]


def config(targets: list[Target], **kw: object) -> PoolConfig:
    kw.setdefault("mmes", [MmeIdentity("mme1." + REALM1, REALM1)])
    kw.setdefault("timeout", 3.0)
    kw.setdefault("reconnect_min", 0.05)
    kw.setdefault("reconnect_max", 0.2)
    kw.setdefault("connect_timeout", 2.0)
    return PoolConfig(targets=targets, destination_realm="test", **kw)  # type: ignore[arg-type]


def tail(i: int, imsi: bool = True) -> bytes:
    return encode_tail(f"3520990017{i:04d}", "01", f"40101{i:010d}" if imsi else None)


async def submit(pool: MmePool, out: Outcomes, tokens: range, group: int = 0) -> list[int]:
    from simulator.mme import now_us

    return [pool.submit(t, group, tail(t), now_us()) for t in tokens]


@contextlib.asynccontextmanager
async def running(cfg: PoolConfig, out: Outcomes):  # type: ignore[no-untyped-def]
    pool = MmePool(cfg, out)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


# -- encoding and classification, no sockets --------------------------------------------


@pytest.mark.parametrize("vsai,doic", [(False, False), (True, False), (False, True)])
def test_glued_ecr_is_the_codec_ecr_and_follows_the_s13_grammar(vsai: bool, doic: bool) -> None:
    from simulator.mme import _Template

    ident = MmeIdentity("mme7." + REALM2, REALM2)
    cfg = config([Target("127.0.0.1", 1)], mmes=[ident], vsai_in_requests=vsai, doic=doic)
    tpl = _Template(ident, cfg, 1234567890)
    for imei, sv, imsi in [("35209900176148", "01", "401021234567890"),
                           ("490154203237518", None, None), ("12ab", "9", "1"),
                           ("86768803654321", "", "401771")]:
        for retransmit in (False, True):
            glued = tpl.build(encode_tail(imei, sv, imsi), 0xDEADBEEF, 0x00C0FFEE, retransmit)
            ref = ecr_message(ident, "test", f"mme7.{REALM2};1234567890;00c0ffee", imei, sv,
                              imsi, 0xDEADBEEF, 0x00C0FFEE, vsai=vsai, doic=doic,
                              retransmit=retransmit)
            assert glued == ref.encode()
            msg = decode_message(glued)
            assert isinstance(msg, Message)
            assert DICT.check_message(msg) is None, DICT.check_message(msg)
            assert msg.flags == 0xC0 | (0x10 if retransmit else 0)
            assert (msg.code, msg.app_id) == (324, S13)
            assert [a.code for a in msg.avps][:1] == [AvpCode.SESSION_ID]
            assert (msg.find(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID) is not None) == vsai
            assert (msg.find(AvpCode.OC_SUPPORTED_FEATURES) is not None) == doic
            assert msg.find(AvpCode.AUTH_SESSION_STATE).as_u32() == 1  # NO_STATE_MAINTAINED
            user = msg.find(AvpCode.USER_NAME)
            assert (user.as_str() if user else None) == (imsi or None)


def _eca_body(*avps: Avp) -> bytes:
    return b"".join(a.encode() for a in avps)


def test_classify_gives_the_contract_outcome_keys() -> None:
    es = lambda v: Avp.u32(AvpCode.EQUIPMENT_STATUS, v, TGPP)  # noqa: E731
    ok = Avp.u32(AvpCode.RESULT_CODE, 2001)
    exp = Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [Avp.u32(AvpCode.VENDOR_ID, TGPP),
                                                    Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE,
                                                            5422)])
    origin = Avp.octets(AvpCode.ORIGIN_HOST, b"eir")
    assert classify(_eca_body(ok, origin, es(0)))[0] == "WHITELISTED"
    assert classify(_eca_body(ok, origin, es(1)))[0] == "BLACKLISTED"
    assert classify(_eca_body(ok, origin, es(2)))[0] == "GREYLISTED"
    assert classify(_eca_body(ok, origin, es(7)))[0] == "2001"  # no valid status
    assert classify(_eca_body(ok, origin))[0] == "2001"
    assert classify(_eca_body(exp, origin))[0] == "5422"
    assert classify(_eca_body(Avp.u32(AvpCode.RESULT_CODE, 5004), origin))[0] == "5004"
    assert classify(_eca_body(origin))[0] == "no-result"
    # an Equipment-Status without the 3GPP vendor is not the S13 AVP
    assert classify(_eca_body(ok, Avp.u32(AvpCode.EQUIPMENT_STATUS, 1)))[0] == "2001"
    key, _olr, parsed = classify(_eca_body(ok, es(0))[:-3])
    assert (key, parsed) == ("undecodable", False)
    olr_avp = Avp.grouped(AvpCode.OC_OLR, [Avp.u64(AvpCode.OC_SEQUENCE_NUMBER, 9),
                                           Avp.u32(AvpCode.OC_REPORT_TYPE, 1),
                                           Avp.u32(AvpCode.OC_REDUCTION_PERCENTAGE, 40)])
    assert classify(_eca_body(ok, es(2), olr_avp))[:2] == ("GREYLISTED", (9, 1, 40, None))


def test_tail_and_targets() -> None:
    assert parse_target("127.0.0.1:3868") == Target("127.0.0.1", 3868)
    assert parse_target("[::1]:3868") == Target("::1", 3868)
    assert str(Target("::1", 3868)) == "[::1]:3868"
    for bad in ("3868", "host:", "host:0", "host:x", ":80"):
        with pytest.raises(ValueError):
            parse_target(bad)
    cfg = PoolConfig.for_realms([Target("h", 1)], [REALM1, REALM2, REALM1], per_realm=2,
                                destination_realm="eir")
    assert [i.origin_host for i in cfg.mmes] == [
        f"mme1.{REALM1}", f"mme2.{REALM1}", f"mme1.{REALM2}", f"mme2.{REALM2}"]
    with pytest.raises(ValueError):
        PoolConfig([Target("h", 1)], [MmeIdentity("a", "r"), MmeIdentity("A", "r")], "x")


# -- against the fake server ----------------------------------------------------------


async def test_each_mme_is_its_own_peer_with_cer_ecr_dwa_and_dpr() -> None:
    eir = await FakeEir(dwr_to_send=True).start()
    out = Outcomes()
    mmes = [MmeIdentity("mme1." + REALM1, REALM1), MmeIdentity("mme2." + REALM1, REALM1),
            MmeIdentity("mme1." + REALM2, REALM2)]
    cfg = config([eir.target], mmes=mmes)
    try:
        async with running(cfg, out) as pool:
            assert pool.open_links == 3
            assert pool.realm_index(REALM2) == 1
            with pytest.raises(KeyError):
                pool.realm_index("epc.mnc099.mcc401.3gppnetwork.org")
            res = await submit(pool, out, range(0, 40), group=0)
            res += await submit(pool, out, range(40, 60), group=1)
            assert res == [SENT] * 60
            await out.wait(60)
            assert out.flat() == ["WHITELISTED"] * 60
            assert len(out.keys) == 60
    finally:
        await eir.close()
    cers = eir.of(Command.CAPABILITIES_EXCHANGE)
    assert sorted(c.find(AvpCode.ORIGIN_HOST).data.decode() for c in cers) == sorted(
        i.origin_host for i in mmes)
    for cer in cers:
        assert DICT.check_message(cer) is None
        vsai = cer.find(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID)
        assert vsai is not None
        assert (vsai.find(AvpCode.VENDOR_ID).as_u32(),
                vsai.find(AvpCode.AUTH_APPLICATION_ID).as_u32()) == (TGPP, S13)
        assert cer.find(AvpCode.SUPPORTED_VENDOR_ID).as_u32() == TGPP
    # the server's DWR was answered on every connection (RFC 6733 5.5)
    dwas = eir.of(Command.DEVICE_WATCHDOG, request=False)
    assert len(dwas) == 3 and all(m.result_code_of(d) == 2001 for d in dwas)
    ecrs = eir.ecrs()
    assert len(ecrs) == 60
    sids = set()
    for ecr in ecrs:
        assert DICT.check_message(ecr) is None
        assert not ecr.flags & CmdFlag.RETRANSMIT
        host = ecr.find(AvpCode.ORIGIN_HOST).data.decode()
        realm = ecr.find(AvpCode.ORIGIN_REALM).data.decode()
        assert host.endswith("." + realm)
        sid = ecr.find(AvpCode.SESSION_ID).as_str()
        assert sid.startswith(host + ";")
        sids.add(sid)
        assert ecr.find(AvpCode.DESTINATION_REALM).data == b"test"
    assert len(sids) == 60
    # group 0 is REALM1 and went round-robin over its two MMEs; group 1 only to REALM2
    realms = [e.find(AvpCode.ORIGIN_REALM).data.decode() for e in ecrs]
    assert realms.count(REALM1) == 40 and realms.count(REALM2) == 20
    hosts = [e.find(AvpCode.ORIGIN_HOST).data.decode() for e in ecrs]
    assert hosts.count(mmes[0].origin_host) == hosts.count(mmes[1].origin_host) == 20
    # DPR on stop, cause REBOOTING (RFC 6733 5.4.3)
    dprs = eir.of(Command.DISCONNECT_PEER)
    assert len(dprs) == 3
    assert {d.find(AvpCode.DISCONNECT_CAUSE).as_u32() for d in dprs} == {
        DisconnectCause.REBOOTING}


async def test_failover_to_the_second_target_when_the_first_is_down() -> None:
    good = await FakeEir(origin_host="eir2.test").start()
    dead = Target("127.0.0.1", free_port())  # nothing listens
    out = Outcomes()
    try:
        async with running(config([dead, good.target]), out) as pool:
            assert await submit(pool, out, range(20)) == [SENT] * 20
            await out.wait(20)
            assert out.flat() == ["WHITELISTED"] * 20
            assert pool.counters.connect_failures >= 1
    finally:
        await good.close()
    assert len(good.ecrs()) == 20


async def test_no_connection_yet_means_waiting_for_one() -> None:
    """A request that finds no open connection waits for one (up to its timeout)."""
    eir = await FakeEir().start()
    out = Outcomes()
    pool = MmePool(config([eir.target], timeout=1.0), out)
    await pool.start()
    await eir.close()
    for lk in pool.links():  # the peer goes away; the MME keeps trying to reconnect
        assert lk.transport is not None
        lk.transport.abort()
    await asyncio.sleep(0.02)
    assert await submit(pool, out, range(3)) == [SENT] * 3
    assert (pool.counters.waited_for_connection, pool.counters.not_sent_no_peer) == (3, 0)
    assert pool.in_flight == 3
    await out.wait(3, timeout=5)
    assert out.flat() == ["timeout"] * 3  # nothing came back within the request timeout
    assert pool.in_flight == 0

    await submit(pool, out, range(3, 6))
    await eir.start()  # back on the same port: the reconnection sends what waited
    await out.wait(6, timeout=5)
    assert out.flat()[3:] == ["WHITELISTED"] * 3
    assert pool.counters.retransmissions == 0
    assert not any(e.flags & CmdFlag.RETRANSMIT for e in eir.ecrs())  # sent once, not again
    await pool.stop()
    await eir.close()


async def test_no_connection_and_none_to_come_means_not_sent() -> None:
    eir = await FakeEir().start()
    out = Outcomes()
    async with running(config([eir.target]), out) as pool:
        (link,) = pool.links()
        # the EIR says goodbye for good (RFC 6733 5.4.3): the MME does not reconnect
        link.data_received(m.dpr(eir.ident, 0x999, 0xAAA,
                                 DisconnectCause.DO_NOT_WANT_TO_TALK_TO_YOU).encode())
        assert link.transport is not None
        link.transport.abort()
        assert link.task is not None
        await asyncio.wait_for(link.task, 2)
        assert await submit(pool, out, range(3)) == [NO_PEER] * 3
        assert (pool.counters.not_sent_no_peer, pool.counters.waited_for_connection) == (3, 0)
    await eir.close()


async def test_requests_queued_before_a_dpr_are_written_before_the_dpa() -> None:
    """RFC 6733 5.4: what was sent before the DPA is answered; nothing goes after it."""
    eir = await FakeEir().start()
    out = Outcomes()
    try:
        async with running(config([eir.target]), out) as pool:
            (link,) = pool.links()
            assert await submit(pool, out, range(5)) == [SENT] * 5  # queued, not yet written
            # the EIR's DPR is read before the queued requests are flushed
            link.data_received(m.dpr(eir.ident, 0x999, 0xAAA,
                                     DisconnectCause.REBOOTING).encode())
            assert await submit(pool, out, range(5, 7)) == [SENT] * 2  # wait for a connection
            await out.wait(5)
            assert out.flat() == ["WHITELISTED"] * 5
    finally:
        await eir.close()
    wire = [(s.msg.code, s.msg.is_request) for s in eir.seen if s.conn == 0][1:]  # after CER
    assert wire == [(Command.ME_IDENTITY_CHECK, True)] * 5 + \
        [(Command.DISCONNECT_PEER, False)], wire


async def test_a_graceful_dpr_while_sending_loses_no_request() -> None:
    """The EIR sends DPR while requests flow (one worker of a rolling restart going away):
    those in flight are answered on the closing connection, later ones wait for the next
    connection; none is retransmitted, none fails."""
    eir = await FakeEir(dpr_after=10).start()
    out = Outcomes()
    try:
        async with running(config([eir.target]), out) as pool:
            for k in range(10):
                await submit(pool, out, range(k * 10, k * 10 + 10))
                await asyncio.sleep(0.01)
            await out.wait(100)
            assert out.flat() == ["WHITELISTED"] * 100
            c = pool.counters
            assert (c.dpr_received, c.reconnects, c.connection_losses) == (1, 1, 0)
            assert (c.retransmissions, c.not_sent_no_peer, c.unknown_hbh) == (0, 0, 0)
    finally:
        await eir.close()
    first, second = eir.ecrs(0), eir.ecrs(1)
    assert len(first) >= 10 and len(first) + len(second) == 100
    assert not any(e.flags & CmdFlag.RETRANSMIT for e in first + second)


async def test_connection_loss_retransmits_once_with_the_t_flag() -> None:
    # the first connection takes 10 ECRs and dies without answering; the MME reconnects
    # and sends them again, with T set and the same End-to-End id and Session-Id
    eir = await FakeEir(mode="drop", drop_after=10).start()
    out = Outcomes()
    try:
        async with running(config([eir.target]), out) as pool:
            await submit(pool, out, range(10))
            await out.wait(10)
            assert out.flat() == ["WHITELISTED"] * 10
            assert pool.counters.retransmissions == 10
            assert pool.counters.reconnects == 1
            assert pool.counters.connection_losses == 1
    finally:
        await eir.close()
    first, again = eir.ecrs(0), eir.ecrs(1)
    assert len(first) == len(again) == 10
    assert not any(e.flags & CmdFlag.RETRANSMIT for e in first)
    assert all(e.flags & CmdFlag.RETRANSMIT for e in again)
    assert [e.e2e for e in first] == [e.e2e for e in again]
    sid = lambda e: e.find(AvpCode.SESSION_ID).data  # noqa: E731
    assert [sid(e) for e in first] == [sid(e) for e in again]


async def test_loss_fails_over_at_once_to_another_target() -> None:
    a = await FakeEir(origin_host="a.test", mode="drop", drop_after=5).start()
    b = await FakeEir(origin_host="b.test").start()
    out = Outcomes()
    try:
        async with running(config([a.target, b.target], reconnect_min=5, reconnect_max=5),
                           out) as pool:
            await submit(pool, out, range(5))
            await out.wait(5, timeout=3)  # well before A's 5 s reconnect back-off
            assert out.flat() == ["WHITELISTED"] * 5
            assert pool.counters.retransmissions == 5
    finally:
        await a.close()
        await b.close()
    assert [e.e2e for e in a.ecrs()] == [e.e2e for e in b.ecrs()]
    assert all(e.flags & CmdFlag.RETRANSMIT for e in b.ecrs())


async def test_a_request_is_retransmitted_at_most_once() -> None:
    eir = await FakeEir(mode="drop", drop_after=4, drop_connections=99).start()
    out = Outcomes()
    try:
        async with running(config([eir.target]), out) as pool:
            await submit(pool, out, range(4))
            await out.wait(4)
            assert out.flat() == ["timeout"] * 4  # lost twice: given up, not sent a third time
            assert pool.counters.retransmissions == 4
            assert pool.counters.lost_in_flight == 4
    finally:
        await eir.close()
    e2es = [e.e2e for e in eir.ecrs()]
    assert len(e2es) == 8 and all(e2es.count(x) == 2 for x in e2es)


async def test_3004_is_retried_on_another_target_when_enabled() -> None:
    for retry in (True, False):
        busy = await FakeEir(origin_host="busy.test", mode="busy").start()
        ok = await FakeEir(origin_host="ok.test").start()
        out = Outcomes()
        try:
            async with running(config([busy.target, ok.target], retry_3004=retry),
                               out) as pool:
                await submit(pool, out, range(30))
                await out.wait(30)
                c = pool.counters
                if retry:
                    assert out.flat() == ["WHITELISTED"] * 30
                    assert c.retries_3004 == 30 and c.e_bit_answers == 30
                    assert len(ok.ecrs()) == 30
                    assert [e.e2e for e in busy.ecrs()] == [e.e2e for e in ok.ecrs()]
                else:
                    assert out.flat() == ["3004"] * 30
                    assert c.retries_3004 == 0 and c.e_bit_answers == 30
                    assert ok.ecrs() == []
        finally:
            await busy.close()
            await ok.close()


async def test_doic_loss_algorithm_throttles_and_ends_with_validity_zero() -> None:
    eir = await FakeEir(olr=(5, 50, 30)).start()
    out = Outcomes()
    try:
        async with running(config([eir.target], doic=True, seed=7), out) as pool:
            await submit(pool, out, range(1))
            await out.wait(1)
            assert pool.counters.doic_reports == 1
            assert pool.overload() == {str(eir.target): 50}
            res = await submit(pool, out, range(1, 2001))
            throttled = res.count(THROTTLED)
            assert 850 <= throttled <= 1150, throttled  # 50 % of 2000, binomial sd ~ 22
            assert pool.counters.doic_throttled == throttled
            await out.wait(1 + res.count(SENT))
            # a repeat of the same report (same sequence number) changes nothing
            assert pool.counters.doic_reports == 1
            eir.olr = (6, 50, 0)  # validity 0: the overload is over (RFC 7683 5.2.1.3)
            await submit(pool, out, range(3000, 3001))
            await out.wait(2 + res.count(SENT))
            assert pool.counters.doic_reports == 2
            assert pool.overload() == {str(eir.target): 0}
            assert await submit(pool, out, range(3001, 3501)) == [SENT] * 500
    finally:
        await eir.close()
    assert all(e.find(AvpCode.OC_SUPPORTED_FEATURES) is not None for e in eir.ecrs())
    feat = eir.ecrs()[0].find(AvpCode.OC_SUPPORTED_FEATURES)
    assert feat.find(AvpCode.OC_FEATURE_VECTOR).as_u64() == 1  # OLR_DEFAULT_ALGO
    assert not feat.mandatory


async def test_doic_diverts_to_a_target_that_is_not_overloaded() -> None:
    hot = await FakeEir(origin_host="hot.test", olr=(0, 100, 30)).start()
    cool = await FakeEir(origin_host="cool.test").start()
    out = Outcomes()
    try:
        async with running(config([hot.target, cool.target], doic=True), out) as pool:
            await submit(pool, out, range(1))
            await out.wait(1)
            assert await submit(pool, out, range(1, 101)) == [SENT] * 100
            await out.wait(101)
            assert pool.counters.doic_diverted == 100
    finally:
        await hot.close()
        await cool.close()
    assert len(hot.ecrs()) == 1 and len(cool.ecrs()) == 100


async def test_without_doic_no_features_are_sent_and_reports_are_ignored() -> None:
    eir = await FakeEir(olr=(1, 100, 30)).start()
    out = Outcomes()
    try:
        async with running(config([eir.target]), out) as pool:
            await submit(pool, out, range(50))
            await out.wait(50)
            assert await submit(pool, out, range(50, 100)) == [SENT] * 50
            await out.wait(100)
            assert pool.counters.doic_reports == 0
    finally:
        await eir.close()
    assert all(e.find(AvpCode.OC_SUPPORTED_FEATURES) is None for e in eir.ecrs())


async def test_timeouts_and_late_answers_dropped_by_hop_by_hop_id() -> None:
    eir = await FakeEir(mode="slow", delay=0.6).start()
    out = Outcomes()
    try:
        async with running(config([eir.target], timeout=0.2), out) as pool:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await submit(pool, out, range(10))
            await out.wait(10)
            took = loop.time() - t0
            assert out.flat() == ["timeout"] * 10
            assert 0.15 <= took < 0.6, took
            await asyncio.sleep(0.8)  # the answers come, for nothing any more
            assert pool.counters.unknown_hbh == 10
            assert pool.in_flight == 0
    finally:
        await eir.close()


async def test_a_dpr_from_the_server_stops_new_requests_on_that_connection() -> None:
    eir = await FakeEir(dpr_cause=DisconnectCause.DO_NOT_WANT_TO_TALK_TO_YOU).start()
    out = Outcomes()
    pool = MmePool(config([eir.target]), out)
    with pytest.raises(ConnectionError):
        await pool.start(wait=1.0)  # the only connection said goodbye at once
    await asyncio.sleep(0.3)
    assert pool.counters.dpr_received == 1
    assert eir.conns == 1  # DO_NOT_WANT_TO_TALK_TO_YOU: no reconnection (RFC 6733 5.4.3)
    dpas = eir.of(Command.DISCONNECT_PEER, request=False)
    assert len(dpas) == 1 and m.result_code_of(dpas[0]) == 2001
    await pool.stop()
    await eir.close()


# -- against the real EIR -------------------------------------------------------------

REGISTRY = """imei,list,reason,imsi,source,note
49015420323751,white,registered,,ministry,
35332510123456,black,stolen,,police,
86768803654321,grey,pending_verification,,operator,
35332510123456,exception,owner_recovered,401011234567890,police,owner's SIM
"""


@pytest.fixture(scope="module")
def real_eir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("eir")
    (tmp / "reg.csv").write_text(REGISTRY)
    res = run_cli("registry", "import", "--db", str(tmp / "eir.db"), str(tmp / "reg.csv"))
    assert res.returncode == 0, res.stderr
    with EirProcess(tmp / "eir.db", origin_host="eir.test", origin_realm="test") as proc:
        yield proc


@pytest.mark.timeout(60)
async def test_against_the_real_eir(real_eir: EirProcess) -> None:
    out = Outcomes()
    mmes = [MmeIdentity("mme1." + REALM1, REALM1), MmeIdentity("mme1." + REALM2, REALM2)]
    cases = [("49015420323751", None, "WHITELISTED"), ("490154203237518", None, "WHITELISTED"),
             ("35332510123456", None, "BLACKLISTED"),
             ("35332510123456", "401011234567890", "WHITELISTED"),
             ("86768803654321", None, "GREYLISTED"), ("12345", None, "BLACKLISTED")]
    from simulator.mme import now_us

    cfg = config([Target("127.0.0.1", real_eir.port)], mmes=mmes, doic=True,
                 vsai_in_requests=True)
    async with running(cfg, out) as pool:
        for rounds in range(50):
            for i, (imei, imsi, _) in enumerate(cases):
                tok = rounds * len(cases) + i
                assert pool.submit(tok, tok % 2, encode_tail(imei, "00", imsi), now_us()) == SENT
        await out.wait(50 * len(cases))
        c = pool.counters
        assert (c.unknown_hbh, c.decode_errors, c.e_bit_answers, c.wrong_e2e) == (0, 0, 0, 0)
    for tok, keys in out.keys.items():
        assert keys == [cases[tok % len(cases)][2]], (tok, keys)
    # the pool said goodbye on stop: both MMEs sent DPR (REBOOTING, RFC 6733 5.4)
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        said = [h for h in ("mme1." + REALM1, "mme1." + REALM2)
                if f"peer {h} sent DPR (cause 0)" in real_eir.log()]
        if len(said) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(said) == 2, real_eir.log()[-2000:]


if sys.platform == "win32":  # pragma: no cover
    pytest.skip("loopback TCP tests", allow_module_level=True)
