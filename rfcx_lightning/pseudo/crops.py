"""Training crops for pseudo-label stages: box crops mixed with random crops, all with pool targets.

Bootstrap crops only around TP/FP boxes, so a network never sees most of the audio. With a teacher's
framewise predictions every second of every recording has a (noisy) label, so a pseudo-label stage also
trains on random windows: with probability ``p_box_crop`` an item is a crop around a TP/FP box of the
training fold (the annotations stay in every epoch), otherwise a random window of a random training-fold
recording (and, with ``include_test``, of a test recording, whose audio the teachers have labelled too).

Every item's targets are the pool's crop targets on the model's output grid, overridden by the TP/FP
boxes inside the crop (weight 1); other cells carry the pseudo weight. ``box_mask`` says which cells
came from a box, so co-teaching never drops them.

Items are addressed by ``(epoch, index)`` pairs from :class:`~rfcx_lightning.pseudo.targets.EpochItemSampler`
and every random choice (box or random crop, which box or recording, where, which teacher) is drawn from
``(seed, epoch, index)``: the same on every DDP rank and loader worker, and a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.audio import AudioCache
from ..data.datamodule import BoxCropDataset, RecordingSet
from ..data.labels import BoxIndex, frame_targets
from .pool import TeacherStack
from .targets import TeacherSampler, crop_targets, override_with_boxes

__all__ = ["PseudoCropDataset", "RandomCropSource", "mix_crops"]


@dataclass(frozen=True)
class RandomCropSource:
    """Recordings random crops may come from: one split, the teachers' predictions for it, its boxes.

    ``boxes`` is the split's box index (train) or None (test: no annotations, targets are pool-only).
    """

    split: str
    recording_ids: tuple[str, ...]
    stack: TeacherStack
    boxes: BoxIndex | None = None

    def __post_init__(self) -> None:
        for rid in self.recording_ids:  # fail at construction, naming the recording, not inside a worker
            self.stack.index_of(rid)
            if self.boxes is not None:
                self.boxes.index_of(rid)


class PseudoCropDataset(BoxCropDataset):
    """Mixed box/random crops with pool targets (see the module docstring).

    The box-crop placement (a random start that keeps the anchored box inside the crop) is
    :meth:`BoxCropDataset.crop_start`; labels are built on ``n_frames`` frames per crop, the model's
    output grid, so soft weighted targets never have to be pooled.

    ``anchors`` are box rows of ``train.boxes`` (TP rows possibly repeated, see ``box_anchors``); a box
    crop picks one with probability proportional to 1 for TP rows and ``fp_fraction`` for FP rows, the
    same TP:FP balance as a bootstrap epoch.
    """

    def __init__(self, cache: AudioCache, train: RecordingSet, train_stack: TeacherStack, anchors: np.ndarray,
                 random_sources: Sequence[RandomCropSource], n_classes: int, crop_seconds: float, n_frames: int,
                 sample_rate: int, duration_s: float, n_items: int, p_box_crop: float = 0.5,
                 fp_fraction: float = 1.0, pseudo_weight: float = 0.5, hard_threshold: float | None = None,
                 teacher_sampler: TeacherSampler | None = None, seed: int = 0, mix_p: float = 0.0):
        super().__init__(cache, train, anchors, n_classes=n_classes, crop_seconds=crop_seconds,
                         label_hz=n_frames / crop_seconds, sample_rate=sample_rate, duration_s=duration_s,
                         jitter=True)
        if self.n_label_frames != n_frames:
            raise ValueError(f"crop of {crop_seconds} s cannot hold exactly {n_frames} label frames")
        if not 0.0 <= p_box_crop <= 1.0:
            raise ValueError(f"coteach.p_box_crop must be in [0, 1], got {p_box_crop}")
        if p_box_crop > 0 and len(self.anchors) == 0:
            raise ValueError("box crops were asked for (coteach.p_box_crop > 0) but the training fold has no "
                             "TP/FP box")
        self.random_sources = list(random_sources)
        if not 0.0 <= mix_p <= 1.0:
            raise ValueError(f"coteach.mix_p must be in [0, 1], got {mix_p}")
        if (p_box_crop < 1 or mix_p > 0) and not any(s.recording_ids for s in self.random_sources):
            raise ValueError("random crops were asked for (coteach.p_box_crop < 1 or coteach.mix_p > 0) but "
                             "there is no recording to draw them from")
        self.mix_p = float(mix_p)
        self.train_stack = train_stack
        for rid in np.asarray(train.recording_ids)[np.unique(self._box_recording[self.anchors])]:
            train_stack.index_of(rid)  # every anchored recording must have teacher predictions
        weights = np.where(train.boxes.is_tp[self.anchors], 1.0, float(fp_fraction))
        self.anchor_p = weights / weights.sum() if weights.sum() > 0 else None
        self._random = [(s, i) for s in self.random_sources for i in range(len(s.recording_ids))]
        self.n_items = int(n_items)
        self.p_box_crop = float(p_box_crop)
        self.pseudo_weight = float(pseudo_weight)
        self.hard_threshold = hard_threshold
        self.teacher_sampler = teacher_sampler or TeacherSampler(train_stack.n_teachers, seed, mode="mean")
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n_items

    # -- where an item comes from ----------------------------------------------------------------------
    def window(self, epoch: int, item: int) -> tuple[RandomCropSource | None, int, float, bool]:
        """(source, recording index in it, crop start in s, is_box_crop) of item ``item`` in ``epoch``.

        A box crop's source is None, meaning the training recordings with ``train_stack``.
        """
        rng = np.random.default_rng((self.seed, int(epoch), int(item)))
        if rng.random() < self.p_box_crop:
            row = int(self.anchors[rng.choice(len(self.anchors), p=self.anchor_p)])
            boxes, rec = self.recordings.boxes, int(self._box_recording[row])
            total = self.seconds(self.recordings.split, self.recordings.recording_ids[rec])
            start_s = self.crop_start(float(boxes.t_min[row]), float(boxes.t_max[row]), float(rng.random()), total)
            return None, rec, start_s, True
        return (*self.random_window(rng), False)

    def random_window(self, rng: np.random.Generator) -> tuple[RandomCropSource, int, float]:
        """(source, recording index in it, crop start in s) of a random window of the random sources."""
        source, rec = self._random[int(rng.integers(len(self._random)))]
        total = self.seconds(source.split, source.recording_ids[rec])
        return source, rec, float(rng.uniform(0.0, max(0.0, total - self.crop_seconds)))

    def mix_partner(self, epoch: int, item: int) -> tuple[RandomCropSource, int, float] | None:
        """The random window mixed into item ``item`` of ``epoch``, or None (probability ``1 - mix_p``).

        Drawn from its own stream of (seed, epoch, item), so ``mix_p=0`` leaves every other draw as it was.
        """
        if self.mix_p <= 0:
            return None
        rng = np.random.default_rng((self.seed, int(epoch), int(item), 1))
        return self.random_window(rng) if rng.random() < self.mix_p else None

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, item = key if isinstance(key, tuple) else (0, int(key))
        source, rec, start_s, is_box = self.window(epoch, item)
        wave, targets, weights, box_mask = self.crop(source, rec, start_s, epoch, item)
        partner = self.mix_partner(epoch, item)
        if partner is not None:
            wave, targets, weights, box_mask = mix_crops((wave, targets, weights, box_mask),
                                                         self.crop(*partner, epoch, item))
        return {"wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                "targets": torch.from_numpy(targets), "weights": torch.from_numpy(weights),
                "box_mask": torch.from_numpy(np.ascontiguousarray(box_mask, dtype=np.float32)),
                "is_box_crop": torch.tensor(is_box)}

    def crop(self, source: RandomCropSource | None, rec: int, start_s: float, epoch: int,
             item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(wave, targets, weights, box_mask) of one window: pool targets with the TP/FP boxes on top."""
        if source is None:
            split, boxes, stack = self.recordings.split, self.recordings.boxes, self.train_stack
            rid = self.recordings.recording_ids[rec]
            box_rec = rec
        else:
            split, boxes, stack = source.split, source.boxes, source.stack
            rid = source.recording_ids[rec]
            box_rec = boxes.index_of(rid) if boxes is not None else None
        start = int(round(start_s * self.sample_rate))
        wave = self.cache.read(split, rid, start, self.crop_samples)
        pseudo = crop_targets(stack, self.teacher_sampler(epoch, item), stack.index_of(rid), start_s,
                              self.crop_seconds, self.n_label_frames, self.hard_threshold)
        if box_rec is None:
            box_targets = box_mask = np.zeros_like(pseudo)
        else:
            box_targets, box_mask = frame_targets(boxes, box_rec, start_s, self.crop_seconds,
                                                  self.n_label_frames, self.n_classes)
        targets, weights = override_with_boxes(pseudo, None, box_targets, box_mask, self.pseudo_weight)
        return np.asarray(wave, np.float32), targets, weights, np.asarray(box_mask, np.float32)


def mix_crops(first: tuple[np.ndarray, ...], second: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Two windows heard at once: (wave, targets, weights, box_mask) of their sum.

    A species is in the mixture where it is in either window, so the target is the max of the two
    (BirdCLEF 2024 2nd / 2025 1st place mixed labelled clips with pseudo-labelled soundscapes this way).
    A cell either window's TP/FP boxes label keeps weight 1 (``box_mask``), with the max as its target: a
    TP cell stays 1, an FP cell takes the other window's target (the FP box says nothing about that
    window); every other cell keeps its pseudo weight (the larger of the two).
    """
    wave_a, t_a, w_a, m_a = first
    wave_b, t_b, w_b, m_b = second
    box_mask = np.maximum(m_a, m_b)
    weights = np.where(box_mask > 0, box_mask, np.maximum(w_a, w_b)).astype(np.float32)
    return ((wave_a + wave_b).astype(np.float32), np.maximum(t_a, t_b).astype(np.float32), weights,
            box_mask.astype(np.float32))
