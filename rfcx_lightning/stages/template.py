"""Stage ``template``: a template-matching teacher, no training (GitHub issue 6, item 2).

Per fold, every TP and FP box of the training-fold recordings becomes a template (its log-mel patch in the
box's band, see :mod:`rfcx_lightning.models.template`); the held-out recordings (out of fold) and every
test recording are scored by sliding NCC. The fold's ``oof.npz``/``test.npz`` come from the same
prediction writer as a trained stage's, and ``state.json`` marks the fold ``trained`` (templates cut and
saved to ``fold<k>/templates.pt``) and then ``done``, so the inherited :meth:`KFoldStage.finalize` writes
the same outputs as ``bootstrap`` (framewise npz, ``oof.csv``, ``submission.csv``, scores), a rerun skips
finished folds and a fold killed after its templates were cut only scores.

Why it exists: it costs no training, seeds the pseudo-label pool as round 0, and is the baseline a
trained stage has to beat. Only training-fold boxes are used for a fold, so the OOF scores never see a
template cut from the recording they score.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch

from ..data.datamodule import LoaderSettings
from ..inference import ShardedPredictionWriter, predict_batch
from ..models.template import TemplateBank, TemplateMatcher
from ..settings import from_block
from ..workspace import atomic_path
from .runner import KFoldStage

log = logging.getLogger(__name__)

@dataclass
class TemplateFrontendSettings:
    """``template.frontend``: the log-mel of templates and scored recordings (at ``audio.sample_rate``)."""

    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    top_db: float | None


@dataclass
class TemplateSettings:
    """The ``template:`` block (stages/stage/template.yaml): where the NCC runs and the matcher's settings."""

    accelerator: str
    batch_size: int
    frontend: TemplateFrontendSettings
    denoise: str
    freq_margin_hz: float
    min_rows: int
    min_frames: int
    fp_weight: float
    mapping: str
    sigmoid_center: float
    sigmoid_scale: float
    pool_frames: int
    buckets_per_octave: int

    def matcher_kwargs(self) -> dict:
        """The :class:`TemplateMatcher` arguments: every key but where it runs and how many at once."""
        kwargs = dataclasses.asdict(self)
        del kwargs["accelerator"], kwargs["batch_size"]
        return kwargs


class TemplateModule(pl.LightningModule):
    """Prediction-only LightningModule around a :class:`TemplateMatcher` (so Trainer, devices, DDP and the
    prediction writer work exactly as for a trained stage)."""

    def __init__(self, matcher: TemplateMatcher):
        super().__init__()
        self.matcher = matcher

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        def match(wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.matcher(wave)
            return out["framewise"].half(), out["clip"].float()

        return predict_batch(match, batch)


class TemplateStage(KFoldStage):
    """K folds of template matching; outputs in the trained stages' format."""

    kind = "template"

    @functools.cached_property
    def settings(self) -> TemplateSettings:
        """The ``template:`` block, checked once (read by the matcher, the loader, the trainer and prediction)."""
        return from_block(TemplateSettings, self.cfg.template, "template")

    def build_matcher(self) -> TemplateMatcher:
        return TemplateMatcher(self.ctx.scheme.n_classes, sample_rate=int(self.cfg.audio.sample_rate),
                               **self.settings.matcher_kwargs())

    def loader_settings(self) -> LoaderSettings:
        """Recordings scored per batch: ``template.batch_size`` (no network, so not ``loader``'s)."""
        return dataclasses.replace(super().loader_settings(), predict_batch_size=self.settings.batch_size)

    def build_trainer(self, fold: int, fold_dir: Path, writer: ShardedPredictionWriter) -> pl.Trainer:
        trainer = self.cfg.trainer
        return pl.Trainer(accelerator=self.settings.accelerator, devices=trainer.devices,
                          strategy=trainer.strategy, precision="32-true", logger=False, callbacks=[writer],
                          default_root_dir=str(fold_dir), enable_progress_bar=bool(trainer.enable_progress_bar),
                          enable_model_summary=False)

    # -- templates ----------------------------------------------------------------------------------------
    def cut_bank(self, fold: int, matcher: TemplateMatcher) -> TemplateBank:
        """Templates from every TP/FP box of the recordings outside ``fold``."""
        ctx, boxes = self.ctx, self.ctx.train.boxes
        n_samples = int(round(float(self.cfg.data.duration_s) * int(self.cfg.audio.sample_rate)))
        sources = [i for i, f in enumerate(ctx.fold_of_recording) if f != fold and boxes.n_boxes(i) > 0]
        if not sources:
            raise ValueError(f"{self.name} fold {fold}: the training recordings have no TP/FP box to cut "
                             "templates from")
        batch = self.settings.batch_size
        templates = []
        for start in range(0, len(sources), batch):
            chunk = sources[start:start + batch]
            waves = np.stack([ctx.cache.read("train", ctx.train.recording_ids[i], 0, n_samples) for i in chunk])
            feats = matcher.features(torch.from_numpy(waves))
            for i, feat in zip(chunk, feats):
                rows = boxes.rows(i)
                try:
                    templates += matcher.cut(feat, boxes.class_index[rows], boxes.t_min[rows], boxes.t_max[rows],
                                             boxes.f_min[rows], boxes.f_max[rows], boxes.is_tp[rows])
                except ValueError as err:
                    raise ValueError(f"train recording {ctx.train.recording_ids[i]!r}: {err}") from err
        return TemplateBank(templates, ctx.scheme.n_classes, matcher.buckets_per_octave)

    def load_or_cut_bank(self, fold: int, matcher: TemplateMatcher, fold_dir: Path) -> TemplateBank:
        """The fold's bank from ``templates.pt`` when an earlier run finished cutting it, else cut and save."""
        path = fold_dir / "templates.pt"
        if self.state.fold(self.name, fold).get("status") == "trained" and path.exists():
            log.info("%s fold %d: templates from %s", self.name, fold, path)
            return TemplateBank.from_dict(torch.load(path, weights_only=True), matcher.buckets_per_octave)
        started = time.time()
        bank = self.cut_bank(fold, matcher)
        if self.ctx.is_global_zero:
            with atomic_path(path) as tmp:
                torch.save(bank.to_dict(), tmp)
        n_tp = sum(t.is_tp for t in bank.templates)
        self.state.update_fold(self.name, fold, status="trained", templates=self.state.relative(path),
                               n_tp_templates=n_tp, n_fp_templates=len(bank) - n_tp,
                               train_seconds=round(time.time() - started, 1))
        return bank

    # -- the run --------------------------------------------------------------------------------------------
    def run_fold(self, fold: int) -> None:
        fold_dir = self.dir / f"fold{fold}"
        matcher = self.build_matcher()
        matcher.set_bank(self.load_or_cut_bank(fold, matcher, fold_dir))
        writer = ShardedPredictionWriter()
        trainer = self.build_trainer(fold, fold_dir, writer)
        datamodule, module = self.build_datamodule(fold), TemplateModule(matcher)
        started = time.time()
        outputs = self.predict_fold(writer, trainer, module, datamodule, fold_dir)
        self.state.update_fold(self.name, fold, status="done", predict_seconds=round(time.time() - started, 1),
                               **outputs)

    def _output_frames_per_second(self, n_frames: int) -> float:
        """The matcher's exact grid rate (hop and pooling), not a ratio of frame count to duration."""
        return self.build_matcher().frames_per_second
