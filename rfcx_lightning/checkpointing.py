"""Checkpoints that are never half-written, and a ``last.ckpt`` that really is the last epoch.

Lightning's default ``TorchCheckpointIO`` writes the checkpoint file in place; a run killed during that
write leaves a truncated ``last.ckpt`` that the next resume would choke on. This plugin writes to a
temporary sibling and renames it into place.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from .workspace import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def last_epoch_checkpoint(dirpath) -> ModelCheckpoint:
    """``dirpath/last.ckpt``, overwritten after every epoch (the one "top-1" checkpoint without a monitor).

    Why not ``save_last=True``: Lightning 2.6 writes that file only in steps where a top-k checkpoint was
    saved, so once the monitored metric stops improving ``last.ckpt`` silently stays at the best epoch; a
    resumed run would restart from there, and anything re-predicting from ``last.ckpt`` would use other
    weights than the run's own predictions. No version counter: a resumed run (also of a moved workspace,
    whose old dirpath Lightning does not recognise) must overwrite ``last.ckpt``, not write ``last-v1.ckpt``.
    """
    return ModelCheckpoint(dirpath=str(dirpath), filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)


def fold_checkpoints(dirpath, monitor: str, mode: str = "max") -> list[ModelCheckpoint]:
    """``best.ckpt`` by ``monitor`` and :func:`last_epoch_checkpoint`, both in ``dirpath``."""
    best = ModelCheckpoint(dirpath=str(dirpath), filename="best", monitor=monitor, mode=mode, save_top_k=1)
    return [best, last_epoch_checkpoint(dirpath)]
