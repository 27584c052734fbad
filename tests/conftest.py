"""Shared fixtures: one tiny synthetic data root per test session, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the smoke preset's data set, generated once per session and shared by the end-to-end tests
SMOKE_DATA = dict(n_train=12, n_test=6, seed=0, difficulty="medium", tp_per_species=2)


@pytest.fixture(scope="session")
def smoke_data_root(tmp_path_factory) -> Path:
    from rfcx_lightning.data.synthetic import SyntheticConfig, ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    return ensure_synthetic(root, SyntheticConfig(**SMOKE_DATA), workers=2, progress=False)


#: a couple of batches per epoch: for end-to-end tests that check outputs and bookkeeping, not learning
FEW_BATCHES = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1")


def smoke_args(workspace: Path, data_root: Path, *extra: str, stage: str = "bootstrap",
               few_batches: bool = False) -> list[str]:
    """The CLI arguments of a smoke run of ``stage`` on the session's data root (its audio cache beside it);
    ``few_batches``: :data:`FEW_BATCHES` too. ``extra`` come last, so they win."""
    return [f"stage={stage}", "preset=smoke", f"workspace={workspace}", f"data.root={data_root}",
            f"audio.cache_dir={data_root.parent / 'cache'}", *(FEW_BATCHES if few_batches else ()), *extra]


def module_blocks(*overrides: str, preset: str = "smoke") -> dict:
    """The module-building config blocks (``model``, ``optim``, ``augment``, ``loss``, ``predict``) of a preset,
    resolved to plain mappings, with Hydra ``overrides`` (``model.backbone=...``): what a stage passes to its
    LightningModule, for tests that build one by hand. Every key is there, as the settings classes require."""
    from omegaconf import OmegaConf

    from rfcx_lightning.config import load_config

    cfg = OmegaConf.to_container(load_config([f"preset={preset}", *overrides]), resolve=True)
    return {key: cfg[key] for key in ("model", "optim", "augment", "loss", "predict")}


def run_cli_subprocess(args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m rfcx_lightning.run ARGS`` in a fresh interpreter (needed for DDP, which re-executes it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "rfcx_lightning.run", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def inference_model():
    """A tiny untrained 3-class detector at 8 kHz: enough to check prediction formats and modes."""
    import torch

    from rfcx_lightning.models.detector import SpeciesDetector

    torch.manual_seed(0)
    return SpeciesDetector(3, backbone="mobilenetv3_small_050",
                           frontend=dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, fmax=4000.0)).eval()
