"""Stage ``noisy_student``: a (possibly larger) student learns weak clip labels from the pool's teachers.

Training items are whole 60 s recordings: the training folds' train recordings, and with
``noisy_student.include_test`` the test recordings too (they carry no annotation, but the teachers have
an opinion on them, which is the point of pseudo labelling). Each item's target is one score per class:

* the clip score of a teacher from the pool, drawn at random per item and per epoch (Xie et al.'s noisy
  student uses one teacher; drawing among several stages' predictions adds label noise the student
  cannot fit exactly), odds-scaled toward the class prior first (``calibrate``), soft or thresholded
  (``hard_threshold``), at loss weight ``pseudo_weight``;
* overridden at weight 1 by the recording's TP boxes: a class with a TP box anywhere in the minute is
  present, whatever the teacher thinks.
* FP boxes do not touch clip targets. An FP box says one detection of class c at one moment was wrong;
  it does not prove that c never calls during the other 59 s, and in RFCx many FP recordings do contain
  the species elsewhere. Turning FP into a clip negative would teach the student to suppress real calls,
  so the teacher's (down-weighted) opinion stands for that class.

The loss is the shared masked loss on ``clip_logits`` with the weight as mask; inputs are heavily
augmented (gain/noise, SpecAugment, mixup; the ``noisy_student.augment`` block). Validation, prediction
and outputs are the shared ones: held-out TP/FP box crops, OOF and test framewise predictions, and the
run's predictions join the pool for the next round.

Box anchor (``noisy_student.box_weight``): every step also takes a batch of the training folds' TP/FP box
crops (the bootstrap's crops and framewise masked loss), weighted by ``box_weight``. Why: a student
trained from scratch on clip labels alone has only "somewhere in these 60 s" to go on; on the medium
synthetic set (no pretrained weights) it stayed at the prior (fold 0: test LWLRAP 0.699 vs prior 0.689,
held-out box AUROC 0.39), while the box crops tell it where the calls are (docs/results.md
"Noisy student").

Start (``noisy_student.init``): ``auto`` (default) starts each fold's student from the backbone of the
newest teacher that has a checkpoint of the same fold and the same backbone (so the OOF predictions stay
out of fold), and from scratch when none has; ``teacher`` insists on one, ``scratch`` never uses one.
Why: without pretrained weights, a student from scratch trails its teachers on a CPU budget
(docs/results.md "Noisy student").

Out-of-fold caveat: a teacher's OOF score for a training recording comes from a teacher fold model that
saw the other folds' boxes, including this student fold's held-out boxes, so the student's OOF score is
slightly optimistic (the usual price of OOF pseudo labels; test scores are unaffected).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from ..data.audio import AudioCache
from ..data.datamodule import FoldDataModule, LoaderSettings
from ..data.labels import BoxIndex
from ..data.labels import clip_targets as box_clip_targets
from ..pseudo.pool import PoolEntry, TeacherStack
from ..pseudo.targets import EpochItemSampler, TeacherSampler, clip_targets, override_with_boxes
from ..pseudo.teachers import TeacherKeys, TeacherSet, TeacherSettings
from ..settings import from_block
from .base import StageModule
from .runner import KFoldStage

log = logging.getLogger(__name__)

INIT_MODES = ("auto", "teacher", "scratch")


def weak_clip_targets(stack: TeacherStack, teacher: int | str, row: int, boxes: BoxIndex | None,
                      box_row: int, n_classes: int, source: str = "clip", hard_threshold: float | None = None,
                      pseudo_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(targets, weights) float32 (C,) of one recording: teacher clip scores, TP classes set to 1 at weight 1.

    ``row`` is the recording's row in ``stack``; ``box_row`` its row in ``boxes`` (-1 or ``boxes=None``
    for a recording without annotations, e.g. a test recording). FP boxes are ignored at clip level.
    """
    pseudo = clip_targets(stack, teacher, row, source=source, hard_threshold=hard_threshold)
    if pseudo.shape != (n_classes,):
        raise ValueError(f"teachers {stack.names} predict {pseudo.shape[0]} classes, the stage has {n_classes}")
    if boxes is None or box_row < 0:
        box_t = box_m = np.zeros(n_classes, np.float32)
    else:
        box_t, box_m = box_clip_targets(boxes, box_row, n_classes)
    return override_with_boxes(pseudo, None, box_t, box_m, pseudo_weight)


