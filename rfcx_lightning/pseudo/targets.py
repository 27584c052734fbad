"""Targets from a :class:`~rfcx_lightning.pseudo.pool.TeacherStack`: crop (framewise) or clip, hard or soft.

Pure functions of numpy arrays, called per item in a Dataset. Rules they implement:

* a teacher is either one index of the stack (noisy student: a different teacher per item and epoch,
  drawn by :class:`TeacherSampler`) or ``"mean"`` (the teachers' average);
* soft targets are the teacher probabilities; ``hard_threshold=h`` turns them into 1 where >= h, else 0;
* TP/FP labels always win: :func:`override_with_boxes` puts the box label at weight 1 on every cell a
  box labels and the pseudo target at ``pseudo_weight`` (default ~0.5) everywhere else, so a teacher's
  mistake never outvotes an annotation and pseudo labels count less than real ones in the masked loss.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..data.labels import draw_classes
from .pool import TeacherStack

__all__ = ["EpochItemSampler", "TeacherSampler", "clip_targets", "crop_targets", "draw_teacher",
           "override_with_boxes", "sample_pseudo_classes"]

_EPS = 1e-9


def _teacher_frames(stack: TeacherStack, teacher: int | str, rec_index: int) -> np.ndarray:
    """(C, T) float32 framewise probabilities of one teacher (or their mean) on one recording."""
    if stack.framewise is None:
        raise ValueError("this teacher stack was loaded clip-only (frames=False); crop targets need frames")
    if teacher == "mean":
        return stack.framewise[:, rec_index].astype(np.float32).mean(0)
    return stack.framewise[_check_teacher(stack, teacher), rec_index].astype(np.float32)


def _check_teacher(stack: TeacherStack, teacher: int | str) -> int:
    if isinstance(teacher, str) or not 0 <= int(teacher) < stack.n_teachers:
        raise ValueError(f"teacher must be 'mean' or an index in [0, {stack.n_teachers}), got {teacher!r}")
    return int(teacher)


def _harden(scores: np.ndarray, hard_threshold: float | None) -> np.ndarray:
    if hard_threshold is None:
        return scores.astype(np.float32)
    return (scores >= float(hard_threshold)).astype(np.float32)


def crop_targets(stack: TeacherStack, teacher: int | str, rec_index: int, start_s: float, crop_s: float,
                 n_frames: int, hard_threshold: float | None = None) -> np.ndarray:
    """Teacher targets (C, n_frames) float32 for the window [start_s, start_s + crop_s) of a recording.

    Output frame i covers [start_s + i*d, start_s + (i+1)*d), d = crop_s / n_frames, and gets the highest
    teacher score among the teacher frames it overlaps: the "any overlap" rule TP boxes use in
    :func:`~rfcx_lightning.data.labels.frame_targets`, so a short call on a coarse teacher grid is not
    averaged away, and the label grid (``crops.label_hz``) can be finer or coarser than the teacher's.
    """
    if n_frames <= 0 or crop_s <= 0:
        raise ValueError(f"need n_frames > 0 and crop_s > 0, got {n_frames}, {crop_s}")
    frames = _teacher_frames(stack, teacher, rec_index)
    t = frames.shape[-1]
    fps = stack.frames_per_second
    d = crop_s / n_frames
    lo_s = start_s + d * np.arange(n_frames)
    lo = np.clip(np.floor(lo_s * fps + _EPS).astype(np.int64), 0, t - 1)
    hi = np.clip(np.ceil((lo_s + d) * fps - _EPS).astype(np.int64) - 1, lo, t - 1)
    span = int((hi - lo).max()) + 1
    gather = np.minimum(lo[:, None] + np.arange(span)[None, :], hi[:, None])   # (n_frames, span)
    return _harden(frames[:, gather].max(-1), hard_threshold)


def clip_targets(stack: TeacherStack, teacher: int | str, rec_index: int, source: str = "clip",
                 hard_threshold: float | None = None) -> np.ndarray:
    """Teacher targets (C,) float32 for a whole recording.

    ``source="clip"``: the clip score the teacher produced (its head's own pooling: max over time for the
    framewise head, attention for SED); ``"framewise_max"``: the max over time of its framewise scores.
    """
    if source == "clip":
        if teacher == "mean":
            scores = stack.clip[:, rec_index].mean(0)
        else:
            scores = stack.clip[_check_teacher(stack, teacher), rec_index]
    elif source == "framewise_max":
        scores = _teacher_frames(stack, teacher, rec_index).max(-1)
    else:
        raise ValueError(f"clip target source must be 'clip' or 'framewise_max', got {source!r}")
    return _harden(np.asarray(scores, dtype=np.float32), hard_threshold)


def override_with_boxes(targets: np.ndarray, weights: np.ndarray | None, box_targets: np.ndarray,
                        box_mask: np.ndarray, pseudo_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Merge pseudo targets with TP/FP labels: returns (targets, loss weights), float32, same shape.

    Cells a box labels (``box_mask > 0``) take the box's label and weight (1); every other cell takes
    the pseudo target at ``pseudo_weight`` times ``weights`` (a per-cell pseudo weight, e.g. 0 where a
    teacher has no opinion; None means 1 everywhere).
    """
    targets, box_targets, box_mask = (np.asarray(a, dtype=np.float32) for a in (targets, box_targets, box_mask))
    if not targets.shape == box_targets.shape == box_mask.shape:
        raise ValueError(f"shapes differ: targets {targets.shape}, box_targets {box_targets.shape}, "
                         f"box_mask {box_mask.shape}")
    pseudo = np.full(targets.shape, float(pseudo_weight), dtype=np.float32)
    if weights is not None:
        pseudo = pseudo * np.broadcast_to(np.asarray(weights, dtype=np.float32), targets.shape)
    labeled = box_mask > 0
    return np.where(labeled, box_targets, targets), np.where(labeled, box_mask, pseudo)


