"""``eir package ...`` as a person runs it: keygen, build, verify, apply, status.

In-process through `eir.package_cli.run` with argv parsed by the parser
`add_parser` builds, on files under tmp_path; what is checked is what a
person sees (one line on stderr, the exit status) and what the registry holds.
"""

from __future__ import annotations

import argparse
import asyncio
import stat
from pathlib import Path

import pytest

from eir import package_cli
from eir.policy.csvio import parse_csv
from eir.policy.sqlite import SqliteRegistry

CSV = """imei,list,reason,imsi,source,note
49015420323751,white,registered,,ministry,
35332510123456,black,counterfeit,,ministry,
11111111111111,black,stolen,,police,case 9
"""


def eir_package(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="eir")
    package_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return package_cli.run(parser.parse_args(["package", *argv]))


def seed(db: Path, text: str) -> None:
    async def go() -> None:
        async with SqliteRegistry(db) as reg:
            await reg.import_rows(parse_csv(text.splitlines(keepends=True)))
    asyncio.run(go())


def show(db: Path, imei: str) -> dict[str, object]:
    async def go() -> dict[str, object]:
        async with SqliteRegistry(db) as reg:
            return await reg.show(imei)
    return asyncio.run(go())


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_publish_and_apply_full_then_delta(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ministry, operator = tmp_path / "ministry.db", tmp_path / "operator.db"
    seed(ministry, CSV)
    key, pub = tmp_path / "kz.private.pem", str(tmp_path / "kz.public.pem")

    assert eir_package("keygen", "--out", str(tmp_path / "kz")) == 0
    assert one_line(capsys).startswith(f"eir: wrote {key} (keep it secret)")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    v1 = str(tmp_path / "v1.pkg")
    assert eir_package("build", "--db", str(ministry), "--source", "ministry", "--version", "1",
                       "--key", str(key), "--publisher", "ministry-kz", "--out", v1) == 0
    assert one_line(capsys).startswith(f"eir: built {v1}: ministry full version 1, 2 rows")

    assert eir_package("verify", v1, "--trust", pub) == 0
    assert one_line(capsys).startswith(f"eir: {v1}: good package: ministry full version 1 by "
                                       "ministry-kz, 2 rows")

    assert eir_package("apply", v1, "--db", str(operator), "--trust", pub,
                       "--actor", "noc-1") == 0
    assert one_line(capsys).startswith(f"eir: applied {v1} to {operator}: ministry full "
                                       "version 1 (none before): 2 rows written, 0 removed")
    assert show(operator, "35332510123456")["list"] == "black"
    assert show(operator, "11111111111111")["list"] is None  # police rows are not the ministry's

    seed(ministry, "imei,list,reason,source\n35332510123456,white,legalised,ministry\n")
    d2 = str(tmp_path / "d2.pkg")
    assert eir_package("build", "--db", str(ministry), "--source", "ministry", "--version", "2",
                       "--key", str(key), "--base", v1, "--out", d2) == 0
    assert one_line(capsys).startswith(f"eir: built {d2}: ministry delta 1->2, 1 rows")
    assert eir_package("apply", d2, "--db", str(operator), "--trust", pub) == 0
    assert "ministry delta 1->2 (was 1): 1 rows written" in one_line(capsys)
    assert show(operator, "35332510123456")["reason"] == "legalised"

    assert eir_package("status", "--db", str(operator)) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("ministry\tversion 2\tdelta\tapplied 20")
    assert "\tpublisher ministry-kz\tsha256 " in out[0]


def test_failures_are_one_line_naming_the_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ministry, operator = tmp_path / "ministry.db", tmp_path / "operator.db"
    seed(ministry, CSV)
    assert eir_package("keygen", "--out", str(tmp_path / "kz")) == 0
    assert eir_package("keygen", "--out", str(tmp_path / "other")) == 0
    capsys.readouterr()
    key, pub = str(tmp_path / "kz.private.pem"), str(tmp_path / "kz.public.pem")
    v1, v2 = str(tmp_path / "v1.pkg"), str(tmp_path / "v2.pkg")
    for version, out in (("1", v1), ("2", v2)):
        assert eir_package("build", "--db", str(ministry), "--source", "ministry",
                           "--version", version, "--key", key, "--out", out) == 0
    capsys.readouterr()

    assert eir_package("verify", v1, "--trust", str(tmp_path / "other.public.pem")) == 1
    assert one_line(capsys).startswith(f"eir: package {v1}: signed with key ")

    assert eir_package("apply", v2, "--db", str(operator), "--trust", pub) == 0
    capsys.readouterr()
    assert eir_package("apply", v1, "--db", str(operator), "--trust", pub) == 1
    assert one_line(capsys) == (f"eir: package {v1}: ministry full version 1 is older than the "
                                "applied version 2 (a replay?); --force applies it anyway")

    assert eir_package("build", "--db", str(tmp_path / "nope.db"), "--source", "ministry",
                       "--version", "3", "--key", key, "--out", str(tmp_path / "v3.pkg")) == 1
    assert one_line(capsys) == f"eir: package {tmp_path / 'v3.pkg'}: {tmp_path / 'nope.db'}: " \
                               "no such registry"
    assert not (tmp_path / "nope.db").exists()

    assert eir_package("verify", str(tmp_path / "missing.pkg"), "--trust", pub) == 1
    assert one_line(capsys) == (f"eir: package {tmp_path / 'missing.pkg'}: "
                                f"{tmp_path / 'missing.pkg'}: No such file or directory")

    assert eir_package("status", "--db", str(tmp_path / "nope.db")) == 1
    assert "no such registry" in one_line(capsys)
    assert eir_package("status", "--db", str(ministry)) == 0
    assert one_line(capsys) == f"eir: {ministry}: no list package applied"
