"""Telling systemd how the node is doing: the sd_notify protocol, standard library only.

Owns the datagrams of ``Type=notify`` services (sd_notify(3), "Service Notification"):
newline-separated ``KEY=VALUE`` assignments sent to the AF_UNIX datagram socket named
by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). The node
sends

- ``READY=1`` and ``STATUS=...`` once it answers S13 (one process: after "EIR ready";
  ``--workers N``: the supervisor, once every worker is ready);
- ``RELOADING=1`` with ``MONOTONIC_USEC`` when a SIGHUP is being applied, then
  ``READY=1`` again (``systemctl reload`` shows "reloading" meanwhile);
- ``STOPPING=1`` when SIGTERM starts the graceful stop (DPR, in-flight answers,
  the last flush), so systemd knows the stop has begun;
- ``STATUS=...`` lines along the way (a rolling restart).

Without ``$NOTIFY_SOCKET`` (not under systemd, or a worker: its supervisor speaks for
the node, ``eir.cli``) every call does nothing; a send that fails is logged at
debug level and never stops the server. Only the main process may speak with the
unit's default ``NotifyAccess=main``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("eir")

ENV = "NOTIFY_SOCKET"


def _address() -> str | None:
    addr = os.environ.get(ENV, "")
    if addr.startswith("@"):  # the abstract namespace: a leading NUL byte
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None  # unset, or a vsock address (not used for services)


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments in one datagram; True when it was sent."""
    addr = _address()
    if addr is None:
        return False
    message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", os.environ.get(ENV), exc)
        return False
    return True


def ready(status: str) -> bool:
    """The node answers: READY=1 and a STATUS line."""
    return notify("READY=1", f"STATUS={status}")


def stopping(status: str = "stopping: DPR to the peers, answering what is in flight") -> bool:
    return notify("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


@contextlib.contextmanager
def reloading() -> Iterator[None]:
    """RELOADING=1 (with the monotonic time, as systemd 253's notify-reload asks) around
    the reload, READY=1 after it, whatever its outcome (a bad file changes nothing)."""
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
           "STATUS=reloading the settings (SIGHUP)")
    try:
        yield
    finally:
        notify("READY=1", "STATUS=serving; settings reloaded (SIGHUP)")


def reload_with(apply: Callable[..., None], *args: Any) -> None:
    """``apply(*args)`` between RELOADING=1 and READY=1 (a SIGHUP handler)."""
    with reloading():
        apply(*args)
