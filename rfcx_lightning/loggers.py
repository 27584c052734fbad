"""Experiment loggers, chosen by ``logger=csv|tensorboard|wandb``; all write inside the workspace.

W&B runs offline unless the user sets ``WANDB_MODE`` (there is often no network where this runs), are
grouped by workspace, get the stage as job type and ``<stage>-fold<k>`` as name. The API key is never
read, printed or stored by this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def free_version(folder: Path, run_name: str) -> str:
    """``run_name``, or ``run_name-1``, ``-2``... if a killed run already logged there (resume keeps old logs)."""
    version, n = run_name, 0
    while (folder / version).exists():
        n += 1
        version = f"{run_name}-{n}"
    return version


def build_logger(cfg: DictConfig, workspace: Path, stage: str, run_name: str):
    kind = cfg.kind
    save_dir = workspace / "logs"
    save_dir.mkdir(parents=True, exist_ok=True)
    if kind in ("csv", "tensorboard"):
        from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

        logger_cls = CSVLogger if kind == "csv" else TensorBoardLogger
        return logger_cls(save_dir=str(save_dir), name=stage, version=free_version(save_dir / stage, run_name))
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        offline = bool(cfg.get("offline", True)) and "WANDB_MODE" not in os.environ
        return WandbLogger(project=cfg.get("project", "rfcx_lightning"), save_dir=str(workspace),
                           group=workspace.name, job_type=stage, name=f"{stage}-{run_name}",
                           offline=offline)
    raise ValueError(f"logger={kind!r}: choose csv, tensorboard or wandb")
