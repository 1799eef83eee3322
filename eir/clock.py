"""Clocks: the system clock, and a test clock that starts where you say and runs fast.

Owns the one place the running EIR reads the time of day. The engine takes
time as an input (`Facts.now`); the app passes it from one of these.

A `ScaledClock` maps real time to simulated time linearly:
``now = start + (real_now - anchor) * speed``. ``anchor`` is the real
instant at which simulated time equals ``start`` (the process start by
default), so a simulator given the same start, speed and anchor agrees on
"now" with the EIR, and 40 days play in 40 seconds at speed 86,400.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "ScaledClock", "system_clock"]

Clock = Callable[[], float]
"""Returns UTC epoch seconds."""


def system_clock() -> float:
    return time.time()


class ScaledClock:
    __slots__ = ("anchor", "speed", "start")

    def __init__(self, start: float, speed: float = 1.0, anchor: float | None = None) -> None:
        if not speed > 0:
            raise ValueError("clock speed must be positive")
        self.start = start
        self.speed = speed
        self.anchor = time.time() if anchor is None else anchor

    def __call__(self) -> float:
        return self.start + (time.time() - self.anchor) * self.speed

    def real_time_of(self, simulated: float) -> float:
        """The real epoch time at which this clock shows ``simulated``."""
        return self.anchor + (simulated - self.start) / self.speed

    def __repr__(self) -> str:
        return f"ScaledClock(start={self.start}, speed={self.speed}, anchor={self.anchor})"
