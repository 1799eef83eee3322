"""TLS for Diameter peers: the contexts of the secure port and what a handshake tells.

Owns the TLS side of RFC 6733 2.1 and 13 for this stack (standard library only):

- RFC 6733 2.1: Diameter over TLS/TCP has its own port, 5658 by default. TLS
  starts as soon as the connection is made, before the CER; Inband-Security-Id
  is not used (6.10 calls it NOT RECOMMENDED), so the CER/CEA is the same as on
  the plain port.
- RFC 6733 13.1: peers mutually authenticate: the TLS server requests the
  client's certificate and the client is prepared to supply one. The server
  context verifies it against a CA file ("required", the default of callers
  that follow the RFC; "optional" and "none" exist for labs).
- Versions: TLS 1.2 at least (RFC 8996 deprecates 1.0 and 1.1, which RFC 6733
  still names); 1.3 may be made the minimum.

Errors are the ``ssl`` module's (``ssl.SSLError``, ``OSError`` for files,
``ValueError`` for settings); callers turn them into their own messages.
"""

from __future__ import annotations

import ssl
from typing import Any

DIAMETER_TLS_PORT = 5658  # RFC 6733 2.1 (IANA "diameters")

VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED}
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key,
    # which hangs a service; an encrypted key is refused instead.
    raise ValueError("the key file is encrypted (a passphrase is not supported: "
                     "decrypt it and keep it readable by the service only)")


def server_context(cert_file: str, key_file: str, *, ca_file: str | None = None,
                   verify_client: str = "required", min_version: str = "1.2") -> ssl.SSLContext:
    """The context of a TLS listener (RFC 6733 2.1, 13.1).

    ``verify_client``: "required" (a client certificate signed by a CA of
    ``ca_file`` or no handshake), "optional" (verified if sent) or "none".
    Raises ``ValueError`` for a bad setting, ``OSError`` for a missing file,
    ``ssl.SSLError`` for a file OpenSSL refuses (not PEM, key and certificate
    that do not match).
    """
    if verify_client not in VERIFY_MODES:
        raise ValueError(f"verify_client {verify_client!r}: one of {', '.join(VERIFY_MODES)}")
    if min_version not in MIN_VERSIONS:
        raise ValueError(f"min_version {min_version!r}: one of {', '.join(MIN_VERSIONS)}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    mode = VERIFY_MODES[verify_client]
    if mode != ssl.CERT_NONE:
        if not ca_file:
            raise ValueError(f"verify_client {verify_client!r} needs a CA file")
        ctx.load_verify_locations(cafile=ca_file)
    ctx.verify_mode = mode
    # A peer's one connection lives for days: no session tickets to resume with (in
    # TLS 1.2 nor 1.3, where they come after the handshake and freeDiameter's GnuTLS
    # logs each read that found only a ticket as "TLS ERROR ... try again").
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def client_context(*, ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None, verify_server: bool = True,
                   min_version: str = "1.2") -> ssl.SSLContext:
    """The context of a TLS initiator (an MME, ``eir check``).

    The server's certificate is verified against ``ca_file`` (default: the
    system's CAs) and its name against the host connected to, unless
    ``verify_server`` is false. ``cert_file``/``key_file``: the client
    certificate that RFC 6733 13.1 asks a client to be ready to present.
    """
    if min_version not in MIN_VERSIONS:
        raise ValueError(f"min_version {min_version!r}: one of {', '.join(MIN_VERSIONS)}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    if verify_server:
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None, password=_no_password)
    elif key_file:
        raise ValueError("a client key file needs its certificate file")
    return ctx


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
          "domainComponent": "DC", "emailAddress": "emailAddress"}


def _name(rdns: Any) -> str:
    """An X.509 name as ``getpeercert()`` gives it, written ``O=b,CN=a`` (its order)."""
    return ",".join(f"{_SHORT.get(k, k)}={v}" for rdn in rdns or () for k, v in rdn)


def describe_session(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """One line for the log: version, cipher and the verified client certificate."""
    if ssl_object is None:
        return "TLS"
    cipher = ssl_object.cipher()
    text = f"{ssl_object.version()} {cipher[0] if cipher else '?'}"
    cert = ssl_object.getpeercert()  # empty unless a certificate was sent and verified
    if cert:
        text += (f", client certificate subject {_name(cert.get('subject'))!r} "
                 f"issuer {_name(cert.get('issuer'))!r}")
    else:
        text += ", no client certificate"
    return text
