"""The Diameter dictionary: AVP and command definitions as data, and the checks they imply.

Owns the meaning of a message beyond its bytes: each AVP's type and flag
rules (RFC 6733 4.5, TS 29.272 Table 7.3.1/1), each command's grammar kept
as the spec's own ABNF text (RFC 6733 3.2 notation), and the validation
that turns a decoded message into the first problem found, as RFC 6733 7.2
and 7.3 ask: 3008 header bits, 3001/3007 command and application, 3009 AVP
bits, 5001 unsupported M AVP, 5004 bad value, 5005 missing AVP, 5008 AVP
not allowed, 5009 too many, 5014 bad length. Definitions live in ``dicts``.
A ``Dictionary`` is an immutable value: build one and pass it around.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .codec import Avp, AvpLengthError, Message, decode_avps
from .constants import (
    AVP_MANDATORY_BIT,
    AVP_RESERVED_BITS,
    AVP_VENDOR_BIT,
    AvpFlag,
    CmdFlag,
    ResultCode,
)


class AvpType(Enum):
    OCTETS = "OctetString"
    UTF8 = "UTF8String"
    IDENTITY = "DiameterIdentity"
    URI = "DiameterURI"
    U32 = "Unsigned32"
    I32 = "Integer32"
    U64 = "Unsigned64"
    I64 = "Integer64"
    ENUM = "Enumerated"
    TIME = "Time"
    ADDRESS = "Address"
    GROUPED = "Grouped"


_FIXED_SIZE = {AvpType.U32: 4, AvpType.I32: 4, AvpType.ENUM: 4, AvpType.TIME: 4,
               AvpType.U64: 8, AvpType.I64: 8}


class MRule(Enum):
    """The M-bit column of an AVP flag table."""

    MUST = "must"
    MUST_NOT = "must_not"
    MAY = "may"


@dataclass(frozen=True, slots=True)
class Rule:
    """One element of an ABNF grammar: ``<X>``, ``{X}``, ``[X]`` with ``n*m`` repetition."""

    name: str
    min: int
    max: int | None  # None: unbounded
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class Grammar:
    rules: tuple[Rule, ...]
    extensible: bool  # the grammar has *[AVP]: any other AVP may appear
    exactly_one_of: tuple[str, ...] = ()
    ignored: frozenset[str] = frozenset()  # AVPs counted but whose content is not checked

    @property
    def fixed_head(self) -> tuple[Rule, ...]:
        head = []
        for r in self.rules:
            if not r.fixed:
                break
            head.append(r)
        return tuple(head)


_TOKEN = re.compile(r"(\d*)(\*?)(\d*)\s*([<{\[])\s*([A-Za-z0-9-]+)\s*[>}\]]")


def parse_grammar(text: str, exactly_one_of: Sequence[str] = (),
                  ignored: Iterable[str] = ()) -> Grammar:
    """Parse the body of an RFC 6733 3.2 ABNF rule (after the header)."""
    rules: list[Rule] = []
    extensible = False
    for lo, star, hi, bracket, name in _TOKEN.findall(text):
        if name == "AVP":
            extensible = True
            continue
        if star:
            mn = int(lo) if lo else (1 if bracket in "<{" else 0)
            mx: int | None = int(hi) if hi else None
        else:
            mn = 0 if bracket == "[" else 1
            mx = 1
        rules.append(Rule(name, mn, mx, bracket == "<"))
    return Grammar(tuple(rules), extensible, tuple(exactly_one_of), frozenset(ignored))


@dataclass(frozen=True, slots=True)
class AvpDef:
    code: int
    name: str
    type: AvpType
    vendor: int = 0
    m: MRule = MRule.MUST
    # TS 29.272 Table 7.3.1/1 NOTE 2: a receiver ignores an M bit that differs from the table
    ignore_m_mismatch: bool = False
    values: frozenset[int] | None = None  # allowed values of an Enumerated
    grammar: Grammar | None = None  # Grouped only
    opaque: bool = False  # Grouped whose content is not checked (Failed-AVP)
    spec: str = ""

    def example(self) -> Avp:
        """A zero-filled instance, as Failed-AVP carries for 5005 (RFC 6733 7.1.5)."""
        if self.type is AvpType.ADDRESS:
            data = b"\0\x01\0\0\0\0"
        else:
            data = b"\0" * _FIXED_SIZE.get(self.type, 0)
        flags = (AvpFlag.VENDOR if self.vendor else 0) | (
            AvpFlag.MANDATORY if self.m is MRule.MUST else 0)
        return Avp(self.code, data, self.vendor, flags)


_HEADER = re.compile(r"<\s*Diameter Header:\s*([^>]*)>")


@dataclass(frozen=True, slots=True)
class CommandDef:
    code: int
    app_id: int
    name: str  # without -Request/-Answer
    request: Grammar
    answer: Grammar
    proxiable: bool
    spec: str


def command_from_abnf(request_abnf: str, answer_abnf: str, spec: str,
                      request_one_of: Sequence[str] = (),
                      ignored: Iterable[str] = ()) -> CommandDef:
    """Build a command definition from the spec's two ABNF rules."""
    m = _HEADER.search(request_abnf)
    if not m:
        raise ValueError(f"no Diameter Header in {request_abnf!r}")
    parts = [p.strip() for p in m.group(1).split(",")]
    code = int(parts[0])
    numbers = [p for p in parts[1:] if p.isdigit()]
    app_id = int(numbers[0]) if numbers else 0
    name = request_abnf.split(">")[0].strip().lstrip("<").removesuffix("-Request")
    body_req = request_abnf[m.end():]
    ma = _HEADER.search(answer_abnf)
    if not ma:
        raise ValueError(f"no Diameter Header in {answer_abnf!r}")
    return CommandDef(code, app_id, name, parse_grammar(body_req, request_one_of, ignored),
                      parse_grammar(answer_abnf[ma.end():], (), ignored), "PXY" in parts, spec)


