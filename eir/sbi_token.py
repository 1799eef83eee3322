"""OAuth2 access tokens of the 5G service-based interfaces, checked by the producer (the EIR).

Owns the check an NF service producer makes of the bearer token an NF
service consumer (the AMF) sends (TS 29.511 6.1.7.3, TS 33.501 13.4.1,
TS 29.500 6.7.3): a JWS in compact serialisation (RFC 7515 3.1, 7.1)
signed by the NRF, whose claims are TS 29.510's AccessTokenClaims (iss,
sub, aud, scope, exp; RFC 7519 4.1). It is verified with the NRF's public
key from a PEM file, with `cryptography` doing the signature math:

- the algorithm is fixed by the key, never chosen by the token (RFC 8725
  2.1, 3.1): ES256 for a P-256 key, RS256 for an RSA key of 2048 bits or
  more, EdDSA for an Ed25519 key; any other ``alg`` (``none``, HS256, ...)
  is refused, and so is a ``crit`` header (RFC 7515 4.1.11: we understand
  no extension);
- base64url is decoded strictly (no padding, no stray characters);
- ``exp`` is required, ``nbf`` honoured, both with a small leeway for
  clock skew; ``iss`` must be the configured NRF when one is configured;
  ``aud`` must name one of the configured audiences; ``scope`` must hold
  the service's scope (``n5g-eir-eic``, TS 29.511 6.1.7.1).

Failures map to RFC 6750 3.1: a token that is malformed, badly signed,
expired or for another audience is ``invalid_token`` (401); one without
the scope is ``insufficient_scope`` (403).

A consumer reuses one token for many requests until it expires, so a token
that passed is remembered (bounded) and only its time claims are checked
again: the signature of a given token under a given key cannot change.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["Claims", "TokenError", "TokenVerifier"]

LEEWAY_SECONDS = 30  # clock skew allowed on exp and nbf (RFC 7519 4.1.4: "a few minutes")
CACHE_SIZE = 4096  # tokens remembered as verified (one per consumer instance, typically)
MAX_TOKEN_CHARS = 8192  # a longer one is refused unread
MIN_RSA_BITS = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64_TABLE = bytes.maketrans(b"-_", b"+/")


class TokenError(Exception):
    """A token that does not grant access: the HTTP status and the RFC 6750 error code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class Claims:
    """What the EIR uses of a verified token."""

    sub: str | None  # the consumer's NF instance id
    iss: str | None
    exp: float
    nbf: float | None


def _invalid(description: str) -> TokenError:
    return TokenError(401, "invalid_token", description)


def _b64decode(part: str) -> bytes:
    if _B64URL.fullmatch(part) is None or len(part) % 4 == 1:
        raise _invalid("not base64url")
    data = part.encode("ascii").translate(_B64_TABLE) + b"=" * (-len(part) % 4)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise _invalid("not base64url") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 6)")


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        # strict RFC 8259: json.loads would take NaN and Infinity; a deep nesting (the
        # header is read before any signature is checked) is a RecursionError
        value = json.loads(_b64decode(part), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _invalid(f"{what} is not a JSON object")
    return value


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name} is not a NumericDate")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        raise _invalid(f"{name} is not a NumericDate") from None
    if not math.isfinite(number):  # 1e400 parses as inf
        raise _invalid(f"{name} is not a NumericDate")
    return number


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def algorithm_for(key: object) -> str:
    """The one JWS ``alg`` accepted with this key; ValueError for a key we do not take."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"an EC key on {key.curve.name}: only P-256 (ES256) is accepted")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits: at least {MIN_RSA_BITS}")
        return "RS256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"a {type(key).__name__}: expected an EC P-256, RSA or Ed25519 public key")


def load_public_key(path: str | Path) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo) or the public key of a PEM certificate."""
    data = Path(path).read_bytes()
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key or certificate ({exc})") from None
    algorithm_for(key)
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey |
                      ed25519.Ed25519PublicKey)
    return key


class TokenVerifier:
    """Checks bearer tokens against one NRF key, audience, issuer and scope."""

    def __init__(self, key: PublicKey, *, scope: str, audience: tuple[str, ...],
                 issuer: str = "", clock: Callable[[], float] = time.time,
                 leeway: float = LEEWAY_SECONDS) -> None:
        self.key = key
        self.alg = algorithm_for(key)
        self.scope = scope
        self.audience = frozenset(a for a in audience if a)
        self.issuer = issuer
        self.clock = clock
        self.leeway = leeway
        self._verified: dict[str, Claims] = {}

    def verify(self, token: str) -> Claims:
        """The token's claims, or TokenError (401 invalid_token, 403 insufficient_scope)."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._verified) >= CACHE_SIZE:
                self._verified.clear()  # crude but bounded; a consumer re-verifies once
            self._verified[token] = claims
        now = self.clock()
        if now > claims.exp + self.leeway:
            self._verified.pop(token, None)
            raise _invalid("the token has expired")
        if claims.nbf is not None and now + self.leeway < claims.nbf:
            raise _invalid("the token is not valid yet")
        return claims

    def _verify(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_CHARS:
            raise _invalid("the token is too long")
        if not token.isascii():  # (the header is read as latin-1) the signing input is ASCII
            raise _invalid("not base64url")
        parts = token.split(".")
        if len(parts) != 3:
            raise _invalid("not a JWS in compact serialisation")
        header = _json_object(parts[0], "the JOSE header")
        alg = header.get("alg")
        if alg != self.alg:
            # (the token's value stays out: the description goes into a response header)
            raise _invalid(f"alg is not {self.alg}, the only one this EIR's key verifies")
        if "crit" in header:
            raise _invalid("critical header parameters are not understood")
        signature = _b64decode(parts[2])
        self._check_signature((parts[0] + "." + parts[1]).encode("ascii"), signature)
        claims = _json_object(parts[1], "the claims")
        exp = _number(claims, "exp")
        if exp is None:
            raise _invalid("the token has no exp")
        nbf = _number(claims, "nbf")
        iss = claims.get("iss")
        if self.issuer and iss != self.issuer:
            raise _invalid("the token is not from the configured issuer")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not self.audience.intersection(a for a in auds if isinstance(a, str)):
            raise _invalid("the token is not for this audience")
        scope = claims.get("scope")
        if not isinstance(scope, str) or self.scope not in scope.split(" "):
            raise TokenError(403, "insufficient_scope",
                             f"the token's scope does not include {self.scope}")
        sub = claims.get("sub")
        return Claims(sub if isinstance(sub, str) and sub else None,
                      iss if isinstance(iss, str) else None, exp, nbf)

    def _check_signature(self, signed: bytes, signature: bytes) -> None:
        key = self.key
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                # RFC 7518 3.4: R || S, 32 octets each, not DER
                if len(signature) != 64:
                    raise _invalid("an ES256 signature is 64 octets")
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                           int.from_bytes(signature[32:], "big"))
                key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.verify(signature, signed)
        except InvalidSignature:
            raise _invalid("bad signature") from None
