"""One configuration schema for the TOML file, the command line and the code.

Owns the settings of ``eir serve`` and their validation. Every setting is a
field of a section dataclass below; the TOML file has one table per
section, and command-line flags override single fields. Unknown sections or
keys, and values of the wrong type, are errors that name the key.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eir.clock import Clock, ScaledClock, system_clock
from eir.diameter.overload import Limits
from eir.policy.engine import DecisionConfig
from eir.policy.model import to_epoch


class ConfigError(Exception):
    """A bad setting; the message names the file and key."""


MAX_WORKERS = 256


@dataclass(frozen=True)
class ServerSection:
    """The Diameter server: where it listens, who it is (RFC 6733 CER/CEA), its timers."""

    listen: str = "127.0.0.1:3868"  # host:port; [::1]:3868 for IPv6
    origin_host: str = "eir.localdomain"  # our Origin-Host (DiameterIdentity), the MMEs' peer
    origin_realm: str = "localdomain"  # our Origin-Realm; ECRs' Destination-Realm by default
    # Destination-Realm values answered; others get 3003 (RFC 6733 6.1.4). "*" accepts any.
    realms: tuple[str, ...] = ()
    product_name: str = "eir"  # Product-Name in the CEA
    host_ip_addresses: tuple[str, ...] = ()  # Host-IP-Address in CEA; default: the listen host
    watchdog_seconds: float = 30.0  # RFC 3539 Tw, >= 6
    cer_timeout_seconds: float = 10.0  # a connection that sends no CER is closed (RFC 6733 5.6.1)
    # a message begun must be complete within this, or the connection is closed (trickling)
    message_timeout_seconds: float = 10.0
    uvloop: bool = True  # serve on uvloop's event loop when installed (asyncio's otherwise)
    max_message_bytes: int = 65536  # a longer Message Length is a framing loss: reset
    # processes answering on the one listening address (SO_REUSEPORT), each with its own
    # snapshot of the shared registry; 1: a single process and no supervisor
    workers: int = 1

    def endpoint(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclass(frozen=True)
class RegistrySection:
    """The registry: the SQLite file the lists are read from, and how it is watched."""

    db: str = "./eir.db"  # the registry's SQLite file (also --db); DB.snapshot, DB.logkey beside it
    reload_seconds: float = 1.0  # how often the change log is checked while serving
    # keep the loaded snapshot in <db>.snapshot, keyed by the last change, so that a
    # start (or another worker) reads its arrays instead of scanning every row
    snapshot_file: bool = True
    # checked before serving (worker 0): "quick" (PRAGMA quick_check: every page and
    # B-tree), "full" (integrity_check: also every index against its table) or "off"
    integrity_check: str = "quick"
    # when the registry cannot be read at start: "stop" (a one-line error), or serve
    # "fail-closed" (5012 to every ECR) or "fail-open" (WHITELISTED, reason
    # registry_unavailable) while retrying every reload_seconds
    unavailable: str = "stop"


@dataclass(frozen=True)
class PolicySection:
    """The rule table of POLICY.md; every default is the regime described there."""

    unknown_equipment: str = "greylist"  # "greylist" (POLICY.md rule 12) or "reject" (5422)
    rule_order: tuple[str, ...] = ()  # () = POLICY.md's order; leave a rule out to switch it off
    invalid_imei_patterns: tuple[str, ...] = (r"0{14}",)  # add "00\\d{12}" for the test range
    home_mccs: tuple[str, ...] = ("401",)  # IMSIs from other MCCs are inbound roamers (step 4)
    exempt_classes: tuple[str, ...] = ("m2m",)  # TAC device classes answered white (step 6)
    grace_days: float = 30.0  # grey grace period (steps 7, 9-10, 12)
    cutoff: str = "2025-05-25T00:00:00+05:00"  # first seen before: grandfathered (step 11)
    clone_threshold: int = 5  # more distinct home IMSIs than this ... (step 7)
    clone_window_days: float = 30.0  # ... within this window: clone suspected
    exception_cap: int = 10  # exception pairs allowed per IMEI


@dataclass(frozen=True)
class ObservationsSection:
    """Observations: batched writes behind the hot path, a bounded hot set, retention."""

    flush_seconds: float = 1.0  # a crash loses at most this much of sightings
    max_pending: int = 200_000  # ... or this many queued rows, whichever comes first
    cache_imeis: int = 1_000_000  # IMEIs whose history is kept in memory
    cache_ttl_seconds: float = 30.0  # re-read a cached history after this (several workers)
    last_seen_resolution_seconds: int = 3600  # last_seen is written at most this often per pair
    retention_days: float = 180.0  # observations not seen for this long are pruned
    prune_interval_seconds: float = 3600.0  # how often observations past retention are deleted


@dataclass(frozen=True)
class NotificationsSection:
    """Warnings to owners of grey devices (POLICY.md: days 0, 20, 27 and at expiry)."""

    offsets_days: tuple[float, ...] = (0.0, 20.0, 27.0)  # after the grace clock starts
    at_expiry: bool = True  # one more warning when the grace period ends
    interval_seconds: float = 60.0  # how often the server produces the warnings due


@dataclass(frozen=True)
class WebhookSection:
    """Delivery of the outbox to an HTTP endpoint (an SMS gateway's); README "Notifications".

    One POST per warning with an Idempotency-Key; retried with exponential backoff
    (and Retry-After) on 408, 429, 5xx, timeouts and connection errors. Runs where the
    notifications run (worker 0). Read at start: changes need a restart.
    """

    url: str = ""  # http:// or https://; "" = off (warnings wait for `eir notify ack`)
    timeout_seconds: float = 10.0  # one POST, from connecting to the end of the answer
    batch_size: int = 100  # warnings taken from the outbox at a time
    concurrency: int = 4  # POSTs in flight at once
    max_attempts: int = 50  # a warning is given up on (failed) after this many POSTs ...
    retry_for_seconds: float = 172_800.0  # ... or this long after its first, if sooner
    backoff_base_seconds: float = 1.0  # the wait after the first failure, doubled after each
    backoff_cap_seconds: float = 900.0  # ... up to this; each wait is jittered (50-100 %)
    poll_seconds: float = 1.0  # how often the outbox is asked for new warnings
    bearer_token_file: str = ""  # a file whose text is sent as "Authorization: Bearer ..."
    signing_secret_file: str = ""  # a file whose bytes key the X-Eir-Signature HMAC-SHA256
    ca_file: str = ""  # PEM: the CAs trusted for an https url (default: the system's)

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class ClockSection:
    """A test clock (refused unless test_mode): now = start + (real - anchor) * speed."""

    test_mode: bool = False  # allow a test clock at all; never true in production
    start: str = ""  # ISO 8601; empty: the system clock
    speed: float = 1.0  # simulated seconds per real second (86400: a day a second)
    anchor: str = ""  # the real instant at which the clock shows `start`; empty: process start


@dataclass(frozen=True)
class PeersSection:
    """Who may connect: checked at the CER (RFC 6733 5.3), refused with 3010."""

    allow_hosts: tuple[str, ...] = ("*",)  # Origin-Host patterns (fnmatch)
    allow_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # source networks allowed
    # a request with no Route-Record whose Origin-Host is not its peer's (the CER's):
    # "log" (counted and logged, answered), "refuse" (3010) or "off"
    origin_host_check: str = "log"


@dataclass(frozen=True)
class OverloadSection:
    """What the node admits; the excess is answered at once (not queued); DOIC, RFC 7683."""

    # requests/s admitted by the whole node (split evenly over the workers); 0: no limit
    max_rate: float = 0.0
    peer_max_rate: float = 0.0  # requests/s admitted from any one peer; 0: no limit
    burst_seconds: float = 0.1  # a peer may send this many seconds of its rate at once
    # the measured-load limit: refuse the excess once the event loop runs this late (a
    # request waits this long before it is read); 0: off, the default, because a refusal
    # costs a third to a half of an answer here and the saturation run of
    # bench/overload_bench.py answered less with it than without
    max_lag_seconds: float = 0.0
    answer: int = 3004  # the refusal: 3004 TOO_BUSY (E bit) or 5012 UNABLE_TO_COMPLY
    report_validity_seconds: int = 30  # OC-Validity-Duration of DOIC overload reports

    def limits(self, workers: int = 1) -> Limits:
        """The Diameter layer's limits for one of ``workers`` processes."""
        try:
            return Limits(rate=self.max_rate / workers, peer_rate=self.peer_max_rate,
                          burst=self.burst_seconds, lag_target=self.max_lag_seconds,
                          answer=self.answer, validity=self.report_validity_seconds)
        except ValueError as exc:
            name, _, why = str(exc).partition(": ")
            raise ConfigError(f"overload.{_OVERLOAD_KEYS.get(name, name)}: {why}") from None


_OVERLOAD_KEYS = {"rate": "max_rate", "peer_rate": "peer_max_rate", "burst": "burst_seconds",
                  "lag_target": "max_lag_seconds", "validity": "report_validity_seconds"}


@dataclass(frozen=True)
class TlsSection:
    """Diameter over TLS on its own port (RFC 6733 2.1, 13), beside or instead of plain TCP."""

    enabled: bool = False  # listen for Diameter over TLS on tls.port
    port: int = 5658  # RFC 6733 2.1; on server.listen's address
    cert_file: str = ""  # PEM: the server certificate (then any intermediates)
    key_file: str = ""  # PEM: its private key, not encrypted
    ca_file: str = ""  # PEM: the CAs that sign peers' client certificates
    # RFC 6733 13.1: peers mutually authenticate, so "required" by default;
    # "optional" (verified if sent) and "none" are for labs
    verify_client: str = "required"
    min_version: str = "1.2"  # or "1.3"
    plain: bool = True  # keep the plain TCP listener (server.listen) too; false: TLS only


@dataclass(frozen=True)
class MetricsSection:
    """Prometheus metrics over HTTP (``GET /metrics``); README "Metrics"."""

    enabled: bool = True  # serve GET /metrics on metrics.listen
    # loopback by default: the endpoint has no authentication
    listen: str = "127.0.0.1:9464"
    # time one read of a peer socket in this many (1: every read; 0: no latency histogram)
    latency_sample: int = 16
    # Origin-Hosts always reported by eir_peer_up (0 until they connect): a restart then
    # still shows an expected MME that never came back as down
    expected_peers: tuple[str, ...] = ()
    # a peer not connected for this long is no longer reported (a decommissioned MME)
    forget_peers_seconds: float = 86400.0

    def endpoint(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclass(frozen=True)
class HttpSection:
    """The keys every HTTP listener shares (``[admin]``, ``[public]``, ``[n5g]``): where it
    listens and its TLS (`eir.http`). A section subclasses this and sets its own defaults."""

    enabled: bool = False  # off by default: the section's listener is opened only when asked
    listen: str = "127.0.0.1:0"  # host:port
    # TLS on this listener when cert_file is set (ALPN h2 and http/1.1); otherwise cleartext
    # HTTP/1.1 and HTTP/2 with prior knowledge (h2c)
    cert_file: str = ""  # PEM: the server certificate (then any intermediates)
    key_file: str = ""  # PEM: its private key, not encrypted
    ca_file: str = ""  # PEM: the CAs of client certificates (verify_client not "none")
    verify_client: str = "none"  # "required", "optional" or "none"
    min_version: str = "1.2"  # or "1.3"

    def endpoint(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def tls(self) -> TlsSection | None:
        """The listener's TLS settings, or None for cleartext."""
        if not self.cert_file:
            return None
        return TlsSection(enabled=True, cert_file=self.cert_file, key_file=self.key_file,
                          ca_file=self.ca_file, verify_client=self.verify_client,
                          min_version=self.min_version)

    def validate(self, name: str) -> None:
        """The values, keys named ``name.key``; the files are read by `eir.tls` at start."""
        if not self.enabled:
            return
        try:
            self.endpoint()
        except ConfigError as exc:
            raise ConfigError(f"{name}.listen: {exc}") from None
        if self.verify_client not in ("required", "optional", "none"):
            raise ConfigError(f"{name}.verify_client: must be 'required', 'optional' or 'none'")
        if self.min_version not in ("1.2", "1.3"):
            raise ConfigError(f"{name}.min_version: must be '1.2' or '1.3'")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(f"{name}.cert_file and {name}.key_file: TLS needs both")
        if self.cert_file and self.verify_client != "none" and not self.ca_file:
            raise ConfigError(f"{name}.ca_file: needed to verify client certificates "
                              f"({name}.verify_client = {self.verify_client!r})")


PUBLIC_LANGUAGES = ("kk", "ru", "en")


@dataclass(frozen=True)
class PublicSection(HttpSection):
    """The public pre-purchase IMEI check (`eir.public`): a web page and ``GET
    /api/v1/check``; served by the process that runs registry jobs (worker 0)."""

    enabled: bool = False
    listen: str = "127.0.0.1:8081"
    # lookups one client may make: a bucket of `burst` refilled at `rate_per_minute`
    rate_per_minute: float = 6.0
    burst: int = 3  # lookups one client may make at once
    # lookups the whole node answers, all clients together (a bucket of its own)
    node_rate_per_second: float = 20.0
    node_burst: int = 40  # lookups the node answers at once, all clients together
    # clients whose buckets are remembered; past it the least recently seen is forgotten
    max_clients: int = 10_000
    # IPv6 clients are counted per prefix of this length (a host usually holds a /64)
    ipv6_prefix: int = 64
    # addresses or networks of reverse proxies whose X-Forwarded-For is believed; empty:
    # the header is ignored and the TCP peer is the client
    trusted_proxies: tuple[str, ...] = ()
    # every lookup answers after at least this long, so that what was looked up cannot be
    # told from how long it took
    answer_floor_ms: float = 50.0
    default_lang: str = "kk"  # when neither ?lang= nor Accept-Language names kk, ru or en
    utc_offset: str = "+05:00"  # deadlines are shown in this time (Kazakhstan: UTC+5)

    def validate(self, name: str) -> None:
        super().validate(name)
        for key, value in (("rate_per_minute", self.rate_per_minute),
                           ("node_rate_per_second", self.node_rate_per_second)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}.{key}: must be a positive number, got {value!r}")
        for key, count in (("burst", self.burst), ("node_burst", self.node_burst),
                           ("max_clients", self.max_clients)):
            if count < 1:
                raise ConfigError(f"{name}.{key}: must be at least 1, got {count}")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ConfigError(f"{name}.ipv6_prefix: must be between 1 and 128")
        for net in self.trusted_proxies:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{name}.trusted_proxies: {exc}") from None
        if not (math.isfinite(self.answer_floor_ms) and 0 <= self.answer_floor_ms <= 5000):
            raise ConfigError(f"{name}.answer_floor_ms: must be between 0 and 5000")
        if self.default_lang not in PUBLIC_LANGUAGES:
            raise ConfigError(f"{name}.default_lang: must be one of {', '.join(PUBLIC_LANGUAGES)}")
        try:
            self.offset_seconds()
        except ValueError as exc:
            raise ConfigError(f"{name}.utc_offset: {exc}") from None

    def offset_seconds(self) -> int:
        """``utc_offset`` ("+05:00") in seconds east of UTC."""
        v = self.utc_offset
        if len(v) != 6 or v[0] not in "+-" or v[3] != ":" or not (
                v[1:3] + v[4:]).isdigit() or int(v[1:3]) > 14 or int(v[4:]) > 59:
            raise ValueError(f"{v!r} is not an offset like +05:00")
        sign = -1 if v[0] == "-" else 1
        return sign * (int(v[1:3]) * 3600 + int(v[4:]) * 60)


@dataclass(frozen=True)
class AdminSection(HttpSection):
    """The admin HTTP API (`eir.admin`): lists, lifecycle actions, imports, audit trail."""

    enabled: bool = False
    listen: str = "127.0.0.1:8080"
    # bearer tokens (TOML or JSON: name, role, networks, SHA-256 of the token; made by
    # `eir admin token`); read again when it changes (required when enabled)
    tokens_file: str = ""
    # reads of personal data (IMSIs, observations), one JSON line each: "" = DB.access.log
    access_log: str = ""
    # the largest list CSV an upload may carry (bytes); larger ones get 413
    max_upload_bytes: int = 1 << 30

    def validate(self, name: str) -> None:
        super().validate(name)
        if not self.enabled:
            return
        if not self.tokens_file:
            raise ConfigError(f"{name}.tokens_file: needed when {name}.enabled = true "
                              "(make one with `eir admin token`)")
        if self.max_upload_bytes < 1:
            raise ConfigError(f"{name}.max_upload_bytes: must be at least 1")


@dataclass(frozen=True)
class N5gSection(HttpSection):
    """N5g-eir EquipmentIdentityCheck for AMFs (TS 29.511) over HTTP/2; `eir.n5g`, README
    "N5g-eir". Answered in every worker (SO_REUSEPORT), like S13."""

    enabled: bool = False
    listen: str = "127.0.0.1:8082"
    # the operator a check is counted and logged under (S13 uses the ECR's Origin-Realm):
    # the verified access token's "sub" (the AMF's NF instance id) when there is one, else this
    operator: str = "5gc"
    # PEM public key that signs the NRF's OAuth2 access tokens (TS 33.501 13.4.1; ES256 on
    # P-256, RS256 or EdDSA on Ed25519): set, every request needs a valid bearer token with
    # scope "n5g-eir-eic"; empty, no token is asked for (TS 29.511 6.1.7.3: local config)
    token_key_file: str = ""
    token_issuer: str = ""  # set: a token's "iss" must be this (the NRF's NF instance id)
    # a token's "aud" must name one of these (TS 29.510 AccessTokenClaims: the NF type, or
    # NF instance ids: add this EIR's)
    token_audience: tuple[str, ...] = ("5G_EIR",)

    def validate(self, name: str) -> None:
        super().validate(name)
        if not self.enabled:
            return
        if not self.operator or not self.operator.isascii() or " " in self.operator:
            raise ConfigError(f"{name}.operator: {self.operator!r} must be a non-empty ASCII "
                              "word")
        if self.token_key_file and not any(self.token_audience):
            raise ConfigError(f"{name}.token_audience: needs at least one audience when "
                              f"{name}.token_key_file is set")


@dataclass(frozen=True)
class LogSection:
    """Log lines on standard error: levels, format, and how identities appear in them."""

    level: str = "info"  # debug, info, warning, error or critical (also --log-level)
    format: str = "text"  # "text" or "json"
    decisions: str = "debug"  # level of the one line logged per decision
    # how logs show IMSIs and IMEIs: "hashed" (HMAC under the node's secret key_file:
    # one pseudonym per device or subscriber), IMSIs also "masked" (MCC+MNC kept), or "clear"
    imsi: str = "hashed"
    imei: str = "hashed"  # how logs show IMEIs: "hashed" or "clear"
    key_file: str = ""  # the log key (32 random bytes, made on first start): "" = DB.logkey
    # levels of single loggers, "NAME=LEVEL" (e.g. "eir.diameter=warning": no line per
    # peer connection); the others follow `level`
    loggers: tuple[str, ...] = ()

    def logger_levels(self) -> dict[str, str]:
        """``loggers`` as {name: LEVEL}; a bad entry is a ConfigError naming it."""
        out: dict[str, str] = {}
        for item in self.loggers:
            name, sep, level = item.partition("=")
            if not sep or not name.strip() or level.strip().lower() not in _LEVELS:
                raise ConfigError(f"log.loggers: {item!r} is not NAME=LEVEL with LEVEL one "
                                  f"of {', '.join(_LEVELS)}")
            out[name.strip()] = level.strip().upper()
        return out


_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    policy: PolicySection = field(default_factory=PolicySection)
    observations: ObservationsSection = field(default_factory=ObservationsSection)
    notifications: NotificationsSection = field(default_factory=NotificationsSection)
    webhook: WebhookSection = field(default_factory=WebhookSection)
    clock: ClockSection = field(default_factory=ClockSection)
    peers: PeersSection = field(default_factory=PeersSection)
    overload: OverloadSection = field(default_factory=OverloadSection)
    tls: TlsSection = field(default_factory=TlsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    public: PublicSection = field(default_factory=PublicSection)
    admin: AdminSection = field(default_factory=AdminSection)
    n5g: N5gSection = field(default_factory=N5gSection)
    log: LogSection = field(default_factory=LogSection)

    def decision_config(self) -> DecisionConfig:
        """The engine's config from [policy]; a bad value is a ConfigError naming the key."""
        p = self.policy
        try:
            return DecisionConfig(
                unknown_equipment="reject" if p.unknown_equipment == "reject" else "greylist",
                invalid_imei_patterns=p.invalid_imei_patterns, rule_order=p.rule_order,
                home_mccs=p.home_mccs, exempt_classes=p.exempt_classes, grace_days=p.grace_days,
                cutoff=p.cutoff, clone_threshold=p.clone_threshold,
                clone_window_days=p.clone_window_days)
        except ValueError as exc:
            raise ConfigError(f"[policy]: {exc}") from None

    def make_clock(self) -> Clock:
        """The system clock, or the test clock of [clock] (validated: test_mode required)."""
        c = self.clock
        if not c.start:
            return system_clock
        if not c.test_mode:
            raise ConfigError("clock: a test clock needs clock.test_mode = true")
        # Fractions of a second matter: at speed 86400 half a second is half a day.
        anchor = _precise_epoch(c.anchor) if c.anchor else None
        return ScaledClock(_precise_epoch(c.start), c.speed, anchor)

    def validate(self) -> Config:
        self.server.endpoint()
        for where, value in (("server.watchdog_seconds", self.server.watchdog_seconds),
                             ("registry.reload_seconds", self.registry.reload_seconds)):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {value!r} is not a finite number")
        for where, value in (("server.cer_timeout_seconds", self.server.cer_timeout_seconds),
                             ("server.message_timeout_seconds",
                              self.server.message_timeout_seconds)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{where}: must be a positive number of seconds")
        if self.server.watchdog_seconds < 6:
            raise ConfigError("server.watchdog_seconds: RFC 3539 requires at least 6")
        if not 4096 <= self.server.max_message_bytes <= 0xFFFFFF:
            raise ConfigError("server.max_message_bytes: must be between 4096 and 16777215")
        if not 1 <= self.server.workers <= MAX_WORKERS:
            raise ConfigError(f"server.workers: must be between 1 and {MAX_WORKERS}, "
                              f"got {self.server.workers}")
        if self.server.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
            raise ConfigError("server.workers: more than one worker needs SO_REUSEPORT, "
                              "which this platform lacks")
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
        if self.peers.origin_host_check not in ("log", "refuse", "off"):
            raise ConfigError("peers.origin_host_check: must be 'log', 'refuse' or 'off'")
        if self.registry.unavailable not in ("stop", "fail-closed", "fail-open"):
            raise ConfigError("registry.unavailable: must be 'stop', 'fail-closed' or "
                              "'fail-open'")
        if self.registry.integrity_check not in ("quick", "full", "off"):
            raise ConfigError("registry.integrity_check: must be 'quick', 'full' or 'off'")
        self.overload.limits(self.server.workers)
        self._validate_regime()
        self._validate_tls()
        self._validate_metrics()
        self._validate_webhook()
        self.public.validate("public")
        self.admin.validate("admin")
        self.n5g.validate("n5g")
        return self

    def _validate_webhook(self) -> None:
        """The [webhook] values; the token, secret and CA files are read at start."""
        w = self.webhook
        if w.url:
            parts = urlsplit(w.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"webhook.url: {w.url!r} is not an http:// or https:// URL")
            try:
                parts.port  # noqa: B018 -- raises on a bad port
            except ValueError:
                raise ConfigError(f"webhook.url: {w.url!r} has a bad port") from None
            if w.ca_file and parts.scheme != "https":
                raise ConfigError("webhook.ca_file: only used with an https:// webhook.url")
        for key in ("timeout_seconds", "retry_for_seconds", "backoff_base_seconds",
                    "backoff_cap_seconds", "poll_seconds"):
            value = getattr(w, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"webhook.{key}: must be a positive number, got {value!r}")
        if w.backoff_cap_seconds < w.backoff_base_seconds:
            raise ConfigError("webhook.backoff_cap_seconds: must be at least "
                              f"webhook.backoff_base_seconds ({w.backoff_base_seconds})")
        for key in ("batch_size", "concurrency", "max_attempts"):
            if getattr(w, key) < 1:
                raise ConfigError(f"webhook.{key}: must be at least 1")

    def _validate_metrics(self) -> None:
        mt = self.metrics
        try:
            mt.endpoint()
        except ConfigError as exc:
            raise ConfigError(f"metrics.listen: {exc}") from None
        if mt.latency_sample < 0:
            raise ConfigError("metrics.latency_sample: must be zero (off) or a positive count")
        if not (math.isfinite(mt.forget_peers_seconds) and mt.forget_peers_seconds > 0):
            raise ConfigError("metrics.forget_peers_seconds: must be a positive number")
        for host in mt.expected_peers:
            if not host or not host.isascii() or " " in host:
                raise ConfigError(f"metrics.expected_peers: {host!r} is not a DiameterIdentity")

    def _validate_tls(self) -> None:
        """The [tls] values; the files themselves are read by ``eir.tls`` at start."""
        t = self.tls
        if not 0 <= t.port <= 65535:
            raise ConfigError(f"tls.port: {t.port} is not a TCP port")
        if t.verify_client not in ("required", "optional", "none"):
            raise ConfigError("tls.verify_client: must be 'required', 'optional' or 'none'")
        if t.min_version not in ("1.2", "1.3"):
            raise ConfigError("tls.min_version: must be '1.2' or '1.3'")
        if not t.enabled:
            if not t.plain:
                raise ConfigError("tls.plain = false turns the plain listener off, which "
                                  "needs tls.enabled = true")
            return
        for key in ("cert_file", "key_file"):
            if not getattr(t, key):
                raise ConfigError(f"tls.{key}: needed when tls.enabled = true")
        if t.verify_client != "none" and not t.ca_file:
            raise ConfigError(f"tls.ca_file: needed to verify client certificates "
                              f"(tls.verify_client = {t.verify_client!r}); "
                              "verify_client = 'none' skips them")
        port = self.server.endpoint()[1]
        if t.plain and t.port and t.port == port:
            raise ConfigError(f"tls.port: {t.port} is also server.listen's port")

    def _validate_regime(self) -> None:
        self.decision_config()
        p, o, n, c = self.policy, self.observations, self.notifications, self.clock
        if p.exception_cap < 1:
            raise ConfigError("policy.exception_cap: must be at least 1")
        for where, value in (("observations.flush_seconds", o.flush_seconds),
                             ("observations.cache_ttl_seconds", o.cache_ttl_seconds),
                             ("observations.retention_days", o.retention_days),
                             ("observations.prune_interval_seconds", o.prune_interval_seconds),
                             ("notifications.interval_seconds", n.interval_seconds),
                             ("clock.speed", c.speed)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{where}: must be a positive number, got {value!r}")
        for where, count in (("observations.max_pending", o.max_pending),
                             ("observations.cache_imeis", o.cache_imeis)):
            if count < 1:
                raise ConfigError(f"{where}: must be at least 1")
        if o.last_seen_resolution_seconds < 0:
            raise ConfigError("observations.last_seen_resolution_seconds: must be zero or more")
        longest = max(p.grace_days, p.clone_window_days)
        if o.retention_days < longest:
            raise ConfigError(f"observations.retention_days: {o.retention_days} is shorter than "
                              f"the longest grace or clone window ({longest} days)")
        if any(not (math.isfinite(d) and d >= 0) for d in n.offsets_days):
            raise ConfigError("notifications.offsets_days: must be numbers of days, zero or more")
        if self.log.imsi not in ("masked", "hashed", "clear"):
            raise ConfigError("log.imsi: must be 'masked', 'hashed' or 'clear'")
        if self.log.imei not in ("hashed", "clear"):
            raise ConfigError("log.imei: must be 'hashed' or 'clear'")
        if self.log.decisions.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"log.decisions: {self.log.decisions!r} is not a log level")
        self.log.logger_levels()
        if (c.start or c.anchor or c.speed != 1.0) and not c.test_mode:
            raise ConfigError("clock: a test clock (start, speed, anchor) needs "
                              "clock.test_mode = true; never set it in production")
        if c.anchor and not c.start:
            raise ConfigError("clock.anchor: needs clock.start")
        for key, stamp in (("clock.start", c.start), ("clock.anchor", c.anchor)):
            if stamp:
                try:
                    to_epoch(stamp)
                except ValueError as exc:
                    raise ConfigError(f"{key}: {exc}") from None


def _precise_epoch(stamp: str) -> float:
    to_epoch(stamp)  # the same validation (and message) as everywhere else
    dt = datetime.fromisoformat(stamp)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


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
    if isinstance(default, tuple) and default and isinstance(default[0], float):
        if not isinstance(value, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: expected a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
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


def to_mapping(config: Config) -> dict[str, dict[str, Any]]:
    """The settings as TOML-shaped tables: ``from_mapping(to_mapping(c)) == c`` (JSON-safe)."""
    return {f.name: {k: list(v) if isinstance(v, tuple) else v
                     for k, v in asdict(getattr(config, f.name)).items()}
            for f in fields(Config)}


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
