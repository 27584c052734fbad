"""Timing helpers shared by the benchmarks.

Every figure the benchmarks report is a ratio of two variants timed *alternately* on the same inputs: on a
shared or throttled machine load drifts over seconds, and alternating makes the drift hit both variants
alike, so the ratio survives where an absolute time would not.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (synchronising CUDA first and after, so queued kernels count)."""
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls: the least disturbed by other processes."""
    return min(timed(fn) for _ in range(max(1, repeats)))


def alternate(variants: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time every variant once per round, ``repeats`` rounds; returns each variant's list of seconds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(1, repeats)):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return times


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