class WeakClipDataset(Dataset):
    """Whole recordings with weak clip targets; indexed by ``(epoch, item)`` from :class:`EpochItemSampler`.

    ``items`` are (split, recording_id, stack_row, box_row); ``stacks`` maps a split to its teacher stack.
    """

    def __init__(self, cache: AudioCache, items: Sequence[tuple[str, str, int, int]],
                 stacks: dict[str, TeacherStack], boxes: BoxIndex, n_classes: int, n_samples: int,
                 teacher_sampler: TeacherSampler, source: str = "clip", hard_threshold: float | None = None,
                 pseudo_weight: float = 0.5):
        self.cache, self.items, self.stacks, self.boxes = cache, list(items), stacks, boxes
        self.n_classes, self.n_samples = n_classes, n_samples
        self.teacher_sampler = teacher_sampler
        self.target_kwargs = dict(source=source, hard_threshold=hard_threshold, pseudo_weight=pseudo_weight)

    def __len__(self) -> int:
        return len(self.items)

    def targets(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        split, _, row, box_row = self.items[i]
        return weak_clip_targets(self.stacks[split], self.teacher_sampler(epoch, i), row,
                                 self.boxes if split == "train" else None, box_row, self.n_classes,
                                 **self.target_kwargs)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, i = key if isinstance(key, tuple) else (0, int(key))
        split, rid, _, _ = self.items[i]
        wave = self.cache.read(split, rid, 0, self.n_samples)
        targets, weights = self.targets(epoch, i)
        box_row = self.items[i][3]
        has_tp = np.zeros(self.n_classes, bool)          # classes sample_pseudo_classes must keep
        if split == "train" and box_row >= 0:
            has_tp = box_clip_targets(self.boxes, box_row, self.n_classes)[1] > 0
        return {"wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
                "targets": torch.from_numpy(targets), "mask": torch.from_numpy(weights),
                "box_mask": torch.from_numpy(has_tp)}


class WeakClipDataModule(pl.LightningDataModule):
    """Training on :class:`WeakClipDataset`; validation and prediction delegated to a :class:`FoldDataModule`.

    The fold's data module keeps the held-out TP/FP crops (validation) and the OOF/test prediction sets,
    so the runner drives this module exactly like the bootstrap one (``predict_sets``, ``predict_name``).
    With ``with_boxes`` it also supplies the training folds' box crops (the fold data module's own train
    loader, at its batch size), paired with the clip batches step by step.
    """

    def __init__(self, fold_data: FoldDataModule, dataset: WeakClipDataset, batch_size: int, seed: int,
                 with_boxes: bool = False):
        super().__init__()
        self.fold_data, self.dataset = fold_data, dataset
        self.batch_size, self.seed = batch_size, seed
        self.with_boxes = with_boxes

    @property
    def predict_sets(self):
        return self.fold_data.predict_sets

    @property
    def predict_name(self):
        return self.fold_data.predict_name

    @predict_name.setter
    def predict_name(self, name: str | None) -> None:
        self.fold_data.predict_name = name

    def setup(self, stage: str | None = None) -> None:
        self.fold_data.trainer = self.trainer  # world size for the unrepeated validation sampler

    def train_dataloader(self) -> DataLoader:
        if len(self.dataset) == 0:
            raise ValueError(f"fold {self.fold_data.fold}: no recordings to train the student on")
        sampler = EpochItemSampler(len(self.dataset), seed=self.seed + self.fold_data.fold)
        drop_last = len(self.dataset) > self.batch_size  # avoid a 1-item batch (BatchNorm) when there is enough
        clips = self.fold_data._loader(self.dataset, self.batch_size, shuffle=False, drop_last=drop_last,
                                       sampler=sampler)
        if not self.with_boxes:
            return clips
        return paired_loader(clips, self.fold_data.train_dataloader())

    def val_dataloader(self) -> DataLoader:
        return self.fold_data.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.fold_data.predict_dataloader()


def paired_loader(clips: DataLoader, boxes: DataLoader) -> CombinedLoader:
    """Batches ``{"clips": ..., "boxes": ...}``, one of each per step, for as many steps as ``clips`` has.

    The clip loader sets the epoch (one pass over the recordings, as without boxes): a longer box loader
    is cut short (``min_size``; its sampler reshuffles every epoch, so other crops come next time), a
    shorter one is cycled (``max_size_cycle``).
    """
    mode = "min_size" if len(boxes) >= len(clips) else "max_size_cycle"
    return CombinedLoader({"clips": clips, "boxes": boxes}, mode=mode)


class NoisyStudentModule(StageModule):
    """The base's masked loss on the clip logits (weights as the mask) after the shared heavy augmentation,
    plus ``box_weight`` times the framewise masked loss of the paired box crops when the batch has them."""

    target_output = "clip_logits"

    def __init__(self, *args, box_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.box_weight = float(box_weight)

    def training_labels(self, batch):
        """The weak targets, with a band detector's pseudo classes subsampled (TP classes always kept)."""
        return batch["targets"], self.limit_pseudo_classes(batch["mask"], batch["box_mask"])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if "clips" not in batch:
            return super().training_step(batch, batch_idx)
        clips, boxes = batch["clips"], batch["boxes"]
        weak = self.masked_loss(clips["wave"], *self.training_labels(clips), "clip_logits")
        anchor = self.masked_loss(boxes["wave"], boxes["targets"], boxes["mask"], "framewise_logits")
        loss = weak + self.box_weight * anchor
        size = len(clips["wave"])
        self.log("train/clip_loss", weak, batch_size=size)
        self.log("train/box_loss", anchor, batch_size=len(boxes["wave"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss


@dataclass(frozen=True)
class NoisyStudentSettings(TeacherKeys):
    """The ``noisy_student:`` block, typed and checked (defaults and meanings in
    ``stages/stage/noisy_student.yaml``)."""

    clip_source: str
    hard_threshold: float | None
    pseudo_weight: float
    pseudo_classes_per_item: int | None
    include_test: bool
    box_weight: float
    init: str
    backbone: str | None
    batch_size: int | None
    max_epochs: int | None
    augment: Any


class NoisyStudentStage(KFoldStage):
    """K folds of a student on weak clip labels from the pool; outputs and pool entry like every stage."""

    kind = "noisy_student"
    module_class = NoisyStudentModule

    def __init__(self, ctx, name: str | None = None):
        super().__init__(ctx, name)
        if "noisy_student" not in self.cfg:
            raise KeyError("stage=noisy_student needs a `noisy_student:` config block (stages/stage/noisy_student.yaml)")
        self.options = from_block(NoisyStudentSettings, self.cfg.noisy_student, "noisy_student")
        self.box_batch_size = int(self.cfg.loader.batch_size)  # box crops keep the preset's batch size
        self.cfg = self.student_config()
        self.box_weight = self.options.box_weight
        if self.box_weight < 0:
            raise ValueError(f"noisy_student.box_weight={self.box_weight}: must be >= 0 (0: clip labels only)")
        self.init_mode = self.options.init
        if self.init_mode not in INIT_MODES:
            raise ValueError(f"noisy_student.init={self.init_mode!r}: choose one of {', '.join(INIT_MODES)}")
        self._stacks: dict[str, TeacherStack] | None = None
        self.teacher_set = TeacherSet(self, TeacherSettings.of(self.options, self.kind))

    def loader_settings(self) -> LoaderSettings:
        """The fold data module's batches (box crops, validation crops) at the preset's batch size: the
        run's ``loader.batch_size`` is ``noisy_student.batch_size``, whole recordings."""
        return replace(super().loader_settings(), batch_size=self.box_batch_size)

    def student_config(self):
        """The run config with the student's overrides applied (so ``state.json`` records what ran)."""
        cfg, ns = self.cfg.copy(), self.options
        if ns.backbone:
            cfg.model.backbone = ns.backbone
        if ns.augment:
            cfg.augment = OmegaConf.merge(cfg.augment, ns.augment)
        if ns.batch_size:
            cfg.loader.batch_size = ns.batch_size
        if ns.max_epochs:
            cfg.trainer.max_epochs = ns.max_epochs
        return cfg

    # -- teachers ---------------------------------------------------------------------------------------
    def teachers(self) -> list[PoolEntry]:
        """The pool entries this run learns from (pinned in ``state.json``; see :class:`TeacherSet`)."""
        return self.teacher_set.entries()

    def stacks(self) -> dict[str, TeacherStack]:
        """Teacher stacks per split, loaded once per run (clip scores only unless framewise_max is asked)."""
        if self._stacks is None:
            frames = self.options.clip_source == "framewise_max"
            self._stacks = {"train": self.teacher_set.load("train", self.ctx.train.recording_ids, frames=frames)}
            if self.options.include_test:
                self._stacks["test"] = self.teacher_set.load("test", self.ctx.test_ids, frames=frames)
        return self._stacks

    def teacher_checkpoint(self, fold: int) -> Path | None:
        """The checkpoint of ``fold`` of the newest teacher whose network fits the student, or None.

        Only a teacher's own fold ``k`` model may start student fold ``k``: it never saw fold ``k``'s
        held-out recordings, so the student's OOF predictions stay out of fold. Teachers without a network
        (the template teacher) or with another backbone do not fit.
        """
        wanted = self.cfg.model.backbone
        for entry in sorted(self.teachers(), key=lambda e: e.order, reverse=True):
            info = (entry.provenance.get("checkpoints") or {}).get(str(fold)) or {}
            model = (entry.provenance.get("config") or {}).get("model") or {}
            path = self.state.resolve(info["last"]) if info.get("last") else None
            if path is not None and model.get("backbone") == wanted and path.exists():
                return path
        return None

    def module_kwargs(self, fold: int) -> dict:
        return {"box_weight": self.box_weight, "pseudo_classes_per_item": self.options.pseudo_classes_per_item}

    def model_config(self, model: dict, fold: int | None = None) -> dict:
        """The run's model block; with ``init`` other than ``scratch``, fold ``k`` starts from the teacher's
        fold ``k`` (never another fold's model: its OOF predictions would not be out of fold)."""
        model = super().model_config(model, fold)
        if self.init_mode == "scratch" or fold is None:
            return model
        path = self.teacher_checkpoint(fold)
        if path is None:
            if self.init_mode == "teacher":
                raise ValueError(f"noisy_student.init=teacher: no teacher of {self.name} has a fold-{fold} "
                                 f"checkpoint of backbone {self.cfg.model.backbone!r} (template teachers have "
                                 "none); use noisy_student.init=scratch or auto")
            log.warning("%s fold %d: no teacher checkpoint fits backbone %s; the student starts from scratch",
                        self.name, fold, self.cfg.model.backbone)
            return model
        self.state.update_fold(self.name, fold, init_from=self.state.relative(path))
        return dict(model, init_from=str(path))

    # -- builders ---------------------------------------------------------------------------------------
    def build_datamodule(self, fold: int) -> WeakClipDataModule:
        ctx, ns = self.ctx, self.options
        fold_data = super().build_datamodule(fold)
        stacks = self.stacks()
        items = [("train", rid, i, i) for i, (rid, f) in
                 enumerate(zip(ctx.train.recording_ids, ctx.fold_of_recording)) if f != fold]
        if "test" in stacks:
            items += [("test", rid, j, -1) for j, rid in enumerate(ctx.test_ids)]
        sampler = TeacherSampler(stacks["train"].n_teachers, seed=int(self.cfg.seed), mode=ns.teacher)
        dataset = WeakClipDataset(
            ctx.cache, items, stacks, ctx.train.boxes, ctx.scheme.n_classes, fold_data.n_samples, sampler,
            source=ns.clip_source, hard_threshold=ns.hard_threshold, pseudo_weight=ns.pseudo_weight)
        return WeakClipDataModule(fold_data, dataset, batch_size=int(self.cfg.loader.batch_size),
                                  seed=int(self.cfg.seed), with_boxes=self.box_weight > 0)

    def run(self):
        self.stacks()  # fail before any training when the pool is empty or a teacher file is broken
        return super().run()
