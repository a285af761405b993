"""Wall-clock timing of several runners side by side: the one helper behind ``zapopt bench``,
optimize's latency-aware selection and ``benchmarks/``.

Runs are alternated (A, B, A, B, ...) so that machine noise (other processes, frequency
changes) hits every runner alike, and each comparison is made on the paired runs of one
round, which is why ratios come with their own median and interquartile range.
"""
from __future__ import annotations

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

    def ratio(self, numerator: str, denominator: str) -> Spread:
        """``numerator / denominator`` per round (paired runs), summarised."""
        pairs = zip(self.samples[numerator], self.samples[denominator])
        return Spread.of([a / b for a, b in pairs if b > 0])


def time_alternated(runners: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 2,
                    clock: Callable[[], float] = time.perf_counter) -> Timings:
    """Call every runner ``warmup`` times, then ``repeats`` rounds of one call each, in turn."""
    if repeats < 1:
        raise ZapoptError(f"repeats must be >= 1, got {repeats}")
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = clock()
            run()
            samples[name].append(clock() - start)
    return Timings({name: tuple(values) for name, values in samples.items()})
