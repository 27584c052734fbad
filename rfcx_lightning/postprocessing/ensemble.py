"""Ensembling predictions of folds, rounds and stages: mean, rank mean, geometric mean.

The mean of probabilities is what the runner does for folds. Models from different rounds or stages are
calibrated differently (a co-teaching round is more confident than the bootstrap), so averaging their
probabilities lets the most confident model dominate; the rank mean (per class, each model's scores
replaced by their rank among the recordings) weighs them equally. The geometric mean punishes a class that
any one model rules out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

ENSEMBLES = ("mean", "rank_mean", "geometric_mean")
_EPS = 1e-6


def rank_normalize(scores: np.ndarray) -> np.ndarray:
    """Per class (axis 1), the average rank of every value among all recordings (and frames), in (0, 1]."""
    x = np.asarray(scores, dtype=np.float64)
    moved = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)             # (C, everything else)
    ranks = np.stack([rankdata(row, method="average") / row.size for row in moved])
    return np.moveaxis(ranks.reshape((x.shape[1],) + tuple(np.delete(x.shape, 1))), 0, 1).astype(np.float32)


def ensemble(predictions: Sequence[np.ndarray], method: str = "mean",
             weights: Sequence[float] | None = None) -> np.ndarray:
    """Combine same-shaped predictions (N, C[, T]) of several models into one array of that shape."""
    arrays = [np.asarray(p, dtype=np.float32) for p in predictions]
    if not arrays:
        raise ValueError("ensemble needs at least one prediction array")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members must have the same shape, got {sorted(shapes)}")
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(arrays),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be {len(arrays)} non-negative numbers, got {weights}")
    w = w / w.sum()
    if method == "mean":
        return np.tensordot(w, np.stack(arrays), axes=1).astype(np.float32)
    if method == "rank_mean":
        return np.tensordot(w, np.stack([rank_normalize(a) for a in arrays]), axes=1).astype(np.float32)
    if method == "geometric_mean":
        logs = np.log(np.clip(np.stack(arrays), _EPS, 1.0))
        return np.exp(np.tensordot(w, logs, axes=1)).astype(np.float32)
    raise ValueError(f"postprocess ensemble={method!r}: choose one of {ENSEMBLES}")
