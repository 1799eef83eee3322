"""Unit and property tests for the RFC 3539 watchdog (eir.diameter.watchdog).

No sockets, no sleeping: time is a float passed in, randomness a stub.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.diameter.watchdog import (
    TW_DEFAULT,
    TW_MIN,
    Watchdog,
    WatchdogAction,
    WatchdogState,
)

A = WatchdogAction
S = WatchdogState

ALMOST_ONE = 0.9999  # "rand ~ 1": near the top of rand()'s [0, 1) range


def const(r: float) -> Callable[[], float]:
    return lambda: r


def cycling(values: Iterable[float]) -> Callable[[], float]:
    it = itertools.cycle(values)
    return lambda: next(it)


def started(tw: float = TW_DEFAULT, now: float = 0.0, r: float = 0.5) -> Watchdog:
    """A watchdog in OKAY whose every interval is exactly tw - 2 + 4r."""
    wd = Watchdog(tw, rand=const(r))
    assert wd.start(now) is A.NONE
    return wd


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("tw", [5.999, 0.0, -30.0, math.nan, math.inf])
def test_tw_below_six_seconds_or_not_finite_is_rejected(tw: float) -> None:
    with pytest.raises(ValueError, match="Tw"):
        Watchdog(tw, rand=const(0.0))


def test_tw_of_exactly_six_seconds_is_accepted() -> None:
    assert Watchdog(TW_MIN, rand=const(0.0)).tw == 6.0


def test_reopen_dwa_needed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reopen_dwa_needed"):
        Watchdog(rand=const(0.0), reopen_dwa_needed=0)


def test_new_watchdog_is_initial_with_no_timer() -> None:
    wd = Watchdog(rand=const(0.0))
    assert wd.state is S.INITIAL
    assert not wd.in_service
    assert not wd.pending
    assert wd.deadline == math.inf
    assert wd.on_timer(1e9) is A.NONE


# ---------------------------------------------------------------- jitter


@pytest.mark.parametrize("tw", [TW_MIN, TW_DEFAULT, 45.5])
def test_jitter_lower_bound_is_tw_minus_two(tw: float) -> None:
    wd = started(tw, now=100.0, r=0.0)
    assert wd.deadline == 100.0 + tw - 2.0


@pytest.mark.parametrize("tw", [TW_MIN, TW_DEFAULT, 45.5])
def test_jitter_upper_bound_is_just_below_tw_plus_two(tw: float) -> None:
    wd = started(tw, now=100.0, r=ALMOST_ONE)
    assert tw + 2.0 - 0.001 < wd.deadline - 100.0 < tw + 2.0


def test_each_interval_is_jittered_afresh() -> None:
    wd = Watchdog(30.0, rand=cycling([0.0, 0.5, 0.25]))
    wd.start(0.0)
    assert wd.deadline == 28.0
    assert wd.on_timer(28.0) is A.SEND_DWR
    assert wd.deadline == 28.0 + 30.0
    wd.on_dwa(29.0)
    assert wd.deadline == 29.0 + 29.0


# ---------------------------------------------------------------- OKAY


def test_idle_for_tw_sends_dwr_at_the_jittered_deadline() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    assert wd.deadline == 28.0
    assert wd.on_timer(28.0) is A.SEND_DWR
    assert wd.pending
    assert wd.state is S.OKAY and wd.in_service
    # "On sending a watchdog request, Tw is reset."
    assert wd.deadline == 56.0


def test_a_timer_firing_before_the_deadline_is_ignored() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    assert wd.on_timer(27.9) is A.NONE
    assert not wd.pending
    assert wd.deadline == 28.0


def test_a_late_timer_rearms_from_the_time_it_fired() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    assert wd.on_timer(40.0) is A.SEND_DWR
    assert wd.deadline == 68.0


def test_traffic_resets_the_deadline() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    wd.on_traffic(10.0)
    assert wd.deadline == 38.0
    # The handle scheduled for the old deadline is now stale.
    assert wd.on_timer(28.0) is A.NONE
    assert not wd.pending
    assert wd.on_timer(38.0) is A.SEND_DWR


def test_dwa_keeps_okay_and_the_next_idle_tw_sends_another_dwr() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    assert wd.on_timer(28.0) is A.SEND_DWR
    assert wd.on_dwa(28.5) is A.NONE
    assert wd.state is S.OKAY and wd.in_service
    assert not wd.pending
    assert wd.deadline == 56.5
    assert wd.on_timer(56.5) is A.SEND_DWR


def test_traffic_does_not_clear_a_pending_dwr() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    wd.on_timer(28.0)
    wd.on_traffic(30.0)
    assert wd.pending
    assert wd.deadline == 58.0


# ---------------------------------------------------------------- SUSPECT and close


def test_unanswered_dwr_makes_the_peer_suspect_after_tw() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    assert wd.on_timer(28.0) is A.SEND_DWR
    # No second DWR: "the watchdog is not sent a second time".
    assert wd.on_timer(56.0) is A.NONE
    assert wd.state is S.SUSPECT
    assert not wd.in_service
    assert wd.pending
    assert wd.deadline == 84.0


def test_second_tw_without_dwa_closes_and_goes_down() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    wd.on_timer(28.0)
    wd.on_timer(56.0)
    assert wd.on_timer(84.0) is A.CLOSE
    assert wd.state is S.DOWN
    assert not wd.in_service
    assert not wd.pending
    assert wd.deadline == math.inf
    # The transport's own close notification is harmless afterwards.
    wd.stop()
    assert wd.state is S.DOWN


def test_traffic_in_suspect_returns_to_okay() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    wd.on_timer(28.0)
    wd.on_timer(56.0)
    wd.on_traffic(60.0)
    assert (wd.state, wd.in_service) == (S.OKAY, True)
    assert wd.deadline == 88.0
    # The DWR is still unanswered, so the next silent Tw is straight back
    # to SUSPECT (table row "OKAY Timer expires & Pending"), not a new DWR.
    assert wd.pending
    assert wd.on_timer(88.0) is A.NONE
    assert wd.state is S.SUSPECT


def test_dwa_in_suspect_returns_to_okay_and_clears_pending() -> None:
    wd = started(30.0, now=0.0, r=0.0)
    wd.on_timer(28.0)
    wd.on_timer(56.0)
    assert wd.on_dwa(57.0) is A.NONE
    assert wd.state is S.OKAY and wd.in_service
    assert not wd.pending
    assert wd.on_timer(85.0) is A.SEND_DWR


# ---------------------------------------------------------------- REOPEN


def reopened(tw: float = 30.0, r: float = 0.0, now: float = 0.0, needed: int = 3) -> Watchdog:
    wd = Watchdog(tw, rand=const(r), reopen_dwa_needed=needed)
    assert wd.start(now, reconnected=True) is A.SEND_DWR
    return wd


def test_reconnect_enters_reopen_and_sends_the_first_dwr_at_once() -> None:
    wd = reopened()
    assert wd.state is S.REOPEN
    assert not wd.in_service
    assert wd.pending
    assert wd.num_dwa == 0
    assert wd.deadline == 28.0


def test_reopen_returns_to_service_only_on_the_third_dwa() -> None:
    wd = reopened()
    wd.on_dwa(0.1)
    assert (wd.state, wd.num_dwa, wd.pending) == (S.REOPEN, 1, False)
    assert wd.on_timer(28.0) is A.SEND_DWR
    wd.on_dwa(28.1)
    assert (wd.state, wd.num_dwa) == (S.REOPEN, 2)
    assert not wd.in_service
    assert wd.on_timer(56.0) is A.SEND_DWR
    wd.on_dwa(56.1)
    assert wd.state is S.OKAY
    assert wd.in_service
    assert not wd.pending


def test_dwa_in_reopen_does_not_reset_the_timer() -> None:
    # Neither REOPEN "Receive DWA" row calls SetWatchdog(): one DWR per Tw.
    wd = reopened()
    wd.on_dwa(5.0)
    assert wd.deadline == 28.0


def test_other_traffic_in_reopen_is_thrown_away() -> None:
    wd = reopened()
    wd.on_traffic(5.0)
    assert wd.deadline == 28.0
    assert (wd.state, wd.num_dwa, wd.pending) == (S.REOPEN, 0, True)


def test_reopen_unanswered_dwr_first_forfeits_the_count_then_closes() -> None:
    wd = reopened()
    wd.on_dwa(0.1)
    assert wd.on_timer(28.0) is A.SEND_DWR
    # REOPEN, Timer expires & Pending & NumDWA >= 0 -> NumDWA = -1.
    assert wd.on_timer(56.0) is A.NONE
    assert (wd.state, wd.num_dwa) == (S.REOPEN, -1)
    assert wd.deadline == 84.0
    # REOPEN, Timer expires & Pending & NumDWA < 0 -> CLOSE, DOWN.
    assert wd.on_timer(84.0) is A.CLOSE
    assert wd.state is S.DOWN
    assert wd.deadline == math.inf


def test_traffic_in_reopen_does_not_postpone_the_close() -> None:
    wd = reopened()
    wd.on_timer(28.0)
    wd.on_traffic(50.0)
    assert wd.on_timer(56.0) is A.CLOSE


def test_late_dwa_after_the_penalty_needs_three_more_exchanges() -> None:
    wd = reopened()
    wd.on_dwa(0.1)
    wd.on_timer(28.0)
    wd.on_timer(56.0)  # NumDWA = -1
    wd.on_dwa(60.0)
    assert (wd.num_dwa, wd.pending) == (0, False)
    t = 84.0
    for _ in range(2):
        assert wd.on_timer(t) is A.SEND_DWR
        wd.on_dwa(t + 0.1)
        assert wd.state is S.REOPEN
        t += 28.0
    assert wd.on_timer(t) is A.SEND_DWR
    wd.on_dwa(t + 0.1)
    assert wd.state is S.OKAY


def test_reopen_dwa_needed_is_configurable() -> None:
    wd = reopened(needed=1)
    wd.on_dwa(0.1)
    assert wd.state is S.OKAY


def test_after_stop_a_new_connection_reopens_even_without_the_flag() -> None:
    wd = started()
    wd.stop()
    assert (wd.state, wd.deadline) == (S.DOWN, math.inf)
    # DOWN, Connection up -> REOPEN.
    assert wd.start(100.0) is A.SEND_DWR
    assert wd.state is S.REOPEN


@pytest.mark.parametrize("reconnected", [False, True])
def test_stop_before_start_keeps_initial(reconnected: bool) -> None:
    wd = Watchdog(rand=const(0.0))
    wd.stop()
    assert wd.state is S.INITIAL
    wd.start(0.0, reconnected=reconnected)
    assert wd.state is (S.REOPEN if reconnected else S.OKAY)


@pytest.mark.parametrize("state_setup", ["okay", "suspect", "reopen"])
def test_starting_a_running_watchdog_is_a_caller_bug(state_setup: str) -> None:
    wd = reopened() if state_setup == "reopen" else started(r=0.0)
    if state_setup == "suspect":
        wd.on_timer(28.0)
        wd.on_timer(56.0)
    with pytest.raises(RuntimeError):
        wd.start(100.0)


@pytest.mark.parametrize("first", ["initial", "down"])
def test_messages_without_a_connection_are_thrown_away(first: str) -> None:
    wd = Watchdog(rand=const(0.0))
    if first == "down":
        wd.start(0.0)
        wd.stop()
    state = wd.state
    wd.on_traffic(5.0)
    assert wd.on_dwa(6.0) is A.NONE
    assert wd.state is state
    assert wd.deadline == math.inf
    assert wd.on_timer(7.0) is A.NONE


@pytest.mark.parametrize("setup", ["okay", "okay_pending", "suspect", "reopen", "down"])
def test_reporting_a_dwa_as_traffic_too_changes_nothing(setup: str) -> None:
    def make() -> Watchdog:
        wd = reopened() if setup == "reopen" else started(r=0.0)
        if setup in ("okay_pending", "suspect"):
            wd.on_timer(28.0)
        if setup == "suspect":
            wd.on_timer(56.0)
        if setup == "down":
            wd.stop()
        return wd

    alone, both = make(), make()
    alone.on_dwa(60.0)
    both.on_traffic(60.0)
    both.on_dwa(60.0)
    assert repr(alone) == repr(both)


# ---------------------------------------------------------------- properties

EVENTS = ["traffic", "dwa", "start", "reconnect", "stop", "idle"]


@given(
    tw=st.floats(min_value=TW_MIN, max_value=120.0),
    rands=st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1),
    events=st.lists(
        st.tuples(st.sampled_from(EVENTS), st.floats(min_value=0.0, max_value=300.0)),
        max_size=60,
    ),
)
def test_watchdog_invariants_hold_for_any_event_sequence(
    tw: float, rands: list[float], events: list[tuple[str, float]]
) -> None:
    """Drive the watchdog like an event loop would and check invariants throughout.

    Time only moves forward; before each event at time t, every timer due
    at or before t fires at its deadline (as loop.call_at would).

    "Without traffic" means without anything the RFC counts as liveness: a
    DWA in any state, other messages in OKAY or SUSPECT, or the connection
    coming up. In REOPEN a non-DWA message is thrown away (Appendix A) and
    so does not postpone a close; see the separate no-reconnect property.
    """
    wd = Watchdog(tw, rand=cycling(rands))
    t = 0.0
    last_alive = 0.0
    dwas_since_start = 0
    tolerance = 1e-9

    def check(action: WatchdogAction, before: WatchdogState, was_pending: bool) -> None:
        assert isinstance(wd.state, WatchdogState)
        assert isinstance(action, WatchdogAction)
        assert wd.in_service == (wd.state is S.OKAY)
        if wd.state in (S.INITIAL, S.DOWN):
            assert wd.deadline == math.inf
        else:
            assert wd.deadline > t
        if action is A.SEND_DWR:
            assert not was_pending and wd.pending
        if action is A.CLOSE:
            assert wd.state is S.DOWN
            assert t - last_alive >= 2 * tw - 4 - tolerance
        if before is S.REOPEN and wd.state is S.OKAY:
            assert dwas_since_start >= 3

    for kind, dt in events:
        target = t + dt
        while wd.deadline <= target:
            t = wd.deadline
            before, was_pending = wd.state, wd.pending
            check(wd.on_timer(t), before, was_pending)
        t = target
        before, was_pending = wd.state, wd.pending
        action = A.NONE
        if kind == "traffic":
            if before in (S.OKAY, S.SUSPECT):
                last_alive = t
            wd.on_traffic(t)
        elif kind == "dwa":
            last_alive = t
            dwas_since_start += 1
            action = wd.on_dwa(t)
        elif kind in ("start", "reconnect"):
            if before not in (S.INITIAL, S.DOWN):
                continue
            last_alive = t
            dwas_since_start = 0
            action = wd.start(t, reconnected=kind == "reconnect")
        elif kind == "stop":
            wd.stop()
        else:  # idle: only timers fire
            pass
        check(action, before, was_pending)


@given(
    tw=st.floats(min_value=TW_MIN, max_value=120.0),
    rands=st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1),
    events=st.lists(
        st.tuples(st.sampled_from(["traffic", "dwa", "idle"]), st.floats(0.0, 300.0)),
        max_size=60,
    ),
)
def test_close_needs_two_silent_intervals_on_a_first_connection(
    tw: float, rands: list[float], events: list[tuple[str, float]]
) -> None:
    """Without a reconnection every received message counts, in any state."""
    wd = Watchdog(tw, rand=cycling(rands))
    wd.start(0.0)
    t = last_heard = 0.0
    closed = False
    for kind, dt in events:
        target = t + dt
        while wd.deadline <= target:
            t = wd.deadline
            action = wd.on_timer(t)
            assert wd.deadline > t or wd.state is S.DOWN
            if action is A.CLOSE:
                assert not closed
                closed = True
                assert t - last_heard >= 2 * tw - 4 - 1e-9
        t = target
        if kind == "traffic":
            last_heard = t
            wd.on_traffic(t)
        elif kind == "dwa":
            last_heard = t
            wd.on_dwa(t)
        # "idle": nothing heard, only timers fire.
        assert isinstance(wd.state, WatchdogState)
