"""The config reference, ``docs/config.md``, generated from the schema in ``eir.config``.

Owns nothing but the rendering: every fact comes from the code, so the page cannot
say what the code does not do.

- Sections and keys: the fields of ``eir.config.Config`` (one dataclass per TOML
  table) and of each section's dataclass, in their order; a section added there
  appears here with no edit.
- Types and defaults: the fields' annotations and default values, written as TOML.
- Descriptions: the comments beside each field in its source (the comment lines
  directly above it and the one at the end of its line), and the section class's
  docstring; read with `tokenize` and `ast`, so the text lives in one place.
- SIGHUP: ``eir.app.live_key``, the same test the running server applies.
- Validation: the messages of the ``ConfigError`` raised by the section classes'
  module whose text names a key (``"server.workers: must be between 1 and 256"``),
  with the loop variables that name keys filled in.

``python -m tools.config_doc`` writes the file; ``--check`` only says whether it is
current (exit 1 and the command to run when it is not); ``--stdout`` prints it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import tokenize
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from eir import app, config

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "config.md"
COMMAND = "python -m tools.config_doc"

# "section.key: what is wrong" or "section.key = ... needs ..." at the start of a message
_KEYED = re.compile(r"^(\w+)\.(\w+)\b:?\s*(.*)$", re.S)
_SECTION = re.compile(r"^(\w+): (.*)$", re.S)
_UNKNOWN = "…"


@dataclasses.dataclass
class Key:
    name: str
    type: str
    default: str
    live: bool
    description: str
    checks: list[str]


@dataclasses.dataclass
class Section:
    name: str
    description: str
    keys: list[Key]
    checks: list[str]


# -- comments beside the fields ----------------------------------------------------------


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """(line -> comment at the end of a code line, line -> comment alone on its line)."""
    trailing: dict[int, str] = {}
    alone: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        row = tok.start[0]
        (alone if tok.line.strip().startswith("#") else trailing)[row] = text
    return trailing, alone


def _describe(node: ast.AnnAssign, trailing: dict[int, str], alone: dict[int, str]) -> str:
    above: list[str] = []
    row = node.lineno - 1
    while row in alone:
        above.insert(0, alone[row])
        row -= 1
    end = node.end_lineno or node.lineno
    parts = [*above, *([trailing[end]] if end in trailing else [])]
    return " ".join(p for p in parts if p)


def _class_nodes(module_source: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.walk(ast.parse(module_source)) if isinstance(n, ast.ClassDef)}


# -- validation messages -----------------------------------------------------------------


def _render(node: ast.expr, env: dict[str, str], module: ModuleType) -> str | None:
    """A message's text: constants kept, loop names and module constants filled in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    out = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            out.append(str(part.value))
        elif isinstance(part, ast.FormattedValue):
            value = part.value
            if isinstance(value, ast.Name) and value.id in env:
                out.append(env[value.id])
            elif isinstance(value, ast.Name) and isinstance(
                    getattr(module, value.id, None), int | str) and part.conversion == -1:
                out.append(str(getattr(module, value.id)))
            else:
                out.append(_UNKNOWN)
    return "".join(out)


def _bindings(loop: ast.For) -> list[dict[str, str]]:
    """The string constants a ``for`` binds to names, per iteration ([{}]: none known)."""
    if not isinstance(loop.iter, ast.Tuple | ast.List):
        return [{}]
    out: list[dict[str, str]] = []
    for item in loop.iter.elts:
        bound: dict[str, str] = {}
        if isinstance(loop.target, ast.Name) and isinstance(item, ast.Constant) \
                and isinstance(item.value, str):
            bound[loop.target.id] = item.value
        elif isinstance(loop.target, ast.Tuple) and isinstance(item, ast.Tuple):
            for name, value in zip(loop.target.elts, item.elts, strict=False):
                if isinstance(name, ast.Name) and isinstance(value, ast.Constant) \
                        and isinstance(value.value, str):
                    bound[name.id] = value.value
        out.append(bound)
    return out or [{}]


def _messages(node: ast.AST, env: dict[str, str], module: ModuleType) -> Iterator[str]:
    if isinstance(node, ast.For):
        for bound in _bindings(node):
            for child in node.body:
                yield from _messages(child, {**env, **bound}, module)
        for child in node.orelse:
            yield from _messages(child, env, module)
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "ConfigError" and node.args:
        text = _render(node.args[0], env, module)
        if text is not None:
            yield text
    for sub in ast.iter_child_nodes(node):
        yield from _messages(sub, env, module)


