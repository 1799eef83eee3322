"""Every Diameter message of a freeDiameter capture, read by our Framer and decoder.

``shared/vectors/freediameter-s13.pcap`` (see its README) holds three TCP
connections between two freeDiameter 1.2.1 nodes, each CER, CEA, two ECRs,
two ECAs, DPR, DPA. The bytes were encoded by a third-party stack, so
decoding them to the values the README lists checks our decoder against
someone else's encoder; re-encoding them byte for byte checks our encoder
against theirs; and the dictionary must accept all of them.

The capture lives outside the repository, in ``shared/`` beside the clone
(``<clone>/../shared``); the module is skipped when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from eir.diameter.codec import Framer, Message, decode_message
from eir.diameter.constants import Application, AvpCode, Command, ResultCode, Vendor
from eir.diameter.dictionary import default_dictionary
from eir.diameter.messages import advertised_applications, common_applications

REPO_ROOT = Path(__file__).resolve().parents[2]
PCAP = REPO_ROOT.parent / "shared" / "vectors" / "freediameter-s13.pcap"
SERVER_PORT = 13875

if not PCAP.is_file():
    pytest.skip(f"interop capture not found at {PCAP} (shared/ must sit beside the clone)",
                allow_module_level=True)

# connection -> IMEI in both ECRs, Equipment-Status in both ECAs (vectors/README.md)
EXPECTED = [("49015420323751", 0), ("35332510123456", 1), ("86768803654321", 2)]


@dataclass
class Frame:
    to_server: bool
    wire: bytes
    msg: Message


@dataclass
class Connection:
    client_port: int
    frames: list[Frame]


def _read_capture() -> list[Connection]:
    from scapy.all import IP, TCP, rdpcap

    isn: dict[tuple[int, int], int] = {}
    segments: dict[tuple[int, int], dict[int, bytes]] = {}
    order: list[int] = []
    for pkt in rdpcap(str(PCAP)):
        if IP not in pkt or TCP not in pkt:
            continue
        tcp = pkt[TCP]
        flow = (int(tcp.sport), int(tcp.dport))
        if SERVER_PORT not in flow:
            continue
        client = flow[0] if flow[1] == SERVER_PORT else flow[1]
        if client not in order:
            order.append(client)
        if tcp.flags.S:
            isn[flow] = (int(tcp.seq) + 1) & 0xFFFFFFFF
        payload = bytes(tcp.payload)
        if payload:
            segments.setdefault(flow, {})[int(tcp.seq)] = payload  # drops retransmissions
    conns = []
    for client in order:
        frames: list[tuple[int, Frame]] = []
        for flow in ((client, SERVER_PORT), (SERVER_PORT, client)):
            segs = segments.get(flow, {})
            start = isn.get(flow, min(segs, default=0))
            framer = Framer()
            expect = 0
            for seq in sorted(segs, key=lambda s: (s - start) & 0xFFFFFFFF):
                rel = (seq - start) & 0xFFFFFFFF
                assert rel == expect, f"gap in TCP stream {flow} at offset {expect}"
                expect += len(segs[seq])
                for wire in framer.feed(segs[seq]):
                    msg = decode_message(wire)
                    assert isinstance(msg, Message), f"{flow}: {msg}"
                    frames.append((msg.hbh, Frame(flow[1] == SERVER_PORT, wire, msg)))
            assert framer.pending == 0, f"{flow}: {framer.pending} bytes left unframed"
        # requests and their answers, in hop-by-hop order; requests first
        frames.sort(key=lambda x: (x[0], not x[1].to_server))
        conns.append(Connection(client, [f for _, f in frames]))
    return conns


@pytest.fixture(scope="module")
def conns() -> list[Connection]:
    return _read_capture()


def _all(conns: list[Connection]) -> list[Frame]:
    return [f for c in conns for f in c.frames]


def test_capture_holds_three_full_connections(conns: list[Connection]) -> None:
    assert len(conns) == 3
    for c in conns:
        assert [(f.to_server, f.msg.code, f.msg.flags) for f in c.frames] == [
            (True, Command.CAPABILITIES_EXCHANGE, 0x80), (False, Command.CAPABILITIES_EXCHANGE, 0),
            (True, Command.ME_IDENTITY_CHECK, 0xC0), (False, Command.ME_IDENTITY_CHECK, 0x40),
            (True, Command.ME_IDENTITY_CHECK, 0xC0), (False, Command.ME_IDENTITY_CHECK, 0x40),
            (True, Command.DISCONNECT_PEER, 0x80), (False, Command.DISCONNECT_PEER, 0),
        ]


def test_reencoding_gives_the_same_bytes(conns: list[Connection]) -> None:
    frames = _all(conns)
    assert len(frames) == 24
    for f in frames:
        assert f.msg.encode() == f.wire


def test_dictionary_finds_no_problem(conns: list[Connection]) -> None:
    d = default_dictionary()
    for f in _all(conns):
        assert d.check_message(f.msg) is None, f.msg


def test_answers_match_their_requests(conns: list[Connection]) -> None:
    for c in conns:
        for req, ans in zip(c.frames[::2], c.frames[1::2], strict=True):
            assert req.msg.is_request and not ans.msg.is_request
            assert (ans.msg.code, ans.msg.app_id, ans.msg.hbh, ans.msg.e2e) == (
                req.msg.code, req.msg.app_id, req.msg.hbh, req.msg.e2e)
            sid = req.msg.find(AvpCode.SESSION_ID)
            if sid is not None:
                ans_sid = ans.msg.find(AvpCode.SESSION_ID)
                assert ans_sid is not None and ans_sid.data == sid.data


@pytest.mark.parametrize("index", range(3))
def test_ecr_and_eca_values(conns: list[Connection], index: int) -> None:
    imei, status = EXPECTED[index]
    msgs = [f.msg for f in conns[index].frames if f.msg.code == Command.ME_IDENTITY_CHECK]
    ecrs = [m for m in msgs if m.is_request]
    ecas = [m for m in msgs if not m.is_request]
    assert len(ecrs) == len(ecas) == 2
    for ecr in ecrs:
        assert ecr.app_id == Application.S13
        assert ecr.avps[0].code == AvpCode.SESSION_ID
        assert ecr.avps[0].as_str().startswith("mme.test.local;")
        ti = ecr.find(AvpCode.TERMINAL_INFORMATION, Vendor.TGPP)
        assert ti is not None
        imei_avp = ti.find(AvpCode.IMEI, Vendor.TGPP)
        sv_avp = ti.find(AvpCode.SOFTWARE_VERSION, Vendor.TGPP)
        assert imei_avp is not None and sv_avp is not None
        assert imei_avp.as_str() == imei
        assert sv_avp.as_str() == "00"
        user = ecr.find(AvpCode.USER_NAME)
        assert user is not None and user.as_str() == "401017000000001"
        state = ecr.find(AvpCode.AUTH_SESSION_STATE)
        assert state is not None and state.as_u32() == 1
    for eca in ecas:
        rc = eca.find(AvpCode.RESULT_CODE)
        assert rc is not None and rc.as_u32() == ResultCode.SUCCESS
        es = eca.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
        assert es is not None and es.as_i32() == status
        assert es.flags == 0xC0
        host = eca.find(AvpCode.ORIGIN_HOST)
        assert host is not None and host.data == b"fdeir.test.local"


def test_capabilities_exchange(conns: list[Connection]) -> None:
    for c in conns:
        cer, cea = c.frames[0].msg, c.frames[1].msg
        host = cer.find(AvpCode.ORIGIN_HOST)
        assert host is not None and host.data == b"mme.test.local"
        rc = cea.find(AvpCode.RESULT_CODE)
        assert rc is not None and rc.as_u32() == ResultCode.SUCCESS
        addr = cer.find(AvpCode.HOST_IP_ADDRESS)
        assert addr is not None and addr.as_address() == "192.0.2.2"
        # freeDiameter advertises S13 in a VSAI, and the relay id as a plain Auth-Application-Id
        assert advertised_applications(cer) == {Application.S13, Application.RELAY}
        assert advertised_applications(cea) == {Application.S13}
        assert common_applications({Application.S13}, advertised_applications(cea)) == {
            Application.S13}
        vendors = {a.as_u32() for a in cer.find_all(AvpCode.SUPPORTED_VENDOR_ID)}
        assert Vendor.TGPP in vendors


def test_disconnect(conns: list[Connection]) -> None:
    for c in conns:
        dpr, dpa = c.frames[-2].msg, c.frames[-1].msg
        cause = dpr.find(AvpCode.DISCONNECT_CAUSE)
        assert cause is not None and cause.as_i32() == 0  # REBOOTING
        rc = dpa.find(AvpCode.RESULT_CODE)
        assert rc is not None and rc.as_u32() == ResultCode.SUCCESS


def test_whole_stream_in_one_feed_frames_alike(conns: list[Connection]) -> None:
    for c in conns:
        for to_server in (True, False):
            wires = [f.wire for f in c.frames if f.to_server == to_server]
            assert Framer().feed(b"".join(wires)) == wires
