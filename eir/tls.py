"""The TLS context of a serving EIR, built from ``[tls]`` with start-up checks that name the key.

Owns the checks made before a TLS listener opens (issue 6: a bad setting is
one clear line at start and a non-zero exit, never a surprise at the first
handshake): each file exists and is readable; the certificate is PEM and
valid now (an expired or not-yet-valid certificate is refused, one that
expires within 30 days is a warning); the key is PEM, not encrypted, and
matches the certificate; the CA file holds certificates. The context itself
is `eir.diameter.tls.server_context` (RFC 6733 2.1, 13.1).
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from eir.config import ConfigError, TlsSection
from eir.diameter import tls

log = logging.getLogger("eir")

EXPIRY_WARNING = timedelta(days=30)


def _read(key: str, path: str, where: str = "tls") -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}.{key}: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}.{key}: {path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{where}.{key}: {path}: cannot be read ({exc.strerror})") from None


def _certificates(key: str, path: str, where: str = "tls") -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(key, path, where))
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{where}.{key}: {path}: no PEM certificate in it")
    return certs


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def check_certificate(path: str, now: datetime | None = None,
                      where: str = "tls") -> x509.Certificate:
    """The server certificate of ``path``, refused when it is not valid at ``now``."""
    cert = _certificates("cert_file", path, where)[0]
    now = now or datetime.now(UTC)
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"{where}.cert_file: {path}: the certificate {subject(cert)!r} expired "
                          f"on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{where}.cert_file: {path}: the certificate {subject(cert)!r} is not "
                          f"valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert


def server_context(t: TlsSection, where: str = "tls") -> ssl.SSLContext:
    """The listener's context from ``[tls]`` (or the TLS keys of the section ``where``);
    any problem is a ConfigError naming the key."""
    cert = check_certificate(t.cert_file, where=where)
    _read("key_file", t.key_file, where)
    if t.verify_client != "none":
        _certificates("ca_file", t.ca_file, where)
    try:
        ctx = tls.server_context(t.cert_file, t.key_file,
                                 ca_file=t.ca_file if t.verify_client != "none" else None,
                                 verify_client=t.verify_client, min_version=t.min_version)
    except ValueError as exc:  # the key is encrypted
        raise ConfigError(f"{where}.key_file: {t.key_file}: {exc}") from None
    except ssl.SSLError as exc:
        raise ConfigError(_ssl_problem(t, exc, where)) from None
    except OSError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    left = cert.not_valid_after_utc - datetime.now(UTC)
    if left < EXPIRY_WARNING:
        log.warning("%s.cert_file: the certificate %r expires in %.1f days (%s UTC)",
                    where, subject(cert), left.total_seconds() / 86400,
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}")
    return ctx


def _ssl_problem(t: TlsSection, exc: ssl.SSLError, where: str) -> str:
    reason = exc.reason or str(exc)
    if reason == "KEY_VALUES_MISMATCH":
        return (f"{where}.key_file: {t.key_file} is not the key of the certificate in "
                f"{where}.cert_file ({t.cert_file})")
    if exc.library == "PEM" or reason in ("NO_START_LINE", "BAD_BASE64_DECODE") or \
            "PEM lib" in str(exc):
        return f"{where}.key_file: {t.key_file}: not a PEM private key ({reason})"
    if reason in ("NO_CERTIFICATE_OR_CRL_FOUND",):
        return f"{where}.ca_file: {t.ca_file}: no CA certificate in it"
    return f"{where}: the certificate, key or CA file was refused: {exc}"


def describe(t: TlsSection, host: str, port: int) -> str:
    """One line for the start-up log: where, which certificate, what is asked of clients."""
    cert = _certificates("cert_file", t.cert_file)[0]
    ask = {"required": f"client certificates required (CAs of {t.ca_file})",
           "optional": f"client certificates verified when sent (CAs of {t.ca_file})",
           "none": "client certificates not asked for"}[t.verify_client]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (f"TLS on {where}: certificate {subject(cert)!r} valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d} UTC, TLS {t.min_version} or later, {ask}"
            + ("" if t.plain else "; plain TCP off"))
