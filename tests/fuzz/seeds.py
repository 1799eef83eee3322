"""Writes the seed corpus: messages for ``corpus/decoder``, byte streams for ``corpus/peer``.

Run from the repository root when the seeds should change (the files are committed, so a
fresh clone needs neither this script nor the capture)::

    .venv/bin/python tests/fuzz/seeds.py

Seeds: CER, CEA, DWR, DWA, DPR, DPA and error answers as this stack builds them; ECRs in
the shapes an MME sends (with and without Software-Version and User-Name, a 15-digit
IMEI, Destination-Host, Proxy-Info, Route-Record, each decision the fuzz table gives) and
a few it should not (Terminal-Information nested deep, hundreds of AVPs, a bad AVP
length); and every message of the freeDiameter capture in ``../shared/vectors`` (encoded
by a third-party stack; skipped when the capture is absent). Peer seeds are streams: a few
requests after the harness's own CER, a stream that starts with its own CER, the
capture's client side of each connection (CER, two ECRs, DPR) and its server side
(answers, which must not be answered). File names are ``seed-NAME``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this tree's eir, not whichever one the environment has installed
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from targets import MME_HOST, MME_REALM, S13, VALID_CER  # noqa: E402

from eir.diameter import messages as m  # noqa: E402
from eir.diameter.codec import Avp, Framer, Message  # noqa: E402
from eir.diameter.dictionary import Problem  # noqa: E402

PCAP = HERE.parents[2] / "shared" / "vectors" / "freediameter-s13.pcap"
PCAP_PORT = 13875
TGPP = 10415
MME = m.Identity(MME_HOST, MME_REALM, ("127.0.0.1",))
EIR = m.Identity("eir.localdomain", "localdomain")


def ecr(imei: str | None = "35209900176148", *, sv: str | None = "01",
        imsi: str | None = "001011234567890", hbh: int = 1, e2e: int = 1,
        extra: list[Avp] | None = None, dest_host: str | None = None,
        ti_depth: int = 0) -> Message:
    ti_children = []
    if imei is not None:
        ti_children.append(Avp.utf8(1402, imei, TGPP))
    if sv is not None:
        ti_children.append(Avp.utf8(1403, sv, TGPP))
    ti = Avp.grouped(1401, ti_children, TGPP)
    for _ in range(ti_depth):  # Terminal-Information's *[AVP] admits itself
        ti = Avp.grouped(1401, [ti], TGPP)
    avps = [Avp.utf8(263, f"{MME_HOST};1;{hbh}"), Avp.u32(277, 1),
            Avp.octets(264, MME_HOST.encode()), Avp.octets(296, MME_REALM.encode())]
    if dest_host is not None:
        avps.append(Avp.octets(293, dest_host.encode()))
    avps += [Avp.octets(283, b"localdomain"), ti]
    if imsi is not None:
        avps.append(Avp.utf8(1, imsi))
    avps += extra or []
    return m.request(324, S13, hbh, e2e, avps, proxiable=True)


def proxy_info(host: str, state: bytes) -> Avp:
    return Avp.grouped(284, [Avp.octets(280, host.encode()), Avp.octets(33, state)])


def own_messages() -> dict[str, bytes]:
    cer = m.cer(MME, m.S13_APPLICATIONS, 1, 1)
    dwr, dpr = m.dwr(MME, 2, 2), m.dpr(MME, 3, 3)
    plain = ecr()
    out = {
        "cer": cer.encode(),
        "cea": m.cea(cer, EIR, m.S13_APPLICATIONS, 2001).encode(),
        "cea-5010": m.cea(cer, EIR, m.S13_APPLICATIONS, 5010,
                          Problem(5010, [], "no common application")).encode(),
        "dwr": dwr.encode(), "dwa": m.dwa(dwr, EIR).encode(),
        "dpr": dpr.encode(), "dpa": m.dpa(dpr, EIR).encode(),
        "ecr": plain.encode(),
        "ecr-no-sv-no-imsi": ecr("35209900176148", sv=None, imsi=None).encode(),
        "ecr-imei15": ecr("352099001761482").encode(),
        "ecr-black": ecr("86768803654321").encode(),
        "ecr-grey": ecr("99000000000011").encode(),
        "ecr-unknown": ecr("00100000000000").encode(),
        "ecr-no-registry": ecr("11000000000000").encode(),
        "ecr-no-imei": ecr(None).encode(),
        "ecr-dest-host": ecr(dest_host="eir.localdomain").encode(),
        "ecr-other-host": ecr(dest_host="other.host").encode(),
        "ecr-proxied": ecr(extra=[proxy_info("dra.fuzz", b"st"), Avp.octets(282, b"dra.fuzz")]
                           ).encode(),
        "ecr-nested-ti": ecr(ti_depth=12).encode(),
        "ecr-doic": ecr(extra=[Avp.grouped(621, [Avp.u64(622, 1, mandatory=False)],
                                           mandatory=False)]).encode(),
        "ecr-many-avps": ecr(extra=[Avp(9999, b"x", 0, 0)] * 300).encode(),
        "ecr-retransmit": Message(324, S13, 0xD0, 9, 9, plain.avps).encode(),
        "eca": m.session_answer(plain, EIR, result=[Avp.u32(268, 2001)],
                                before_origin=[Avp.u32(277, 1)],
                                after_origin=[Avp.u32(1445, 0, TGPP)]).encode(),
        "eca-3001": m.protocol_error(plain, EIR, Problem(3001, [], "x")).encode(),
    }
    bad = bytearray(plain.encode())
    bad[25:28] = (0xFFFF).to_bytes(3, "big")  # the Session-Id's length runs past the end
    out["ecr-bad-avp-length"] = bytes(bad)
    return out


def capture_streams() -> dict[str, bytes]:
    """Each TCP direction of each connection in the freeDiameter capture, reassembled."""
    if not PCAP.is_file():
        print(f"seeds: no capture at {PCAP}; its seeds are left as they are", file=sys.stderr)
        return {}
    from scapy.all import TCP, rdpcap

    segments: dict[tuple[int, int], dict[int, bytes]] = {}
    for pkt in rdpcap(str(PCAP)):
        if TCP not in pkt or PCAP_PORT not in (pkt[TCP].sport, pkt[TCP].dport):
            continue
        payload = bytes(pkt[TCP].payload)
        if payload:
            segments.setdefault((int(pkt[TCP].sport), int(pkt[TCP].dport)), {})[
                int(pkt[TCP].seq)] = payload
    out: dict[str, bytes] = {}
    clients = sorted({s for s, d in segments if d == PCAP_PORT})
    for i, client in enumerate(clients, 1):
        for flow, side in (((client, PCAP_PORT), "mme"), ((PCAP_PORT, client), "eir")):
            segs = segments.get(flow, {})
            out[f"fd{i}-{side}"] = b"".join(segs[s] for s in sorted(segs))
    return out


def write(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{name}").write_bytes(data)


def main() -> int:
    msgs = own_messages()
    streams = capture_streams()
    decoder, peer = HERE / "corpus" / "decoder", HERE / "corpus" / "peer"
    for name, data in msgs.items():
        write(decoder, name, data)
    for name, stream in streams.items():
        for j, frame in enumerate(Framer().feed(stream)):
            write(decoder, f"{name}-{j}", frame)
    peer_streams = {
        "ecr": msgs["ecr"],
        "ecr-dwr-ecr": msgs["ecr-black"] + msgs["dwr"] + msgs["ecr-unknown"],
        "answers": msgs["dwa"] + msgs["cea"] + msgs["eca"],
        "dpr-then-ecr": msgs["dpr"] + msgs["ecr-grey"],
        "second-cer": msgs["cer"] + msgs["ecr"],
        "own-cer-first": VALID_CER + msgs["ecr-proxied"] + msgs["ecr-no-registry"],
        "errors": msgs["ecr-no-imei"] + msgs["ecr-other-host"] + msgs["ecr-bad-avp-length"]
        + msgs["ecr-nested-ti"],
        "many-avps": msgs["ecr-many-avps"] + msgs["ecr-retransmit"],
        "doic": msgs["ecr-doic"] * 4 + msgs["ecr-proxied"],
        "partial": msgs["ecr"] + msgs["ecr"][:30],
        "framing-lost": msgs["ecr"] + b"\x01\x00\x00\x08" + bytes(20),
    }
    peer_streams.update(streams)
    for name, data in peer_streams.items():
        write(peer, name, data)
    print(f"seeds: {len(msgs) + sum(1 for s in streams.values() for _ in Framer().feed(s))} "
          f"decoder, {len(peer_streams)} peer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
