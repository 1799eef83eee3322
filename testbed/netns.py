"""Two network namespaces joined by a veth pair, optionally with netem on the link.

For the ``netem`` / ``netns`` scenarios: the EIR runs in one namespace, the simulated MMEs
in the other, so their traffic crosses a real (virtual) network path instead of loopback.
The namespaces are made by this module with names unique to the run, and always deleted on
exit (which also deletes the veth pair and kills nothing but processes left inside them,
i.e. processes this run started there).

Needs root, ``ip`` and ``tc`` (iproute2), and for netem the kernel's ``sch_netem``.
:class:`Unavailable` says which of these is missing: the caller reports a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

EIR_ADDR = "10.200.0.1"
MME_ADDR = "10.200.0.2"
PREFIX_LEN = 30
NETWORK = "10.200.0.0/30"


class Unavailable(Exception):
    """Namespaces, veth links or netem cannot be made here; the message says why."""


@dataclass(frozen=True)
class Link:
    """The two ends: ``eir_ns`` holds ``eir_addr``, ``mme_ns`` holds ``mme_addr``."""

    eir_ns: str
    mme_ns: str
    eir_dev: str
    mme_dev: str
    eir_addr: str = EIR_ADDR
    mme_addr: str = MME_ADDR
    network: str = NETWORK
    netem: tuple[str, ...] = ()

    def exec_prefix(self, ns: str) -> tuple[str, ...]:
        """Run a command inside ``ns`` (``ip netns exec`` execs it: signals reach it)."""
        return ("ip", "netns", "exec", ns)


def unavailable_reason() -> str | None:
    """None when namespaces may be tried here, else why not (checked without making any)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return f"{tool} (iproute2) is not installed"
    return None


def _run(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _must(what: str, *args: str) -> None:
    r = _run(*args)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise Unavailable(f"{what}: {err[-1] if err else f'exit status {r.returncode}'}")


def _kill_inside(ns: str) -> None:
    """SIGKILL whatever is still running in a namespace this run made."""
    r = _run("ip", "netns", "pids", ns)
    for pid in r.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def veth_pair(netem: Sequence[str] = ()) -> Iterator[Link]:
    """``with veth_pair(["delay", "20ms"]) as link:`` two namespaces and a link between them.

    ``netem``: the arguments of ``tc qdisc add dev DEV root netem ...``, applied on both ends
    (so a delay counts twice in the round trip); empty for a plain link. Raises
    :class:`Unavailable` (after cleaning up) when something cannot be made.
    """
    reason = unavailable_reason()
    if reason:
        raise Unavailable(reason)
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    link = Link(eir_ns=f"eirtb-eir-{tag}", mme_ns=f"eirtb-mme-{tag}", eir_dev=f"tbe{tag}",
                mme_dev=f"tbm{tag}", netem=tuple(netem))
    made: list[str] = []
    try:
        for ns in (link.eir_ns, link.mme_ns):
            _must(f"ip netns add {ns}", "ip", "netns", "add", ns)
            made.append(ns)
        _must("ip link add (veth)", "ip", "link", "add", link.eir_dev, "type", "veth",
              "peer", "name", link.mme_dev)
        for dev, ns, addr in ((link.eir_dev, link.eir_ns, link.eir_addr),
                              (link.mme_dev, link.mme_ns, link.mme_addr)):
            _must(f"ip link set {dev} netns {ns}", "ip", "link", "set", dev, "netns", ns)
            _must(f"address {addr} in {ns}", "ip", "-n", ns, "addr", "add",
                  f"{addr}/{PREFIX_LEN}", "dev", dev)
            _must(f"link up in {ns}", "ip", "-n", ns, "link", "set", dev, "up")
            _must(f"loopback up in {ns}", "ip", "-n", ns, "link", "set", "lo", "up")
        if link.netem:
            for dev, ns in ((link.eir_dev, link.eir_ns), (link.mme_dev, link.mme_ns)):
                _must("tc qdisc netem (kernel module sch_netem)", "ip", "netns", "exec", ns,
                      "tc", "qdisc", "add", "dev", dev, "root", "netem", *link.netem)
        yield link
    finally:
        for ns in made:
            _kill_inside(ns)
        for ns in made:
            _run("ip", "netns", "del", ns)
        # only left in the host namespace when the move failed
        for dev in (link.eir_dev, link.mme_dev):
            if os.path.exists(f"/sys/class/net/{dev}"):
                _run("ip", "link", "del", dev)


def probe(netem: Sequence[str] = ("delay", "1ms")) -> str | None:
    """None when :func:`veth_pair` with ``netem`` works here, else the reason it does not."""
    try:
        with veth_pair(netem):
            return None
    except Unavailable as exc:
        return str(exc)
