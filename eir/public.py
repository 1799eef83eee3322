"""The public pre-purchase IMEI check: a web page and ``GET /api/v1/check`` (``[public]``).

Owns what anyone on the internet may learn about an IMEI, in plain words
and in Kazakh, Russian or English (POLICY.md: "Anyone can check an IMEI
before buying a phone, on a public web site"), and how often they may ask.

What it implements:

- the IMEI as typed: spaces, dashes, dots and slashes dropped, then exactly
  15 decimal digits whose last is the Luhn check digit of the first 14
  (3GPP TS 23.003 6.2.1 and Annex B). A number that fails is a 400 with a
  plain-words reason (not digits, how many digits, a typing mistake), and
  no lookup. (S13 ignores the 15th digit, POLICY.md rule 1; a person typing
  a number is exactly who the check digit exists for.)
- the decision: `Regime.dry_run` with no IMSI, at the regime's clock, with
  ``cached=False``: it observes nothing, enrols nothing, counts nothing,
  and reads the IMEI's history from the store every time (the same one
  point read for an IMEI the network used a second ago and for one it
  never saw) without touching the S13 hot set (POLICY.md "read-only
  questions").
- the public vocabulary: a decision is mapped to one of six statuses and
  never shown itself (`public_answer`): ``registered`` (WHITELISTED, any
  reason), ``not_registered`` (GREYLISTED: usable until the deadline, then
  blocked unless registered), ``registration_required`` (BLACKLISTED
  ``grace_expired``, or EQUIPMENT_UNKNOWN under a strict regime),
  ``reported_stolen`` (black ``stolen`` or ``lost``), ``blocked`` (every
  other black reason: counterfeit, illegal import, cloned, unknown TAC, a
  reason a ministry invented), ``invalid_imei`` (a configured invalid
  pattern such as all zeros). List reasons are free text in the registry
  (eir.policy.csvio), so they are matched against this fixed table and
  never echoed.
- "cloned" is answered as ``blocked``, on purpose: the buyer's decision is
  the same (the phone will not work), while the word says more than the
  buyer needs: that another handset carries this IMEI, typically a genuine
  one whose owner still uses it under an exception pair (POLICY.md step 2),
  which is a fact about a third person. "Reported stolen" is said, because
  warning buyers off stolen phones is what the check exists for
  (POLICY.md: blocking is meant to make theft pointless).
- nothing private: the answer carries only the IMEI asked for, the
  status, the sentence and the deadline. No IMSI, owner, operator, list
  source, evidence, note, reason text, exception pair or sighting count is
  read into the answer. The deadline of an unlisted IMEI already used on a
  home network tells when its grace clock started, which a buyer needs (a
  phone used for 25 days has 5 left); for one never seen it is now + the
  grace period, the same sentence.
- the same shape for every status: the JSON object always has the same
  five keys, the page the same elements; and every lookup answers after at
  least ``answer_floor_ms`` (default 50 ms), so the time taken does not tell
  a registered IMEI from an unknown one either.
- rate limits (`RateLimiter`): a token bucket per client (``burst``
  lookups at once, refilled at ``rate_per_minute``; IPv6 clients per
  ``ipv6_prefix``) and one for the node (``node_burst``,
  ``node_rate_per_second``); an empty bucket is a 429 with Retry-After and
  a plain-words page. Only lookups take tokens (a mistyped IMEI is not a
  lookup). The client table holds at most ``max_clients`` buckets, the
  least recently seen forgotten first: a forgotten client comes back with
  a full bucket, which the node bucket bounds.
- the client is the TCP peer. ``X-Forwarded-For`` is believed only from
  a peer in ``trusted_proxies`` (off by default: anyone can write the
  header), and then read from the right, skipping trusted proxies: the
  first address not in the list is the client (hops to its left are
  whatever that client wrote).
- language: ``?lang=kk|ru|en``, else Accept-Language (RFC 9110 12.5.4, by
  q-value), else ``default_lang``; words are data (eir/data/public/
  messages.toml), every key in every language.
- the page is server-side HTML, usable without JavaScript, with no
  external resources: its stylesheet is served here, so the
  Content-Security-Policy allows nothing inline. Every response says
  ``nosniff``, ``Referrer-Policy: no-referrer``, no framing, and answers
  are ``Cache-Control: no-store``.

Processes: with ``server.workers`` > 1 only worker 0 (the one that runs
registry jobs, `eir.app.Role`) serves this listener, so that one rate-limit
table and one node bucket see every request; its socket is bound with
SO_REUSEPORT so that a rolling restart's new worker 0 can bind it while the
old one still serves (for that moment each has its own buckets).
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
import math
import sqlite3
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eir.config import PUBLIC_LANGUAGES, PublicSection
from eir.http import PROBLEM_JSON, Asgi, Message, Receive, Scope, Send, problem_body
from eir.policy.model import Decision, Status, from_epoch, luhn_check_digit
from eir.policy.regime import Regime

log = logging.getLogger("eir.public")

__all__ = [
    "PublicAnswer",
    "PublicCheck",
    "RateLimiter",
    "choose_lang",
    "client_key",
    "load_messages",
    "parse_imei",
    "public_answer",
]

LANGS: Final = PUBLIC_LANGUAGES
STATUSES: Final = ("registered", "not_registered", "registration_required", "reported_stolen",
                   "blocked", "invalid_imei")
# black-list reasons said as "reported lost or stolen"; every other black reason is "blocked"
_STOLEN: Final = frozenset({"stolen", "lost"})
# what a person may type between the digits (how boxes and *#06# print an IMEI)
_SEPARATORS: Final = str.maketrans("", "", " \t-./")
_MAX_INPUT: Final = 64  # characters of the imei parameter looked at or echoed
# seconds a connection may send nothing before it is closed (eir.http): the listener is open
# to anyone, and clients trickling half a request must not hold every descriptor
READ_TIMEOUT: Final = 20

CSP: Final = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
              "base-uri 'none'; frame-ancestors 'none'")
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


# -- words ---------------------------------------------------------------------------------

Messages = Mapping[str, Mapping[str, Any]]


def load_messages() -> dict[str, dict[str, Any]]:
    """The words of every language, from eir/data/public/messages.toml."""
    text = (resources.files("eir") / "data" / "public" / "messages.toml").read_text("utf-8")
    return tomllib.loads(text)


def _css() -> bytes:
    return (resources.files("eir") / "data" / "public" / "public.css").read_bytes()


def choose_lang(query: str | None, accept: str | None, default: str) -> str:
    """``?lang=`` if it names a language we have, else the best of Accept-Language, else
    ``default``. Accept-Language ranges are taken by q-value, ties in the order given;
    ``kk-KZ`` is ``kk``; ``*`` and languages we lack are passed over."""
    if query in LANGS:
        return query
    best, best_q = default, 0.0
    for i, part in enumerate((accept or "")[:512].split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGS:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if not (math.isfinite(q) and 0 < q <= 1):
            continue
        # an earlier range wins a tie: subtract a hair per position
        score = q - i * 1e-6
        if score > best_q:
            best, best_q = primary, score
    return best


# -- the IMEI as typed ------------------------------------------------------------------------

@dataclass(frozen=True)
class Typed:
    """The IMEI parameter as understood: the 15 digits, or why not (a messages key)."""

    imei: str | None
    error: str | None = None
    count: int = 0


def parse_imei(text: str | None) -> Typed:
    """15 digits with a valid check digit (TS 23.003 6.2.1, Annex B), separators dropped."""
    raw = (text or "")[:_MAX_INPUT].translate(_SEPARATORS)
    if not raw:
        return Typed(None, "error_missing")
    if not (raw.isascii() and raw.isdigit()):
        return Typed(None, "error_chars")
    if len(raw) != 15:
        return Typed(None, "error_length", len(raw))
    if luhn_check_digit(raw[:14]) != ord(raw[14]) - 48:
        return Typed(None, "error_check")
    return Typed(raw)


# -- the public vocabulary ------------------------------------------------------------------

@dataclass(frozen=True)
class PublicAnswer:
    """All that a public answer says: a status of `STATUSES`, whether the phone can be used
    now, and a deadline (UTC epoch seconds) where one runs."""

    status: str
    usable: bool
    deadline: int | None = None


def public_answer(d: Decision) -> PublicAnswer:
    """The decision in the public vocabulary (the module docstring says why each)."""
    if d.status == Status.WHITELISTED:
        return PublicAnswer("registered", True)
    if d.status == Status.GREYLISTED:
        return PublicAnswer("not_registered", True, d.deadline)
    if d.status is None or d.reason == "grace_expired":
        return PublicAnswer("registration_required", False)
    if d.reason in _STOLEN:
        return PublicAnswer("reported_stolen", False)
    if d.reason == "malformed":
        return PublicAnswer("invalid_imei", False)
    return PublicAnswer("blocked", False)


# -- rate limits ---------------------------------------------------------------------------

class RateLimiter:
    """Token buckets: one per client key (at most ``max_clients``, least recently seen
    forgotten first) and one for the node. Rates are per second."""

    def __init__(self, rate: float, burst: int, node_rate: float, node_burst: int,
                 max_clients: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = rate, float(burst)
        self.node_rate, self.node_burst = node_rate, float(node_burst)
        self.max_clients = max_clients
        self.clock = clock
        # key -> [tokens, when last refilled]; in order of last use
        self.clients: OrderedDict[str, list[float]] = OrderedDict()
        self._node = [self.node_burst, clock()]
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self.clients)

    def take(self, key: str) -> tuple[float, str]:
        """Take one token from the client's and the node's bucket: (0, "") when given,
        else (seconds until one is there, "client" or "node"), and nothing is taken."""
        now = self.clock()
        clients = self.clients
        rec = clients.get(key)
        if rec is None:
            rec = clients[key] = [self.burst, now]
            if len(clients) > self.max_clients:
                clients.popitem(last=False)
                self.forgotten += 1
        else:
            clients.move_to_end(key)
            rec[0] = min(self.burst, rec[0] + (now - rec[1]) * self.rate)
            rec[1] = now
        node = self._node
        node[0] = min(self.node_burst, node[0] + (now - node[1]) * self.node_rate)
        node[1] = now
        if rec[0] < 1:
            return (1 - rec[0]) / self.rate, "client"
        if node[0] < 1:
            return (1 - node[0]) / self.node_rate, "node"
        rec[0] -= 1
        node[0] -= 1
        return 0.0, ""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_key(peer: str | None, forwarded: str | None, trusted: tuple[Network, ...],
               ipv6_prefix: int = 64) -> str:
    """The rate-limit key of a request: the TCP peer, or, when the peer is a trusted proxy,
    the rightmost X-Forwarded-For address that is not one; IPv6 by its prefix."""
    addr = _address(peer or "")
    if addr is None:
        return peer or "-"
    if trusted and forwarded and any(addr in net for net in trusted):
        for hop in reversed(forwarded.split(",")):
            a = _address(hop)
            if a is None:
                break  # a hop the proxies did not write: the last proxy answers for it
            if not any(a in net for net in trusted):
                addr = a
                break
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False))
    return str(addr)


# -- the application ---------------------------------------------------------------------

def _with_security_headers(app: Asgi) -> Asgi:
    """Add the security headers to every response, and no-store unless it says otherwise."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + _SECURITY_HEADERS}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


