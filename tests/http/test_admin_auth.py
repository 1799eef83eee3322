"""`eir.admin.auth`: the token file (TOML and JSON), its checks, `eir admin token`, and the
``[admin]`` settings; a bad file at start is a config error naming ``admin.tokens_file``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eir.admin.auth import Role, TokenError, TokenStore, add_token, hash_token, parse
from eir.cli import main
from eir.config import ConfigError, from_mapping

DIGEST = "a" * 64


def test_tokens_are_kept_as_hashes_and_found_by_token(tmp_path: Path) -> None:
    for name in ("t.toml", "t.json"):
        path = tmp_path / name
        ministry = add_token(path, "alice", "ministry")
        operator = add_token(path, "op-a", "operator", ["40101", " 40102 "])
        text = path.read_text()
        assert ministry not in text and hash_token(ministry) in text
        assert path.stat().st_mode & 0o777 == 0o600
        store = TokenStore(path)
        store.load()
        a, o = store.caller(ministry), store.caller(operator)
        assert a is not None and (a.actor, a.role) == ("api:alice", Role.MINISTRY)
        assert o is not None and o.networks == ("40101", "40102")
        assert o.owns("401020000000001") and not o.owns("401030000000001")
        assert not o.owns(None) and a.owns("999990000000001")
        assert store.caller("eir_guess") is None and len(store) == 2
    assert isinstance(json.loads((tmp_path / "t.json").read_text())["token"], list)


@pytest.mark.parametrize(("text", "message"), [
    ('[[token]]\nname = "a"\nrole = "king"\nsha256 = "' + DIGEST + '"\n', "role 'king'"),
    ('[[token]]\nname = "a"\nrole = "police"\nsha256 = "abc"\n', "sha256 must be 64"),
    ('[[token]]\nname = "a"\nrole = "operator"\nsha256 = "' + DIGEST + '"\n',
     "an operator needs its networks"),
    ('[[token]]\nname = "a"\nrole = "operator"\nsha256 = "' + DIGEST + '"\nnetworks = ["401"]\n',
     "network '401' is not an MCC+MNC"),
    ('[[token]]\nname = "a"\nrole = "police"\nsha256 = "' + DIGEST + '"\nnetworks = ["40101"]\n',
     "only an operator is bound"),
    ('[[token]]\nname = "a"\nrole = "police"\nsha256 = "' + DIGEST + '"\ncolour = 1\n',
     "unknown key(s) colour"),
    ('[[token]]\nname = "a"\nrole = "police"\nsha256 = "' + DIGEST + '"\n'
     '[[token]]\nname = "a"\nrole = "auditor"\nsha256 = "' + "b" * 64 + '"\n', "used twice"),
    ("[token\n", "t.toml"),
    ("[other]\n", "expected only [[token]] entries"),
])
def test_a_bad_file_is_an_error_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(TokenError) as err:
        parse(text, Path("t.toml"))
    assert message in str(err.value) and str(err.value).startswith("t.toml")


def test_admin_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.toml"
    assert main(["admin", "token", "--name", "pol", "--role", "police",
                 "--tokens-file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("eir_") and hash_token(token) in path.read_text()
    before = path.read_text()
    assert main(["admin", "token", "--name", "pol", "--role", "auditor",
                 "--tokens-file", str(path)]) == 1
    assert "used twice" in capsys.readouterr().err and path.read_text() == before
    config = tmp_path / "eir.toml"
    config.write_text("[admin]\n")
    assert main(["admin", "token", "--name", "x", "--role", "police", "--config",
                 str(config)]) == 1
    assert "no token file" in capsys.readouterr().err


def test_admin_settings() -> None:
    with pytest.raises(ConfigError, match=r"^admin\.tokens_file: needed"):
        from_mapping({"admin": {"enabled": True}}).validate()
    with pytest.raises(ConfigError, match=r"^admin\.listen: "):
        from_mapping({"admin": {"enabled": True, "listen": "x",
                                "tokens_file": "t"}}).validate()
    cfg = from_mapping({"admin": {"enabled": True, "tokens_file": "t"}}).validate()
    assert cfg.admin.listen == "127.0.0.1:8080"
    assert from_mapping({}).validate().admin.enabled is False


async def test_a_bad_token_file_stops_the_start(tmp_path: Path) -> None:
    from eir.app import EirApp

    tokens = tmp_path / "tokens.toml"
    tokens.write_text("[[token]]\nname = 1\n")
    app = EirApp(from_mapping({
        "server": {"listen": "127.0.0.1:0"}, "metrics": {"enabled": False},
        "registry": {"db": str(tmp_path / "eir.db")},
        "admin": {"enabled": True, "listen": "127.0.0.1:0", "tokens_file": str(tokens)},
    }).validate())
    try:
        with pytest.raises(ConfigError, match=r"^admin\.tokens_file: .*token 1: name"):
            await app.start()
    finally:
        await app.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="gives the file to another group (root only)")
def test_adding_a_token_keeps_the_files_owner_and_group(tmp_path: Path) -> None:
    """An operator runs ``eir admin token`` as root and gives the file to the node's group
    (0640, group eir): the next token must not hand it back to root, or the node could no
    longer read it (it keeps its old tokens and the new one does not work)."""
    path = tmp_path / "tokens.toml"
    add_token(path, "alice", "ministry")
    os.chown(path, 4321, 4242)
    path.chmod(0o640)
    add_token(path, "bob", "auditor")
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4321, 4242, 0o640)