# RFC 6733 7.2: the grammar of every answer with the E bit, whatever its command.
# 0*1< Session-Id > is kept as an optional AVP: a receiver need not insist on its place.
ERROR_ANSWER = parse_grammar(
    "[Session-Id] {Origin-Host} {Origin-Realm} {Result-Code} [Origin-State-Id] "
    "[Error-Message] [Error-Reporting-Host] [Failed-AVP] [Experimental-Result] "
    "*[Proxy-Info] *[AVP]")


@dataclass(slots=True)
class Problem:
    """The first error found in a message, ready for the answer (RFC 6733 7.2, 7.5)."""

    result_code: int
    failed: list[Avp] = field(default_factory=list)
    reason: str = ""

    @property
    def protocol_error(self) -> bool:
        return 3000 <= self.result_code < 4000


class Dictionary:
    """AVP and command definitions, looked up by (code, vendor) and (code, app)."""

    def __init__(self, avps: Iterable[AvpDef], commands: Iterable[CommandDef]) -> None:
        self.avps: dict[tuple[int, int], AvpDef] = {}
        self.by_name: dict[str, AvpDef] = {}
        for d in avps:
            self.avps[(d.code, d.vendor)] = d
            self.by_name[d.name] = d
        self.commands: dict[tuple[int, int], CommandDef] = {}
        self._allowed: dict[Grammar, dict[tuple[int, int], Rule]] = {}
        self.apps: set[int] = set()
        for c in commands:
            self.commands[(c.code, c.app_id)] = c
            self.apps.add(c.app_id)
        for d in self.avps.values():
            if d.grammar:
                self._check_names(d.grammar, d.name)
        for c in self.commands.values():
            self._check_names(c.request, c.name)
            self._check_names(c.answer, c.name)

    def _check_names(self, g: Grammar, where: str) -> None:
        for r in g.rules:
            if r.name not in self.by_name:
                raise ValueError(f"{where}: grammar names unknown AVP {r.name}")

    def avp(self, name: str) -> AvpDef:
        return self.by_name[name]

    def command(self, code: int, app_id: int) -> CommandDef | None:
        return self.commands.get((code, app_id))

    # -- validation --

    def check_header(self, msg: Message,
                     served_apps: Iterable[int] | None = None) -> Problem | None:
        """Header checks for a received request: RFC 6733 3 and 7.1.3 (3001, 3007, 3008)."""
        if msg.flags & CmdFlag.ERROR:
            return Problem(ResultCode.INVALID_HDR_BITS, reason="E bit set on a request")
        apps = self.apps if served_apps is None else served_apps
        if msg.app_id not in apps:
            return Problem(ResultCode.APPLICATION_UNSUPPORTED,
                           reason=f"application {msg.app_id} not served")
        cmd = self.commands.get((msg.code, msg.app_id))
        if cmd is None:
            return Problem(ResultCode.COMMAND_UNSUPPORTED,
                           reason=f"command {msg.code} not in application {msg.app_id}")
        if bool(msg.flags & CmdFlag.PROXIABLE) != cmd.proxiable:
            return Problem(ResultCode.INVALID_HDR_BITS,
                           reason=f"P bit must be {int(cmd.proxiable)} on {cmd.name}")
        return None

    def check_message(self, msg: Message) -> Problem | None:
        """Header and grammar checks of a received message against its command.

        An answer with the E bit is checked against the generic error grammar
        of RFC 6733 7.2, not the command's own answer grammar.
        """
        cmd = self.commands.get((msg.code, msg.app_id))
        if msg.is_request:
            problem = self.check_header(msg)
            if problem:
                return problem
        if cmd is None:
            return Problem(ResultCode.COMMAND_UNSUPPORTED, reason=f"unknown command {msg.code}")
        grammar = cmd.request if msg.is_request else ERROR_ANSWER if msg.is_error else cmd.answer
        try:
            return self.check_avps(msg.avps, grammar)
        except RecursionError:
            # Grouped AVPs nested hundreds deep (e.g. Terminal-Information, whose *[AVP]
            # admits itself): refuse the message rather than crash the caller
            return Problem(ResultCode.UNABLE_TO_COMPLY, reason="AVPs nested too deeply")

    def check_avps(self, avps: Sequence[Avp], grammar: Grammar) -> Problem | None:
        """Check AVPs against a grammar; report only the first error (RFC 6733 7.2)."""
        head = grammar.fixed_head
        for i, rule in enumerate(head):
            want = self.by_name[rule.name]
            if i >= len(avps) or avps[i].code != want.code or avps[i].vendor != want.vendor:
                misplaced = next((a for a in avps if a.code == want.code
                                  and a.vendor == want.vendor), None)
                return Problem(ResultCode.MISSING_AVP, [misplaced or want.example()],
                               f"{rule.name} must be at position {i + 1}")
        allowed = self._allowed.get(grammar)
        if allowed is None:
            allowed = self._allowed[grammar] = {
                (self.by_name[r.name].code, self.by_name[r.name].vendor): r for r in grammar.rules}
        counts: dict[str, int] = {}
        for avp in avps:
            found = allowed.get((avp.code, avp.vendor))
            d = self.avps.get((avp.code, avp.vendor))
            if d is None:
                if avp.flags & AvpFlag.MANDATORY:
                    return Problem(ResultCode.AVP_UNSUPPORTED, [avp],
                                   f"unsupported AVP {avp.code} (vendor {avp.vendor}) with M bit")
                continue
            if found is not None and found.name in grammar.ignored:
                pass  # present but ignored: its content is not checked (TS 29.272 7.2.2)
            else:
                problem = self.check_avp(avp, d)
                if problem:
                    return problem
            if found is None:
                if not grammar.extensible:
                    return Problem(ResultCode.AVP_NOT_ALLOWED, [avp], f"{d.name} not allowed here")
                continue
            n = counts.get(found.name, 0) + 1
            counts[found.name] = n
            if found.max is not None and n > found.max:
                return Problem(ResultCode.AVP_OCCURS_TOO_MANY_TIMES, [avp],
                               f"{d.name} occurs more than {found.max} time(s)")
        for rule in grammar.rules:
            if counts.get(rule.name, 0) < rule.min:
                return Problem(ResultCode.MISSING_AVP, [self.by_name[rule.name].example()],
                               f"missing {rule.name}")
        if grammar.exactly_one_of:
            present = [n for n in grammar.exactly_one_of if counts.get(n)]
            if not present:
                # RFC 6733 6.11: Failed-AVP carries an example of each alternative
                return Problem(ResultCode.MISSING_AVP,
                               [self.by_name[n].example() for n in grammar.exactly_one_of],
                               "one of " + ", ".join(grammar.exactly_one_of) + " is required")
            if len(present) > 1:
                extra = self.by_name[present[1]]
                avp = next(a for a in avps if a.code == extra.code and a.vendor == extra.vendor)
                return Problem(ResultCode.AVP_OCCURS_TOO_MANY_TIMES, [avp],
                               "only one of " + ", ".join(grammar.exactly_one_of) + " may appear")
        return None

    def check_avp(self, avp: Avp, d: AvpDef) -> Problem | None:
        """Flag bits, length and value of one known AVP (RFC 6733 4.1, 4.2, 7.1.5)."""
        flags = avp.flags
        if flags & AVP_RESERVED_BITS:
            return Problem(ResultCode.INVALID_AVP_BITS, [avp], f"{d.name}: reserved flag bits set")
        if flags & AVP_VENDOR_BIT and not d.vendor:
            # RFC 6733 4.5: V is MUST NOT for the IETF AVPs (here: V with a zero Vendor-ID)
            return Problem(ResultCode.INVALID_AVP_BITS, [avp], f"{d.name}: V bit set")
        if not d.ignore_m_mismatch:
            m = bool(flags & AVP_MANDATORY_BIT)
            if (d.m is MRule.MUST and not m) or (d.m is MRule.MUST_NOT and m):
                return Problem(ResultCode.INVALID_AVP_BITS, [avp], f"{d.name}: wrong M bit")
        t = d.type
        size = _FIXED_SIZE.get(t)
        if size is not None:
            if len(avp.data) != size:
                return Problem(ResultCode.INVALID_AVP_LENGTH, [avp],
                               f"{d.name}: {len(avp.data)} data bytes, {size} expected")
            value = int.from_bytes(avp.data, "big", signed=True)
            if d.values is not None and value not in d.values:
                return Problem(ResultCode.INVALID_AVP_VALUE, [avp], f"{d.name}: value not allowed")
            return None
        if t is AvpType.GROUPED:
            return self._check_grouped(avp, d)
        try:
            if t is AvpType.UTF8:
                avp.data.decode("utf-8")
            elif t is AvpType.IDENTITY or t is AvpType.URI:
                if not avp.data or not avp.data.isascii():
                    raise ValueError("not an ASCII identity")
            elif t is AvpType.ADDRESS:
                avp.as_address()
        except ValueError:
            return Problem(ResultCode.INVALID_AVP_VALUE, [avp], f"{d.name}: invalid value")
        return None

    def _check_grouped(self, avp: Avp, d: AvpDef) -> Problem | None:
        inner = decode_avps(avp.data)
        if isinstance(inner, AvpLengthError):
            return Problem(ResultCode.INVALID_AVP_LENGTH,
                           [Avp.grouped(avp.code, [inner.avp], avp.vendor,
                                        bool(avp.flags & AvpFlag.MANDATORY))],
                           f"{d.name}: inner AVP {inner.avp.code} has an invalid length")
        if d.opaque or d.grammar is None:
            return None
        problem = self.check_avps(inner, d.grammar)
        if problem and problem.failed:
            # RFC 6733 7.5: Failed-AVP may hold the group containing the offending AVP
            problem.failed = [Avp.grouped(avp.code, problem.failed, avp.vendor,
                                          bool(avp.flags & AvpFlag.MANDATORY))]
            problem.reason = f"in {d.name}: {problem.reason}"
        return problem



def default_dictionary() -> Dictionary:
    """The base protocol plus S13: what the EIR and the simulator speak."""
    from .dicts import base, s13

    return Dictionary(base.AVPS + s13.AVPS, base.COMMANDS + s13.COMMANDS)