class PublicCheck:
    """The public check's ASGI app over the node's current regime (``regime()`` may be None
    while the registry is unavailable: then 503)."""

    def __init__(self, section: PublicSection, regime: Callable[[], Regime | None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.section = section
        self.regime = regime
        self.messages: Messages = load_messages()
        self.limiter = RateLimiter(section.rate_per_minute / 60.0, section.burst,
                                   section.node_rate_per_second, section.node_burst,
                                   section.max_clients, clock)
        self.trusted = tuple(ipaddress.ip_network(n, strict=False)
                             for n in section.trusted_proxies)
        self.floor = section.answer_floor_ms / 1000.0
        self.offset = section.offset_seconds()
        hours, minutes = divmod(abs(self.offset) // 60, 60)
        self.offset_label = (("-" if self.offset < 0 else "+") + str(hours) +
                             (f":{minutes:02d}" if minutes else ""))
        self.css = _css()
        # what was answered since start, by outcome (for logs and tests; no IMEI kept)
        self.counts: dict[str, int] = dict.fromkeys(
            (*STATUSES, "typo", "limited_client", "limited_node", "unavailable"), 0)
        self.app: Asgi = _with_security_headers(Starlette(routes=[
            Route("/", self.page, methods=["GET"]),
            Route("/api/v1/check", self.api, methods=["GET"]),
            Route("/static/public.css", self.stylesheet, methods=["GET"]),
        ]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # -- the one lookup both endpoints make --

    def _client(self, request: Request) -> str:
        forwarded = ",".join(request.headers.getlist("x-forwarded-for")) if self.trusted else None
        peer = request.client.host if request.client else None
        return client_key(peer, forwarded, self.trusted, self.section.ipv6_prefix)

    async def _lookup(self, request: Request, imei: str) -> PublicAnswer | tuple[str, float]:
        """The answer, or ("unavailable" | "client" | "node", retry after seconds)."""
        started = time.monotonic()
        regime = self.regime()
        if regime is None:
            self.counts["unavailable"] += 1
            return "unavailable", 60.0
        wait, who = self.limiter.take(self._client(request))
        if wait:
            self.counts[f"limited_{who}"] += 1
            return who, wait
        try:
            decision, _facts = regime.dry_run(imei, cached=False)
        except (sqlite3.Error, OSError, RuntimeError):  # the store's point read: a 503
            log.exception("public check: reading the registry failed")
            self.counts["unavailable"] += 1
            return "unavailable", 5.0
        answer = public_answer(decision)
        self.counts[answer.status] += 1
        # the same least time for every answer, whatever was looked up
        rest = self.floor - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)
        return answer

    def _words(self, lang: str) -> Mapping[str, Any]:
        return self.messages[lang]

    def _deadline_text(self, lang: str, deadline: int) -> str:
        w = self._words(lang)
        t = datetime.fromtimestamp(deadline + self.offset, UTC)
        return str(w["date"]).format(day=t.day, month=w["months"][t.month - 1], year=t.year,
                                     time=f"{t:%H:%M}", offset=self.offset_label)

    def _sentence(self, lang: str, answer: PublicAnswer) -> str:
        template = str(self._words(lang)[answer.status])
        deadline = "" if answer.deadline is None else self._deadline_text(lang, answer.deadline)
        return template.format(deadline=deadline)

    @staticmethod
    def _retry(seconds: float) -> int:
        return max(1, math.ceil(seconds))

    # -- JSON --

    async def api(self, request: Request) -> Response:
        q = request.query_params
        lang = choose_lang(q.get("lang"), request.headers.get("accept-language"),
                           self.section.default_lang)
        w = self._words(lang)
        typed = parse_imei(q.get("imei"))
        if typed.imei is None:
            assert typed.error is not None
            self.counts["typo"] += 1
            detail = str(w[typed.error]).format(count=typed.count)
            return self._problem(400, str(w["error_title"]), detail, "INVALID_IMEI", lang,
                                 invalid=[{"param": "imei", "reason": detail}])
        got = await self._lookup(request, typed.imei)
        if not isinstance(got, PublicAnswer):
            who, wait = got
            if who == "unavailable":
                return self._problem(503, str(w["unavailable_title"]),
                                     str(w["unavailable_text"]), "SERVICE_UNAVAILABLE", lang,
                                     retry=self._retry(wait))
            retry = self._retry(wait)
            text = str(w["limited_text" if who == "client" else "busy_text"])
            return self._problem(429, str(w["limited_title"]), text.format(seconds=retry),
                                 "TOO_MANY_REQUESTS", lang, retry=retry)
        body = {"imei": typed.imei, "usable": got.usable, "status": got.status,
                "message": self._sentence(lang, got),
                "deadline": None if got.deadline is None else from_epoch(got.deadline)}
        return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                        media_type="application/json",
                        headers={"content-language": lang, "vary": "accept-language"})

    def _problem(self, status: int, title: str, detail: str, cause: str, lang: str, *,
                 invalid: list[dict[str, str]] | None = None, retry: int | None = None
                 ) -> Response:
        headers = {"content-language": lang, "vary": "accept-language"}
        if retry is not None:
            headers["retry-after"] = str(retry)
        return Response(problem_body(status, title, detail, cause=cause,
                                     invalid_params=invalid or ()),
                        status_code=status, media_type=PROBLEM_JSON, headers=headers)

    # -- HTML --

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css",
                        headers={"cache-control": "public, max-age=3600"})

    async def page(self, request: Request) -> Response:
        q = request.query_params
        lang = choose_lang(q.get("lang"), request.headers.get("accept-language"),
                           self.section.default_lang)
        w = self._words(lang)
        typed_text = q.get("imei")
        headers = {"content-language": lang, "vary": "accept-language"}
        if typed_text is None:
            return self._html(lang, "", None, 200, headers)
        typed = parse_imei(typed_text)
        if typed.imei is None:
            assert typed.error is not None
            self.counts["typo"] += 1
            text = str(w[typed.error]).format(count=typed.count)
            return self._html(lang, typed_text[:_MAX_INPUT],
                              ("error", str(w["error_title"]), text, None), 400, headers)
        got = await self._lookup(request, typed.imei)
        if isinstance(got, PublicAnswer):
            checked = str(w["checked_imei"]).format(imei=typed.imei)
            return self._html(lang, typed.imei, (got.status, str(w["result_heading"]),
                                                 self._sentence(lang, got), checked),
                              200, headers)
        who, wait = got
        retry = self._retry(wait)
        headers["retry-after"] = str(retry)
        if who == "unavailable":
            return self._html(lang, typed.imei, ("unavailable", str(w["unavailable_title"]),
                                                 str(w["unavailable_text"]), None), 503, headers)
        text = str(w["limited_text" if who == "client" else "busy_text"]).format(seconds=retry)
        return self._html(lang, typed.imei, ("limited", str(w["limited_title"]), text, None),
                          429, headers)

    def _html(self, lang: str, value: str, result: tuple[str, str, str, str | None] | None,
              status: int, headers: dict[str, str]) -> Response:
        """The one page: the form, and the result (class, heading, sentence, IMEI line)."""
        w = self._words(lang)
        e = html.escape
        t = {k: e(v) for k, v in w.items() if isinstance(v, str)}
        links = []
        for code in LANGS:
            current = ' aria-current="true"' if code == lang else ""
            name = e(str(self.messages[code]["lang_name"]))
            links.append(f'<li><a href="?lang={code}" hreflang="{code}" lang="{code}"{current}>'
                         f"{name}</a></li>")
        error = result is not None and result[0] == "error"
        described = "imei-help imei-error" if error else "imei-help"
        invalid = ' aria-invalid="true"' if error else ""
        section = ""
        if result is not None:
            kind, heading, sentence, line = result
            role = "alert" if kind in ("error", "limited", "unavailable") else "status"
            text_id = "imei-error" if error else "result-text"
            section = (f'<section id="result" class="result result-{kind}" role="{role}" '
                       f'aria-labelledby="result-heading">'
                       f'<h2 id="result-heading">{e(heading)}</h2>'
                       f'<p id="{text_id}" class="result-text">{e(sentence)}</p>'
                       + (f'<p class="imei">{e(line)}</p>' if line else "") + "</section>")
        title, nav, intro, label = t["title"], t["lang_nav"], t["intro"], t["label"]
        helptext, submit, privacy = t["help"], t["submit"], t["privacy"]
        page = f"""<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<link rel="stylesheet" href="static/public.css">
</head>
<body>
<header>
<nav aria-label="{nav}"><ul>{"".join(links)}</ul></nav>
<h1>{title}</h1>
</header>
<main>
<p>{intro}</p>
<form method="get" action="" role="search">
<input type="hidden" name="lang" value="{lang}">
<label for="imei">{label}</label>
<p id="imei-help" class="help">{helptext}</p>
<input id="imei" name="imei" type="text" inputmode="numeric" autocomplete="off"
 spellcheck="false" maxlength="{_MAX_INPUT}" required aria-describedby="{described}"{invalid}
 value="{e(value)}">
<button type="submit">{submit}</button>
</form>
{section}
</main>
<footer><p>{privacy}</p></footer>
</body>
</html>
"""
        return Response(page, status_code=status, media_type="text/html; charset=utf-8",
                        headers=headers)
