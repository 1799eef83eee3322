"""The audit's conformance cases, each run against our EIR (a real ``eir serve`` process).

Every case must pass against our EIR, alone on its connection and all in one
run. The judges must also be able to fail: a deliberately lax peer (it
answers every request with 2001 and checks nothing; it is not our EIR)
fails exactly the cases about error handling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from eir.diameter import messages as m
from eir.diameter.codec import Avp, DecodeError, Framer, FramingError, Message, decode_message
from eir.diameter.constants import AvpCode, Command, Vendor
from simulator.conformance import (
    CASES,
    Case,
    ProbeError,
    describe,
    outcome,
    run_conformance,
)
from testbed.eirproc import EirProcess, free_port

AUDITOR = m.Identity("audit.test.local", "test.local", product_name="eir-sim audit")
TGPP = int(Vendor.TGPP)


@pytest.fixture(scope="module")
def eir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EirProcess]:
    db = tmp_path_factory.mktemp("conf") / "eir.db"
    with EirProcess(db) as proc:
        yield proc


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_case_passes_against_our_eir(eir: EirProcess, case: Case) -> None:
    conf, realm = await run_conformance("127.0.0.1", eir.port, AUDITOR, timeout=3.0,
                                        cases=[case])
    assert realm == "test.local"  # the EIR's CEA Origin-Realm
    assert [r.name for r in conf.results] == [case.name]
    r = conf.results[0]
    assert r.passed, f"{r.name}: expected {r.expected}; got {r.got}"
    assert r.section.startswith("PROTOCOL.md ")


async def test_all_cases_in_one_run(eir: EirProcess) -> None:
    conf, _ = await run_conformance("127.0.0.1", eir.port, AUDITOR, timeout=3.0)
    assert [r.name for r in conf.results] == [c.name for c in CASES]
    assert conf.passed == len(CASES), [r for r in conf.results if not r.passed]
    assert conf.peer == {"origin_host": "eir.test.local", "origin_realm": "test.local",
                         "product_name": "eir"}
    # the EIR is still healthy afterwards
    again, _ = await run_conformance("127.0.0.1", eir.port, AUDITOR, timeout=3.0,
                                     cases=[c for c in CASES if c.name == "ecr-valid"])
    assert again.passed == 1


async def test_an_unserved_operator_realm_is_judged_as_sent(eir: EirProcess) -> None:
    # with --operator-realm naming a realm the EIR does not serve, even a valid ECR fails
    conf, realm = await run_conformance("127.0.0.1", eir.port, AUDITOR, timeout=3.0,
                                        destination_realm="other.realm",
                                        cases=[c for c in CASES if c.name == "ecr-valid"])
    assert realm == "other.realm"
    assert not conf.results[0].passed and "Result-Code 3003" in conf.results[0].got


async def test_nothing_listening_is_a_probe_error() -> None:
    with pytest.raises(ProbeError, match="cannot connect"):
        await run_conformance("127.0.0.1", free_port(), AUDITOR, timeout=2.0)


# -- a lax peer: the judges can fail ------------------------------------------------------

LAX = m.Identity("lax.test.local", "test.local", product_name="lax")


async def _lax_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    framer = Framer(1 << 24)
    try:
        while data := await reader.read(65536):
            try:
                frames = framer.feed(data)
            except FramingError:
                break  # closes with a FIN, where a reset is required
            for frame in frames:
                msg = decode_message(frame)
                req = msg.message if isinstance(msg, DecodeError) else msg
                if not req.is_request:
                    continue
                if req.code == Command.CAPABILITIES_EXCHANGE:
                    ans = m.cea(req, LAX, m.S13_APPLICATIONS, 2001)
                elif req.code in (Command.DEVICE_WATCHDOG, Command.DISCONNECT_PEER):
                    ans = m.dwa(req, LAX)
                else:
                    ans = m.session_answer(req, LAX, result=[
                        Avp.u32(AvpCode.RESULT_CODE, 2001)],
                        before_origin=[Avp.u32(AvpCode.AUTH_SESSION_STATE, 1)],
                        after_origin=[Avp.u32(AvpCode.EQUIPMENT_STATUS, 0, TGPP)])
                writer.write(ans.encode())
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def lax_peer() -> AsyncIterator[int]:
    server = await asyncio.start_server(_lax_session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def test_a_lax_peer_fails_exactly_the_error_handling_cases() -> None:
    async with lax_peer() as port:
        conf, _ = await run_conformance("127.0.0.1", port, AUDITOR, timeout=1.0)
    failed = {r.name for r in conf.results if not r.passed}
    assert failed == {
        "unknown-avp-m", "missing-avp", "session-id-not-first", "avp-occurs-too-many",
        "invalid-avp-value", "invalid-avp-bits", "realm-not-served", "application-unsupported",
        "command-unsupported", "e-bit-request", "invalid-avp-length", "invalid-message-length",
        "unsupported-version", "framing-lost", "first-message-not-cer"}
    got = {r.name: r.got for r in conf.results}
    assert "connection closed (FIN)" in got["framing-lost"]
    assert got["first-message-not-cer"].startswith("answered")
    assert "Result-Code 2001, not 3003" in got["realm-not-served"]


# -- reading answers ------------------------------------------------------------------------


def eca(*avps: Avp, flags: int = 0x40) -> Message:
    return Message(324, 16777252, flags, 1, 1, [Avp.utf8(AvpCode.SESSION_ID, "s;1;2"), *avps])


def test_outcome_keys_follow_the_simulator_contract() -> None:
    rc = Avp.u32(AvpCode.RESULT_CODE, 2001)
    assert outcome(eca(rc, Avp.u32(AvpCode.EQUIPMENT_STATUS, 2, TGPP))) == "GREYLISTED"
    assert outcome(eca(rc, Avp.u32(AvpCode.EQUIPMENT_STATUS, 7, TGPP))) == "2001"
    er = Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [Avp.u32(AvpCode.VENDOR_ID, TGPP),
                                                   Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE,
                                                           5422)])
    assert outcome(eca(er)) == "5422"
    assert outcome(eca(Avp.u32(AvpCode.RESULT_CODE, 5005))) == "5005"
    assert outcome(eca()) == "no-result"
    assert outcome("timeout") == "timeout"
    assert outcome("undecodable answer: AVP 1: invalid length") == "undecodable"
    assert outcome("reset") == "reset"


def test_describe_is_one_readable_line() -> None:
    fa = Avp.grouped(AvpCode.FAILED_AVP, [Avp.u32(AvpCode.AUTH_SESSION_STATE, 7)])
    assert describe(eca(Avp.u32(AvpCode.RESULT_CODE, 5004), fa, flags=0x60)) == \
        "cmd 324, flags 0x60, Result-Code 5004, Failed-AVP 277"
    assert describe("reset") == "connection reset (RST)"
    assert describe("timeout") == "no answer"


def test_cases_name_their_spec_sections() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    for c in CASES:
        assert "PROTOCOL.md" in c.section and c.expected
