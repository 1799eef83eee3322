"""N5g-eir EquipmentIdentityCheck: the 5G-EIR's one service operation for AMFs (TS 29.511).

Owns the HTTP side of the 5G check, as `eir.s13` owns the Diameter side:
the wire facts of ``GET {apiRoot}/n5g-eir-eic/v1/equipment-status?pei=...``
(TS 29.511 5.2.2.2, 6.1.3.2.3.1) become the inputs of the very decision
function S13 calls (`eir.policy.regime.Regime.check`, or the fail-open /
fail-closed stand-in while no registry can be read: `eir.app`), so one
device gets the same answer, the same reason, the same observation and the
same decision count from a 4G MME and a 5G AMF. It is a raw ASGI callable
served by `eir.http` (hypercorn: HTTP/1.1 and h2c prior knowledge on the
cleartext port, ALPN h2 over TLS): no framework per request, the query
string parsed by hand and the three success bodies encoded once.

Request to decision (PROTOCOL.md 3):

- ``pei`` (TS 29.571 Pei, TS 23.003 6.4) is mandatory: missing, empty,
  given twice or not UTF-8 is 400 MANDATORY_QUERY_PARAM_MISSING /
  MANDATORY_QUERY_PARAM_INCORRECT with ``invalidParams`` naming ``pei``
  (TS 29.500 5.2.7.2).
- ``imei-<digits>``: the digits are the IMEI, handed to the engine as S13
  hands it the IMEI AVP, unchecked; ``imeisv-<16 digits>`` is TAC+SNR (14)
  and SVN (2), as S13's IMEI and Software-Version AVPs. What follows the
  prefix is not validated here: an IMEI that is not 14/15 digits is
  BLACKLISTED reason ``malformed`` by the engine (POLICY.md rule 1), as on
  S13, where the IMEI AVP is a free UTF8String.
- Any other PEI (``mac-..``, ``eui-..`` of TS 23.003 6.4 / TS 23.316, or
  the open ``.+`` branch of the Pei pattern): the registry holds IMEIs
  only, so this EIR does not know the equipment, which TS 29.511 table
  6.1.5.3-1 answers with 404 ERROR_EQUIPMENT_UNKNOWN whatever
  ``policy.unknown_equipment`` says (that setting is about IMEIs on no
  list). The engine is not asked; nothing is observed.
- ``supi=imsi-<digits>`` gives the IMSI (TS 29.571 Supi); other SUPI forms
  (``nai-``, ``gci-``, ``gli-``) are passed as no IMSI. ``gpsi`` and
  ``supported-features`` are accepted and not used (we support no optional
  feature, TS 29.511 6.1.6, so we send none back).
- The operator the decision is counted and logged under (S13: the ECR's
  Origin-Realm) is the verified access token's ``sub`` (the AMF's NF
  instance id, TS 29.510 AccessTokenClaims), else ``n5g.operator``.

Answers: 200 ``EirResponseData`` ``{"status": ...}`` (6.1.4.2.2); 404
ProblemDetails ``cause: ERROR_EQUIPMENT_UNKNOWN`` when the engine answers
EQUIPMENT_UNKNOWN (``policy.unknown_equipment = "reject"``: S13's 5422);
500 SYSTEM_FAILURE when the registry is unavailable and
``registry.unavailable = "fail-closed"`` (S13's 5012); 500
UNSPECIFIED_NF_FAILURE for a bug (an exception, logged). The decision's
reason is not on the wire (29.511 has no place for it): it is in the
decision log line (`eir.policy.regime`) as for S13. A query over 4 KiB is
414. Other paths are 404, other methods 405 with ``Allow: GET``. The OpenAPI 3 document of what is
served (a subset of TS 29.511 Annex A, written here as data) is at
``/n5g-eir-eic/v1/openapi.json``.

Access tokens (TS 29.511 6.1.7.3, TS 33.501 13.4.1): with
``n5g.token_key_file`` set every request needs ``Authorization: Bearer``
with a token `eir.sbi_token` accepts; none is 401 with a bare
``WWW-Authenticate: Bearer``, a bad one 401 ``error="invalid_token"``, one
without the scope 403 ``error="insufficient_scope"`` (RFC 6750 3, 3.1).

Workers (``server.workers`` > 1): every worker serves this listener on the
same port (SO_REUSEPORT, as S13), each deciding from its own snapshot and
counting in its own counters; the kernel spreads connections over them. The
supervisor hands down only the Diameter sockets (`eir.workers`), so in a
rolling restart the connections still queued on a stopping worker's N5g
socket are reset, and the AMF reconnects (an answered request is not lost).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections import Counter
from typing import Any, Final, Protocol

from eir.http import PROBLEM_JSON, Message, Receive, Scope, Send, lifespan, problem_body
from eir.s13 import Decide, DecisionUnavailable
from eir.sbi_token import TokenError, TokenVerifier

__all__ = ["API_ROOT", "OPENAPI_PATH", "STATUS_PATH", "N5gApi", "openapi_document",
           "pei_to_imei"]

log = logging.getLogger("eir.n5g")

API_ROOT: Final = "/n5g-eir-eic/v1"  # TS 29.511 6.1.1: apiName n5g-eir-eic, apiVersion v1
STATUS_PATH: Final = API_ROOT + "/equipment-status"  # 6.1.3.2.2
OPENAPI_PATH: Final = API_ROOT + "/openapi.json"
SCOPE: Final = "n5g-eir-eic"  # 6.1.7.1: the one OAuth2 scope, the service's name
STATUS_NAMES: Final = {0: "WHITELISTED", 1: "BLACKLISTED", 2: "GREYLISTED"}  # 6.1.4.3.3
UNKNOWN: Final = "ERROR_EQUIPMENT_UNKNOWN"  # table 6.1.5.3-1

_JSON = b"application/json"
MAX_BODY = 1 << 16  # request body bytes read and dropped (a GET has none)
# a query string longer than this is 414 URI Too Long (TS 29.500 5.2.7.1): pei, supi (a NAI
# of up to 253 characters), gpsi and supported-features fit many times over
MAX_QUERY = 4096


class DecideSource(Protocol):
    """Whatever holds the node's current decision function (`eir.s13.S13Application`):
    read on every request, so a registry that comes back replaces the fail-safe at once."""

    @property
    def decide(self) -> Decide: ...


def pei_to_imei(pei: str) -> tuple[str, str | None] | None:
    """(IMEI, Software-Version) as S13 would carry them, or None for a PEI that is no IMEI."""
    if pei.startswith("imei-"):
        return pei[5:], None
    if pei.startswith("imeisv-"):
        body = pei[7:]
        if len(body) == 16 and body.isascii() and body.isdigit():
            return body[:14], body[14:]  # TS 23.003 6.2.2: TAC 8 + SNR 6 + SVN 2
        return pei, None  # not 16 digits: no IMEI, so malformed, as on S13
    return None


def _response(status: int, body: bytes, content_type: bytes,
              extra: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[Message, Message]:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               *extra]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


def _problem(status: int, title: str, detail: str | None = None, *, cause: str | None = None,
             param: str | None = None, extra: tuple[tuple[bytes, bytes], ...] = ()
             ) -> tuple[Message, Message]:
    invalid = [{"param": param, "reason": detail or title}] if param else []
    return _response(status, problem_body(status, title, detail, cause=cause,
                                          invalid_params=invalid),
                     PROBLEM_JSON.encode(), extra)


class N5gApi:
    """The ASGI application of the ``[n5g]`` listener."""

    def __init__(self, source: DecideSource, *, operator: str,
                 verifier: TokenVerifier | None = None) -> None:
        self.source = source
        self.operator = operator
        self.verifier = verifier
        # (HTTP status, result) -> requests answered; result is the EquipmentStatus of a
        # 200, else the ProblemDetails cause or the RFC 6750 error ("-" for none)
        self.counts: Counter[tuple[int, str]] = Counter()
        # Equipment-Status (None: EQUIPMENT_UNKNOWN) -> decisions made for N5g requests:
        # the regime counts them with S13's, and the metrics tell them apart
        self.decided: Counter[int | None] = Counter()
        self._ok = {s: json.dumps({"status": name}, separators=(",", ":")).encode()
                    for s, name in STATUS_NAMES.items()}
        self._ok_length = {s: str(len(b)).encode() for s, b in self._ok.items()}
        self._openapi = json.dumps(openapi_document(), indent=1).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # the whole request first: hypercorn 0.18 drops the HTTP/2 connection (every
            # stream on it) when DATA arrives for a stream already answered
            msg = await receive()
            read = 0
            while msg.get("more_body") and read < MAX_BODY:
                read += len(msg.get("body", b""))
                msg = await receive()
            try:
                if scope["path"] == STATUS_PATH and scope["method"] == "GET":
                    start, body = self._status(scope)
                else:
                    start, body = self._other(scope)
            except Exception:
                # (nothing is sent before the answer is built) hypercorn would answer an
                # escaped exception with an empty 500 and close an HTTP/1.1 connection
                log.exception("n5g: %s %r failed", scope["method"], scope["path"][:200])
                self.counts[(500, "UNSPECIFIED_NF_FAILURE")] += 1
                start, body = _problem(500, "Internal Server Error",
                                       cause="UNSPECIFIED_NF_FAILURE")  # TS 29.500 5.2.7.2
            await send(start)
            await send(body)
        elif kind == "lifespan":
            await lifespan(receive, send)

    # -- the operation (TS 29.511 6.1.3.2.3.1) --

    def _status(self, scope: Scope) -> tuple[Message, Message]:
        operator = self.operator
        if self.verifier is not None:
            outcome = self._authorize(scope)
            if isinstance(outcome, tuple):
                return outcome
            operator = outcome or operator
        if len(scope["query_string"]) > MAX_QUERY:
            self.counts[(414, "-")] += 1
            return _problem(414, "URI Too Long", f"the query is over {MAX_QUERY} octets")
        query = _parse_query(scope["query_string"])
        if isinstance(query, tuple):
            cause, response = query
            self.counts[(400, cause)] += 1
            return response
        pei = query["pei"]
        as_imei = pei_to_imei(pei)
        if as_imei is None:
            log.debug("PEI of form %r (not IMEI/IMEISV) asked by %s: %s", pei.split("-")[0][:8],
                      operator, UNKNOWN)
            self.counts[(404, UNKNOWN)] += 1
            return _problem(404, "Not Found", "this EIR holds IMEIs only", cause=UNKNOWN)
        supi = query.get("supi")
        imsi = supi[5:] if supi is not None and supi.startswith("imsi-") else None
        try:
            decision = self.source.decide(as_imei[0], imsi, as_imei[1], operator)
        except DecisionUnavailable as exc:
            self.counts[(500, "SYSTEM_FAILURE")] += 1
            return _problem(500, "Internal Server Error", str(exc), cause="SYSTEM_FAILURE")
        status = decision.status
        self.decided[status] += 1
        if status is None:
            self.counts[(404, UNKNOWN)] += 1
            return _problem(404, "Not Found", cause=UNKNOWN)
        self.counts[(200, STATUS_NAMES[status])] += 1
        return ({"type": "http.response.start", "status": 200,
                 "headers": [(b"content-type", _JSON),
                             (b"content-length", self._ok_length[status])]},
                {"type": "http.response.body", "body": self._ok[status]})

    def _authorize(self, scope: Scope) -> str | tuple[Message, Message] | None:
        """The token's subject (None: none in it), or the 401/403 to answer."""
        assert self.verifier is not None
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    token = credentials.strip()
                break
        if not token:
            self.counts[(401, "-")] += 1
            return _problem(401, "Unauthorized", "an access token is required (scope "
                            f"{SCOPE})", extra=((b"www-authenticate", b"Bearer"),))
        try:
            return self.verifier.verify(token).sub
        except TokenError as exc:
            self.counts[(exc.status, exc.error)] += 1
            challenge = f'Bearer error="{exc.error}", error_description="{exc.description}"'
            if exc.status == 403:
                challenge += f', scope="{SCOPE}"'
            return _problem(exc.status, "Forbidden" if exc.status == 403 else "Unauthorized",
                            exc.description,
                            cause="ACCESS_TOKEN_DENIED" if exc.status == 403 else None,
                            extra=((b"www-authenticate", challenge.encode()),))

    # -- everything else --

    def _other(self, scope: Scope) -> tuple[Message, Message]:
        path, method = scope["path"], scope["method"]
        if path in (STATUS_PATH, OPENAPI_PATH) and method != "GET":
            self.counts[(405, "-")] += 1
            return _problem(405, "Method Not Allowed", f"{method} is not allowed on {path}",
                            extra=((b"allow", b"GET"),))
        if path == OPENAPI_PATH:
            return _response(200, self._openapi, _JSON)
        self.counts[(404, "-")] += 1
        return _problem(404, "Not Found", f"no resource {path[:200]}")


