"""The config schema: unknown keys and bad values are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from eir.config import Config, ConfigError, from_mapping, load


def test_defaults_are_valid() -> None:
    cfg = load(None)
    assert cfg == Config().validate()
    assert cfg.server.endpoint() == ("127.0.0.1", 3868)


@pytest.mark.parametrize(("toml", "names"), [
    ("[server]\nwatchdog_seconds = 5\n", "server.watchdog_seconds"),
    ("[server]\nwatchdog_seconds = nan\n", "server.watchdog_seconds"),
    ("[registry]\nreload_seconds = inf\n", "registry.reload_seconds"),
    ("[server]\nmax_message_bytes = 4\n", "server.max_message_bytes"),
    ('[server]\nhost_ip_addresses = ["nope"]\n', "server.host_ip_addresses"),
    ('[server]\nrealms = ["é"]\n', "server.realms"),
    ('[server]\nlisten = "127.0.0.1"\n', "listen address"),
    ('[log]\nlevel = "verbose"\n', "log.level"),
    ('[policy]\nunknown_equipment = "drop"\n', "policy.unknown_equipment"),
    ('[peers]\nallow_networks = ["10.0.0.0/33"]\n', "peers.allow_networks"),
    ("[server]\nport = 3868\n", "unknown key server.port"),
    ("[nope]\n", "unknown section [nope]"),
    ('[server]\nuvloop = "yes"\n', "server.uvloop"),
    ("[server\n", "eir.toml"),
])
def test_bad_settings_name_the_key(tmp_path: Path, toml: str, names: str) -> None:
    path = tmp_path / "eir.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert names in str(err.value)
    assert "\n" not in str(err.value)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "eir.toml"
    path.write_text('[server]\norigin_host = "a.test"\nlisten = "127.0.0.1:1"\n')
    cfg = load(path, {"server": {"origin_host": "b.test"}})
    assert cfg.server.origin_host == "b.test" and cfg.server.listen == "127.0.0.1:1"
    assert from_mapping({"registry": {"reload_seconds": 2}}).registry.reload_seconds == 2.0
