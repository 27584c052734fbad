"""Framewise -> clip: moving-average smoothing along time, then clip aggregation.

A single loud frame (a click, a confuser) makes the max over time jump; a call lasts many frames.
Smoothing the framewise scores with a moving average before taking the max (RFCx 43rd place) rewards
sustained evidence. The aggregation itself is configurable: ``max`` (the framewise head's own clip score),
``topn_mean`` (mean of the n highest frames: between max and mean) or ``mean``.
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("max", "topn_mean", "mean")


def smooth_framewise(framewise: np.ndarray, window_frames: int) -> np.ndarray:
    """Centered moving average over the last axis (time); edges average over the frames that exist.

    ``window_frames`` <= 1 returns the input as float32. Shape is kept.
    """
    x = np.asarray(framewise, dtype=np.float32)
    window = int(window_frames)
    if window < 0:
        raise ValueError(f"smoothing window must be >= 0 frames, got {window_frames}")
    if window <= 1 or x.shape[-1] == 0:
        return x
    left = (window - 1) // 2
    right = window - 1 - left
    csum = np.concatenate([np.zeros(x.shape[:-1] + (1,), np.float64), np.cumsum(x, axis=-1, dtype=np.float64)], -1)
    t = x.shape[-1]
    hi = np.minimum(np.arange(t) + right + 1, t)
    lo = np.maximum(np.arange(t) - left, 0)
    return ((csum[..., hi] - csum[..., lo]) / (hi - lo)).astype(np.float32)


def seconds_to_frames(seconds: float, frames_per_second: float) -> int:
    """A smoothing window in seconds on a given frame grid (at least one frame)."""
    return max(1, int(round(float(seconds) * float(frames_per_second))))


def aggregate_clip(framewise: np.ndarray, method: str = "max", top_n: int = 3) -> np.ndarray:
    """Clip scores (..., C) from framewise scores (..., C, T) by ``max``, ``topn_mean`` or ``mean``."""
    x = np.asarray(framewise, dtype=np.float32)
    if method == "max":
        return x.max(-1)
    if method == "mean":
        return x.mean(-1)
    if method == "topn_mean":
        n = int(top_n)
        if n < 1:
            raise ValueError(f"postprocess.top_n must be >= 1, got {top_n}")
        n = min(n, x.shape[-1])
        return np.sort(x, axis=-1)[..., -n:].mean(-1)
    raise ValueError(f"postprocess.aggregate={method!r}: choose one of {AGGREGATIONS}")
