"""One configuration schema for the TOML file, the command line and the code.

Owns the settings of ``eir serve`` and their validation. Every setting is a
field of a section dataclass below; the TOML file has one table per
section, and command-line flags override single fields. Unknown sections or
keys, and values of the wrong type, are errors that name the key.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A bad setting; the message names the file and key."""


@dataclass(frozen=True)
class ServerSection:
    listen: str = "127.0.0.1:3868"  # host:port; [::1]:3868 for IPv6
    origin_host: str = "eir.localdomain"
    origin_realm: str = "localdomain"
    # Destination-Realm values answered; others get 3003 (RFC 6733 6.1.4). "*" accepts any.
    realms: tuple[str, ...] = ()
    product_name: str = "eir"
    host_ip_addresses: tuple[str, ...] = ()  # Host-IP-Address in CEA; default: the listen host
    watchdog_seconds: float = 30.0  # RFC 3539 Tw, >= 6
    uvloop: bool = True
    max_message_bytes: int = 65536

    def endpoint(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclass(frozen=True)
class RegistrySection:
    db: str = "./eir.db"
    reload_seconds: float = 1.0  # how often the change log is checked while serving


@dataclass(frozen=True)
class PolicySection:
    unknown_equipment: str = "greylist"  # "greylist" (POLICY.md rule 12) or "reject" (5422)


@dataclass(frozen=True)
class PeersSection:
    allow_hosts: tuple[str, ...] = ("*",)  # Origin-Host patterns (fnmatch)
    allow_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class LogSection:
    level: str = "info"
    format: str = "text"  # "text" or "json"


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    policy: PolicySection = field(default_factory=PolicySection)
    peers: PeersSection = field(default_factory=PeersSection)
    log: LogSection = field(default_factory=LogSection)

    def validate(self) -> Config:
        self.server.endpoint()
        for where, value in (("server.watchdog_seconds", self.server.watchdog_seconds),
                             ("registry.reload_seconds", self.registry.reload_seconds)):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {value!r} is not a finite number")
        if self.server.watchdog_seconds < 6:
            raise ConfigError("server.watchdog_seconds: RFC 3539 requires at least 6")
        if not 4096 <= self.server.max_message_bytes <= 0xFFFFFF:
            raise ConfigError("server.max_message_bytes: must be between 4096 and 16777215")
        for addr in self.server.host_ip_addresses:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ConfigError(f"server.host_ip_addresses: {addr!r} is not an IP address"
                                  ) from None
        for realm in self.server.realms:
            if not realm or not realm.isascii() or " " in realm:
                raise ConfigError(f"server.realms: {realm!r} is not a DiameterIdentity")
        if self.log.level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"log.level: {self.log.level!r} is not one of "
                              "debug, info, warning, error, critical")
        for name in ("origin_host", "origin_realm"):
            value = getattr(self.server, name)
            if not value or not value.isascii() or " " in value:
                raise ConfigError(f"server.{name}: {value!r} is not a DiameterIdentity")
        if self.policy.unknown_equipment not in ("greylist", "reject"):
            raise ConfigError("policy.unknown_equipment: must be 'greylist' or 'reject'")
        if self.log.format not in ("text", "json"):
            raise ConfigError("log.format: must be 'text' or 'json'")
        for net in self.peers.allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"peers.allow_networks: {exc}") from None
        if self.registry.reload_seconds <= 0:
            raise ConfigError("registry.reload_seconds: must be positive")
        return self


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r}: expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"listen address {value!r}: {host!r} is not an IP address") from None
    return host, int(port)


def _coerce(section: str, key: str, default: Any, value: Any) -> Any:
    where = f"{section}.{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_mapping(data: dict[str, Any], base: Config | None = None) -> Config:
    cfg = base or Config()
    sections = {f.name: f for f in fields(Config)}
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        current = getattr(cfg, name)
        known = {f.name for f in fields(current)}
        updates = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"unknown key {name}.{key}")
            updates[key] = _coerce(name, key, getattr(current, key), value)
        cfg = replace(cfg, **{name: replace(current, **updates)})
    return cfg


def load(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """The file's settings (if any) with ``overrides`` applied on top, validated."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from None
        try:
            cfg = from_mapping(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    if overrides:
        cfg = from_mapping({k: v for k, v in overrides.items() if v}, cfg)
    return cfg.validate()
