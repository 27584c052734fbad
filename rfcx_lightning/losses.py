"""Masked losses on logits for sparse (class, frame) labels.

RFCx annotations say, for a few (class, time-box) cells per recording, "present" (TP) or "absent" (FP);
everything else is unknown. `mask` marks the labeled cells (1), the unknown ones (0), or carries a weight
in between (e.g. 0.3-0.5 for pseudo labels). Unknown cells must contribute neither loss nor gradient, so
every loss here selects cells with `torch.where` (not a multiplication that a NaN/inf could leak through)
and normalizes by the labeled weight, not the grid size -- otherwise the loss would shrink with the share
of unknown cells and vary wildly between batches.

All losses are computed in float32 from logits (numerically safe under AMP) and return a graph-connected
zero when a batch has no labeled cell, so `backward()` still works and DDP sees every parameter used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-8


def _prepare(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float32 views plus `labeled` (mask > 0); targets of unlabeled cells zeroed so NaN cannot leak."""
    logits = logits.float()
    mask = mask.to(logits.dtype).expand_as(logits)
    labeled = mask > 0
    targets = torch.where(labeled, targets.to(logits.dtype).expand_as(logits), torch.zeros_like(logits))
    return logits, targets, mask, labeled


def _masked_mean(values: Tensor, mask: Tensor, labeled: Tensor) -> Tensor:
    weighted = torch.where(labeled, values * mask, torch.zeros_like(values))
    return weighted.sum() / mask.clamp_min(0).sum().clamp_min(_EPS)


def _class_weight(weight: Tensor | None, logits: Tensor) -> Tensor | None:
    """Broadcast a per-class (C,) weight over (B, C) or (B, C, T) logits (class axis is dim 1)."""
    if weight is None:
        return None
    weight = torch.as_tensor(weight, dtype=logits.dtype, device=logits.device)
    if weight.dim() == 1 and logits.dim() >= 2:
        weight = weight.view(1, -1, *([1] * (logits.dim() - 2)))
    return weight


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross-entropy over labeled cells: sum(bce * mask) / sum(mask).

    `pos_weight` is per class (C,) and is broadcast over the class axis (dim 1), not the last axis as
    torch's BCEWithLogits would do for (B, C, T) input.
    """
    logits, targets, mask, labeled = _prepare(logits, targets, mask)
    bce = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=_class_weight(pos_weight, logits)
    )
    return _masked_mean(bce, mask, labeled)


def masked_focal(
    logits: Tensor, targets: Tensor, mask: Tensor, gamma: float = 2.0, alpha: float | None = None
) -> Tensor:
    """Focal loss (BCE * (1 - p_t)^gamma, optional alpha balancing) over labeled cells.

    Down-weights the many easy FP negatives so the few hard cells dominate. gamma=0, alpha=None is BCE.
    Soft targets are allowed: p_t = p*t + (1-p)*(1-t).
    """
    logits, targets, mask, labeled = _prepare(logits, targets, mask)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    # clamp: (0)^gamma has an infinite derivative for 0 < gamma < 1 when a logit saturates
    loss = bce * (1 - p_t).clamp_min(1e-12).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _masked_mean(loss, mask, labeled)


def masked_lsep(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """LSEP ranking loss per (item, frame) over classes, using labeled cells only.

    loss(b, t) = log(1 + sum_{neg i, pos j} w_ij * exp(s_i - s_j)) with positives = labeled cells with
    target >= 0.5 and negatives = labeled cells with target < 0.5, pair weight w_ij = mask_i * mask_j
    (1 for binary masks). The result is the mean over (item, frame) slices that have at least one
    (negative, positive) pair; slices without one contribute nothing. It optimizes the ranking of species
    within a frame, which is what LWLRAP scores.
    Accepts (B, C, T) or (B, C) logits (class axis = dim 1).
    """
    logits, targets, mask, labeled = _prepare(logits, targets, mask)
    if logits.dim() == 2:
        logits, targets, mask, labeled = (x.unsqueeze(-1) for x in (logits, targets, mask, labeled))
    # (B, T, C) slices, then pairwise (B, T, C_neg, C_pos)
    s, t, m, lab = (x.movedim(1, -1) for x in (logits, targets, mask, labeled))
    pos = lab & (t >= 0.5)
    neg = lab & (t < 0.5)
    pair = neg.unsqueeze(-1) & pos.unsqueeze(-2)
    diff = s.unsqueeze(-1) - s.unsqueeze(-2)
    log_w = torch.log((m.unsqueeze(-1) * m.unsqueeze(-2)).clamp_min(_EPS))
    terms = torch.where(pair, diff + log_w, torch.full_like(diff, float("-inf")))
    terms = torch.cat([s.new_zeros(*s.shape[:-1], 1), terms.flatten(-2)], dim=-1)  # the '1 +'
    per_slice = torch.logsumexp(terms, dim=-1)  # (B, T); exactly 0 where no pair
    has_pair = pair.flatten(-2).any(dim=-1)
    per_slice = torch.where(has_pair, per_slice, torch.zeros_like(per_slice))
    return per_slice.sum() / has_pair.sum().clamp_min(1)


_LOSSES = {"bce": masked_bce, "focal": masked_focal, "lsep": masked_lsep}


class MaskedFrameLoss(nn.Module):
    """Masked loss between framewise logits and (class, frame) labels on possibly different time grids.

    Labels are built on the front-end/label grid (T_in frames) while the model outputs T_out frames; if they
    differ, labels are pooled onto the model grid with `rfcx_lightning.data.labels.pool_frame_labels`, the
    same mapping the validation metric uses. (B, C) clip logits with (B, C) labels pass straight through.
    """

    def __init__(self, kind: str = "bce", **kwargs):
        super().__init__()
        if kind not in _LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(_LOSSES)}")
        self.kind = kind
        self.kwargs = kwargs
        self._fn = _LOSSES[kind]

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        if logits.dim() == 3 and logits.shape[-1] != targets.shape[-1]:
            targets, mask = align_labels(targets, mask, logits.shape[-1])
        return self._fn(logits, targets, mask, **self.kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + "".join(f", {k}={v!r}" for k, v in self.kwargs.items())


def align_labels(targets: Tensor, mask: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
    """Pool (B, C, T_in) labels onto an n_out-frame model grid (shared by the loss and MaskedFrameAUROC)."""
    if targets.shape[-1] == n_out:
        return targets, mask
    from rfcx_lightning.data.labels import pool_frame_labels

    return pool_frame_labels(targets, mask, n_out)


def build_loss(name: str, **kwargs) -> MaskedFrameLoss:
    """Loss factory: 'bce', 'focal' (gamma, alpha) or 'lsep'."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(_LOSSES)}")
    return MaskedFrameLoss(name, **kwargs)
