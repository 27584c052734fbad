"""Per-class odds scaling toward a class prior, with the prior given or estimated.

A model trained on TP/FP boxes sees every species about equally often, while in the field (and in the
RFCx test set) species 3 sings in ~92% of clips and species 19 in ~0.4%. Within a clip, LWLRAP ranks the
species against each other, so per-class calibration matters as much as detection. Odds scaling
(RFCx 9th place) multiplies each class's odds by a factor that moves the model's typical belief to the
prior: ``new_odds_k = odds_k * (prior_k / (1 - prior_k)) / (ref_k / (1 - ref_k))``.

Where no prior is known, :func:`estimate_prior` estimates one from the model's own mean predictions
versus the label balance it was trained on (the EM prior adjustment of Saerens et al., 2002): a model
trained where class k was positive in a share ``b_k`` of labelled examples outputs posteriors for that
balance; re-weighting them toward a candidate prior and averaging gives a new candidate, until it settles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_EPS = 1e-6


def _prob(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.clip(x, _EPS, 1 - _EPS)


def odds_factors(prior: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-class odds multipliers that map ``reference`` onto ``prior``."""
    prior, reference = _prob(prior, "prior"), _prob(reference, "reference")
    return (prior / (1 - prior)) / (reference / (1 - reference))


def scale_odds(probs: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Multiply each class's odds by its factor (last axis = classes); float32 probabilities."""
    probs = _prob(probs, "probs")
    odds = probs / (1 - probs) * np.asarray(factors, dtype=np.float64)
    return (odds / (1 + odds)).astype(np.float32)


def odds_scale_to_prior(probs: np.ndarray, prior: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Scale each class's odds so that the class's reference probability maps onto its prior.

    probs: (N, C) probabilities; prior: (C,) expected share of clips containing each class;
    reference: (C,) the model's typical probability per class (default: the mean of ``probs``).
    """
    probs = _prob(probs, "probs")
    prior = _prob(prior, "prior")
    reference = probs.mean(0) if reference is None else _prob(reference, "reference")
    if prior.shape != (probs.shape[1],) or reference.shape != prior.shape:
        raise ValueError(f"prior and reference need {probs.shape[1]} classes, got {prior.shape} and {reference.shape}")
    return scale_odds(probs, odds_factors(prior, reference))


def training_balance(boxes: pd.DataFrame, n_classes: int, class_column: str = "class_index") -> np.ndarray:
    """Share of labelled boxes of each class that are TP: the balance the masked loss trained on.

    ``boxes`` needs a ``class_column`` and a boolean ``is_tp`` (or a ``label`` of 1/0) column. A class with
    no box gets 0.5 (no evidence either way).
    """
    if class_column not in boxes.columns:
        raise ValueError(f"boxes need a {class_column!r} column to compute the training balance; "
                         f"have {list(boxes.columns)}")
    if "is_tp" in boxes.columns:
        tp = boxes["is_tp"].astype(bool).to_numpy()
    elif "label" in boxes.columns:
        tp = boxes["label"].to_numpy() > 0.5
    else:
        raise ValueError(f"boxes need an 'is_tp' or 'label' column; have {list(boxes.columns)}")
    cls = boxes[class_column].to_numpy().astype(np.int64)
    n_tp = np.bincount(cls[tp], minlength=n_classes)[:n_classes]
    n_all = np.bincount(cls, minlength=n_classes)[:n_classes]
    return np.where(n_all > 0, n_tp / np.maximum(n_all, 1), 0.5)


def estimate_prior(probs: np.ndarray, train_balance: np.ndarray, n_iter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """EM estimate of the share of clips containing each class (Saerens et al., 2002), per class.

    probs (N, C) are posteriors of a model trained at ``train_balance`` (C,). Each step re-weights the odds
    from the training balance to the current estimate and takes the mean as the next estimate.
    """
    probs = _prob(probs, "probs")
    balance = _prob(train_balance, "train_balance")
    if balance.shape != (probs.shape[1],):
        raise ValueError(f"train_balance needs {probs.shape[1]} classes, got {balance.shape}")
    prior = probs.mean(0)
    for _ in range(n_iter):
        new = scale_odds(probs, odds_factors(prior, balance)).astype(np.float64).mean(0)
        new = np.clip(new, _EPS, 1 - _EPS)
        if np.max(np.abs(new - prior)) < tol:
            return new
        prior = new
    return prior
