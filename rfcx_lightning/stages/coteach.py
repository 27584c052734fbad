"""Stage ``coteach``: two networks learn from the pool's pseudo labels, each filtering the other's noise.

The teachers are earlier stages' predictions in the pseudo-label pool (after ``stage=bootstrap``, the
bootstrap's out-of-fold and test predictions). Training crops mix TP/FP box crops with random windows
(:mod:`rfcx_lightning.pseudo.crops`); targets are the teachers' framewise probabilities with the TP/FP
labels on top. Two detectors of the same architecture, built from different seeds and augmented
independently, train side by side; each updates only on the pseudo cells its peer finds small-loss
(:mod:`rfcx_lightning.pseudo.coteaching`), TP/FP cells always count. Prediction is the mean of the two
networks' probabilities. Optionally (``coteach.ema.enabled``) each network also keeps an exponential
moving average of itself, a mean teacher whose outputs it is pulled towards on every cell.

Outputs are those of every K-fold stage (OOF and test framewise predictions, ``oof.csv``,
``submission.csv``, ``state.json``), and the runner adds them to the pool for the next round.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data.datamodule import FoldDataModule, box_anchors
from ..features.augment import waveform_gain_noise
from ..inference import predict_batch, predict_framewise
from ..pseudo.coteaching import coteaching_losses, consistency_loss, drop_rate_at, linear_ramp
from ..pseudo.crops import PseudoCropDataset, RandomCropSource
from ..pseudo.pool import TeacherStack
from ..pseudo.targets import EpochItemSampler, TeacherSampler
from ..pseudo.teachers import TeacherKeys, TeacherSet, TeacherSettings
from ..settings import from_block
from .base import StageModule, labelled_classes
from .runner import KFoldStage

log = logging.getLogger(__name__)

_PROB_EPS = 1e-6


@dataclass(frozen=True)
class EmaSettings:
    """``coteach.ema``: the mean-teacher variant (defaults and meanings in ``stages/stage/coteach.yaml``)."""

    enabled: bool
    decay: float
    consistency_weight: float
    ramp_epochs: float
    predict: bool


@dataclass(frozen=True)
class CoteachSettings(TeacherKeys):
    """The ``coteach:`` block, typed and checked (defaults and meanings in ``stages/stage/coteach.yaml``)."""

    targets: str
    hard_threshold: float
    pseudo_weight: float
    pseudo_classes_per_item: int | None
    p_box_crop: float
    include_test: bool
    mix_p: float
    epoch_items: int | None
    drop_rate: float
    ramp_epochs: float
    peer_seed: int | None
    ema: EmaSettings

    def __post_init__(self):
        if self.targets not in ("soft", "hard"):
            raise ValueError(f"coteach.targets={self.targets!r}: choose soft or hard")


class MeanProbabilityEnsemble(nn.Module):
    """Networks whose outputs are averaged as probabilities, returned as logits of that mean.

    Returning logits keeps the detector interface, so :func:`~rfcx_lightning.inference.predict_framewise`
    (whole or windowed) and the masked validation metric work on the pair unchanged. Built on the fly and
    not registered as a submodule, so the checkpoint holds each network's weights once.
    """

    def __init__(self, networks: list[nn.Module]):
        super().__init__()
        self.networks = networks  # a plain list on purpose: not registered

    @property
    def frontend(self) -> nn.Module:
        return self.networks[0].frontend

    def output_frames(self, n_samples: int) -> int:
        return self.networks[0].output_frames(n_samples)

    def forward(self, wave: Tensor, active: Tensor | None = None) -> dict[str, Tensor]:
        outs = [net.forward_spectrogram(net.spectrogram(wave), active=active) for net in self.networks]
        return {key: torch.logit(torch.stack([torch.sigmoid(o[key].float()) for o in outs]).mean(0)
                                 .clamp(_PROB_EPS, 1 - _PROB_EPS)) for key in ("framewise_logits", "clip_logits")}


class CoteachModule(StageModule):
    """``self.model`` (from the base) and ``self.peer``: the co-teaching pair; optional EMA mean teachers.

    Automatic optimisation with the base's single AdamW: the two losses depend on disjoint parameters
    (the peer's selection is computed on detached losses), so one optimizer over the sum is exactly two
    independent AdamW updates, and checkpointing, resuming and AMP stay Lightning's.
    """

    @staticmethod
    def settings_of(config: dict) -> CoteachSettings:
        """The ``coteach:`` block of a resolved run config, checked; a null ``peer_seed`` becomes ``seed + 1000``."""
        settings = from_block(CoteachSettings, config["coteach"], "coteach")
        if settings.peer_seed is None:
            settings = dataclasses.replace(settings, peer_seed=int(config["seed"]) + 1000)
        return settings

    @staticmethod
    def kwargs_of(settings: CoteachSettings) -> dict:
        """The constructor argument carrying the block: a plain dict, as the checkpoint's hyperparameters."""
        return {"coteach": dataclasses.asdict(settings)}

    @classmethod
    def block_kwargs(cls, config: dict) -> dict:
        return cls.kwargs_of(cls.settings_of(config))

    def __init__(self, n_classes: int, model: dict, optim: dict, augment: dict, loss: dict,
                 predict: dict | None = None, *, coteach: dict):
        settings = from_block(CoteachSettings, coteach, "coteach")
        super().__init__(n_classes, model, optim, augment, loss, predict,
                         pseudo_classes_per_item=settings.pseudo_classes_per_item)
        self.coteach = settings
        with torch.random.fork_rng():  # a different initialisation, without disturbing the global stream
            torch.manual_seed(int(self.coteach.peer_seed))
            self.peer = self.build_network(n_classes, self.model_settings, self.augment_settings)  # same init_from backbone, own head
        self.use_ema = self.coteach.ema.enabled
        if self.use_ema:
            avg = get_ema_multi_avg_fn(self.coteach.ema.decay)
            self.ema_model = AveragedModel(self.model, multi_avg_fn=avg, use_buffers=True).requires_grad_(False)
            self.ema_peer = AveragedModel(self.peer, multi_avg_fn=avg, use_buffers=True).requires_grad_(False)
        if augment["mixup_p"] > 0:
            log.warning("coteach ignores augment.mixup_p: both networks must see the same targets for the "
                        "peer's selection to refer to the same cells")

    # -- the pair --------------------------------------------------------------------------------------
    def networks(self) -> list[nn.Module]:
        return [self.model, self.peer]

    def predictor(self) -> MeanProbabilityEnsemble:
        """What validates and predicts: the mean of the pair (of their EMA copies with ``ema.predict``)."""
        if self.use_ema and self.coteach.ema.predict:
            return MeanProbabilityEnsemble([self.ema_model.module, self.ema_peer.module])
        return MeanProbabilityEnsemble(self.networks())

    def progress_epochs(self, batch_idx: int) -> float:
        """Fractional epochs done, for the ramps (the trainer's own counters, so resuming keeps them)."""
        n_batches = self.trainer.num_training_batches if self._trainer is not None else float("inf")
        fraction = batch_idx / n_batches if np.isfinite(n_batches) and n_batches > 0 else 0.0
        return self.current_epoch + fraction

    def network_logits(self, net: nn.Module, wave: Tensor, active: Tensor) -> Tensor:
        """One network's framewise logits under its own random gain/noise and SpecAugment draws."""
        p = self.augment_settings.gain_noise_p
        if p > 0:
            wave = waveform_gain_noise(wave, p=p)
        return net.forward_spectrogram(net.spectrogram(wave), active=active)["framewise_logits"]

    # -- steps -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        wave, targets, weights, box = batch["wave"], batch["targets"], batch["weights"], batch["box_mask"]
        weights = self.limit_pseudo_classes(weights, labelled_classes(box))
        active = labelled_classes(weights)
        logits = [self.network_logits(net, wave, active) for net in self.networks()]
        progress = self.progress_epochs(batch_idx)
        drop = drop_rate_at(progress, self.coteach.drop_rate, self.coteach.ramp_epochs)
        out = coteaching_losses(logits[0], logits[1], targets, weights, box, drop)
        loss = out.loss_a + out.loss_b
        n = len(wave)
        if self.use_ema:
            ema = self.coteach.ema
            weight = ema.consistency_weight * linear_ramp(progress, ema.ramp_epochs)
            consistency = sum(consistency_loss(student, self.mean_teacher_logits(teacher, wave, active))
                              for student, teacher in zip(logits, (self.ema_model, self.ema_peer)))
            loss = loss + weight * consistency
            self.log("train/consistency", consistency, batch_size=n)
        self.log_dict({"train/loss_model": out.loss_a, "train/loss_peer": out.loss_b, "train/drop_rate": drop},
                      batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    @torch.no_grad()
    def mean_teacher_logits(self, teacher: AveragedModel, wave: Tensor, active: Tensor) -> Tensor:
        """The EMA copy's logits on the clean crop, in eval mode (no dropout, running BN statistics)."""
        was_training = teacher.training
        teacher.eval()
        try:
            net = teacher.module
            return net.forward_spectrogram(net.spectrogram(wave), active=active)["framewise_logits"]
        finally:
            teacher.train(was_training)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.use_ema:
            self.ema_model.update_parameters(self.model)
            self.ema_peer.update_parameters(self.peer)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.predictor()(batch["wave"], active=labelled_classes(batch["mask"]))["framewise_logits"]
        loss = self.loss_fn(logits, batch["targets"], batch["mask"])
        self.val_auroc.update(logits.float(), batch["targets"], batch["mask"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["wave"]))
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        model = self.predictor()
        return predict_batch(lambda wave: predict_framewise(model, wave, **self.predict_cfg), batch)


class CoteachDataModule(FoldDataModule):
    """The runner's fold data module (validation on the held-out fold's TP/FP crops, prediction sets),
    with training items from :class:`~rfcx_lightning.pseudo.crops.PseudoCropDataset`.

    Built from the runner's fold arguments (``KFoldStage.fold_data_kwargs``) so folds, crops and loaders
    are configured in one place. Random crops never come from the held-out fold: its out-of-fold
    predictions must not have seen its audio.
    """

    def __init__(self, train_stack: TeacherStack, test_source: RandomCropSource | None, settings: CoteachSettings,
                 **fold_data: Any):
        super().__init__(**fold_data)
        self.train_stack = train_stack
        self.test_source = test_source
        self.settings = settings

    def output_frames(self) -> int:
        """Frames the model outputs for one crop, asked of the model being trained (labels live on it)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.lightning_module is None:
            raise RuntimeError("CoteachDataModule needs an attached trainer to know the model's output grid; "
                               "call train_dataset(n_frames=...) outside a Trainer")
        return int(trainer.lightning_module.model.output_frames(int(round(self.crop_kwargs["crop_seconds"] *
                                                                          self.crop_kwargs["sample_rate"]))))

    def train_dataset(self, n_frames: int | None = None) -> PseudoCropDataset:
        settings, boxes = self.settings, self.train_set.boxes
        training = self.fold_of_recording != self.fold
        anchors = box_anchors(boxes, training, self.tp_repeat)
        n_tp = int(boxes.is_tp[anchors].sum())
        # null: a bootstrap epoch, crops.min_per_epoch included (budget, not labels, held students back)
        n_items = settings.epoch_items or max(n_tp + int(round(self.fp_fraction * (len(anchors) - n_tp))),
                                                     self.min_per_epoch)
        train_ids = tuple(np.asarray(self.train_set.recording_ids)[training])
        sources = [RandomCropSource("train", train_ids, self.train_stack, boxes)]
        if self.test_source is not None:
            sources.append(self.test_source)
        hard = settings.targets == "hard"
        return PseudoCropDataset(
            self.cache, self.train_set, self.train_stack, anchors, sources,
            n_classes=self.n_classes, crop_seconds=self.crop_kwargs["crop_seconds"],
            n_frames=n_frames or self.output_frames(), sample_rate=self.crop_kwargs["sample_rate"],
            duration_s=self.crop_kwargs["duration_s"], n_items=int(n_items),
            p_box_crop=settings.p_box_crop, fp_fraction=self.fp_fraction, pseudo_weight=settings.pseudo_weight,
            hard_threshold=settings.hard_threshold if hard else None,
            teacher_sampler=TeacherSampler(self.train_stack.n_teachers, self.seed + self.fold, mode=settings.teacher),
            seed=self.seed + self.fold, mix_p=settings.mix_p)

    def train_dataloader(self):
        dataset = self.train_dataset()
        sampler = EpochItemSampler(len(dataset), seed=self.seed + self.fold)
        return self._loader(dataset, self.batch_size, shuffle=True, drop_last=len(dataset) > self.batch_size,
                            sampler=sampler)


class CoteachStage(KFoldStage):
    """K folds of :class:`CoteachModule` on pool targets; outputs and resume are the runner's.

    The teachers are chosen once (``coteach.teachers``: ``latest``, ``all`` or a list of names, never this
    run itself) and pinned in ``state.json``, so a resumed run trains every fold on the same targets even
    if the pool grew in between.
    """

    kind = "coteach"
    module_class = CoteachModule

    def __init__(self, ctx, name: str | None = None):
        super().__init__(ctx, name)
        if "coteach" not in self.cfg:
            raise ValueError("stage=coteach needs a `coteach:` config block (see stages/stage/coteach.yaml)")
        self.settings = CoteachModule.settings_of(OmegaConf.to_container(self.cfg, resolve=True))
        self.teacher_set = TeacherSet(self, TeacherSettings.of(self.settings, self.kind))
        self.train_stack = self.teacher_set.load("train", ctx.train.recording_ids)
        self.test_source = None
        if self.settings.include_test:
            test_stack = self.teacher_set.load("test", ctx.test_ids)
            self.test_source = RandomCropSource("test", tuple(ctx.test_ids), test_stack, None)

    def module_kwargs(self, fold: int) -> dict:
        return CoteachModule.kwargs_of(self.settings)

    def build_datamodule(self, fold: int) -> CoteachDataModule:
        return CoteachDataModule(self.train_stack, self.test_source, self.settings, **self.fold_data_kwargs(fold))
