"""Three-state targets (positive / negative / unknown) on any frame grid.

RFCx labels are sparse: a TP box says "species c calls here", an FP box says "a detector fired here for
c, and it was not c", and everything else is unknown (most calls were never annotated). A loss that
treats unknown as negative learns to suppress real calls, so every target comes with a mask, and the
loss is evaluated only where the mask is 1. Labels are built once on a fine grid from the box table and
pooled to whatever grid the model outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["BoxIndex", "add_unlabelled_negatives", "clip_targets", "draw_classes", "frame_targets",
           "pool_frame_labels"]

_BOX_COLUMNS = ("recording_id", "class_index", "t_min", "t_max", "f_min", "f_max", "is_tp")
# Float slack for "covered at least half": frame edges are computed as start + i * d.
_EPS = 1e-9


@dataclass
class BoxIndex:
    """Boxes grouped by recording in CSR arrays so a Dataset never queries pandas per item.

    The boxes of recording `recording_ids[i]` are rows `offsets[i]:offsets[i+1]` of the per-box arrays.
    """

    recording_ids: list[str]
    offsets: np.ndarray
    class_index: np.ndarray
    t_min: np.ndarray
    t_max: np.ndarray
    f_min: np.ndarray
    f_max: np.ndarray
    is_tp: np.ndarray
    _position: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.recording_ids = [str(r) for r in self.recording_ids]
        if len(set(self.recording_ids)) != len(self.recording_ids):
            raise ValueError("recording_ids contains duplicates")
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets.shape != (len(self.recording_ids) + 1,):
            raise ValueError(f"offsets must have n_recordings + 1 = {len(self.recording_ids) + 1} entries")
        n_boxes = int(self.offsets[-1])
        if self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must start at 0 and be non-decreasing")
        for name in ("class_index", "t_min", "t_max", "f_min", "f_max", "is_tp"):
            if len(getattr(self, name)) != n_boxes:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, offsets say {n_boxes} boxes")
        self._position = {rid: i for i, rid in enumerate(self.recording_ids)}

    @classmethod
    def from_frame(cls, boxes: pd.DataFrame, recording_ids: list[str]) -> "BoxIndex":
        """Index the boxes of `recording_ids` (order kept); recordings without boxes get empty ranges.

        A box whose recording is not in the list is an error: silently dropping it would lose labels
        (typically an id that lost its leading zeros, or the wrong split).
        """
        missing = [c for c in _BOX_COLUMNS if c not in boxes.columns]
        if missing:
            raise ValueError(f"boxes lack column(s) {missing}")
        recording_ids = [str(r) for r in recording_ids]
        position = {rid: i for i, rid in enumerate(recording_ids)}
        box_ids = boxes["recording_id"].astype(str).to_numpy()
        rec = np.fromiter((position.get(r, -1) for r in box_ids), dtype=np.int64, count=len(box_ids))
        if np.any(rec < 0):
            unknown = sorted(set(box_ids[rec < 0]))
            raise ValueError(
                f"{len(unknown)} recording id(s) in the boxes are not in recording_ids, e.g. {unknown[:5]}"
            )
        order = np.argsort(rec, kind="stable")
        counts = np.bincount(rec, minlength=len(recording_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        def col(name, dtype):
            return boxes[name].to_numpy()[order].astype(dtype)

        return cls(
            recording_ids=recording_ids,
            offsets=offsets,
            class_index=col("class_index", np.int64),
            t_min=col("t_min", np.float64),
            t_max=col("t_max", np.float64),
            f_min=col("f_min", np.float64),
            f_max=col("f_max", np.float64),
            is_tp=col("is_tp", bool),
        )

    def __len__(self) -> int:
        return len(self.recording_ids)

    def rows(self, rec_idx: int) -> slice:
        """Slice of the per-box arrays holding the boxes of recording `rec_idx`."""
        return slice(int(self.offsets[rec_idx]), int(self.offsets[rec_idx + 1]))

    def index_of(self, recording_id: str) -> int:
        try:
            return self._position[str(recording_id)]
        except KeyError:
            raise KeyError(f"recording {recording_id!r} is not in this BoxIndex") from None

    def n_boxes(self, rec_idx: int) -> int:
        return int(self.offsets[rec_idx + 1] - self.offsets[rec_idx])


def frame_targets(
    index: BoxIndex,
    rec_idx: int,
    start_s: float,
    duration_s: float,
    n_frames: int,
    n_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and mask, float32 (n_classes, n_frames), for the window [start_s, start_s + duration_s).

    Frame i covers [start_s + i*d, start_s + (i+1)*d), d = duration_s / n_frames.
    - Any overlap with a TP box of class c: target 1, mask 1 (a call partly inside a frame is audible in it).
    - At least half covered by one FP box of class c (and no TP): target 0, mask 1. The stricter rule for
      negatives keeps frames at a box edge, where an unannotated call may start, out of the loss.
    - Otherwise mask 0 (unknown). TP wins over FP.
    """
    if n_frames <= 0 or duration_s <= 0:
        raise ValueError(f"need n_frames > 0 and duration_s > 0, got {n_frames}, {duration_s}")
    targets = np.zeros((n_classes, n_frames), dtype=np.float32)
    mask = np.zeros((n_classes, n_frames), dtype=np.float32)
    rows = index.rows(rec_idx)
    if rows.stop == rows.start:
        return targets, mask
    cls = index.class_index[rows]
    if np.any((cls < 0) | (cls >= n_classes)):
        raise ValueError(f"class_index out of range [0, {n_classes}) for recording {index.recording_ids[rec_idx]!r}")
    d = duration_s / n_frames
    edges = start_s + d * np.arange(n_frames + 1, dtype=np.float64)
    # overlap[b, i]: seconds of frame i covered by box b
    overlap = np.minimum(index.t_max[rows, None], edges[None, 1:]) - np.maximum(index.t_min[rows, None], edges[None, :-1])
    tp = index.is_tp[rows]
    positive = np.zeros((n_classes, n_frames), dtype=bool)
    negative = np.zeros((n_classes, n_frames), dtype=bool)
    np.logical_or.at(positive, cls[tp], overlap[tp] > 0)
    np.logical_or.at(negative, cls[~tp], overlap[~tp] >= 0.5 * d - _EPS)
    targets[positive] = 1.0
    mask[positive | negative] = 1.0
    return targets, mask


