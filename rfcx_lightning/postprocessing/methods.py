"""The named calibration methods that ``postprocess.method`` chooses between, on clip scores (N, C).

* ``raw``: the scores as they are.
* ``odds``: odds scaling of each class so its mean score maps to the prior (RFCx 9th place).
* ``topk_linear`` / ``topk_power``: odds scaling first (so that each clip's probabilities sum to about its
  number of species, which sets its k), then per-class linear or power factors fitted so that each clip's
  top-k matches the prior (RFCx 1st place).

Each returns the new scores and the per-class factors it applied, so they can be logged and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import odds_factors, odds_scale_to_prior
from .topk import estimate_k, fit_topk_factors

METHODS = ("raw", "odds", "topk_linear", "topk_power")


@dataclass
class Calibrated:
    scores: np.ndarray                                   # (N, C) calibrated scores
    factors: dict[str, list[float]] = field(default_factory=dict)   # name -> per-class factors
    info: dict[str, float] = field(default_factory=dict)            # e.g. top-k matching error before/after


def calibrate(probs: np.ndarray, method: str, prior: np.ndarray | None) -> Calibrated:
    """Apply ``method`` to clip probabilities (N, C) toward ``prior`` (C,)."""
    probs = np.asarray(probs, dtype=np.float32)
    if method == "raw":
        return Calibrated(probs)
    if method not in METHODS:
        raise ValueError(f"postprocess.method={method!r}: choose one of {METHODS}")
    if prior is None:
        raise ValueError(f"postprocess.method={method!r} needs a prior: set score.prior or postprocess.prior=estimated")
    prior = np.asarray(prior, dtype=np.float64)
    odds = odds_factors(prior, np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6).mean(0))
    scaled = odds_scale_to_prior(probs, prior)
    if method == "odds":
        return Calibrated(scaled, {"odds": odds.tolist()})
    fit = fit_topk_factors(scaled, prior, kind=method.split("_", 1)[1], k=estimate_k(scaled))
    return Calibrated(fit.apply(scaled), {"odds": odds.tolist(), method: fit.factors.tolist()},
                      {"topk_error_before": fit.error_before, "topk_error_after": fit.error,
                       "mean_k": float(fit.k.mean())})