def _parse_query(raw: bytes) -> dict[str, str] | tuple[str, tuple[Message, Message]]:
    """pei, supi, gpsi, supported-features from the query string (RFC 3986 3.4), or a 400
    (its cause and the response)."""
    out: dict[str, str] = {}
    try:
        text = raw.decode("ascii")
        for item in text.split("&"):
            name, _, value = item.partition("=")
            if "%" in name:  # RFC 3986 6.2.2.2: p%65i is pei
                name = urllib.parse.unquote(name, errors="strict")
            if name not in _PARAMS:
                continue  # 29.500 5.2.7: extensible; an unknown parameter is not an error
            if "%" in value:
                value = urllib.parse.unquote(value, errors="strict")
            if name in out:
                if name == "pei":
                    return _bad_pei("MANDATORY_QUERY_PARAM_INCORRECT", "pei is given twice")
                return _bad_optional(name, f"{name} is given twice")
            out[name] = value
    except UnicodeDecodeError:
        return _bad_pei("MANDATORY_QUERY_PARAM_INCORRECT", "the query is not UTF-8")
    pei = out.get("pei")
    if pei is None:
        return _bad_pei("MANDATORY_QUERY_PARAM_MISSING", "pei is missing")
    if not pei:
        # TS 29.571 Pei: ^(imei-[0-9]{15}|imeisv-[0-9]{16}|...|.+)$: at least one character
        return _bad_pei("MANDATORY_QUERY_PARAM_INCORRECT", "pei does not match the Pei pattern")
    for name in ("supi", "gpsi"):
        if out.get(name) == "":  # Supi and Gpsi end in .+ as well
            return _bad_optional(name, f"{name} is empty")
    return out


