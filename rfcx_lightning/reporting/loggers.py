"""Experiment loggers, chosen by ``logger=csv|tensorboard|wandb``; all write inside the workspace.

W&B runs offline unless the user sets ``WANDB_MODE`` (there is often no network where this runs), are
grouped by workspace, get the stage as job type and ``<stage>-fold<k>`` as name. The API key is never
read, printed or stored by this module. :mod:`.dashboard` adds the workspace-level dashboard from
``stage=postprocess``.
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


_OWN_WANDB_CACHE: list[str] = []   # the WANDB_CACHE_DIR values this module set (not the user's)


def _keep_wandb_cache_in(workspace: Path) -> None:
    """Point W&B's cache at ``workspace/wandb/cache`` unless the user chose one (``WANDB_CACHE_DIR``).

    wandb-core writes its debug logs (and artifact downloads) to the user's cache folder, outside the
    workspace. The variable is read when the run starts, which Lightning delays to the first metric, so it
    stays set; a later workspace in the same process replaces a value this module set, never the user's.
    """
    current = os.environ.get("WANDB_CACHE_DIR")
    if current is None or current in _OWN_WANDB_CACHE:
        os.environ["WANDB_CACHE_DIR"] = str(Path(workspace).resolve() / "wandb" / "cache")
        _OWN_WANDB_CACHE.append(os.environ["WANDB_CACHE_DIR"])


def build_logger(cfg: DictConfig, workspace: Path, stage: str, run_name: str):
    kind = cfg.kind
    save_dir = workspace / "logs"
    save_dir.mkdir(parents=True, exist_ok=True)
    if kind in ("csv", "tensorboard"):
        from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

        logger_cls = CSVLogger if kind == "csv" else TensorBoardLogger
        return logger_cls(save_dir=str(save_dir), name=stage, version=free_version(save_dir / stage, run_name))
    if kind == "wandb":
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        if wandb.run is not None:  # Lightning never finishes a run; without this the next fold would reuse it
            wandb.finish()
        offline = bool(cfg.offline) and "WANDB_MODE" not in os.environ
        _keep_wandb_cache_in(workspace)
        return WandbLogger(project=str(cfg.project), save_dir=str(workspace),
                           group=workspace.name, job_type=stage, name=f"{stage}-{run_name}",
                           offline=offline)
    raise ValueError(f"logger={kind!r}: choose csv, tensorboard or wandb")
