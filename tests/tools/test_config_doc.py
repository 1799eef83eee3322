"""docs/config.md is generated from eir/config.py (tools/config_doc.py) and kept current."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from eir import app, config
from tools import config_doc


def test_docs_config_md_is_current() -> None:
    text = config_doc.TARGET.read_text(encoding="utf-8") if config_doc.TARGET.exists() else ""
    assert text == config_doc.render(), (
        "docs/config.md is out of date with eir/config.py: regenerate it with "
        "`python -m tools.config_doc` and commit it")


def test_every_section_and_key_is_described() -> None:
    sections = config_doc.schema()
    assert [s.name for s in sections] == [f.name for f in dataclasses.fields(config.Config)]
    missing = [f"[{s.name}]" for s in sections if not s.description]
    missing += [f"{s.name}.{k.name}" for s in sections for k in s.keys if not k.description]
    assert not missing, ("these have no docstring (section) or comment beside the field "
                         f"(key) in eir/config.py, so docs/config.md cannot say what they "
                         f"are: {', '.join(missing)}")


def test_facts_come_from_the_code() -> None:
    keys = {f"{s.name}.{k.name}": k for s in config_doc.schema() for k in s.keys}
    for name, key in keys.items():
        assert key.live == app.live_key(name)
    # the live set as the README's Reliability table states it
    assert keys["peers.allow_hosts"].live and keys["registry.reload_seconds"].live
    assert keys["policy.grace_days"].live and not keys["policy.home_mccs"].live
    assert not keys["server.listen"].live and not keys["server.workers"].live
    assert keys["server.workers"].type == "integer" and keys["server.workers"].default == "1"
    assert keys["policy.home_mccs"].type == "array of strings"
    assert keys["policy.home_mccs"].default == '["401"]'
    assert keys["server.listen"].description.startswith("host:port")
    # a comment above a field and one at the end of its line both count
    assert keys["server.realms"].description.startswith("Destination-Realm values answered")
    # validation messages, the loop over key names resolved, module constants filled in
    assert "must be between 1 and 256" in keys["server.workers"].checks
    assert "must be a positive number of seconds" in keys["server.cer_timeout_seconds"].checks
    assert "… is not a DiameterIdentity" in keys["server.origin_realm"].checks


def test_a_new_section_is_picked_up_without_edits(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "newconf.py").write_text(textwrap.dedent('''
        from __future__ import annotations
        from dataclasses import dataclass, field


        class ConfigError(Exception):
            pass


        LIMIT = 9


        @dataclass(frozen=True)
        class WebhookSection:
            """Calls out on every change."""

            # where the calls go;
            # empty: none
            url: str = ""
            retries: int = 3  # tries per call
            hosts: tuple[str, ...] = ("a",)

            def check(self) -> None:
                if self.retries > LIMIT:
                    raise ConfigError(f"webhook.retries: at most {LIMIT}, got {self.retries}")
                for key in ("url", "hosts"):
                    raise ConfigError(f"webhook.{key}: bad")


        @dataclass(frozen=True)
        class Root:
            webhook: WebhookSection = field(default_factory=WebhookSection)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("newconf")
    try:
        (section,) = config_doc.schema(module.Root)
        page = config_doc.render(module.Root)
    finally:
        sys.modules.pop("newconf", None)
    assert section.name == "webhook" and section.description == "Calls out on every change."
    url, retries, hosts = section.keys
    assert (url.type, url.default, url.description) == ("string", '""',
                                                        "where the calls go; empty: none")
    assert (retries.type, retries.default, retries.description) == ("integer", "3",
                                                                    "tries per call")
    assert retries.checks == ["at most 9"] and url.checks == hosts.checks == ["bad"]
    assert hosts.description == "" and hosts.default == '["a"]'
    assert "## [webhook]" in page and "| `retries` | integer | `3` | restart |" in page


def test_check_mode_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "docs" / "config.md"
    monkeypatch.setattr(config_doc, "ROOT", tmp_path)
    monkeypatch.setattr(config_doc, "TARGET", stale)
    assert config_doc.main(["--check"]) == 1
    assert "run `python -m tools.config_doc`" in capsys.readouterr().err
    assert config_doc.main([]) == 0 and stale.read_text() == config_doc.render()
    assert config_doc.main(["--check"]) == 0
