"""The signed scorecard: keys, canonical JSON, and verification that any alteration fails.

No sockets here: scorecards are made from a fixed dict. The audit's own
scorecards are verified end to end in test_audit.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator import scorecard as sc
from simulator.audit import main_keygen, main_verify

CARD: dict[str, Any] = {
    "format": sc.FORMAT,
    "target": "127.0.0.1:3868",
    "peer": {"origin_host": "eir.test.local", "origin_realm": "test.local",
             "product_name": "evil</script><script>alert(1)</script>&"},
    "auditor": {"origin_host": "audit.test.local", "origin_realm": "test.local",
                "destination_realm": "test.local"},
    "time": {"audited_at": "2026-03-02T10:00:00Z", "simulated_at": "2026-03-02T00:00:00Z",
             "simulated_epoch": 1772409600, "margin_s": 3600.0},
    "population": {"seed": 7, "size": 400, "start": "2026-03-02T00:00:00Z", "sha256": "ab" * 32},
    "regime": {"grace_days": 30.0, "strict": False},
    "sample": {"seed": 7, "per_category": 20, "handsets": 3},
    "conformance": {"cases": [{"name": "cea-result", "section": "PROTOCOL.md 1.5",
                               "expected": "2001", "got": "Result-Code 2001", "pass": True}],
                    "passed": 1, "total": 1},
    "enforcement": {"categories": {"white": {
        "sampled": 3, "unjudged": 0, "sent": 3, "matched": 2, "mismatched": 1, "no_answer": 0,
        "examples": [{"imei": "35209900176148", "imsi": "401011234567890", "role": "registered",
                      "list_version": 2, "expected": "WHITELISTED", "reason": "registered",
                      "got": "GREYLISTED"}]}},
        "sampled": 3, "unjudged": 0, "sent": 3, "matched": 2, "mismatched": 1, "no_answer": 0,
        "mismatched_categories": ["white"]},
    "list_lag": {"base_version": 1, "newest_version": 2, "newest_fully_enforced": 1, "behind": 1,
                 "versions": {"1": {"sent": 2, "matched": 2, "mismatched": 0, "match_rate": 1.0},
                              "2": {"sent": 1, "matched": 0, "mismatched": 1,
                                    "match_rate": 0.0}}},
    "latency_ms": {"count": 3, "p50": 0.25, "p99": 0.5, "max": 0.5},
    "verdict": "FAIL",
    "score": 80.0,
    "reasons": ["1 of 3 handsets answered wrongly, in white"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    assert main_keygen(["--out", str(d / "ministry")]) == 0
    return d / "ministry.private.pem", d / "ministry.public.pem"


@pytest.fixture(scope="module")
def signed(keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("card")
    key = sc.load_private_key(keys[0])
    env = sc.sign(CARD, key)
    sc.write_signed(env, key, json_path=d / "card.json", html_path=d / "card.html")
    return d / "card.json", d / "card.html"


def flipped(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


# -- keys ---------------------------------------------------------------------------------


def test_keygen_writes_usable_keys(keys: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    priv_path, pub_path = keys
    assert stat.S_IMODE(priv_path.stat().st_mode) == 0o600
    assert priv_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    priv, pub = sc.load_private_key(priv_path), sc.load_public_key(pub_path)
    pub.verify(priv.sign(b"ministry"), b"ministry")  # the pair belongs together
    assert re.fullmatch(r"[0-9a-f]{16}", sc.key_id(pub))
    # never overwrites a key: exit 2 with one line naming the file
    capsys.readouterr()
    assert main_keygen(["--out", str(priv_path)[: -len(".private.pem")]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "ministry.private.pem" in err
    # a directory that does not exist: exit 2, no traceback
    assert main_keygen(["--out", str(tmp_path / "no" / "such" / "k")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_key_files_are_checked(keys: tuple[Path, Path], tmp_path: Path) -> None:
    priv_path, pub_path = keys
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    for bad, loader, why in ((junk, sc.load_private_key, "not an unencrypted PEM"),
                             (junk, sc.load_public_key, "not a PEM public key"),
                             (priv_path, sc.load_public_key, "a private key"),
                             (pub_path, sc.load_private_key, "not an unencrypted PEM"),
                             (tmp_path / "missing.pem", sc.load_public_key, "No such file")):
        with pytest.raises(sc.KeyFileError, match=why):
            loader(bad)


# -- canonical JSON and the JSON file ------------------------------------------------------


def test_canonical_json_is_stable_and_compact() -> None:
    a = sc.canonical({"b": [1, 2.5, "é"], "a": {"y": None, "x": True}})
    assert a == b'{"a":{"x":true,"y":null},"b":[1,2.5,"\\u00e9"]}'
    assert sc.canonical(json.loads(a)) == a
    with pytest.raises(ValueError):
        sc.canonical({"nan": float("nan")})


def test_untouched_json_verifies(signed: tuple[Path, Path], keys: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = signed[0]
    data = path.read_bytes()
    env = json.loads(data)
    assert data == sc.canonical(env) + b"\n"
    assert env["signature"]["alg"] == "Ed25519"
    assert env["signature"]["key_id"] == sc.key_id(sc.load_public_key(keys[1]))
    assert env["scorecard"] == CARD
    assert main_verify([str(path), "--key", str(keys[1])]) == 0
    assert "valid" in capsys.readouterr().out


def test_every_one_byte_alteration_of_the_json_fails(signed: tuple[Path, Path],
                                                     keys: tuple[Path, Path]) -> None:
    data = signed[0].read_bytes()
    pub = sc.load_public_key(keys[1])
    assert sc.verify_bytes(data, pub) == CARD
    for i in range(len(data)):
        with pytest.raises(sc.InvalidScorecard):
            sc.verify_bytes(flipped(data, i), pub)


def test_altered_json_fails_with_exit_1_and_one_line(signed: tuple[Path, Path],
                                                     keys: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = signed[0].read_bytes()
    # the verdict FAIL -> PASS would be the operator's wish; a one-byte edit of the score too
    for old, new in ((b'"verdict":"FAIL"', b'"verdict":"PASS"'),
                     (b'"score":80.0', b'"score":90.0')):
        assert data.count(old) == 1
        bad = tmp_path / "bad.json"
        bad.write_bytes(data.replace(old, new))
        assert main_verify([str(bad), "--key", str(keys[1])]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "INVALID" in err and "altered" in err
    # reformatting is an alteration too: the file must be exactly canonical
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(data), indent=2))
    assert main_verify([str(pretty), "--key", str(keys[1])]) == 1
    assert "canonical form" in capsys.readouterr().err


def test_a_signature_spelled_differently_is_refused(signed: tuple[Path, Path],
                                                    keys: tuple[Path, Path]) -> None:
    # Base64 of 64 bytes ends in "xy==": y holds 2 bits of data and 4 that decoding ignores,
    # so a changed y can decode to the same signature; that spelling must not verify.
    env = json.loads(signed[0].read_bytes())
    value = env["signature"]["value"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    i = alphabet.index(value[-3])
    twin = value[:-3] + alphabet[i ^ 1] + value[-2:]
    assert base64.b64decode(twin) == base64.b64decode(value) and twin != value
    env["signature"]["value"] = twin
    with pytest.raises(sc.InvalidScorecard, match="canonical base64"):
        sc.verify_bytes(sc.envelope_bytes(env), sc.load_public_key(keys[1]))


def test_wrong_key_fails(signed: tuple[Path, Path], keys: tuple[Path, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main_keygen(["--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    for path in signed:
        assert main_verify([str(path), "--key", str(tmp_path / "other.public.pem")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not by the given key" in err
    # a scorecard re-signed by another key, claiming the ministry's key id, fails too
    env = json.loads(signed[0].read_bytes())
    forged = sc.sign(env["scorecard"] | {"verdict": "PASS"}, Ed25519PrivateKey.generate())
    forged["signature"]["key_id"] = env["signature"]["key_id"]
    bad = tmp_path / "forged.json"
    bad.write_bytes(sc.envelope_bytes(forged))
    assert main_verify([str(bad), "--key", str(keys[1])]) == 1
    assert "does not match" in capsys.readouterr().err


def test_verify_refuses_unusable_input_with_exit_2(signed: tuple[Path, Path],
                                                   keys: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([str(tmp_path / "missing.json"), "--key", str(keys[1])],
                 [str(signed[0]), "--key", str(keys[0])],  # the private key
                 [str(signed[0]), "--key", str(tmp_path / "missing.pem")]):
        assert main_verify(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    for content in (b"", b"{}", b"[1,2]", b'{"scorecard":{},"signature":{"alg":"RSA"}}'):
        p = tmp_path / "odd.json"
        p.write_bytes(content)
        assert main_verify([str(p), "--key", str(keys[1])]) == 1
        assert capsys.readouterr().err.count("\n") == 1


# -- the HTML scorecard ------------------------------------------------------------------


def embedded(html: bytes) -> bytes:
    m = re.search(rb'<script type="application/json" id="scorecard">(.*?)</script>', html, re.S)
    assert m is not None
    return m.group(1)


def test_untouched_html_verifies_and_embeds_the_signed_json(
        signed: tuple[Path, Path], keys: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    html = signed[1].read_bytes()
    assert main_verify([str(signed[1]), "--key", str(keys[1])]) == 0
    capsys.readouterr()
    # the embedded envelope is the JSON file's, re-canonicalised
    env = json.loads(embedded(html))
    assert sc.canonical(env) + b"\n" == signed[0].read_bytes()
    assert sc.verify_envelope(env, sc.load_public_key(keys[1])) == CARD
    # what the EIR said cannot end the element or inject markup
    text = html.decode()
    assert "<script>alert" not in text and "evil&lt;/script&gt;" in text
    assert text.count("</script>") == 2
    for words in ("FAIL", "score 80.0", "white", "cea-result", "newest version fully enforced",
                  "0.25 ms", "35209900176148"):
        assert words in text, words


def test_one_byte_alterations_of_the_html_fail(signed: tuple[Path, Path],
                                               keys: tuple[Path, Path]) -> None:
    html = signed[1].read_bytes()
    pub = sc.load_public_key(keys[1])
    assert sc.verify_bytes(html, pub) == CARD
    # every 5th byte, and every byte of the two signatures and the verdict banner
    positions = set(range(0, len(html), 5))
    for marker in (b'"value":"', b'id="scorecard-page-signature">"', b'class="verdict'):
        at = html.index(marker) + len(marker)
        positions.update(range(at, at + 100))
    for i in sorted(positions):
        with pytest.raises(sc.InvalidScorecard):
            sc.verify_bytes(flipped(html, i), pub)


def test_editing_the_visible_page_fails_even_with_the_json_intact(
        signed: tuple[Path, Path], keys: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    html = signed[1].read_text()
    banner = '<div class="verdict fail" role="status"><b>FAIL</b>'
    assert html.count(banner) == 1
    bad = tmp_path / "edited.html"
    bad.write_text(html.replace(banner, '<div class="verdict pass" role="status"><b>PASS</b>'))
    assert main_verify([str(bad), "--key", str(keys[1])]) == 1
    assert "page was altered" in capsys.readouterr().err
    # two embedded scorecards, or none: refused
    doubled = tmp_path / "doubled.html"
    doubled.write_text(html.replace("</main>", embedded(html.encode()).decode() + "</main>")
                       .replace("</main>", '<script type="application/json" id="scorecard">'
                                           "{}</script></main>"))
    assert main_verify([str(doubled), "--key", str(keys[1])]) == 1
    capsys.readouterr()


def test_writes_are_whole_files(signed: tuple[Path, Path]) -> None:
    d = signed[0].parent
    assert sorted(os.listdir(d)) == ["card.html", "card.json"]  # no temporary left over