_PARAMS = frozenset({"pei", "supi", "gpsi", "supported-features"})


def _bad_pei(cause: str, detail: str) -> tuple[str, tuple[Message, Message]]:
    return cause, _problem(400, "Bad Request", detail, cause=cause, param="pei")


def _bad_optional(name: str, detail: str) -> tuple[str, tuple[Message, Message]]:
    cause = "OPTIONAL_QUERY_PARAM_INCORRECT"
    return cause, _problem(400, "Bad Request", detail, cause=cause, param=name)


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.0 for what this listener serves: TS 29.511 Annex A's one operation, with
    EirResponseData and the TS 29.571 ProblemDetails it answers with (written as data)."""
    problem = {"$ref": "#/components/schemas/ProblemDetails"}
    problem_response = {"content": {PROBLEM_JSON: {"schema": problem}}}
    responses: dict[str, Any] = {
        "200": {"description": "The equipment status of the PEI",
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/EirResponseData"}}}},
    }
    for code, text in (("400", "Bad request (pei missing or incorrect)"),
                       ("401", "No or an invalid access token"),
                       ("403", "The access token lacks the n5g-eir-eic scope"),
                       ("404", "The PEI is not known (cause ERROR_EQUIPMENT_UNKNOWN)"),
                       ("414", "The query is too long"),
                       ("500", "The registry is unavailable (cause SYSTEM_FAILURE)")):
        responses[code] = {"description": text, **problem_response}

    def param(name: str, required: bool, pattern: str, text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required, "description": text,
                "schema": {"type": "string", "pattern": pattern}}

    return {
        "openapi": "3.0.0",
        "info": {"title": "5G-EIR Equipment Identity Check (this EIR's subset)",
                 "version": "1.1.2",
                 "description": "N5g-eir_EquipmentIdentityCheck of 3GPP TS 29.511 as served "
                                "by this EIR; decisions as for S13 (TS 29.272)."},
        "servers": [{"url": "{apiRoot}/n5g-eir-eic/v1",
                     "variables": {"apiRoot": {"default": "http://127.0.0.1:8082"}}}],
        "security": [{}, {"oAuth2ClientCredentials": [SCOPE]}],
        "paths": {"/equipment-status": {"get": {
            "summary": "The status of a PEI",
            "operationId": "GetEquipmentStatus",
            "parameters": [
                param("pei", True, r"^(imei-[0-9]{15}|imeisv-[0-9]{16}|.+)$",
                      "PEI of the UE (TS 29.571 Pei); only IMEI and IMEISV PEIs are checked"),
                param("supi", False, r"^(imsi-[0-9]{5,15}|nai-.+|gci-.+|gli-.+|.+)$",
                      "SUPI of the UE (TS 29.571 Supi); an imsi- SUPI is used"),
                param("gpsi", False, r"^(msisdn-[0-9]{5,15}|extid-[^@]+@[^@]+|.+)$",
                      "GPSI of the UE (TS 29.571 Gpsi); not used"),
                param("supported-features", False, r"^[A-Fa-f0-9]*$",
                      "Features of the consumer (TS 29.571 SupportedFeatures); none used"),
            ],
            "responses": responses}}},
        "components": {
            "securitySchemes": {"oAuth2ClientCredentials": {
                "type": "oauth2", "flows": {"clientCredentials": {
                    "tokenUrl": "{nrfApiRoot}/oauth2/token",
                    "scopes": {SCOPE: "Access to the N5g-eir_EquipmentIdentityCheck API"}}}}},
            "schemas": {
                "EirResponseData": {"type": "object", "required": ["status"], "properties": {
                    "status": {"$ref": "#/components/schemas/EquipmentStatus"}}},
                "EquipmentStatus": {"type": "string",
                                    "enum": ["WHITELISTED", "BLACKLISTED", "GREYLISTED"]},
                "ProblemDetails": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"},
                    "instance": {"type": "string"}, "cause": {"type": "string"},
                    "invalidParams": {"type": "array", "minItems": 1, "items": {
                        "$ref": "#/components/schemas/InvalidParam"}}}},
                "InvalidParam": {"type": "object", "required": ["param"], "properties": {
                    "param": {"type": "string"}, "reason": {"type": "string"}}},
            }},
    }
