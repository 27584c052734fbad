"""Post-processing of clip scores toward a class prior.

A model trained on TP/FP boxes sees every species about equally often, while in the field (and in the
RFCx test set) species 3 sings in ~92% of clips and species 19 in ~0.4%. Within a clip, LWLRAP ranks the
species against each other, so per-class calibration matters as much as detection. Odds scaling
(RFCx 9th place) multiplies each class's odds by a factor that moves the model's average belief to the
prior: ``new_odds_k = odds_k * (prior_k / (1 - prior_k)) / (ref_k / (1 - ref_k))``, where ``ref_k`` is the
model's own mean prediction for class k over the clips being scored (what it believes on average).
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-6


def odds_scale_to_prior(probs: np.ndarray, prior: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Scale each class's odds so that the class's reference probability maps onto its prior.

    probs: (N, C) probabilities; prior: (C,) expected share of clips containing each class;
    reference: (C,) the model's typical probability per class (default: the mean of ``probs``).
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    prior = np.clip(np.asarray(prior, dtype=np.float64), _EPS, 1 - _EPS)
    reference = probs.mean(0) if reference is None else np.clip(np.asarray(reference, np.float64), _EPS, 1 - _EPS)
    if prior.shape != (probs.shape[1],) or reference.shape != prior.shape:
        raise ValueError(f"prior and reference need {probs.shape[1]} classes, got {prior.shape} and {reference.shape}")
    factor = (prior / (1 - prior)) / (reference / (1 - reference))
    odds = probs / (1 - probs) * factor
    return (odds / (1 + odds)).astype(np.float32)