def draw_teacher(seed: int, epoch: int, item: int, n_teachers: int) -> int:
    """A teacher index drawn uniformly from (seed, epoch, item) alone: the same on every rank and worker."""
    if n_teachers <= 0:
        raise ValueError("draw_teacher needs at least one teacher")
    return int(np.random.default_rng((int(seed), int(epoch), int(item))).integers(n_teachers))


class TeacherSampler:
    """Which teacher labels item ``item`` in epoch ``epoch``: a random one (``mode="sample"``) or "mean".

    Deterministic in (seed, epoch, item) so a resumed run and every DDP rank or loader worker agree,
    while a given item meets different teachers over the epochs (the noise of a noisy student).
    """

    def __init__(self, n_teachers: int, seed: int = 0, mode: str = "sample"):
        if mode not in ("sample", "mean"):
            raise ValueError(f"teacher mode must be 'sample' or 'mean', got {mode!r}")
        if n_teachers <= 0:
            raise ValueError("TeacherSampler needs at least one teacher")
        self.n_teachers, self.seed, self.mode = int(n_teachers), int(seed), mode

    def __call__(self, epoch: int, item: int) -> int | str:
        if self.mode == "mean":
            return "mean"
        return draw_teacher(self.seed, epoch, item, self.n_teachers)


class EpochItemSampler(Sampler):
    """Shuffled ``(epoch, index)`` pairs, so a Dataset knows the epoch even inside persistent workers.

    Lightning calls :meth:`set_epoch` with the trainer's epoch before each epoch (also through its DDP
    ``DistributedSamplerWrapper``), so a run resumed mid-training draws what an uninterrupted one would.
    """

    def __init__(self, n_items: int, seed: int = 0, shuffle: bool = True):
        self.n_items, self.seed, self.shuffle, self.epoch = int(n_items), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.arange(self.n_items)
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_items)
        return iter([(self.epoch, int(i)) for i in order])


@torch.no_grad()
def sample_pseudo_classes(weights: torch.Tensor, keep: torch.Tensor, per_item: int | None) -> torch.Tensor:
    """Zero the weights of all but ``per_item`` randomly drawn pseudo-labelled classes of each item.

    ``weights`` (B, C, T) or (B, C); ``keep`` (B, C) bool: classes that always stay (those with TP/FP box
    labels). Why: a band detector computes one image per (item, class) pair it is trained on, and pool
    targets label every class of every crop, so training on all of them costs C (24) images per crop
    instead of the one or two a bootstrap crop needs. A fresh random subset per item and step keeps every
    pseudo label in play over an epoch at a fraction of the cost. ``per_item=None`` keeps everything.
    """
    if per_item is None:
        return weights
    has_weight = (weights > 0).flatten(2).any(-1) if weights.dim() > 2 else weights > 0
    candidates = has_weight & ~keep
    drop = candidates & ~draw_classes(candidates, per_item)
    if weights.dim() > 2:
        drop = drop.unsqueeze(-1).expand_as(weights)
    return torch.where(drop, torch.zeros_like(weights), weights)
