"""eir.diameter.latency: the sampled histogram of time in the node, and the transport's timing.

The transport test drives a real PeerProtocol over a socket pair on a real event loop.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import support

from eir.diameter import messages as m
from eir.diameter.dictionary import default_dictionary
from eir.diameter.latency import BUCKETS, Sampler
from eir.diameter.peer import PeerConnection, Role
from eir.diameter.transport import PeerProtocol


def test_buckets_are_fine_below_a_millisecond() -> None:
    assert BUCKETS[0] == 0.00005 and BUCKETS[-1] == 1.0
    assert sum(b < 0.001 for b in BUCKETS) >= 6
    assert list(BUCKETS) == sorted(BUCKETS)


def test_observations_are_weighted_by_requests_and_cumulative() -> None:
    s = Sampler(4)
    s.observe(0.00004, 1)  # first bucket
    s.observe(0.0001, 3)  # exactly on a bound: that bucket (le)
    s.observe(0.003, 2)
    s.observe(5.0, 1)  # past the last bound: +Inf only
    s.observe(0.2, 0)  # a read that completed no message: not counted
    assert s.weight == 7 and s.reads == 4
    assert s.total == pytest.approx(0.00004 + 0.0003 + 0.006 + 5.0)
    cum = dict(s.cumulative())
    assert cum[0.00005] == 1 and cum[0.0001] == 4 and cum[0.0025] == 4
    assert cum[0.005] == 6 and cum[1.0] == 6 and cum[float("inf")] == 7
    assert [n for _, n in s.cumulative()] == sorted(n for _, n in s.cumulative())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Sampler(0)
    with pytest.raises(ValueError):
        Sampler(1, (0.1, 0.01))


@pytest.mark.parametrize("every", [1, 3])
async def test_the_transport_times_one_read_in_every(every: int) -> None:
    loop = asyncio.get_running_loop()
    sampler = Sampler(every)
    ours, theirs = socket.socketpair()

    def make(source_ip: str, now: float) -> PeerConnection:
        return PeerConnection(Role.RESPONDER, support.EIR, m.Applications(),
                              default_dictionary(), now)

    transport, _ = await loop.create_connection(
        lambda: PeerProtocol(make, sampler=sampler), sock=ours)
    theirs.setblocking(False)
    try:
        # one read with the CER, then six reads of one DWR each, then two DWRs in one read
        frames = [support.cer().encode()] + [support.dwr(hbh=i).encode() for i in range(8)]
        reads = [frames[0], *frames[1:7], frames[7] + frames[8]]
        for data in reads:
            await loop.sock_sendall(theirs, data)
            await asyncio.sleep(0.02)  # one read each
        timed = len(reads) // every
        assert sampler.reads == timed
        if every == 1:
            assert sampler.weight == 9  # every message, the last read counting twice
            assert sampler.counts[-1] == 0  # none took a second
        assert 0 < sampler.total < 1.0 * sampler.weight
    finally:
        transport.close()
        theirs.close()
