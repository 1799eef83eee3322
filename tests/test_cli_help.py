"""``--help`` on every command of ``eir`` and ``eir-sim`` says what it does.

Walks the argparse trees (eir/cli.py with notify_cli and package_cli; the parsers of
every eir-sim command): every subcommand has a help line, every command a
description, every option and positional argument a help text; the examples in
the epilogs parse; a bad argument is one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

import pytest

from eir import cli
from simulator import cli as sim_cli

_SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _trees() -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield from _walk(cli._parser(), ("eir",))
    for name, make in sim_cli.PARSERS.items():
        yield from _walk(make(), ("eir-sim", name))


def test_every_command_and_option_is_explained() -> None:
    problems: list[str] = []
    commands = 0
    for path, parser in _trees():
        commands += 1
        where = " ".join(path)
        if not (parser.description or "").strip():
            problems.append(f"{where}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if c.help}
                problems += [f"{where} {name}: no help line in the command list"
                             for name in action.choices if name not in helped]
            elif not isinstance(action, _SKIP) and not action.help:
                problems.append(f"{where}: {'/'.join(action.option_strings) or action.dest} "
                                "has no help")
    assert commands > 40, commands  # the walk reached the subcommands
    assert not problems, "\n".join(problems)


def test_the_commands_an_operator_starts_with_have_examples() -> None:
    parsers = {" ".join(path): p for path, p in _trees()}
    for name in ("eir", "eir serve", "eir demo", "eir check", "eir registry",
                 "eir registry import", "eir status", "eir package", "eir notify",
                 "eir-sim run", "eir-sim population"):
        assert "example" in (parsers[name].epilog or ""), name


def _examples() -> Iterator[tuple[str, list[str]]]:
    for path, parser in _trees():
        for line in (parser.epilog or "").splitlines()[1:]:
            words = shlex.split(line.split(" | ")[0], comments=True)  # a pipe: its first part
            if words and words[0] in ("eir", "eir-sim"):
                yield " ".join(path), words


def test_the_examples_parse() -> None:
    seen = 0
    for where, words in _examples():
        seen += 1
        try:
            if words[0] == "eir":
                cli._parser().parse_args(words[1:])
            else:
                sim_cli.PARSERS[words[1]]().parse_args(words[2:])
        except SystemExit:
            pytest.fail(f"the example of {where!r} does not parse: {' '.join(words)}")
    assert seen > 20


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    for path, _parser in _trees():
        with pytest.raises(SystemExit) as exc:
            if path[0] == "eir":
                cli.main([*path[1:], "--help"])
            else:
                sim_cli.PARSERS[path[1]]().parse_args([*path[2:], "--help"])
        assert exc.value.code == 0, path
        assert "usage:" in capsys.readouterr().out
    assert sim_cli.main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["serve", "--bogus"], ["serve", "--workers", "two"],
                                  ["registry", "import"], ["nope"], []])
def test_a_bad_argument_is_one_line(argv: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "(see --help)" in err, err


@pytest.mark.parametrize("argv", [["run", "--bogus"], ["population"], ["keygen"],
                                  ["report", "x.json"], ["verify"], ["audit"]])
def test_a_bad_simulator_argument_is_one_line(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sim_cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "(see --help)" in err, err
    assert sim_cli.main(["frobnicate"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
