"""Stage ``pretrain``: self-supervised pretraining of the front-end + backbone on all unlabelled audio.

Why: the TP/FP boxes cover a few percent of the audio (10 TP boxes per species at the hard level), while
every train and test recording is an hour's worth of unlabelled calls, backgrounds and confusers. A
backbone that has already learned what spectro-temporal patterns look like needs fewer boxes to learn
which of them are which species.

Objective: masked spectrogram modelling in the SimMIM style (Xie et al. 2022), chosen over contrastive
crops because it needs no negatives and no large batches (this runs on 2 CPU cores) and because it learns
local time-frequency structure, which is what a framewise detector reads; two crops of one soundscape
share a background, which a contrastive objective would learn to match instead of the calls. Random
patches of the log-mel (channel 0; the frequency-position channel stays intact) are replaced by the item's
mean, the backbone encodes the masked image, and a linear decoder (one 1x1 convolution whose outputs are
unfolded into the backbone's stride, a pixel shuffle) predicts the clean log-mel; the loss is L1 on the
masked cells only. The classifier head of the detector is built (so the module is the same
``SpeciesDetector`` as every other stage) but frozen and unused.

Output: ``W/<name>/backbone.pt`` (:func:`~rfcx_lightning.models.init.save_backbone`: backbone weights +
the model config needed to check compatibility), loaded by any stage with ``model.init_from=PATH``.
Resumable: Lightning's ``last.ckpt`` every epoch (written atomically), and ``state.json`` marks the stage
done only after ``backbone.pt`` exists, so a rerun skips finished work and a killed run resumes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..checkpointing import AtomicCheckpointIO, last_epoch_checkpoint
from ..data.audio import AudioCache
from ..reporting.loggers import build_logger
from ..models.init import save_backbone
from ..settings import from_block
from .base import StageModule
from .runner import StageRun

log = logging.getLogger(__name__)


@dataclass
class PretrainSettings:
    """The ``pretrain:`` block (stages/stage/pretrain.yaml)."""

    crops_per_recording: int
    val_crops_per_recording: int
    mask_ratio: float
    mask_patch: list


# -- data -----------------------------------------------------------------------------------------------
class RecordingCropDataset(Dataset):
    """``per_recording`` crops of each (split, recording id); item ``i`` is a crop of recording ``i // per_recording``.

    With ``random_start`` every read draws a fresh start (training: a new view of the recording each
    epoch); without it the starts are evenly spaced, so validation sees the same crops every epoch.
    """

    def __init__(self, cache: AudioCache, recordings: Sequence[tuple[str, str]], crop_samples: int,
                 per_recording: int, random_start: bool):
        if per_recording < 1:
            raise ValueError(f"crops per recording must be >= 1, got {per_recording}")
        self.cache = cache
        self.recordings = list(recordings)
        self.crop_samples = int(crop_samples)
        self.per_recording = int(per_recording)
        self.random_start = random_start
        self.lengths = np.array([cache.n_samples(split, rid) for split, rid in self.recordings], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.recordings) * self.per_recording

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rec, k = divmod(int(i), self.per_recording)
        span = max(0, int(self.lengths[rec]) - self.crop_samples)
        if self.random_start:
            start = int(torch.randint(0, span + 1, ()))
        else:
            start = int(round((k + 0.5) / self.per_recording * span))
        split, rid = self.recordings[rec]
        wave = self.cache.read(split, rid, start, self.crop_samples)
        return {"wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))}


class RecordingCropDataModule(pl.LightningDataModule):
    """Random crops of every cached recording (train and test splits: no labels are read) for SSL."""

    def __init__(self, cache: AudioCache, recordings: Sequence[tuple[str, str]], crop_seconds: float,
                 sample_rate: int, crops_per_recording: int, val_crops_per_recording: int, batch_size: int,
                 num_workers: int):
        super().__init__()
        if not recordings:
            raise ValueError("stage=pretrain: no recordings in the audio cache to pretrain on")
        self.cache = cache
        self.recordings = list(recordings)
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.crops_per_recording = int(crops_per_recording)
        self.val_crops_per_recording = int(val_crops_per_recording)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)

    def _loader(self, per_recording: int, train: bool) -> DataLoader:
        dataset = RecordingCropDataset(self.cache, self.recordings, self.crop_samples, per_recording,
                                       random_start=train)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train,
                          drop_last=train and len(dataset) > self.batch_size,  # no 1-item BatchNorm batch
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.crops_per_recording, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_crops_per_recording, train=False)


# -- the SSL objective ----------------------------------------------------------------------------------
def patch_mask(batch: int, n_freq: int, n_time: int, patch: tuple[int, int], ratio: float,
               device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """(batch, n_freq, n_time) bool: exactly ``round(ratio * patches)`` random (freq x time) patches per item."""
    pf, pt = int(patch[0]), int(patch[1])
    gf, gt = math.ceil(n_freq / pf), math.ceil(n_time / pt)
    n_masked = min(gf * gt, max(1, int(round(ratio * gf * gt))))
    scores = torch.rand(batch, gf * gt, generator=generator, device=generator.device if generator else "cpu")
    ranks = scores.argsort(dim=1).argsort(dim=1)
    grid = (ranks < n_masked).view(batch, gf, gt).to(device)
    return grid.repeat_interleave(pf, dim=1).repeat_interleave(pt, dim=2)[:, :n_freq, :n_time]


class MaskedSpectrogramModule(StageModule):
    """SimMIM-style masked log-mel reconstruction on the shared detector; only front-end + backbone learn.

    ``ssl`` (the recipe's ``pretrain:`` block): ``mask_ratio`` (share of patches masked), ``mask_patch``
    ([mel bins, frames] of one patch).
    """

    @classmethod
    def block_kwargs(cls, config: dict) -> dict:
        return {"ssl": config["pretrain"]}

    def __init__(self, n_classes: int, model: dict, optim: dict, augment: dict, loss: dict,
                 predict: dict | None = None, *, ssl: dict):
        # only the backbone is exported, and every detector kind builds the same one from the same
        # front-end, so pretraining always uses the plain multi-label detector (no class bands needed)
        model = dict(model, detector="multilabel")
        super().__init__(n_classes, model, optim, augment, loss, predict)
        settings = from_block(PretrainSettings, ssl, "pretrain")
        self.mask_ratio = settings.mask_ratio
        patch = settings.mask_patch
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"pretrain.mask_ratio={self.mask_ratio}: must lie in (0, 1)")
        if len(patch) != 2 or min(int(p) for p in patch) < 1:
            raise ValueError(f"pretrain.mask_patch={list(patch)}: expected [mel bins, frames], both >= 1")
        self.mask_patch = (int(patch[0]), int(patch[1]))
        # the head is not trained here; frozen, it is also invisible to DDP's unused-parameter check
        self.model.head.requires_grad_(False)
        features, self.stride = self._backbone_geometry()
        self.decoder = nn.Conv2d(features, self.stride[0] * self.stride[1], kernel_size=1)

    @torch.no_grad()
    def _backbone_geometry(self, n_time: int = 256) -> tuple[int, tuple[int, int]]:
        """(feature channels, (freq stride, time stride)) of the backbone, by one dry run in eval mode."""
        frontend, backbone = self.model.frontend, self.model.backbone
        was_training = backbone.training
        backbone.eval()
        try:
            out = backbone.forward_features(torch.zeros(1, frontend.out_channels, frontend.n_mels, n_time))
        finally:
            backbone.train(was_training)
        return int(out.shape[1]), (math.ceil(frontend.n_mels / out.shape[2]), math.ceil(n_time / out.shape[3]))

    def decode(self, features: Tensor) -> Tensor:
        """(B, C, f', t') backbone features -> (B, f' * sf, t' * st) predicted log-mel (a pixel shuffle)."""
        sf, st = self.stride
        b, _, f, t = features.shape
        out = self.decoder(features).view(b, sf, st, f, t)
        return out.permute(0, 3, 1, 4, 2).reshape(b, f * sf, t * st)

    def ssl_loss(self, wave: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """L1 between the predicted and the clean log-mel, over the masked cells only."""
        spec = self.model.frontend(wave)  # clean (B, Ch, F, T), float32
        target = spec[:, 0]
        batch, n_freq, n_time = target.shape
        mask = patch_mask(batch, n_freq, n_time, self.mask_patch, self.mask_ratio, spec.device, generator)
        fill = target.mean(dim=(1, 2), keepdim=True).expand_as(target)
        masked = torch.cat([torch.where(mask, fill, target).unsqueeze(1), spec[:, 1:]], dim=1)
        recon = self.decode(self.model.backbone.forward_features(masked)).float()
        f, t = min(n_freq, recon.shape[1]), min(n_time, recon.shape[2])  # backbones that floor their sizes
        err = (recon[:, :f, :t] - target[:, :f, :t]).abs()
        weight = mask[:, :f, :t].to(err.dtype)
        return (err * weight).sum() / weight.sum().clamp_min(1.0)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.ssl_loss(batch["wave"])
        self.log("train/ssl_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["wave"]))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # the same masks every epoch (seeded by batch), so the validation loss is comparable across epochs
        generator = torch.Generator().manual_seed(10_000 + batch_idx)
        loss = self.ssl_loss(batch["wave"], generator)
        self.log("val/ssl_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["wave"]))
        return loss

    def on_validation_epoch_end(self) -> None:
        """Nothing to aggregate: the base class's masked AUROC needs labels, which SSL has none of."""


# -- the stage ------------------------------------------------------------------------------------------
class PretrainStage(StageRun):
    """Train :class:`MaskedSpectrogramModule` on crops of every train + test recording; write ``backbone.pt``.

    One model, not K folds: nothing is held out because no labels are used.
    """

    kind = "pretrain"
    module_class = MaskedSpectrogramModule

    @property
    def backbone_path(self) -> Path:
        return self.dir / "backbone.pt"

    def recordings(self) -> list[tuple[str, str]]:
        return [("train", rid) for rid in self.ctx.train.recording_ids] + [("test", rid) for rid in self.ctx.test_ids]

    # -- builders ---------------------------------------------------------------------------------------
    def build_module(self) -> MaskedSpectrogramModule:
        container = OmegaConf.to_container(self.cfg, resolve=True)
        return self.module_class(n_classes=self.ctx.scheme.n_classes, model=container["model"], optim=container["optim"],
                                 augment=container["augment"], loss=container["loss"],
                                 predict=container["predict"], **self.module_class.block_kwargs(container))

    def build_datamodule(self) -> RecordingCropDataModule:
        cfg, ssl = self.cfg, from_block(PretrainSettings, self.cfg.pretrain, "pretrain")
        return RecordingCropDataModule(
            self.ctx.cache, self.recordings(), crop_seconds=float(cfg.crops.seconds),
            sample_rate=int(cfg.audio.sample_rate), crops_per_recording=ssl.crops_per_recording,
            val_crops_per_recording=ssl.val_crops_per_recording,
            batch_size=int(cfg.loader.batch_size), num_workers=int(cfg.loader.num_workers))

    def build_trainer(self) -> pl.Trainer:
        checkpoint = last_epoch_checkpoint(self.dir / "checkpoints")
        trainer_kwargs = OmegaConf.to_container(self.cfg.trainer, resolve=True)
        return pl.Trainer(**trainer_kwargs, default_root_dir=str(self.dir),
                          logger=build_logger(self.cfg.logger, self.ctx.workspace, self.name, "ssl"),
                          callbacks=[checkpoint], plugins=[AtomicCheckpointIO()])

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        stage_state = self.state.stage(self.name)
        if stage_state.get("status") == "done" and self.backbone_path.exists():
            log.info("%s: done in an earlier run (%s), skipped", self.name, self.backbone_path)
            return dict(stage_state.get("metrics") or {})
        stage_state["config"] = OmegaConf.to_container(self.cfg, resolve=True)
        self.state.save()

        pl.seed_everything(int(self.cfg.seed), workers=True, verbose=False)
        module, datamodule, trainer = self.build_module(), self.build_datamodule(), self.build_trainer()
        last = self.dir / "checkpoints" / "last.ckpt"
        metrics = dict(stage_state.get("metrics") or {})
        if not last.exists():  # the untrained loss, once, so state.json shows what pretraining achieved
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics["val_ssl_loss_initial"] = float(trainer.callback_metrics["val/ssl_loss"])
        started = time.time()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
        for key, name in (("val/ssl_loss", "val_ssl_loss"), ("train/ssl_loss_epoch", "train_ssl_loss")):
            if key in trainer.callback_metrics:
                metrics[name] = float(trainer.callback_metrics[key])
        if not self.ctx.is_global_zero:
            return {}
        save_backbone(module.model, self.backbone_path,
                      extra={"objective": "masked_spectrogram", "stage": self.name,
                             "epochs": int(trainer.current_epoch), "crop_seconds": float(self.cfg.crops.seconds)})
        stage_state.update(status="done", checkpoint=self.state.relative(last),
                           train_seconds=round(time.time() - started, 1), metrics=metrics,
                           outputs={"backbone": self.state.relative(self.backbone_path)})
        self.state.save()
        lines = [f"{self.name}: masked-spectrogram loss (L1 on masked cells) -> {self.backbone_path}"]
        lines += [f"  {k:<22} {v:.4f}" for k, v in metrics.items()]
        print("\n".join(lines), flush=True)
        return metrics