@torch.no_grad()
def pool_frame_labels(targets: torch.Tensor, mask: torch.Tensor, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map (B, C, T) labels on a fine grid to (B, C, n_out) on the model's output grid, same device.

    An output cell covers the fine cells adaptive pooling assigns to it (n_out > T: nearest fine cell).
    - target = max over covered cells of target * mask (a cell holding a labeled positive is positive);
    - mask = 1 if any covered cell is a labeled positive, or if at least half the covered cells are
      labeled. Keeping every positive is what matters: the coarse grid must not lose a short call
      (0.6 s for some species), while a mostly-unknown cell must not become a negative.
    Also accepts (C, T). Labels only: runs under no_grad.
    """
    if targets.shape != mask.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and mask {tuple(mask.shape)} differ in shape")
    if n_out <= 0:
        raise ValueError(f"n_out must be positive, got {n_out}")
    squeeze = targets.dim() == 2
    if squeeze:
        targets, mask = targets.unsqueeze(0), mask.unsqueeze(0)
    if targets.dim() != 3:
        raise ValueError(f"expected (B, C, T) or (C, T), got {tuple(targets.shape)}")
    out_dtype, mask_dtype = targets.dtype, mask.dtype
    labeled = (mask > 0).float()
    masked = targets.float() * labeled
    positive = (masked > 0).float()
    t = targets.shape[-1]
    if n_out == t:
        out_t, out_m = masked, labeled
    elif n_out < t:
        out_t = F.adaptive_max_pool1d(masked, n_out)
        has_pos = F.adaptive_max_pool1d(positive, n_out)
        frac = F.adaptive_avg_pool1d(labeled, n_out)
        out_m = ((has_pos > 0) | (frac >= 0.5 - 1e-6)).float()
    else:
        out_t = F.interpolate(masked, size=n_out, mode="nearest")
        out_m = F.interpolate(labeled, size=n_out, mode="nearest")
    out_t = out_t * out_m
    if squeeze:
        out_t, out_m = out_t.squeeze(0), out_m.squeeze(0)
    return out_t.to(out_dtype), out_m.to(mask_dtype)


def clip_targets(index: BoxIndex, rec_idx: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip-level targets and mask, float32 (n_classes,).

    A class with a TP anywhere in the recording is 1 (mask 1); every other class is unknown (mask 0).
    An FP box only says one detection was wrong, not that the species is absent from the whole minute,
    so it never makes a clip-level negative.
    """
    targets = np.zeros(n_classes, dtype=np.float32)
    mask = np.zeros(n_classes, dtype=np.float32)
    rows = index.rows(rec_idx)
    cls = index.class_index[rows][index.is_tp[rows]]
    if np.any((cls < 0) | (cls >= n_classes)):
        raise ValueError(f"class_index out of range [0, {n_classes}) for recording {index.recording_ids[rec_idx]!r}")
    targets[cls] = 1.0
    mask[cls] = 1.0
    return targets, mask


def draw_classes(candidates: torch.Tensor, per_item: int) -> torch.Tensor:
    """(B, C) bool: up to ``per_item`` classes per row drawn uniformly at random among ``candidates``."""
    chosen = torch.zeros_like(candidates, dtype=torch.bool)
    if per_item <= 0:
        return chosen
    draw = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, -1.0)
    chosen.scatter_(1, draw.topk(min(int(per_item), draw.shape[1]), dim=1).indices, True)
    return chosen & candidates


@torch.no_grad()
def add_unlabelled_negatives(targets: torch.Tensor, mask: torch.Tensor, class_weight: torch.Tensor,
                             per_item: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label ``per_item`` random unlabelled classes of each (B, C, T) crop as weak negatives.

    Why: a crop around a TP/FP box of one class is, for most other classes, a stretch of ordinary
    background in their band -- rain, insects, other species, silence. A detector that only ever sees its
    TP calls and the template detector's FP look-alikes has never been told that such background is
    negative, and the max over a whole minute then picks it up. Most of these cells are truly negative
    (a rare species calls in well under 1% of the frames), so a small weight, ``class_weight[c]``
    (typically ``w * (1 - prior_c)``, so a species present in most clips gets almost none), teaches the
    background without letting the few unlabelled calls inside dominate. Classes with any labelled cell
    in the crop are never picked, and labelled cells are never changed. Returns new tensors.
    """
    if per_item <= 0:
        return targets, mask
    picked = draw_classes(~(mask > 0).flatten(2).any(-1), per_item)              # (B, C)
    weight = torch.as_tensor(class_weight, dtype=mask.dtype, device=mask.device).view(1, -1, 1)
    cells = picked.unsqueeze(-1).expand_as(mask)
    mask = torch.where(cells, weight.expand_as(mask), mask)
    targets = torch.where(cells, torch.zeros_like(targets), targets)
    return targets, mask
