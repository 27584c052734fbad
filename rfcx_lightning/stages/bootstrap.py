"""Stage ``bootstrap``: learn from the TP/FP boxes alone with the masked, time-aware loss.

Targets are 1 in TP boxes, 0 in FP boxes, and every other (class, frame) cell is left out of the loss:
most calls in RFCx are unlabelled, so "not labelled" must never be read as "absent" (1st place).
"""

from __future__ import annotations

import torch

from .base import StageModule
from .runner import KFoldStage


class BootstrapModule(StageModule):
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out, targets, mask = self.augmented_forward(batch["wave"], batch["targets"], batch["mask"])
        loss = self.loss_fn(out["framewise_logits"], targets, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["wave"]))
        return loss


class BootstrapStage(KFoldStage):
    """K folds of :class:`BootstrapModule` on TP/FP crops; the data module and runner are the shared ones."""

    kind = "bootstrap"
    module_class = BootstrapModule
