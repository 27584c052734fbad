"""Top-k distribution matching (RFCx 1st place): per-class factors so that each clip's top-k matches the prior.

Odds scaling moves each class's *mean* score to the prior; what LWLRAP rewards is the *ranking inside a
clip*. Here each clip i is expected to contain ``k_i`` species, estimated from the sum of its
probabilities (a calibrated model's probabilities sum to the expected number of species present). A class
is "predicted present" in clip i when it is among the clip's top ``k_i`` scores. Per-class factors
(linear: ``a_c * p``; power: ``p ** a_c``) are chosen so that the share of clips predicting each class
matches its prior, by minimising the total absolute error ``sum_c |share_c - prior_c|``.

The error is a step function of the factors, so it is minimised by coordinate descent over a log grid:
for one class at a time, every grid value is scored at once (the rest of each clip's ranking is fixed, so
class c either enters a clip's top-k, displacing the clip's k-th other class, or it does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-6
KINDS = ("linear", "power")


def estimate_k(probs: np.ndarray, k_min: int = 1) -> np.ndarray:
    """Expected number of species per clip: the rounded sum of its probabilities, at least ``k_min``."""
    probs = np.asarray(probs, dtype=np.float64)
    k = np.rint(probs.sum(1)).astype(np.int64)
    return np.clip(k, k_min, probs.shape[1])


def _scaled(probs: np.ndarray, factors: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return probs * factors
    if kind == "power":
        return probs ** factors
    raise ValueError(f"top-k matching kind={kind!r}: choose one of {KINDS}")


def apply_factors(probs: np.ndarray, factors: np.ndarray, kind: str) -> np.ndarray:
    """Scores after the per-class factors; linear factors are divided by their max so scores stay <= 1
    (a common constant changes no ranking)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    factors = np.asarray(factors, dtype=np.float64)
    if kind == "linear":
        factors = factors / factors.max()
    return _scaled(probs, factors, kind).astype(np.float32)


def topk_share(scores: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Share of clips whose top-``k_i`` scores include each class (ties broken by class order)."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
    return (rank < np.asarray(k)[:, None]).mean(0)


def _pick(grid: np.ndarray, error: np.ndarray, preference: np.ndarray) -> float:
    """The grid value with the least error: the one closest to 1 if 1 is among the best, else the middle
    of the best run of grid values (a step function's minimum is an interval; its middle is the value
    least likely to trap the next class's move on a boundary)."""
    best = np.flatnonzero(error <= error.min() + 1e-12)
    if preference[best].min() < 1e-12:
        return float(grid[best[np.argmin(preference[best])]])
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    run = max(runs, key=len)
    return float(grid[run[len(run) // 2]])


@dataclass
class TopKFit:
    kind: str
    factors: np.ndarray      # (C,) per-class factor
    k: np.ndarray            # (N,) clips' estimated number of species
    error: float             # sum_c |share_c - prior_c| after fitting
    error_before: float      # the same with every factor 1

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return apply_factors(probs, self.factors, self.kind)


def default_grid(kind: str) -> np.ndarray:
    if kind == "linear":
        return np.logspace(-3, 3, 121)
    if kind == "power":
        return np.logspace(np.log10(0.05), np.log10(20.0), 121)
    raise ValueError(f"top-k matching kind={kind!r}: choose one of {KINDS}")


def fit_topk_factors(probs: np.ndarray, prior: np.ndarray, kind: str = "linear", k: np.ndarray | None = None,
                     grid: np.ndarray | None = None, sweeps: int = 6, restarts: int = 8,
                     seed: int = 0) -> TopKFit:
    """Fit per-class factors so that the share of clips with each class in their top-k matches ``prior``.

    probs (N, C) in [0, 1]; prior (C,); k (N,) per clip (default :func:`estimate_k` of ``probs``). Among
    grid values with the same error the one closest to 1 (no change) wins, so classes whose share already
    matches are left alone. Coordinate descent can stall where only a joint move of two classes helps
    (one has a few clips too many, another a few too few); ``restarts`` perturbed restarts from the best
    point so far (seeded, so the fit is deterministic) get it out.
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    prior = np.asarray(prior, dtype=np.float64)
    n, c = probs.shape
    if prior.shape != (c,):
        raise ValueError(f"prior needs {c} classes, got shape {prior.shape}")
    if n == 0:
        raise ValueError("top-k matching needs at least one clip")
    k = estimate_k(probs) if k is None else np.clip(np.asarray(k, dtype=np.int64), 1, c)
    grid = default_grid(kind) if grid is None else np.asarray(grid, dtype=np.float64)
    preference = np.abs(np.log(grid))  # tie-break toward factor 1
    error_before = float(np.abs(topk_share(probs, k) - prior).sum())
    factors = _descend(probs, prior, k, grid, preference, np.ones(c), kind, sweeps)
    error = _error(probs, prior, k, factors, kind)
    rng = np.random.default_rng(seed)
    step = np.log(grid[-1] / grid[0]) / 8
    for _ in range(restarts):
        if error < 1e-12:
            break
        start = grid[np.abs(np.log(grid)[None, :] - (np.log(factors) + rng.normal(0, step, c))[:, None]).argmin(1)]
        candidate = _descend(probs, prior, k, grid, preference, start, kind, sweeps)
        candidate_error = _error(probs, prior, k, candidate, kind)
        if candidate_error < error - 1e-12:
            factors, error = candidate, candidate_error
    return TopKFit(kind=kind, factors=factors, k=k, error=error, error_before=error_before)


def _error(probs, prior, k, factors, kind) -> float:
    return float(np.abs(topk_share(apply_factors(probs, factors, kind), k) - prior).sum())


def _descend(probs, prior, k, grid, preference, factors, kind, sweeps) -> np.ndarray:
    """Coordinate descent: each class in turn moves to its best grid value given the others."""
    n, c = probs.shape
    factors = np.array(factors, dtype=np.float64)
    rows = np.arange(n)
    has_kth = k <= c - 1                     # clips where class c can be left out of the top-k
    kth_pos = np.minimum(k - 1, c - 2)
    for _ in range(sweeps):
        changed = False
        for cls in range(c):
            scores = _scaled(probs, factors, kind)
            others = np.delete(scores, cls, axis=1)
            other_ids = np.delete(np.arange(c), cls)
            order = np.argsort(-others, axis=1, kind="stable")
            # the clip's top (k-1) other classes stay whatever cls does; its k-th other class stays only
            # when cls stays out
            ranked_ids = other_ids[order]                                   # (N, C-1)
            stays = np.arange(c - 1)[None, :] < (k - 1)[:, None]
            kept = np.bincount(ranked_ids[stays], minlength=c).astype(np.float64)
            kth = np.where(has_kth, ranked_ids[rows, kth_pos], -1)
            threshold = np.where(has_kth, np.take_along_axis(others, order, 1)[rows, kth_pos], -np.inf)
            candidates = _scaled(probs[:, cls][None, :], grid[:, None], kind)    # (G, N)
            inside = candidates > threshold[None, :]
            displaced = np.zeros((n, c))
            displaced[rows[has_kth], kth[has_kth]] = 1
            share = kept[None, :] + (~inside).astype(np.float64) @ displaced
            share[:, cls] = inside.sum(1)
            error = np.abs(share / n - prior[None, :]).sum(1)
            choice = _pick(grid, error, preference)
            if choice != factors[cls]:
                factors[cls], changed = choice, True
        if not changed:
            break
    return factors
