"""Datasets and the LightningDataModule of one fold.

Training items are crops of ``crops.seconds`` around a TP or FP box, read from the memory-mapped audio
cache (no FLAC decoding, no pandas in ``__getitem__``), with the three-state frame labels of every box
that falls in the crop. Validation crops are centred on the boxes without jitter, so the validation score
is comparable across epochs. Prediction items are whole recordings.

Sampling is DDP-safe: Lightning wraps training in a ``DistributedSampler``; validation uses an
unrepeated distributed sampler, so no crop is scored twice (the padding of a plain ``DistributedSampler``
would repeat some), and prediction is unrepeated too (Lightning's default for ``predict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .audio import AudioCache
from .labels import BoxIndex, frame_targets


@dataclass(frozen=True)
class CropSettings:
    """The ``crops:`` block (stages/base.yaml, each default written there): training crops around boxes."""

    seconds: float
    label_hz: float
    tp_repeat: int
    fp_fraction: float
    min_per_epoch: int


@dataclass(frozen=True)
class LoaderSettings:
    """The ``loader:`` block: batch sizes (training crops, whole recordings to predict) and workers."""

    batch_size: int
    num_workers: int
    predict_batch_size: int


@dataclass(frozen=True)
class RecordingSet:
    """Recordings of one split that live in the audio cache, with their box index (may have no boxes)."""

    split: str
    recording_ids: tuple[str, ...]
    boxes: BoxIndex


def box_recordings(boxes: BoxIndex) -> np.ndarray:
    """Recording index of every box row of a CSR box index (so item look-ups are pure array indexing)."""
    return np.repeat(np.arange(len(boxes.recording_ids)), np.diff(boxes.offsets))


class BoxCropDataset(Dataset):
    """Crops around TP/FP boxes: item ``i`` is anchored on box row ``anchors[i]`` of ``recordings.boxes``.

    With ``jitter`` the crop start is drawn uniformly among the starts that keep the whole box inside
    the crop (or, for a box longer than the crop, a random window of the box), as the RFCx winners did;
    without it the crop is centred on the box.
    """

    def __init__(self, cache: AudioCache, recordings: RecordingSet, anchors: np.ndarray, n_classes: int,
                 crop_seconds: float, label_hz: float, sample_rate: int, duration_s: float, jitter: bool):
        self.cache = cache
        self.recordings = recordings
        self.anchors = np.asarray(anchors, dtype=np.int64)
        self.n_classes = n_classes
        self.crop_seconds = float(crop_seconds)
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.n_label_frames = max(1, int(round(crop_seconds * label_hz)))
        self.sample_rate = sample_rate
        self.duration_s = float(duration_s)
        self.jitter = jitter
        self._box_recording = box_recordings(recordings.boxes)

    def __len__(self) -> int:
        return len(self.anchors)

    def seconds(self, split: str, recording_id: str) -> float:
        """The recording's own length: ``duration_s`` (the frame grid) unless its audio ends before it
        (recordings of different lengths, ``data.duration_s=auto``), so crops stay inside the audio."""
        n = self.cache.n_samples(split, recording_id)
        return self.duration_s if n >= int(round(self.duration_s * self.sample_rate)) else n / self.sample_rate

    def crop_start(self, t_min: float, t_max: float, u: float, total: float | None = None) -> float:
        """Start time of a crop containing [t_min, t_max] in a recording of ``total`` seconds (default
        ``duration_s``); ``u`` in [0, 1) picks among valid starts."""
        crop, total = self.crop_seconds, self.duration_s if total is None else float(total)
        if t_max - t_min >= crop:  # long box: any window inside it
            lo, hi = t_min, t_max - crop
        else:
            lo, hi = t_max - crop, t_min
        lo, hi = max(0.0, lo), min(hi, total - crop)
        if hi < lo:  # recording shorter than the crop, or box at the edge: clamp
            return float(min(max(0.0, lo), max(0.0, total - crop)))
        return float(lo + u * (hi - lo)) if self.jitter else float((lo + hi) / 2)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.anchors[i])
        boxes = self.recordings.boxes
        rec = int(self._box_recording[row])
        u = float(torch.rand(())) if self.jitter else 0.5
        split, rid = self.recordings.split, self.recordings.recording_ids[rec]
        start_s = self.crop_start(float(boxes.t_min[row]), float(boxes.t_max[row]), u, self.seconds(split, rid))
        start = int(round(start_s * self.sample_rate))
        wave = self.cache.read(split, rid, start, self.crop_samples)
        targets, mask = frame_targets(boxes, rec, start_s, self.crop_seconds, self.n_label_frames, self.n_classes)
        return {"wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                "targets": torch.from_numpy(targets), "mask": torch.from_numpy(mask)}


class RecordingDataset(Dataset):
    """Whole recordings for prediction; ``index`` lets the prediction writer map outputs back to ids.

    Every item has ``n_samples`` (the frame grid); ``n_valid`` says how many of them are the recording's
    own (fewer for a recording shorter than the grid, ``data.duration_s=auto``: the rest is zeros that
    :func:`~rfcx_lightning.inference.predict_valid` keeps out of the prediction)."""

    def __init__(self, cache: AudioCache, split: str, recording_ids: Sequence[str], n_samples: int):
        self.cache = cache
        self.split = split
        self.recording_ids = list(recording_ids)
        self.n_samples = n_samples

    def __len__(self) -> int:
        return len(self.recording_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rid = self.recording_ids[i]
        wave = self.cache.read(self.split, rid, 0, self.n_samples)
        return {"wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                "index": torch.tensor(i, dtype=torch.long),
                "n_valid": torch.tensor(min(self.n_samples, self.cache.n_samples(self.split, rid)), dtype=torch.long)}


def box_anchors(boxes: BoxIndex, recording_mask: np.ndarray, tp_repeat: int = 1) -> np.ndarray:
    """Box rows of the selected recordings; TP rows repeated ``tp_repeat`` times (FP rows outnumber them ~6x)."""
    rows = np.flatnonzero(recording_mask[box_recordings(boxes)])
    if tp_repeat > 1:
        tp_rows = rows[boxes.is_tp[rows]]
        rows = np.concatenate([rows] + [tp_rows] * (tp_repeat - 1))
    return rows


class TPFPEpochSampler(Sampler[int]):
    """Each epoch: every TP anchor plus a fresh random share ``fp_fraction`` of the FP anchors, shuffled.

    FP boxes outnumber TP boxes ~6:1, and on a small compute budget most of an epoch would go to
    negatives. Redrawing the FP subset every epoch keeps all of them in play over training. The
    generator is seeded by (seed, epoch), so every DDP rank draws the same list before Lightning's
    ``DistributedSamplerWrapper`` splits it.

    ``min_items``: an epoch holds at least this many crops; such draws (all TPs, a fresh FP share) are
    chained until it does, and the last one is cut short. Why: with ~10 TP rows per species an epoch is
    ~12 steps, so an epoch-count budget (``trainer.max_epochs``) set for larger sets under-trains small
    ones (docs/results.md "Bootstrap at the hard level": 14 such epochs 0.784, 40 of them 0.830 test
    LWLRAP), while a data set that already fills an epoch trains exactly as before.
    """

    def __init__(self, is_tp: np.ndarray, fp_fraction: float, seed: int = 0, min_items: int = 0):
        self.tp = np.flatnonzero(is_tp)
        self.fp = np.flatnonzero(~np.asarray(is_tp, bool))
        self.n_fp = int(round(len(self.fp) * min(1.0, max(0.0, fp_fraction))))
        self.min_items = max(0, int(min_items))
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return max(len(self.tp) + self.n_fp, self.min_items)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        draws, drawn = [], 0
        while drawn < len(self) and len(self.tp) + self.n_fp > 0:
            chosen = np.concatenate([self.tp, rng.choice(self.fp, self.n_fp, replace=False)])
            draws.append(rng.permutation(chosen))
            drawn += len(chosen)
        return iter(np.concatenate(draws)[:len(self)].tolist() if draws else [])


class FoldDataModule(pl.LightningDataModule):
    """Train/validation crops for one fold, and whole-recording prediction sets.

    ``predict_sets`` maps a name (e.g. ``"oof"``, ``"test"``) to (split, recording ids); the stage runner
    sets ``predict_name`` before each ``trainer.predict`` call.
    """

    def __init__(self, cache: AudioCache, train: RecordingSet, fold_of_recording: np.ndarray, fold: int,
                 n_classes: int, crops: CropSettings, loader: LoaderSettings, sample_rate: int, duration_s: float,
                 seed: int = 0, predict_sets: dict[str, tuple[str, Sequence[str]]] | None = None):
        super().__init__()
        self.cache = cache
        self.train_set = train
        self.fold_of_recording = np.asarray(fold_of_recording)
        self.fold = fold
        self.n_classes = n_classes
        self.crop_kwargs = dict(n_classes=n_classes, crop_seconds=float(crops.seconds), label_hz=float(crops.label_hz),
                                sample_rate=sample_rate, duration_s=duration_s)
        self.n_samples = int(round(duration_s * sample_rate))
        self.batch_size = int(loader.batch_size)
        self.predict_batch_size = int(loader.predict_batch_size)
        self.num_workers = int(loader.num_workers)
        self.tp_repeat = int(crops.tp_repeat)
        self.fp_fraction = float(crops.fp_fraction)
        self.min_per_epoch = int(crops.min_per_epoch)
        self.seed = seed
        self.predict_sets = dict(predict_sets or {})
        self.predict_name: str | None = None

    # -- datasets ---------------------------------------------------------------------------------------
    def train_dataset(self) -> BoxCropDataset:
        anchors = box_anchors(self.train_set.boxes, self.fold_of_recording != self.fold, self.tp_repeat)
        return BoxCropDataset(self.cache, self.train_set, anchors, jitter=True, **self.crop_kwargs)

    def val_dataset(self) -> BoxCropDataset:
        anchors = box_anchors(self.train_set.boxes, self.fold_of_recording == self.fold)
        return BoxCropDataset(self.cache, self.train_set, anchors, jitter=False, **self.crop_kwargs)

    def predict_dataset(self, name: str) -> RecordingDataset:
        split, ids = self.predict_sets[name]
        return RecordingDataset(self.cache, split, ids, self.n_samples)

    # -- loaders ----------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False,
                sampler=None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, drop_last=drop_last, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        if len(dataset) == 0:
            raise ValueError(f"fold {self.fold}: no TP/FP boxes in the training recordings")
        sampler = None
        if self.fp_fraction < 1.0 or self.min_per_epoch > len(dataset):
            is_tp = self.train_set.boxes.is_tp[dataset.anchors]
            sampler = TPFPEpochSampler(is_tp, self.fp_fraction, seed=self.seed + self.fold,
                                       min_items=self.min_per_epoch)
        n_items = len(sampler) if sampler is not None else len(dataset)
        drop_last = n_items > self.batch_size  # avoid a 1-item batch (BatchNorm) when there is enough
        return self._loader(dataset, self.batch_size, shuffle=True, drop_last=drop_last, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = self.val_dataset()
        sampler = None
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return self._loader(dataset, self.batch_size, shuffle=False, sampler=sampler)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_name is None:
            raise RuntimeError("set FoldDataModule.predict_name before trainer.predict")
        return self._loader(self.predict_dataset(self.predict_name), self.predict_batch_size, shuffle=False)
