"""Wall-clock timing of several runners side by side: the one helper behind ``zapopt bench``,
optimize's latency-aware selection and ``benchmarks/``.

Runs are alternated (A, B, A, B, ...; or A, B, B, A, ... with ``balanced``) so that machine
noise (other processes, frequency changes) hits every runner alike, and each comparison is
made on the paired runs of one round, which is why ratios come with their own median and
interquartile range, and a distribution-free lower confidence bound on their median
(:func:`median_lower_bound`) for decisions that must not be fooled by noise.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from zapopt.errors import ZapoptError


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of some samples (seconds, or a ratio)."""

    median: float
    q1: float
    q3: float
    count: int

    @classmethod
    def of(cls, samples: list[float] | tuple[float, ...]) -> Spread:
        if not samples:
            raise ZapoptError("no timing samples to summarise")
        q1, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 75])
        return cls(float(statistics.median(samples)), float(q1), float(q3), len(samples))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self, scale: float = 1.0) -> dict[str, Any]:
        return {"median": self.median * scale, "q1": self.q1 * scale, "q3": self.q3 * scale,
                "iqr": self.iqr * scale, "count": self.count}


@dataclass(frozen=True)
class Timings:
    """Seconds per call of each runner, one sample per round, rounds in order."""

    samples: dict[str, tuple[float, ...]]

    def spread(self, name: str) -> Spread:
        return Spread.of(self.samples[name])

    def median(self, name: str) -> float:
        return self.spread(name).median

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """``numerator / denominator`` of each round (paired runs)."""
        pairs = zip(self.samples[numerator], self.samples[denominator])
        return [a / b for a, b in pairs if b > 0]

    def ratio(self, numerator: str, denominator: str) -> Spread:
        """``numerator / denominator`` per round (paired runs), summarised."""
        return Spread.of(self.ratios(numerator, denominator))


def lower_bound_rank(count: int, confidence: float) -> int | None:
    """The 1-based rank k such that the k-th smallest of ``count`` samples is below their
    distribution's median with probability >= ``confidence`` (the sign test: the number of
    samples below the median is Binomial(count, 1/2)); None when ``count`` is too small."""
    if not 0.5 < confidence < 1:
        raise ZapoptError(f"confidence must be in (0.5, 1), got {confidence}")
    rank, below = None, 0.0  # below: P(Binomial(count, 1/2) < k)
    for k in range(1, count + 1):
        below += math.comb(count, k - 1) / 2 ** count
        if below > 1 - confidence:
            break
        rank = k
    return rank


def median_lower_bound(samples: list[float] | tuple[float, ...], confidence: float = 0.95) -> float | None:
    """A lower confidence bound on the median of ``samples`` (independent paired ratios),
    free of any assumption on their distribution; None when there are too few samples."""
    rank = lower_bound_rank(len(samples), confidence)
    return None if rank is None else sorted(samples)[rank - 1]


#: Interleaved calls per paired sample when timing in wall time (more than one thread); see
#: time_alternated's ``best_of``.
WALL_TIME_BEST_OF = 3


def clock_for(threads: int | None) -> tuple[str, Callable[[], float]]:
    """The clock to time onnxruntime runs with at ``threads`` intra-op threads, and its name.

    One thread: onnxruntime computes in the calling thread, so that thread's CPU time is the
    run's cost without the time other processes preempted it for (on a shared machine that
    is most of the noise). More threads: wall time, the only clock that sees them all.
    """
    if threads == 1:
        return "thread CPU time", time.thread_time
    return "wall time", time.perf_counter


def time_alternated(runners: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 2,
                    clock: Callable[[], float] = time.perf_counter, balanced: bool = False,
                    best_of: int = 1) -> Timings:
    """Call every runner ``warmup`` times, then ``repeats`` rounds of one call each, in turn;
    ``balanced``: every other round runs them in reverse order (A B, B A, ...), so that no
    runner always goes first (a cache or frequency effect of the order then cancels out).
    ``best_of`` > 1: a round calls them in turn that many times and keeps each runner's
    fastest call (wall time on a shared machine only ever gains what other processes take,
    so the minimum of a few interleaved calls is the steadier paired sample)."""
    if repeats < 1:
        raise ZapoptError(f"repeats must be >= 1, got {repeats}")
    if best_of < 1:
        raise ZapoptError(f"best_of must be >= 1, got {best_of}")
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners.items())
    for round_index in range(repeats):
        fastest = {name: math.inf for name in runners}
        for _ in range(best_of):
            for name, run in (reversed(order) if balanced and round_index % 2 else order):
                start = clock()
                run()
                fastest[name] = min(fastest[name], clock() - start)
        for name in runners:
            samples[name].append(fastest[name])
    return Timings({name: tuple(values) for name, values in samples.items()})


def best_of_for(threads: int | None) -> int:
    """Interleaved calls per paired sample at ``threads`` intra-op threads: one in thread CPU
    time (one thread: other processes' time is not counted), WALL_TIME_BEST_OF in wall time."""
    return 1 if threads == 1 else WALL_TIME_BEST_OF
