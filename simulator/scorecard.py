"""The signed audit scorecard: canonical JSON, Ed25519 signatures, keys and the HTML page.

Owns the scorecard's file formats and their verification (issue 4 item 5:
"the scorecard carries an Ed25519 signature made with the ministry's
private key, so an operator can read but not alter it"; DESIGN.md 5:
Ed25519 through the ``cryptography`` package), ``eir-sim keygen`` and
``eir-sim verify``. What the scorecard says is `simulator.audit`'s.

Canonical JSON: ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)``, UTF-8 (so ASCII) bytes. The same
object always gives the same bytes, in any process.

JSON scorecard (``FILE.json``), exactly the canonical JSON of the envelope
and a newline::

    {"scorecard": {...}, "signature": {"alg": "Ed25519", "key_id": "<16 hex>",
                                       "value": "<base64>"}}

- ``value`` signs the canonical JSON of ``scorecard``;
- ``key_id`` is the first 16 hex digits of the SHA-256 of the raw 32-byte
  public key (as ``eir package`` does), naming the key that signed it.

HTML scorecard (``FILE.html``): a readable page (report.py's chrome) that
embeds the envelope as ``<script type="application/json"
id="scorecard">`` (with ``<``, ``>`` and ``&`` escaped as ``\\u003c`` ...,
so nothing the audited EIR said can end the element), and a second
signature over the page itself in ``<script type="application/json"
id="scorecard-page-signature">"<base64>"</script>``: it signs the page's
bytes with that base64 string left empty. So the visible text is covered
as well as the data: a page whose banner was edited fails verification
even though its embedded scorecard is intact.

Verification (`verify_bytes`) re-canonicalises the ``scorecard`` object
and checks its signature with the given public key; a JSON file must also
be byte for byte the canonical form (any change to it is an alteration),
and a page must also carry a valid page signature. Every failure is one
line naming what is wrong.

Keys are PEM: the private key PKCS#8, unencrypted, mode 0600 (protecting
it further is the ministry's deployment), the public key
SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from simulator.cliparse import Parser
from simulator.report import Html, banner, chip, esc, page, section, table

__all__ = [
    "ALG",
    "FORMAT",
    "InvalidScorecard",
    "KeyFileError",
    "canonical",
    "envelope_bytes",
    "key_id",
    "keygen",
    "load_private_key",
    "load_public_key",
    "main_keygen",
    "main_verify",
    "render_html",
    "sign",
    "verify_bytes",
    "verify_envelope",
    "write_signed",
]

FORMAT: Final = "eir-audit-scorecard/1"
ALG: Final = "Ed25519"
_SCRIPT: Final = '<script type="application/json" id="scorecard">'
_PAGE_SIG_OPEN: Final = '<script type="application/json" id="scorecard-page-signature">"'
_PAGE_SIG_CLOSE: Final = '"</script>'
_SCRIPT_RE: Final = re.compile(rb'<script type="application/json" id="scorecard">(.*?)</script>',
                               re.S)
_PAGE_SIG_RE: Final = re.compile(
    rb'(<script type="application/json" id="scorecard-page-signature">")([^"]*)("</script>)')


class InvalidScorecard(Exception):
    """The scorecard does not verify; ``str(e)`` is the one-line reason."""


class KeyFileError(Exception):
    """A key file is missing or is not the Ed25519 key expected; the message names it."""


# -- canonical JSON and signatures ------------------------------------------------------


def canonical(obj: object) -> bytes:
    """The canonical JSON bytes of ``obj`` (module docstring)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def sign(scorecard: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed envelope {"scorecard", "signature"} of ``scorecard``."""
    body = json.loads(canonical(scorecard))  # a plain, JSON-exact copy
    value = base64.b64encode(key.sign(canonical(body))).decode("ascii")
    return {"scorecard": body,
            "signature": {"alg": ALG, "key_id": key_id(key.public_key()), "value": value}}


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The JSON scorecard file's exact bytes."""
    return canonical(envelope) + b"\n"


def verify_envelope(envelope: object, public: Ed25519PublicKey) -> dict[str, Any]:
    """Check an envelope's signature with ``public``; returns the scorecard.

    Raises `InvalidScorecard` with the reason.
    """
    if not isinstance(envelope, dict) or set(envelope) != {"scorecard", "signature"}:
        raise InvalidScorecard("not a signed scorecard: expected exactly the keys "
                               "'scorecard' and 'signature'")
    card, sig = envelope["scorecard"], envelope["signature"]
    if not isinstance(card, dict) or not isinstance(sig, dict):
        raise InvalidScorecard("'scorecard' and 'signature' must be objects")
    if sig.get("alg") != ALG:
        raise InvalidScorecard(f"signature algorithm {sig.get('alg')!r}, expected {ALG!r}")
    want = key_id(public)
    if sig.get("key_id") != want:
        raise InvalidScorecard(f"signed by key {sig.get('key_id')!r}, not by the given key "
                               f"{want}")
    raw = _signature_bytes(sig.get("value"), "the signature value")
    try:
        public.verify(raw, canonical(card))
    except InvalidSignature:
        raise InvalidScorecard("the signature does not match the scorecard: it was altered "
                               "after signing") from None
    if card.get("format") != FORMAT:
        raise InvalidScorecard(f"format {card.get('format')!r}, this verifier reads {FORMAT}")
    return card


def _signature_bytes(value: object, what: str) -> bytes:
    """The 64 signature bytes of canonical base64 text (padding bits zero, no other
    spelling: otherwise one changed character could decode to the same bytes)."""
    text = value if isinstance(value, str) else ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidScorecard(f"{what} is not base64") from None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != text:
        raise InvalidScorecard(f"{what} is not a canonical base64 Ed25519 signature")
    return raw


def _json_envelope(text: bytes, what: str) -> object:
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidScorecard(f"{what} is not valid JSON ({exc})") from None


def verify_bytes(data: bytes, public: Ed25519PublicKey) -> dict[str, Any]:
    """Verify a JSON or HTML scorecard given as bytes; returns the scorecard.

    Raises `InvalidScorecard` with the reason (module docstring).
    """
    head = data.lstrip()[:15].lower()
    if head.startswith((b"<!doctype", b"<html")):
        return _verify_html(data, public)
    card = verify_envelope(_json_envelope(data, "the scorecard"), public)
    envelope = json.loads(data)
    if data != envelope_bytes(envelope):
        raise InvalidScorecard("the file is not in canonical form: it was altered or "
                               "reformatted after signing")
    return card


def _verify_html(data: bytes, public: Ed25519PublicKey) -> dict[str, Any]:
    found = _SCRIPT_RE.findall(data)
    if len(found) != 1:
        raise InvalidScorecard(f"the page holds {len(found)} embedded scorecards, expected 1")
    card = verify_envelope(_json_envelope(found[0], "the embedded scorecard"), public)
    sigs = _PAGE_SIG_RE.findall(data)
    if len(sigs) != 1 or data.count(b'id="scorecard-page-signature"') != 1:
        raise InvalidScorecard("the page has no single page signature")
    blank = _PAGE_SIG_RE.sub(lambda mo: mo.group(1) + mo.group(3), data)
    raw = _signature_bytes(sigs[0][1].decode("ascii", "replace"), "the page signature")
    try:
        public.verify(raw, blank)
    except InvalidSignature:
        raise InvalidScorecard("the page signature does not match: the page was altered "
                               "after signing") from None
    return card


# -- files ------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_signed(envelope: Mapping[str, Any], key: Ed25519PrivateKey, *,
                 json_path: Path | None = None, html_path: Path | None = None) -> None:
    """Write the JSON and/or HTML scorecard of a signed envelope."""
    if json_path is not None:
        _atomic_write(json_path, envelope_bytes(envelope))
    if html_path is not None:
        _atomic_write(html_path, render_html(envelope, key).encode("utf-8"))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{p}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{p}: a private key; verification takes the public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{p}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p}: not an Ed25519 public key")
    return key


