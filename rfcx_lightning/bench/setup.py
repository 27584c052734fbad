"""The benchmarks' shared set-up: the same config, data, audio cache, folds and stage objects as a real run.

Benchmarks build their models and loaders through the stage runner's own builders
(``KFoldStage.build_module`` / ``build_datamodule``), so what is timed is the library's real path, not a
re-implementation of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from ..config import load_config
from ..stages import stage_class
from ..stages.context import StageContext, prepare_context
from ..stages.runner import KFoldStage


@dataclass
class BenchSetup:
    cfg: DictConfig
    overrides: list[str]
    ctx: StageContext
    stage: KFoldStage

    @property
    def device(self) -> torch.device:
        return device_of(self.cfg)


def device_of(cfg: DictConfig) -> torch.device:
    """The device the configured trainer would use (``trainer.accelerator``)."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def compose(workspace: Path, overrides: Sequence[str]) -> DictConfig:
    """The config ``python -m rfcx_lightning.run stage=bootstrap workspace=W OVERRIDES`` would run."""
    return load_config(["stage=bootstrap", f"workspace={workspace}", *overrides])


def prepare(workspace: Path, overrides: Sequence[str]) -> BenchSetup:
    """Compose the config, prepare data + cache + folds (generated/built once, reused afterwards)."""
    cfg = compose(workspace, overrides)
    ctx = prepare_context(cfg)
    stage = stage_class(str(cfg.stage.name))(ctx, name="bench")
    return BenchSetup(cfg=cfg, overrides=list(overrides), ctx=ctx, stage=stage)


def autocast(cfg: DictConfig, device: torch.device):
    """The autocast context ``trainer.precision`` implies (bf16-mixed / 16-mixed), else a no-op one."""
    precision = str(cfg.trainer.precision)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled="mixed" in precision)
