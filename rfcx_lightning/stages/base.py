"""The LightningModule base shared by every stage.

A stage differs only in where its targets come from (TP/FP boxes, pseudo labels, weak clip labels) and
how its loss treats them. Everything else is here, once: the detector (front-end inside the model, so
training and inference preprocess identically), waveform and spectrogram augmentation, mixup, the
optimizer and schedule, masked validation, and whole-recording prediction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from ..features.augment import AugmentSettings, mixup, waveform_gain_noise
from ..inference import predict_batch, predict_framewise
from ..losses import build_loss
from ..metrics import MaskedFrameAUROC
from ..models.factory import ModelSettings, build_detector, model_settings
from ..models.init import apply_init_from
from ..pseudo.targets import sample_pseudo_classes
from ..settings import from_block


@dataclass
class OptimSettings:
    """The ``optim:`` block: AdamW, a linear warm-up over ``warmup_epochs`` (may be fractional), then cosine."""

    lr: float
    weight_decay: float
    warmup_epochs: float


def labelled_classes(mask: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: the classes with any labelled cell in each item's (B, C, T) or (B, C) loss mask.

    Detectors that score one class at a time (the band detectors) compute only these; the loss ignores
    the other cells anyway. Multi-label detectors compute every class regardless.
    """
    return (mask > 0).flatten(2).any(-1) if mask.dim() > 2 else mask > 0


class StageModule(pl.LightningModule):
    """Detector + optimisation + prediction; stages change ``target_output`` or override :meth:`training_step`.

    ``model``, ``optim`` and ``augment`` are the config blocks as plain mappings (so the checkpoint's saved
    hyper-parameters rebuild the module); each is checked into its settings class here, once, so a missing
    or misspelt key fails when the module is built, naming ``block.key``.
    """

    def __init__(self, n_classes: int, model: dict, optim: dict, augment: dict, loss: dict,
                 predict: dict | None = None, pseudo_classes_per_item: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_settings = model_settings(model)
        self.optim_settings = from_block(OptimSettings, optim, "optim")
        self.augment_settings = from_block(AugmentSettings, augment, "augment")
        self.model = self.build_network(n_classes, self.model_settings, self.augment_settings)
        loss = dict(loss)
        self.loss_fn = build_loss(loss.pop("kind"), **loss)
        self.val_auroc = MaskedFrameAUROC()
        self.predict_cfg = dict(predict or {"mode": "whole"})
        # pool stages (their block's pseudo_classes_per_item): a band detector scores one class per image,
        # so it trains on a few pseudo-labelled classes per item; a multi-label one scores all anyway
        pair_scoring = self.model_settings.detector.startswith("band")
        self.pseudo_classes_per_item = pseudo_classes_per_item if pair_scoring else None

    @classmethod
    def block_kwargs(cls, config: dict) -> dict:
        """The constructor arguments this module takes from its stage's own config block (``config``: the
        resolved run config); none here. One place, used by the stage that builds it and by anyone else
        building the module from a config."""
        return {}

    @staticmethod
    def build_network(n_classes: int, model: ModelSettings, augment: AugmentSettings) -> torch.nn.Module:
        """One detector of the ``model:`` config, started from ``model.init_from`` when given.

        ``init_from`` is applied after ``pretrained_path``: an earlier stage's backbone wins over ImageNet.
        Stages with several networks (coteach) build each one here. ``model.channels_last`` stores the
        convolution weights channels-last, the layout oneDNN (CPU) and cuDNN under AMP run fastest.
        """
        network = build_detector(n_classes, model, dataclasses.asdict(augment.spec_augment))
        if model.init_from:
            apply_init_from(network, model.init_from)
        if model.channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network

    #: which output the training loss is computed on: framewise (boxes, pseudo frames) or clip (weak labels)
    target_output = "framewise_logits"

    # -- shared pieces ----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The masked loss of ``target_output`` against the batch's targets, weights as the mask."""
        targets, mask = self.training_labels(batch)
        loss = self.masked_loss(batch["wave"], targets, mask, self.target_output)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["wave"]))
        return loss

    def masked_loss(self, wave: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    output: str) -> torch.Tensor:
        """The loss of one output (``framewise_logits`` or ``clip_logits``) on augmented inputs."""
        out, targets, mask = self.augmented_forward(wave, targets, mask)
        return self.loss_fn(out[output], targets, mask)

    def limit_pseudo_classes(self, weights: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Pool-target stages: train a band detector on ``pseudo_classes_per_item`` (the stage block's) random
        pseudo-labelled classes per item besides the ``keep`` (box-labelled) ones; multi-label detectors
        score every class anyway, so they keep all labels. See :func:`sample_pseudo_classes`."""
        return sample_pseudo_classes(weights, keep, self.pseudo_classes_per_item)

    def training_labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets and loss weights of a training batch; a stage may add cells (bootstrap: weak negatives)."""
        return batch["targets"], batch["mask"]

    def augmented_forward(self, wave: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
        """Gain/noise on the waveform, front-end (+SpecAugment), mixup on the spectrogram, then the network.

        Mixup happens after the front-end so the per-sample normalisation of each part is kept, and the
        label rule (max of targets, unknown stays unknown unless the partner is a labelled 1) is applied
        to the same pairs.
        """
        aug = self.augment_settings
        if aug.gain_noise_p > 0:
            wave = waveform_gain_noise(wave, p=aug.gain_noise_p)
        spec = self.model.spectrogram(wave)
        if aug.mixup_p > 0 and float(torch.rand(())) < aug.mixup_p:
            spec, targets, mask = mixup(spec, targets, mask, alpha=aug.mixup_alpha)
        return self.model.forward_spectrogram(spec, active=labelled_classes(mask)), targets, mask

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model.forward_spectrogram(self.model.spectrogram(batch["wave"]),
                                             active=labelled_classes(batch["mask"]))
        loss = self.loss_fn(out["framewise_logits"], batch["targets"], batch["mask"])
        self.val_auroc.update(out["framewise_logits"].float(), batch["targets"], batch["mask"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["wave"]))
        return loss

    def on_validation_epoch_end(self) -> None:
        self.log("val/masked_auroc", self.val_auroc.compute(), prog_bar=True)
        self.val_auroc.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return predict_batch(lambda wave: predict_framewise(self.model, wave, **self.predict_cfg), batch)

    def configure_optimizers(self) -> Any:
        """AdamW with a linear warm-up then cosine decay, stepped per batch."""
        optim = self.optim_settings
        optimizer = torch.optim.AdamW(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(optim.warmup_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