def keygen(prefix: str | Path) -> tuple[Path, Path, str]:
    """Write PREFIX.private.pem (0600) and PREFIX.public.pem; returns them and the key id.

    Refuses (FileExistsError) to overwrite either file: a ministry key is not
    replaced by accident.
    """
    priv_path = Path(f"{prefix}.private.pem")
    pub_path = Path(f"{prefix}.public.pem")
    for p in (priv_path, pub_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    os.chmod(priv_path, 0o600)  # whatever the umask
    with pub_path.open("xb") as f:
        f.write(public)
    return priv_path, pub_path, key_id(key.public_key())


# -- the page -----------------------------------------------------------------------------

_PASS, _FAIL, _MUTED = "#1b7f3b", "#b3261e", "#9e9e9e"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _ms(v: object) -> str:
    return f"{v:.2f} ms" if isinstance(v, int | float) else "–"


def _verdict(card: Mapping[str, Any]) -> Html:
    passed = card.get("verdict") == "PASS"
    reasons = card.get("reasons") or []
    why = "; ".join(str(r) for r in reasons) if reasons else \
        "every conformance case passed, no mismatch, no list lag"
    return Html(f'<div class="verdict {"pass" if passed else "fail"}" role="status">'
                f'<b>{esc(card.get("verdict"))}</b><span>score {esc(card.get("score"))} / 100'
                f" · {esc(why)}</span></div>")


def _facts(card: Mapping[str, Any]) -> Html:
    peer, aud = card.get("peer") or {}, card.get("auditor") or {}
    pop, t = card.get("population") or {}, card.get("time") or {}
    rows = [
        ("target", card.get("target")),
        ("EIR (CEA)", f"{peer.get('origin_host', '?')} / {peer.get('origin_realm', '?')} "
                      f"({peer.get('product_name', '?')})"),
        ("auditor", f"{aud.get('origin_host')} / {aud.get('origin_realm')} → "
                    f"Destination-Realm {aud.get('destination_realm')}"),
        ("audited at (UTC)", t.get("audited_at")),
        ("judged at (simulated)", f"{t.get('simulated_at')} (± {t.get('margin_s')} s)"),
        ("population", f"seed {pop.get('seed')}, {pop.get('size')} handsets, "
                       f"sha256 {pop.get('sha256')}"),
        ("regime", json.dumps(card.get("regime"), sort_keys=True)),
        ("sample", json.dumps(card.get("sample"), sort_keys=True)),
    ]
    return table(("", ""), rows)


def _enforcement(card: Mapping[str, Any]) -> Html:
    enf = card.get("enforcement") or {}
    cats: Mapping[str, Any] = enf.get("categories") or {}
    rows, classes = [], []
    for name, c in cats.items():
        bad = int(c.get("mismatched", 0)) > 0
        rows.append((name, c.get("sampled"), c.get("unjudged"), c.get("sent"), c.get("matched"),
                     c.get("mismatched"), _pct(c.get("matched", 0), c.get("sent", 0))))
        classes.append("bad" if bad else "")
    out = table(("category", "sampled", "unjudged", "sent", "matched", "mismatched", "match"),
                rows, numeric=range(1, 7), row_class=classes,
                caption="unjudged: too close to a change of the expected answer to judge "
                        "(not sent)")
    examples = [(name, e.get("imei"), e.get("imsi"), e.get("role"), e.get("list_version"),
                 e.get("expected"), e.get("got"))
                for name, c in cats.items() for e in c.get("examples") or []]
    if examples:
        out = Html(out + table(("category", "IMEI", "IMSI", "role", "list version", "expected",
                                "got"), examples, caption="mismatch examples"))
    return out


def _conformance(card: Mapping[str, Any]) -> Html:
    cases: Sequence[Mapping[str, Any]] = (card.get("conformance") or {}).get("cases") or []
    rows = [(c.get("name"), c.get("section"), c.get("expected"), c.get("got"),
             chip("pass", _PASS) if c.get("pass") else chip("FAIL", _FAIL)) for c in cases]
    return table(("case", "spec", "expected", "got", ""), rows,
                 row_class=["" if c.get("pass") else "bad" for c in cases])


def _lag(card: Mapping[str, Any]) -> Html:
    lag = card.get("list_lag") or {}
    newest, enforced = lag.get("newest_version"), lag.get("newest_fully_enforced")
    kind = "pass" if enforced is not None and enforced == newest else "fail"
    shown = "none" if enforced is None else enforced
    head = banner(f"<big>newest version fully enforced: {esc(shown)}</big>"
                  f"of {esc(newest)} published (base {esc(lag.get('base_version'))})", kind)
    versions: Mapping[str, Any] = lag.get("versions") or {}
    rows = [(v, x.get("sent"), x.get("matched"), x.get("mismatched"),
             _pct(x.get("matched", 0), x.get("sent", 0))) for v, x in versions.items()]
    return Html(head + table(("list version", "sent", "matched", "mismatched", "match"), rows,
                             numeric=range(1, 5)))


def _latency(card: Mapping[str, Any]) -> Html:
    lat = card.get("latency_ms") or {}
    return table(("answers", "p50", "p99", "max"),
                 [(lat.get("count"), _ms(lat.get("p50")), _ms(lat.get("p99")),
                   _ms(lat.get("max")))], numeric=range(4),
                 caption="ECRs of the enforcement sample, sent one at a time")


def _embedded(envelope: Mapping[str, Any]) -> str:
    text = canonical(envelope).decode("ascii")
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _page(envelope: Mapping[str, Any], page_sig: str) -> str:
    card: Mapping[str, Any] = envelope["scorecard"]
    sig = envelope["signature"]
    signature = Html(
        f"<p>Signed with Ed25519, key <code>{esc(sig.get('key_id'))}</code>. Check it with "
        "<code>eir-sim verify THIS_FILE --key MINISTRY_PUBLIC_KEY.pem</code>: the page and the "
        "scorecard embedded in it are both signed, so neither can be changed.</p>"
        f"{_SCRIPT}{_embedded(envelope)}</script>"
        f"{_PAGE_SIG_OPEN}{page_sig}{_PAGE_SIG_CLOSE}")
    sections = [
        _verdict(card),
        section("Audit", _facts(card), anchor="audit"),
        section("Enforcement by category", _enforcement(card), anchor="enforcement"),
        section("Conformance (PROTOCOL.md)", _conformance(card), anchor="conformance"),
        section("List lag", _lag(card), anchor="lag"),
        section("Latency", _latency(card), anchor="latency"),
        section("Signature", signature, anchor="signature"),
    ]
    return page(f"EIR compliance scorecard: {card.get('target')}", sections,
                subtitle=f"{card.get('verdict')} · score {card.get('score')} · audited "
                         f"{(card.get('time') or {}).get('audited_at')}",
                nav=[("enforcement", "Enforcement"), ("conformance", "Conformance"),
                     ("lag", "List lag"), ("latency", "Latency"), ("signature", "Signature")])


def render_html(envelope: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    """The signed HTML page of a signed envelope (module docstring)."""
    blank = _page(envelope, "")
    value = base64.b64encode(key.sign(blank.encode("utf-8"))).decode("ascii")
    marker = _PAGE_SIG_OPEN + _PAGE_SIG_CLOSE
    assert blank.count(marker) == 1
    return blank.replace(marker, _PAGE_SIG_OPEN + value + _PAGE_SIG_CLOSE)


# -- command line -------------------------------------------------------------------------


def verify_parser() -> Parser:
    p = Parser(prog="eir-sim verify",
               description="Check the signature of an audit scorecard (JSON or HTML): exit 0 "
                           "valid, 1 invalid, 2 unusable input.",
               epilog="example:\n  eir-sim verify audit/scorecard.json --key ministry.public.pem")
    p.add_argument("scorecard", type=Path, help="FILE.json or FILE.html")
    p.add_argument("--key", required=True, type=Path, metavar="PUBLIC.pem",
                   help="the ministry's public key (PEM)")
    return p


def main_verify(argv: Sequence[str] | None = None) -> int:
    """``eir-sim verify SCORECARD --key PUBLIC.pem``: 0 valid, 1 invalid, 2 unusable input."""
    a = verify_parser().parse_args(argv)
    try:
        public = load_public_key(a.key)
        data = a.scorecard.read_bytes()
    except KeyFileError as exc:
        print(f"eir-sim verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eir-sim verify: {a.scorecard}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        card = verify_bytes(data, public)
    except InvalidScorecard as exc:
        print(f"eir-sim verify: {a.scorecard}: INVALID: {exc}", file=sys.stderr)
        return 1
    print(f"eir-sim verify: {a.scorecard}: valid, signed by key {key_id(public)}: "
          f"{card.get('verdict')} score {card.get('score')} for {card.get('target')}")
    return 0


def keygen_parser() -> Parser:
    p = Parser(prog="eir-sim keygen",
               description="Make the Ed25519 key pair that signs scorecards (never overwrites).",
               epilog="example:\n  eir-sim keygen --out ministry")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="writes PREFIX.private.pem (mode 0600) and PREFIX.public.pem")
    return p


def main_keygen(argv: Sequence[str] | None = None) -> int:
    """``eir-sim keygen --out PREFIX``: a ministry's Ed25519 key pair; 0 done, 2 refused."""
    a = keygen_parser().parse_args(argv)
    try:
        priv, pub, kid = keygen(a.out)
    except OSError as exc:  # FileExistsError included
        msg = f"{exc.filename or a.out}: {exc.strerror}" if exc.strerror else str(exc)
        print(f"eir-sim keygen: {msg}", file=sys.stderr)
        return 2
    print(f"eir-sim keygen: wrote {priv} (keep it secret) and {pub}; key id {kid}")
    return 0
