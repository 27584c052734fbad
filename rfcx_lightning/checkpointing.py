"""Checkpoints that are never half-written.

Lightning's default ``TorchCheckpointIO`` writes the checkpoint file in place; a run killed during that
write leaves a truncated ``last.ckpt`` that the next resume would choke on. This plugin writes to a
temporary sibling and renames it into place.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .workspace import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
