"""``eir check``: one ME-Identity-Check sent to any EIR, the answer printed as JSON.

Owns a minimal MME-side exchange for operators and the README demo: CER/CEA,
one ECR built as TS 29.272 7.2.19 says, the ECA decoded, DPR/DPA. Uses
only the public API of ``eir.diameter``.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.codec import Avp, Message
from eir.diameter.constants import (
    Application,
    AuthSessionState,
    AvpCode,
    CmdFlag,
    Command,
    EquipmentStatus,
    Vendor,
)
from eir.diameter.dictionary import default_dictionary


def ecr(origin_host: str, origin_realm: str, dest_realm: str, imei: str,
        sv: str | None = None, imsi: str | None = None, session: int = 1) -> Message:
    ti = [Avp.utf8(AvpCode.IMEI, imei, Vendor.TGPP)]
    if sv is not None:
        ti.append(Avp.utf8(AvpCode.SOFTWARE_VERSION, sv, Vendor.TGPP))
    avps = [Avp.utf8(AvpCode.SESSION_ID, f"{origin_host};{int(time.time())};{session}"),
            Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED),
            Avp.octets(AvpCode.ORIGIN_HOST, origin_host.encode()),
            Avp.octets(AvpCode.ORIGIN_REALM, origin_realm.encode()),
            Avp.octets(AvpCode.DESTINATION_REALM, dest_realm.encode()),
            Avp.grouped(AvpCode.TERMINAL_INFORMATION, ti, Vendor.TGPP)]
    if imsi is not None:
        avps.append(Avp.utf8(AvpCode.USER_NAME, imsi))
    return Message(Command.ME_IDENTITY_CHECK, Application.S13,
                   CmdFlag.REQUEST | CmdFlag.PROXIABLE, 0, 0, avps)


def describe(answer: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"error_bit": answer.is_error}
    rc = answer.find(AvpCode.RESULT_CODE)
    if rc is not None:
        out["result_code"] = rc.as_u32()
    er = answer.find(AvpCode.EXPERIMENTAL_RESULT)
    if er is not None:
        code = er.find(AvpCode.EXPERIMENTAL_RESULT_CODE)
        out["experimental_result_code"] = code.as_u32() if code else None
    es = answer.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
    if es is not None:
        value = es.as_u32()
        out["equipment_status"] = EquipmentStatus(value).name if value in (0, 1, 2) else value
    msg = answer.find(AvpCode.ERROR_MESSAGE)
    if msg is not None:
        out["error_message"] = msg.as_str()
    return out


async def check(host: str, port: int, imei: str, *, sv: str | None, imsi: str | None,
                origin_host: str, origin_realm: str, dest_realm: str,
                timeout: float = 5.0, tls: ssl.SSLContext | None = None,
                server_hostname: str | None = None) -> dict[str, Any]:
    """With ``tls``: over TLS (RFC 6733 2.1), the EIR's certificate checked."""
    client = DiameterClient(m.Identity(origin_host, origin_realm), default_dictionary())
    opened = await client.connect(host, port, timeout, tls=tls, server_hostname=server_hostname)
    try:
        t0 = time.perf_counter()
        answer = await client.request(
            ecr(origin_host, origin_realm, dest_realm, imei, sv, imsi), timeout)
        took = time.perf_counter() - t0
    finally:
        await client.close()
    return {"eir": opened.origin_host, "imei": imei, "imsi": imsi, **describe(answer),
            "latency_ms": round(took * 1000, 3)}