def _checks(module: ModuleType, source: str,
            sections: dict[str, set[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(``section.key`` -> its validation messages, section -> messages about it)."""
    by_key: dict[str, list[str]] = {}
    by_section: dict[str, list[str]] = {}
    for text in _messages(ast.parse(source), {}, module):
        text = re.sub(r",? got …$", "", text.strip())
        keyed = _KEYED.match(text)
        if keyed and keyed[2] in sections.get(keyed[1], set()):
            prefix = f"{keyed[1]}.{keyed[2]}:"
            rule = text[len(prefix):].strip() if text.startswith(prefix) else text
            bucket = by_key.setdefault(f"{keyed[1]}.{keyed[2]}", [])
        elif (sec := _SECTION.match(text)) and sec[1] in sections:
            rule, bucket = sec[2], by_section.setdefault(sec[1], [])
        else:
            continue
        if rule.strip(f"{_UNKNOWN} ") and rule not in bucket:  # "{exc}" alone says nothing
            bucket.append(rule)
    return by_key, by_section


# -- types and defaults ------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return simple[tp]
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        return f"array of {simple.get(inner, str(inner))}s"
    return str(tp)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


# -- the page ----------------------------------------------------------------------------


def schema(root: type[Any] = config.Config) -> list[Section]:
    """Every section of ``root`` (``eir.config.Config``) with its keys, as the code has them."""
    defaults = root()
    out: list[Section] = []
    parsed: dict[str, tuple[ModuleType, str]] = {}
    tables = {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(root)}
    names = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in tables.items()}
    checks: dict[str, list[str]] = {}
    section_checks: dict[str, list[str]] = {}
    for cls in tables.values():
        module = sys.modules[cls.__module__]
        if module.__name__ not in parsed:
            source = inspect.getsource(module)
            parsed[module.__name__] = (module, source)
            by_key, secs = _checks(module, source, names)
            for k, v in by_key.items():
                checks.setdefault(k, []).extend(r for r in v if r not in checks.get(k, []))
            for k, v in secs.items():
                section_checks.setdefault(k, []).extend(v)
    for name, cls in tables.items():
        _module, source = parsed[cls.__module__]
        trailing, alone = _comments(source)
        classes = _class_nodes(source)
        node = classes[cls.__name__]
        # a key may be declared by a base section (HttpSection) and redeclared with another
        # default: the subclass's comment wins, the base's describes it when there is none
        described: dict[str, str] = {}
        for base in reversed(cls.__mro__):
            if base.__module__ == cls.__module__ and base.__name__ in classes:
                for n in classes[base.__name__].body:
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                        text = _describe(n, trailing, alone)
                        if text or n.target.id not in described:
                            described[n.target.id] = text
        hints = typing.get_type_hints(cls)
        value = getattr(defaults, name)
        keys = [Key(f.name, _type_name(hints[f.name]), _toml(getattr(value, f.name)),
                    app.live_key(f"{name}.{f.name}"),
                    described[f.name],
                    checks.get(f"{name}.{f.name}", []))
                for f in dataclasses.fields(cls)]
        doc = " ".join((ast.get_docstring(node) or "").split())
        out.append(Section(name, doc, keys, section_checks.get(name, [])))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(root: type[Any] = config.Config) -> str:
    sections = schema(root)
    lines = [
        "# Configuration reference",
        "",
        f"<!-- generated by `{COMMAND}` from eir/config.py; do not edit by hand -->",
        "",
        "`eir serve --config FILE` reads one TOML file: a table per section below, every key",
        "optional (the default applies). A key or section not listed here, or a value of the",
        "wrong type, stops the start with one line naming it; command-line flags",
        "(`--listen`, `--db`, `--origin-host`, `--origin-realm`, `--log-level`, `--workers`,",
        "`--metrics-listen`) override single keys.",
        "",
        "**SIGHUP** (`systemctl reload eir`) reads the file again and applies the keys marked",
        "*live* while serving, without dropping a connection; the others are logged as",
        "changed and need a restart (with `--workers N`, SIGUSR2 is a rolling restart that",
        "applies all but `server.listen` and `server.workers`). A file that does not load",
        "changes nothing.",
        "",
        "Sections: " + ", ".join(f"[`[{s.name}]`](#{s.name})" for s in sections) + ".",
        "",
    ]
    for s in sections:
        lines += [f"## [{s.name}]", "", *([s.description, ""] if s.description else [])]
        lines += [f"- {rule}" for rule in s.checks]
        if s.checks:
            lines.append("")
        lines += ["| key | type | default | SIGHUP | description | refused when |",
                  "|---|---|---|---|---|---|"]
        for k in s.keys:
            refused = "; ".join(f"`{_cell(c)}`" for c in k.checks)
            lines.append(f"| `{k.name}` | {k.type} | `{_cell(k.default)}` | "
                         f"{'live' if k.live else 'restart'} | {_cell(k.description)} | "
                         f"{refused} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description="Write docs/config.md from the "
                                "config schema (eir/config.py).")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 if docs/config.md is not current")
    how.add_argument("--stdout", action="store_true", help="print the page instead")
    args = p.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
    if args.check:
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date with eir/config.py: "
                  f"run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.parent.mkdir(exist_ok=True)
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
