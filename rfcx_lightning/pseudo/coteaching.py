"""Co-teaching on pseudo labels: per-cell losses, small-loss selection, and the drop-rate ramp.

Pseudo labels (a teacher's framewise probabilities) are wrong in places, and a network that fits its own
mistakes confirms them. Co-teaching (Han et al. 2018; the 1st place RFCx solution) trains two networks
side by side: each ranks the pseudo-labelled (class, frame) cells of a batch by its own loss, and its
*peer* updates only on the share it finds small-loss. Networks with different initialisations and
augmentations make different mistakes, so each filters the other's likely-noisy cells instead of its own.

Two rules keep the labels we trust intact:

* TP/FP cells (the annotations) are never dropped; selection happens among pseudo cells only.
* The dropped share ramps linearly from 0 to ``drop_rate`` over ``ramp_epochs``: early on both networks
  are bad at ranking, and dropping then would only discard cells at random.

Everything here is a pure function of tensors, so it is tested without a Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CoteachLosses", "cell_losses", "coteaching_losses", "consistency_loss", "drop_rate_at",
           "linear_ramp", "small_loss_keep", "weighted_mean"]


def linear_ramp(progress_epochs: float, ramp_epochs: float) -> float:
    """0 at the start, 1 after ``ramp_epochs`` (fractional) epochs, linear in between; 1 if ``ramp_epochs <= 0``."""
    if ramp_epochs <= 0:
        return 1.0
    return min(1.0, max(0.0, float(progress_epochs)) / float(ramp_epochs))


def drop_rate_at(progress_epochs: float, drop_rate: float, ramp_epochs: float) -> float:
    """Share of pseudo cells to drop after ``progress_epochs`` (fractional) epochs.

    Linear from 0 at the start to ``drop_rate`` at ``ramp_epochs``, constant after; ``ramp_epochs <= 0``
    drops the full share from the first step.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"coteach.drop_rate must be in [0, 1), got {drop_rate}")
    return float(drop_rate) * linear_ramp(progress_epochs, ramp_epochs)


def cell_losses(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Binary cross-entropy per (item, class, frame) cell, float32, 0 where ``weights`` is 0.

    Targets may be soft (teacher probabilities). ``torch.where`` (not a product) keeps a NaN target in an
    unweighted cell out of the result, as in :mod:`rfcx_lightning.losses`. Labels must already be on the
    model's output grid: pooling soft, weighted labels has no single right rule, so the crop dataset builds
    them on that grid and a mismatch here is an error.
    """
    if logits.shape != targets.shape or targets.shape != weights.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and weights "
                         f"{tuple(weights.shape)} must have the same shape (labels on the model's grid)")
    logits = logits.float()
    labelled = weights > 0
    targets = torch.where(labelled, targets.float(), torch.zeros_like(logits))
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return torch.where(labelled, bce, torch.zeros_like(bce))


def weighted_mean(losses: Tensor, weights: Tensor, keep: Tensor) -> Tensor:
    """sum(loss * weight) / sum(weight) over kept cells; a graph-connected 0 when nothing is kept."""
    w = torch.where(keep, weights.float(), torch.zeros_like(losses))
    return (losses * w).sum() / w.sum().clamp_min(1e-8)


def small_loss_keep(losses: Tensor, pseudo: Tensor, drop: float) -> Tensor:
    """Bool mask of the cells to train on: every non-pseudo cell, and the small-loss share of pseudo cells.

    Of the ``n`` pseudo cells, the ``round(drop * n)`` with the largest loss are dropped (ties broken by
    position, so the count is exact); the ranking is over the whole batch, as in co-teaching.
    """
    if losses.shape != pseudo.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and pseudo {tuple(pseudo.shape)} differ in shape")
    keep = torch.ones_like(pseudo, dtype=torch.bool)
    flat_pseudo = pseudo.reshape(-1)
    n = int(flat_pseudo.sum())
    n_drop = int(round(float(drop) * n))
    if n_drop <= 0:
        return keep
    candidates = flat_pseudo.nonzero(as_tuple=True)[0]
    order = torch.argsort(losses.detach().reshape(-1)[candidates], descending=True, stable=True)
    flat_keep = keep.reshape(-1).clone()
    flat_keep[candidates[order[:n_drop]]] = False
    return flat_keep.reshape(keep.shape)


@dataclass
class CoteachLosses:
    """Result of one co-teaching step: each network's loss and the cells it was trained on."""

    loss_a: Tensor
    loss_b: Tensor
    keep_a: Tensor        # cells network A's update used (chosen by B)
    keep_b: Tensor        # cells network B's update used (chosen by A)
    n_pseudo: int
    n_dropped: int        # pseudo cells dropped from each network's update


def coteaching_losses(logits_a: Tensor, logits_b: Tensor, targets: Tensor, weights: Tensor, box_mask: Tensor,
                      drop: float) -> CoteachLosses:
    """Co-teaching losses of two networks on the same batch of (B, C, T) labels.

    ``weights`` > 0 marks labelled cells (1 for TP/FP, the pseudo weight for pseudo cells); ``box_mask``
    marks the TP/FP cells, which are always kept. Each network's loss is the weighted mean over the
    cells its peer selected as small-loss (selection is on detached losses, so no gradient flows through
    the choice and the two networks' gradients stay separate).
    """
    loss_a = cell_losses(logits_a, targets, weights)
    loss_b = cell_losses(logits_b, targets, weights)
    box = box_mask > 0
    labelled = weights > 0
    pseudo = labelled & ~box
    keep_a = small_loss_keep(loss_b, pseudo, drop) & labelled      # B picks A's cells
    keep_b = small_loss_keep(loss_a, pseudo, drop) & labelled      # A picks B's cells
    n_pseudo = int(pseudo.sum())
    return CoteachLosses(loss_a=weighted_mean(loss_a, weights, keep_a),
                         loss_b=weighted_mean(loss_b, weights, keep_b),
                         keep_a=keep_a, keep_b=keep_b, n_pseudo=n_pseudo,
                         n_dropped=n_pseudo - int((keep_a & pseudo).sum()))


def consistency_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean-teacher consistency: mean squared difference of probabilities over every cell.

    Every cell counts, labelled or not: agreeing with the slowly-moving average of oneself on unlabelled
    audio is the point of the mean teacher. The teacher side is detached.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "outputs differ in shape")
    return F.mse_loss(torch.sigmoid(student_logits.float()), torch.sigmoid(teacher_logits.detach().float()))
