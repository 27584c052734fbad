"""Numbers the dashboards and notebooks show per round: per-class AP, pseudo-label statistics, round scores.

Pseudo-label statistics describe what a round's predictions would teach the next round: per class, how
many clips it calls positive (calibrated clip score >= threshold) and how confident it is about them. A
class whose positives collapse to zero or explode from one round to the next is label drift.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_average_precision

from ..workspace import RunState


def per_class_ap(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Average precision of each class over clips (NaN for a class without a positive clip)."""
    scores = torch.as_tensor(np.asarray(scores, np.float32))
    truth = torch.as_tensor(np.asarray(truth).astype(np.int64))
    ap = multilabel_average_precision(scores, truth, num_labels=scores.shape[1], average=None).numpy()
    return np.where(truth.sum(0).numpy() > 0, ap, np.nan)


def pseudo_label_stats(scores: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray | float]:
    """Per class: clips at or above ``threshold`` and their mean score; overall share and confidence."""
    scores = np.asarray(scores, np.float64)
    positive = scores >= threshold
    counts = positive.sum(0)
    mean_conf = np.where(counts > 0, (scores * positive).sum(0) / np.maximum(counts, 1), np.nan)
    return {"positives": counts.astype(np.int64), "mean_confidence": mean_conf,
            "positive_rate": float(positive.mean()),
            "mean_confidence_all": float(scores[positive].mean()) if positive.any() else float("nan")}


def round_scores(state: RunState) -> list[dict]:
    """One row per stage run in ``state.json`` order with its recorded LWLRAP scores (rounds, in a pipeline)."""
    rows = []
    for order, (name, entry) in enumerate(state.data.get("stages", {}).items()):
        metrics = {k: v for k, v in (entry.get("metrics") or {}).items() if k.endswith("_lwlrap")}
        if metrics:
            rows.append({"order": order, "name": name, **metrics})
    return rows
