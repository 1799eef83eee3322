"""freeDiameter (Debian's freeDiameterd 1.2.1) as an MME over TLS to the EIR's TLS port.

freeDiameter's default for a peer without ``No_TLS`` or ``TLS_old_method`` is RFC 6733's
way: TLS as soon as it is connected, on the peer's secure port, then the CER. It checks
our certificate against its TLS_CA and its name against the peer's DiameterIdentity
(our Origin-Host), and presents its own certificate (named after its Identity) as the
client certificate, which the EIR verifies (``tls.verify_client = "required"``). Every
certificate is made by the test (testbed.certs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import fdpeer
from testbed.certs import Ca, make_ca
from testbed.eirproc import EirProcess, free_port, run_cli

pytestmark = pytest.mark.interop

if not fdpeer.available():
    if fdpeer.must_not_skip():
        raise RuntimeError(f"interop tools missing in CI: {fdpeer.unavailable_reason()}")
    pytest.skip(fdpeer.unavailable_reason() or "freeDiameter missing", allow_module_level=True)

EIR_HOST = "eir.test.local"
FD_HOST = "mme.test.local"  # fdpeer.run_client's default identity
WHITE, BLACK, GREY = 0, 1, 2


def registry(tmp: Path) -> tuple[Path, list[tuple[str, str | None, str | None]], list[int]]:
    rows = ["imei,list,reason,imsi,source,note"]
    queries: list[tuple[str, str | None, str | None]] = []
    expected: list[int] = []
    for i in range(30):
        imei = f"{35100000 + i:08d}{i:06d}"
        kind = ("white", "black", None)[i % 3]
        if kind:
            rows.append(f"{imei},{kind},{'registered' if kind == 'white' else 'stolen'},,"
                        "ministry,")
        queries.append((imei, None, None))
        expected.append({"white": WHITE, "black": BLACK, None: GREY}[kind])
    (tmp / "registry.csv").write_text("\n".join(rows) + "\n")
    db = tmp / "eir.db"
    res = run_cli("registry", "import", "--db", str(db), str(tmp / "registry.csv"))
    assert res.returncode == 0, res.stderr
    return db, queries, expected


def eir_conf(tmp: Path, server_ca: Ca, client_ca: Ca, port: int) -> Path:
    """The EIR's [tls]: its certificate from ``server_ca``, clients' from ``client_ca``."""
    server = server_ca.issue(tmp, EIR_HOST, dns=(EIR_HOST,), ips=("127.0.0.1",),
                             server=True, stem="eir")
    conf = tmp / "eir.toml"
    conf.write_text(f'[tls]\nenabled = true\nport = {port}\ncert_file = "{server.cert}"\n'
                    f'key_file = "{server.key}"\nca_file = "{client_ca.cert}"\n'
                    'verify_client = "required"\n')
    return conf


@pytest.mark.timeout(180)
def test_freediameter_mme_over_tls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "EIR test CA")
    fd = ca.issue(tmp_path, FD_HOST, dns=(FD_HOST,), client=True, stem="fd")
    db, queries, expected = registry(tmp_path)
    tls_port = free_port()
    count = 3000
    with EirProcess(db, origin_host=EIR_HOST, origin_realm="test.local",
                    config=eir_conf(tmp_path, ca, ca, tls_port)) as eir:
        res = fdpeer.run_client("127.0.0.1", tls_port, EIR_HOST, count=count, concur=100,
                                imeis=queries, timeout=10, run_timeout=120,
                                tls=fdpeer.FdTls(fd.cert, fd.key, ca.cert))
    log = eir.log()
    assert not res.problems(), res.summary() + "\n--- EIR log ---\n" + log[-3000:]
    assert (res.sent, res.answered, res.rc2001, res.e_bit) == (count, count, count, 0)
    assert "(TCP,TLS," in res.log  # freeDiameter's own word that the connection is TLS
    for i, row in enumerate(res.rows):
        assert row.equipment_status == expected[i % len(expected)], (i, row)
    # the EIR saw TLS, verified freeDiameter's certificate, then the CER and a DPR
    assert f"client certificate subject 'O=EIR tests,CN={FD_HOST}'" in log, log
    assert f"peer {FD_HOST} (realm test.local) open" in log
    assert f"peer {FD_HOST} sent DPR" in log
    assert "TLS handshake failed" not in log
    assert eir.returncode == 0, log


@pytest.mark.timeout(120)
def test_freediameter_with_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "EIR test CA")
    other = make_ca(tmp_path, "Other CA")
    fd = other.issue(tmp_path, FD_HOST, dns=(FD_HOST,), client=True, stem="fd")
    db, _, _ = registry(tmp_path)
    tls_port = free_port()
    # The EIR's own certificate comes from the other CA, which freeDiameter trusts (its
    # TLS_CA must also know its own certificate's issuer, and takes one sorted chain, not
    # a list of CAs); the EIR accepts clients of the first CA only: the EIR refuses.
    with EirProcess(db, origin_host=EIR_HOST, origin_realm="test.local",
                    config=eir_conf(tmp_path, other, ca, tls_port)) as eir:
        res = fdpeer.run_client("127.0.0.1", tls_port, EIR_HOST, count=10, concur=1,
                                open_timeout=4, timeout=2, run_timeout=60,
                                tls=fdpeer.FdTls(fd.cert, fd.key, other.cert))
    log = eir.log()
    assert not res.peer_open and res.answered == 0, res.summary()
    assert "ecr_gen: loaded" in res.log, res.summary()  # it ran, and was refused
    assert "TLS handshake failed" in log and "CERTIFICATE_VERIFY_FAILED" in log, log
    assert "open from" not in log  # no CER was ever read
    assert eir.returncode == 0, log
