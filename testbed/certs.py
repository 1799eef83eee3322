"""Throw-away X.509 certificates for TLS tests: a CA, server and client certificates, as PEM files.

Made with the ``cryptography`` package (EC P-256 keys: fast to make and accepted by OpenSSL
and by GnuTLS, which freeDiameter uses). Nothing here is fit for production: the keys are
written unencrypted into the directory given; leaves are valid for 90 days, CAs for a year.

    ca = make_ca(tmp, "Test CA")
    server = ca.issue(tmp, "eir.test.local", dns=("eir.test.local", "localhost"),
                      ips=("127.0.0.1",), server=True)
    client = ca.issue(tmp, "mme.test.local", dns=("mme.test.local",), client=True)
    server.cert, server.key, ca.cert   # Paths
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk (``cert`` holds the leaf only)."""

    name: str
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EIR tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(stem, cert_path, key_path)


@dataclass(frozen=True)
class Ca:
    """A self-signed CA that issues leaf certificates."""

    name: str
    cert: Path
    key: Path
    _cert: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    def issue(self, directory: Path, cn: str, *, dns: Sequence[str] = (),
              ips: Sequence[str] = (), server: bool = False, client: bool = False,
              not_before: datetime | None = None, not_after: datetime | None = None,
              stem: str | None = None) -> Issued:
        """A leaf for ``cn`` with those subjectAltNames; ``server``/``client``: its uses."""
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        uses = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
            ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn)).issuer_name(self._cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - DAY)
                   .not_valid_after(not_after or now + 90 * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=True, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._key.public_key()), critical=False))
        if uses:
            builder = builder.add_extension(x509.ExtendedKeyUsage(uses), critical=False)
        alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return _write(directory, stem or cn, cert, key)


def make_ca(directory: Path, cn: str = "EIR test CA", stem: str | None = None) -> Ca:
    """A new self-signed CA, written as ``<stem>.crt`` and ``<stem>.key`` in ``directory``."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    written = _write(directory, stem or cn.replace(" ", "-").lower(), cert, key)
    return Ca(cn, written.cert, written.key, cert, key)
