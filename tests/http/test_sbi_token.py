"""`eir.sbi_token`: NRF access tokens checked as RFC 7515/7519/8725 and RFC 6750 say."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from n5g_tokens import b64, claims, new_key, sign, write_public

from eir.sbi_token import TokenError, TokenVerifier, load_public_key


def verifier(key: object, **kw: object) -> TokenVerifier:
    return TokenVerifier(key.public_key(), scope="n5g-eir-eic",  # type: ignore[attr-defined]
                         audience=("5G_EIR",), **kw)  # type: ignore[arg-type]


def refused(v: TokenVerifier, token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    return info.value


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_each_key_type_verifies_its_own_algorithm(alg: str, tmp_path: Path) -> None:
    key = new_key(alg)
    v = TokenVerifier(load_public_key(write_public(key, tmp_path / "nrf.pem")),
                      scope="n5g-eir-eic", audience=("5G_EIR",), issuer="nrf-0001")
    assert v.alg == alg
    got = v.verify(sign(key, claims()))
    assert got.sub == "amf-instance-7" and got.iss == "nrf-0001"
    # another key of the same type: a bad signature
    e = refused(v, sign(new_key(alg), claims()))
    assert (e.status, e.error, e.description) == (401, "invalid_token", "bad signature")


def test_the_algorithm_comes_from_the_key_never_from_the_token(tmp_path: Path) -> None:
    key = new_key("ES256")
    v = verifier(key)
    body = b64(json.dumps(claims()).encode())
    unsigned = f"{b64(json.dumps({'alg': 'none'}).encode())}.{body}."
    assert refused(v, unsigned).description == \
        "alg is not ES256, the only one this EIR's key verifies"
    # the classic confusion: HS256 keyed with the public key's PEM
    pem = (tmp_path / "k.pem")
    write_public(key, pem)
    head = b64(json.dumps({"alg": "HS256"}).encode())
    mac = hmac.new(pem.read_bytes(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert refused(v, f"{head}.{body}.{b64(mac)}").error == "invalid_token"
    # an RS256 token for an EC key, however well signed
    assert refused(v, sign(new_key("RS256"), claims())).status == 401
    assert "critical" in refused(v, sign(key, claims(), header={"crit": ["x"]})).description


def test_claims_exp_nbf_iss_aud_and_scope() -> None:
    key = new_key("EdDSA")
    now = time.time()
    v = verifier(key, issuer="nrf-0001")
    assert refused(v, sign(key, claims(exp=int(now) - 120))).description == \
        "the token has expired"
    v.verify(sign(key, claims(exp=int(now) - 5)))  # within the leeway
    assert refused(v, sign(key, claims(exp=None))).description == "the token has no exp"
    assert refused(v, sign(key, claims(exp="soon"))).error == "invalid_token"
    assert refused(v, sign(key, claims(nbf=int(now) + 600))).description == \
        "the token is not valid yet"
    assert refused(v, sign(key, claims(iss="nrf-evil"))).status == 401
    assert refused(v, sign(key, claims(aud="AUSF"))).status == 401
    v.verify(sign(key, claims(aud=["AUSF", "5G_EIR"])))
    e = refused(v, sign(key, claims(scope="nudm-sdm namf-comm")))
    assert (e.status, e.error) == (403, "insufficient_scope")
    assert refused(v, sign(key, claims(scope="n5g-eir-eicx"))).status == 403
    v.verify(sign(key, claims(scope="nudm-sdm n5g-eir-eic")))
    assert v.verify(sign(key, claims(sub=None))).sub is None


def test_a_remembered_token_still_expires() -> None:
    key = new_key("ES256")
    now = [time.time()]
    v = verifier(key, clock=lambda: now[0])
    token = sign(key, claims(exp=int(now[0]) + 60))
    v.verify(token)
    v.verify(token)
    now[0] += 120
    assert refused(v, token).description == "the token has expired"


def test_malformed_tokens_are_invalid_not_crashes() -> None:
    key = new_key("ES256")
    v = verifier(key)
    good = sign(key, claims())
    head, body, sig = good.split(".")
    for bad in ["", "a.b", "a.b.c.d", f"{head}=.{body}.{sig}", f"{head}.{body}.{sig}!",
                f"{b64(b'[1]')}.{body}.{sig}", f"{b64(b'not json')}.{body}.{sig}",
                f"{head}.{body}.{b64(b'short')}", f"{head}.{b64(b'[]')}.{sig}",
                "x" * 9000, f"{head}.{body}.{sig[:-1]}"]:
        assert refused(v, bad).status == 401, bad
    # the padded form of a valid token is not the token
    padded = base64.urlsafe_b64encode(base64.urlsafe_b64decode(sig + "==")).decode()
    if padded != sig:
        assert refused(v, f"{head}.{body}.{padded}").status == 401


def test_keys_we_do_not_take(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="only P-256"):
        load_public_key(write_public(p384, tmp_path / "p384.pem"))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="at least 2048"):
        load_public_key(write_public(small, tmp_path / "rsa1024.pem"))
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")


def test_hostile_encodings_are_invalid_not_crashes() -> None:
    # found in review: each of these escaped verify() as RecursionError / UnicodeEncodeError,
    # i.e. a 500 from anyone able to send a header, before any signature was checked
    key = new_key("ES256")
    v = verifier(key)
    head, body, sig = sign(key, claims()).split(".")
    deep_list, deep_object = b64(b"[" * 3000), b64(b'{"a":' * 1200)
    for bad in [f"{deep_list}.{body}.{sig}",  # nested deeper than json's recursion limit
                f"{deep_object}.{body}.{sig}",
                f"{head}.\u00e9{body}.{sig}",  # latin-1 from the header, in the claims part
                f"{head}.{body}.{sig}\u00ff", f"\u0661{head}.{body}.{sig}"]:
        assert refused(v, bad).status == 401, bad[:40]


@pytest.mark.parametrize("exp", [float("nan"), float("inf"), 10**400])
def test_time_claims_must_be_finite_numbers(exp: float) -> None:
    # json.loads takes NaN and Infinity; an exp of NaN compared false with every clock, so
    # the token never expired; 10**400 overflowed float() and escaped as OverflowError
    key = new_key("EdDSA")
    v = verifier(key)
    assert refused(v, sign(key, claims(exp=exp))).error == "invalid_token"
    assert refused(v, sign(key, claims(nbf=exp))).error == "invalid_token"
