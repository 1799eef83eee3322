"""NRF-style access tokens for the N5g tests: JWS compact serialisation (RFC 7515) signed
here with `cryptography`, independently of `eir.sbi_token` (which only verifies)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


def write_public(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def claims(**over: Any) -> dict[str, Any]:
    """TS 29.510 AccessTokenClaims for an AMF asking for n5g-eir-eic, valid for an hour."""
    now = int(time.time())
    base: dict[str, Any] = {"iss": "nrf-0001", "sub": "amf-instance-7", "aud": "5G_EIR",
                            "scope": "n5g-eir-eic", "exp": now + 3600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: PrivateKey, payload: dict[str, Any], *, alg: str | None = None,
         header: dict[str, Any] | None = None) -> str:
    if alg is None:
        alg = ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else
               "RS256" if isinstance(key, rsa.RSAPrivateKey) else "EdDSA")
    head = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(payload).encode())}"
    data = signing_input.encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = key.sign(data)
    return f"{signing_input}.{b64(sig)}"
