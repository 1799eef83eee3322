"""Application-layer watchdog for one Diameter connection, as a sans-IO state machine.

Owns the RFC 3539 watchdog of a single transport connection: the jittered Tw
timer, the pending-DWR flag, the OKAY / SUSPECT / DOWN / REOPEN / INITIAL
status, and the REOPEN DWA count. It does not own sockets, the DWR/DWA
messages themselves, answering the peer's DWRs, or reconnecting: the
transport feeds it events and carries out the returned `WatchdogAction`.

Implements RFC 3539 section 3.4.1 (algorithm overview) and Appendix A (the
detailed algorithm and its state table), which RFC 6733 section 5.5.3
(Transport Failure Algorithm) makes mandatory for Diameter; RFC 6733
section 5.5.1 (DWR sent when no traffic has been exchanged) and section
5.5.4 (failover and failback on SUSPECT / OKAY).

Rules kept here (sans-IO, see DESIGN.md section 3): standard library only, no
clock reads, no asyncio, no logging. Time arrives as ``now`` (seconds, any
monotonic origin), randomness as an injected ``rand()`` in [0, 1). The next
expiry is exposed as an absolute `Watchdog.deadline` that the transport hands
to ``loop.call_at``; nothing polls.

Each branch that implements a row of the RFC 3539 Appendix A state table has
that row quoted above it, as Erlang/OTP's ``diameter_watchdog`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum

__all__ = [
    "JITTER",
    "REOPEN_DWA_NEEDED",
    "TW_DEFAULT",
    "TW_MIN",
    "Watchdog",
    "WatchdogAction",
    "WatchdogState",
]

#: RFC 3539 section 3.4.1 [1]: "The default value of Twinit is 30 seconds."
TW_DEFAULT = 30.0
#: RFC 3539 section 3.4.1 [1]: Twinit "MAY be set as low as 6 seconds (not
#: including jitter), it MUST NOT be set lower than this."
TW_MIN = 6.0
#: RFC 3539 section 3.4.1 [1]: a jitter "drawn between -2 and 2 seconds".
JITTER = 2.0
#: RFC 3539 section 3.4.1 [5]: "Once three watchdog messages have been sent and
#: responded to, the connection is returned to service".
REOPEN_DWA_NEEDED = 3


class WatchdogState(Enum):
    """The PCB Status of RFC 3539 Appendix A."""

    #: "The initial state of the pcb when it is first created. The pcb has
    #: never been opened."
    INITIAL = "initial"
    #: "The connection is up."
    OKAY = "okay"
    #: "Failover has been initiated on the connection."
    SUSPECT = "suspect"
    #: "Connection has been closed."
    DOWN = "down"
    #: "Attempting to reopen a closed connection."
    REOPEN = "reopen"


class WatchdogAction(Enum):
    """What the transport must do after handing the watchdog an event."""

    #: Nothing to do (beyond rescheduling on `Watchdog.deadline`).
    NONE = "none"
    #: Send one DWR now; the watchdog has already marked it pending.
    SEND_DWR = "send_dwr"
    #: Close (reset) the transport connection; the watchdog is already DOWN.
    CLOSE = "close"


class Watchdog:
    """RFC 3539 watchdog for one connection.

    The transport drives it with `start`, `on_traffic`, `on_dwa`, `on_timer`
    and `stop`, performs the returned `WatchdogAction`, and after every call
    (re)schedules a single timer at `deadline` (``math.inf`` means no timer).
    A timer that fires before the current `deadline` is stale and ignored, so
    the transport may cancel and reschedule or simply let old handles fire.

    Failover and failback (RFC 6733 section 5.5.4) are observable through
    `in_service` / `state`: leaving OKAY is a failover point, entering OKAY a
    failback point. The watchdog never answers DWRs; the peer layer always
    answers them (RFC 6733 section 5.5.1), in every state.
    """

    __slots__ = (
        "_deadline",
        "_num_dwa",
        "_pending",
        "_rand",
        "_reopen_dwa_needed",
        "_state",
        "_tw",
    )

    def __init__(
        self,
        tw: float = TW_DEFAULT,
        *,
        rand: Callable[[], float],
        reopen_dwa_needed: int = REOPEN_DWA_NEEDED,
    ) -> None:
        """Create a watchdog in state INITIAL with no timer running.

        ``tw`` is Twinit in seconds, before jitter; ``rand`` returns a float in
        [0, 1) and is called once per timer (re)arm; ``reopen_dwa_needed`` is
        the number of DWAs that return a reopened connection to service.
        Raises `ValueError` if ``tw`` is below 6 s (or not finite) or
        ``reopen_dwa_needed`` is below 1.
        """
        # NaN compares False with everything, so test finiteness explicitly
        # rather than trusting `tw < TW_MIN` to catch it.
        if not math.isfinite(tw) or tw < TW_MIN:
            raise ValueError(f"Tw must be a finite number >= {TW_MIN} s (RFC 3539 3.4.1), got {tw}")
        # Zero would make REOPEN meaningless (RFC 3539 3.4.1 [5] requires
        # validation of a reopened connection); skipping REOPEN is
        # `start(reconnected=False)` on a fresh watchdog instead.
        if reopen_dwa_needed < 1:
            raise ValueError(f"reopen_dwa_needed must be >= 1, got {reopen_dwa_needed}")
        self._tw = float(tw)
        self._rand = rand
        self._reopen_dwa_needed = reopen_dwa_needed
        self._state = WatchdogState.INITIAL
        # "Pending: Set to TRUE if there is an outstanding unanswered
        # watchdog request" (RFC 3539 Appendix A).
        self._pending = False
        # "NumDWA: Number of DWAs received during REOPEN"; -1 marks that one
        # Tw has already expired with a DWR unanswered (see on_timer).
        self._num_dwa = 0
        # No timer runs until the connection is up: reconnecting (the RFC's
        # AttemptOpen on timer expiry in INITIAL/DOWN) is the peer layer's
        # job, driven by Tc (RFC 6733 section 2.1), not this object's.
        self._deadline = math.inf

    # ------------------------------------------------------------------
    # Read-only view

    @property
    def state(self) -> WatchdogState:
        """The RFC 3539 status of the connection."""
        return self._state

    @property
    def in_service(self) -> bool:
        """True only in OKAY: requests may be routed over this connection."""
        return self._state is WatchdogState.OKAY

    @property
    def deadline(self) -> float:
        """Absolute time of the next timer expiry; ``math.inf`` when no timer runs."""
        return self._deadline

    @property
    def pending(self) -> bool:
        """True while a DWR we sent is unanswered."""
        return self._pending

    @property
    def num_dwa(self) -> int:
        """RFC 3539 NumDWA: DWAs counted in REOPEN (-1 after one unanswered Tw)."""
        return self._num_dwa

    @property
    def tw(self) -> float:
        """Twinit in seconds, before jitter."""
        return self._tw

    # ------------------------------------------------------------------
    # Events

    def start(self, now: float, *, reconnected: bool = False) -> WatchdogAction:
        """The connection is up (CER/CEA done): RFC 3539 "Connection up".

        Returns SEND_DWR when the connection enters REOPEN, because the
        table sends the first validating DWR at once rather than after Tw;
        NONE when it goes straight into service.

        ``reconnected=True`` tells a fresh watchdog (state INITIAL) that this
        peer was lost before, e.g. when the peer table, not this object,
        remembers the old connection. A watchdog already in DOWN always
        reopens, as the table requires. Starting a running watchdog raises
        `RuntimeError`: that is a bug in the caller (the RFC's "Shouldn't be
        here!").
        """
        if self._state not in (WatchdogState.INITIAL, WatchdogState.DOWN):
            raise RuntimeError(f"watchdog started twice (state {self._state.name})")

        if self._state is WatchdogState.DOWN or reconnected:
            # DOWN          Connection up        NumDWA = 0
            #                                    SendWatchdog()
            #                                    SetWatchdog()
            #                                    Pending = TRUE       REOPEN
            self._state = WatchdogState.REOPEN
            self._num_dwa = 0
            self._pending = True
            self._set_watchdog(now)
            return WatchdogAction.SEND_DWR

        # INITIAL       Connection up        SetWatchdog()        OKAY
        #
        # "Connection validation via receipt of multiple watchdogs is not
        # required when a connection is initially brought up" (3.4.1 [5]).
        self._state = WatchdogState.OKAY
        self._pending = False
        self._set_watchdog(now)
        return WatchdogAction.NONE

    def on_traffic(self, now: float) -> None:
        """Any message other than a DWA was received from the peer.

        Requests count as well as answers (Appendix A, OnReceive: "This
        message MAY be a request or an answer"), including the peer's DWRs.
        A DWA belongs in `on_dwa`; a transport that first reports every
        received frame here and then a DWA to `on_dwa` as well gets the same
        outcome in every state as `on_dwa` alone.
        """
        state = self._state
        if state is WatchdogState.OKAY:
            # OKAY          Receive non-DWA      SetWatchdog()        OKAY
            self._set_watchdog(now)
        elif state is WatchdogState.SUSPECT:
            # SUSPECT       Receive non-DWA      Failback()
            #                                    SetWatchdog()        OKAY
            #
            # Pending is deliberately left as it is: the DWR is still
            # unanswered, so if Tw now expires without more traffic the
            # table goes straight back to SUSPECT without a second DWR.
            self._state = WatchdogState.OKAY
            self._set_watchdog(now)
        elif state is WatchdogState.REOPEN:
            # REOPEN        Receive non-DWA      Throwaway()          REOPEN
            #
            # Only DWAs validate a reopened connection, and the timer is
            # not reset, so a chatty but DWA-deaf peer is still closed.
            # "Throwaway" is about routing, not DWRs: the peer layer still
            # answers a DWR here (Erlang/OTP does the same).
            pass
        else:
            # INITIAL       Receive non-DWA      Throwaway()          INITIAL
            # DOWN          Receive non-DWA      Throwaway()          DOWN
            pass

    def on_dwa(self, now: float) -> WatchdogAction:
        """A DWA (Result-Code 2001) arrived from the peer.

        Any DWA is taken as the answer to our DWR without matching its
        identifiers, as Erlang/OTP does: the message only proves liveness,
        and a peer that gets the identifiers wrong should not flap between
        OKAY and SUSPECT. A DWA with another result code is the caller's to
        treat as plain traffic or ignore.

        Returns NONE in every row of the table; the return value keeps the
        transport's handling of all events uniform.
        """
        state = self._state
        if state is WatchdogState.OKAY:
            # OKAY          Receive DWA          Pending = FALSE
            #                                    SetWatchdog()        OKAY
            self._pending = False
            self._set_watchdog(now)
        elif state is WatchdogState.SUSPECT:
            # SUSPECT       Receive DWA          Pending = FALSE
            #                                    Failback()
            #                                    SetWatchdog()        OKAY
            self._state = WatchdogState.OKAY
            self._pending = False
            self._set_watchdog(now)
        elif state is WatchdogState.REOPEN:
            self._pending = False
            self._num_dwa += 1
            if self._num_dwa >= self._reopen_dwa_needed:
                # REOPEN        Receive DWA &        Pending = FALSE
                #               NumDWA == 2          NumDWA++
                #                                    Failback()           OKAY
                #
                # The row's "NumDWA == 2" is "this DWA is the third"; the
                # count is configurable (reopen_dwa_needed), default 3.
                self._state = WatchdogState.OKAY
                self._num_dwa = 0
            # else:
            # REOPEN        Receive DWA &        Pending = FALSE
            #               NumDWA < 2           NumDWA++             REOPEN
            #
            # Neither REOPEN row calls SetWatchdog(): the next DWR goes out
            # when the running Tw expires, so validation paces at one DWR
            # per Tw, and entering OKAY keeps the timer that is running.
        else:
            # INITIAL       Receive DWA          Pending = FALSE
            #                                    Throwaway()          INITIAL
            # DOWN          Receive DWA          Pending = FALSE
            #                                    Throwaway()          DOWN
            self._pending = False
        return WatchdogAction.NONE

    def on_timer(self, now: float) -> WatchdogAction:
        """The timer scheduled at `deadline` fired; ``now`` is the current time.

        A call with ``now < deadline`` comes from a superseded timer handle
        (traffic moved the deadline later) and is ignored with NONE.
        """
        if now < self._deadline:
            return WatchdogAction.NONE

        state = self._state
        if state is WatchdogState.OKAY:
            if not self._pending:
                # OKAY          Timer expires &      SendWatchdog()
                #               !Pending             SetWatchdog()
                #                                    Pending = TRUE       OKAY
                self._pending = True
                self._set_watchdog(now)
                return WatchdogAction.SEND_DWR
            # OKAY          Timer expires &      Failover()
            #               Pending              SetWatchdog()        SUSPECT
            #
            # No second DWR: "the watchdog is not sent a second time"
            # (3.4.1 [4]); the transport is reliable and retransmits it.
            self._state = WatchdogState.SUSPECT
            self._set_watchdog(now)
            return WatchdogAction.NONE

        if state is WatchdogState.SUSPECT:
            # SUSPECT       Timer expires        CloseConnection()
            #                                    SetWatchdog()        DOWN
            #
            # SetWatchdog() here would drive AttemptOpen() in DOWN, which
            # the peer layer owns, so no timer is left running.
            self._enter_down()
            return WatchdogAction.CLOSE

        if state is WatchdogState.REOPEN:
            if not self._pending:
                # REOPEN        Timer expires &      SendWatchdog()
                #               !Pending             SetWatchdog()
                #                                    Pending = TRUE       REOPEN
                self._pending = True
                self._set_watchdog(now)
                return WatchdogAction.SEND_DWR
            if self._num_dwa < 0:
                # REOPEN        Timer expires &      CloseConnection()
                #               Pending &            SetWatchdog()
                #               NumDWA < 0                                DOWN
                self._enter_down()
                return WatchdogAction.CLOSE
            # REOPEN        Timer expires &      NumDWA = -1
            #               Pending &            SetWatchdog()
            #               NumDWA >= 0                               REOPEN
            #
            # The first unanswered Tw forfeits the DWAs counted so far: a
            # late DWA brings NumDWA back to 0, so a full set of answered
            # DWRs is still needed before the connection is used again.
            self._num_dwa = -1
            self._set_watchdog(now)
            return WatchdogAction.NONE

        # INITIAL       Timer expires        AttemptOpen()
        #                                    SetWatchdog()        INITIAL
        # DOWN          Timer expires        AttemptOpen()
        #                                    SetWatchdog()        DOWN
        #
        # Unreachable through `deadline` (it is infinite in these states):
        # reopening is the peer layer's, paced by Tc.
        return WatchdogAction.NONE

    def stop(self) -> None:
        """The transport connection is gone: RFC 3539 "Connection down".

        Idempotent. A watchdog that never started stays INITIAL, since the
        peer was never in service and a later connection needs no
        validation (Erlang/OTP does the same).
        """
        if self._state is WatchdogState.INITIAL:
            return
        # OKAY          Connection down      CloseConnection()
        #                                    Failover()
        #                                    SetWatchdog()        DOWN
        # SUSPECT       Connection down      CloseConnection()
        #                                    SetWatchdog()        DOWN
        # REOPEN        Connection down      CloseConnection()
        #                                    SetWatchdog()        DOWN
        self._enter_down()

    # ------------------------------------------------------------------
    # Helpers

    def _set_watchdog(self, now: float) -> None:
        # Appendix A SetWatchdog(): "Tw=TWINIT -2.0 + 4.0 * random()". A
        # fresh draw each time avoids peers synchronising (3.4.1 [1]).
        self._deadline = now + self._tw - JITTER + 2 * JITTER * self._rand()

    def _enter_down(self) -> None:
        # A DWR sent on the closed connection can never be answered, and
        # the next connection starts its own count, so clear both (the
        # table resets them only on "Connection up"; Erlang/OTP clears
        # Pending here too).
        self._state = WatchdogState.DOWN
        self._pending = False
        self._num_dwa = 0
        self._deadline = math.inf

    def __repr__(self) -> str:
        return (
            f"Watchdog(state={self._state.name}, pending={self._pending}, "
            f"num_dwa={self._num_dwa}, deadline={self._deadline!r}, tw={self._tw})"
        )
