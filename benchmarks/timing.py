"""Timing helpers shared by the benchmarks: a stopwatch, rates, warm-up, interleaved rounds, the load average.

The machines are shared and their speed drifts by tens of percent over seconds, so a benchmark compares its
variants side by side in one process: each is warmed up first (lazy initialisation, the allocator, oneDNN
primitives), then the variants take turns, round after round, so that a busy spell slows all of them alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


class Stopwatch:
    """Wall-clock seconds spent inside ``with`` blocks, summed over every block (``laps`` holds each)::

    with Stopwatch() as clock:
        work()
    clock.seconds

    clock = Stopwatch()
    for x in items:
        prepare(x)          # not timed
        with clock:
            step(x)         # timed; clock.seconds is the sum, clock.laps each step
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.laps: list[float] = []
        self._start: float | None = None

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None, "Stopwatch left before it was entered"
        lap = time.perf_counter() - self._start
        self._start = None
        self.laps.append(lap)
        self.seconds += lap


def rate(count: float, seconds: float, digits: int | None = None) -> float:
    """``count / seconds`` (items per second; ``inf`` when no time was measured), rounded to ``digits`` if given."""
    value = count / seconds if seconds > 0 else float("inf")
    return value if digits is None or value == float("inf") else round(value, digits)


def warm_up(fn: Callable[[], T], passes: int = 1, max_seconds: float | None = None) -> tuple[T, float]:
    """Run ``fn`` ``passes`` times (at least once) before anything is timed, stopping early after a pass that
    alone took longer than ``max_seconds`` -> the first pass's result and the seconds all passes took."""
    first: T | None = None
    with Stopwatch() as total:
        for i in range(max(passes, 1)):
            with Stopwatch() as one:
                out = fn()
            if i == 0:
                first = out
            if max_seconds is not None and one.seconds > max_seconds:
                break
    return first, total.seconds  # type: ignore[return-value]


def interleaved(runs: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Call every run once per round, in their order, for ``rounds`` rounds -> each run's results by round.

    Run A, B, C, A, B, C, ... rather than A, A, B, B, C, C: a machine whose speed drifts then affects every
    run alike, and ratios taken within a round cancel the drift."""
    results: dict[str, list[T]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    return results


def loadavg() -> float | None:
    """The 1-minute load average, rounded to 0.01 (other processes compete for the same cores); ``None`` where
    the system has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover  (not on every OS)
        return None


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def rss_gb() -> float:
    """This process's resident memory now, in GiB (Linux: ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 3)
