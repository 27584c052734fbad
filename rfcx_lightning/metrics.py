"""Scores: the competition's LWLRAP, and the masked framewise AUROC used to validate on TP/FP crops.

LWLRAP (label-weighted label-ranking average precision) averages, over every true (clip, class) label,
the precision of the clip's ranking at that label's rank. Ties count against the label: the rank of a
label is the number of the clip's scores >= its own. Implemented by sorting each row once (vectorized over
rows), which is exact with ties and fast for the ~10^5-10^6 rows of framewise evaluations.

MaskedFrameAUROC is the score available without clip-level ground truth: on TP/FP crops only the labeled
(class, frame) cells are known, and the question is whether TP cells score above FP cells.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _label_precisions(scores, truth) -> tuple[np.ndarray, np.ndarray]:
    """Precision at the rank of every (row, class) cell; returns (precision (N, C), truth as bool (N, C)).

    For each row: sort descending; a cell's rank counts every score >= its own, i.e. the end of its tie
    group in the sorted order; precision = true labels up to that position / that position.
    Only cells where truth is True are meaningful.
    """
    scores = _to_numpy(scores)
    truth = _to_numpy(truth).astype(bool)
    if scores.shape != truth.shape or scores.ndim != 2:
        raise ValueError(f"scores and truth must both be (N, C); got {scores.shape} and {truth.shape}")
    n_rows, n_classes = scores.shape
    if n_rows == 0:
        return np.zeros((0, n_classes)), truth
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_truth = np.take_along_axis(truth, order, axis=1)
    # position k closes a tie group if it is the last one or the next score differs
    closes = np.ones_like(sorted_scores, dtype=bool)
    closes[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    positions = np.broadcast_to(np.arange(n_classes), (n_rows, n_classes))
    group_end = np.where(closes, positions, n_classes)
    group_end = np.minimum.accumulate(group_end[:, ::-1], axis=1)[:, ::-1]  # next closing position >= k
    true_up_to = np.cumsum(sorted_truth, axis=1)
    sorted_precision = np.take_along_axis(true_up_to, group_end, axis=1) / (group_end + 1.0)
    precision = np.empty_like(sorted_precision)
    np.put_along_axis(precision, order, sorted_precision, axis=1)
    return precision, truth


def lwlrap(scores, truth) -> float:
    """Exact LWLRAP of (N, C) scores against (N, C) 0/1 truth (numpy or torch).

    Rows without a true label contribute nothing; NaN if there is no true label at all.
    """
    precision, truth = _label_precisions(scores, truth)
    n_true = truth.sum()
    if n_true == 0:
        return float("nan")
    return float(precision[truth].sum() / n_true)


def per_class_lwlrap(scores, truth) -> tuple[np.ndarray, np.ndarray]:
    """Per-class LWLRAP and class weights: lwlrap == sum(per_class * weights).

    per_class[c] is the label-ranking precision averaged over class c's true labels (0 for a class with no
    true label); weights[c] is class c's share of all true labels. Use it to see which species drag the
    score down.
    """
    precision, truth = _label_precisions(scores, truth)
    n_per_class = truth.sum(axis=0)
    per_class = np.where(truth, precision, 0.0).sum(axis=0) / np.maximum(n_per_class, 1)
    weights = n_per_class / max(n_per_class.sum(), 1)
    return per_class, weights


def prior_baseline_lwlrap(truth, prior) -> float:
    """LWLRAP when every clip gets the same score vector `prior`: the floor any model must beat."""
    truth = _to_numpy(truth)
    prior = np.asarray(_to_numpy(prior), dtype=np.float64).reshape(1, -1)
    if prior.shape[1] != truth.shape[1]:
        raise ValueError(f"prior has {prior.shape[1]} classes, truth has {truth.shape[1]}")
    return lwlrap(np.broadcast_to(prior, truth.shape), truth)


class LWLRAP(Metric):
    """Exact LWLRAP over every row seen; rows are gathered across processes ('cat') before computing.

    An exact ranking metric cannot be accumulated from per-batch summaries, so predictions are kept.
    Under DDP, a DistributedSampler may repeat items to pad the last batch; de-duplicate upstream when the
    exact held-out score matters.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape or preds.dim() != 2:
            raise ValueError(f"preds and target must both be (N, C); got {preds.shape} and {target.shape}")
        self.preds.append(preds.detach().float())
        self.target.append(target.detach().to(torch.uint8))

    def compute(self) -> Tensor:
        if isinstance(self.preds, list) and not self.preds:  # after a DDP sync states are tensors
            return torch.tensor(float("nan"))
        value = lwlrap(dim_zero_cat(self.preds), dim_zero_cat(self.target))
        return torch.tensor(value, dtype=torch.float32)


class MaskedFrameAUROC(Metric):
    """Binary AUROC over labeled (class, frame) cells: do TP cells score above FP cells?

    update(framewise (B, C, T) logits or probabilities, targets (B, C, T'), mask (B, C, T')). When T' != T,
    labels are pooled onto the prediction grid exactly as the loss does (`losses.align_labels`). Cells with
    mask > 0 are kept; targets >= 0.5 are positives. Logits and probabilities give the same AUROC, but do
    not mix them across updates. compute() returns 0.5 when positives or negatives are missing.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, targets: Tensor, mask: Tensor) -> None:
        from rfcx_lightning.losses import align_labels

        if preds.dim() == 3 and preds.shape[-1] != targets.shape[-1]:
            targets, mask = align_labels(targets, mask, preds.shape[-1])
        labeled = mask > 0
        # float64 so a sigmoid applied to logits (by binary_auroc) does not saturate into ties
        self.scores.append(preds.detach()[labeled].to(torch.float64))
        self.labels.append((targets.detach()[labeled] >= 0.5).to(torch.long))

    def compute(self) -> Tensor:
        if isinstance(self.scores, list) and not self.scores:  # after a DDP sync states are tensors
            return torch.tensor(0.5)
        scores = dim_zero_cat(self.scores)
        labels = dim_zero_cat(self.labels)
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.numel():
            return torch.tensor(0.5)
        return binary_auroc(scores, labels).float()
