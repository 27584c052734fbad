"""Each logger choice writes inside the workspace; W&B stays offline without network."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rfcx_lightning.loggers import build_logger, free_version


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "wandb"])
def test_logger_writes_inside_the_workspace(tmp_path, monkeypatch, kind):
    if kind == "tensorboard":
        pytest.importorskip("tensorboardX")
    if kind == "wandb":
        pytest.importorskip("wandb")
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.create({"kind": kind, "project": "test", "offline": True})
    logger = build_logger(cfg, tmp_path, "bootstrap", "fold0")
    logger.log_metrics({"val/masked_auroc": 0.75}, step=1)
    logger.finalize("success")
    if kind == "wandb":
        logger.experiment.finish()
        assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    else:
        assert (tmp_path / "logs" / "bootstrap" / "fold0").is_dir()
    assert all(str(p).startswith(str(tmp_path)) for p in tmp_path.rglob("*"))


def test_resumed_run_gets_a_new_log_version(tmp_path):
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0-1").mkdir()
    assert free_version(tmp_path, "fold0") == "fold0-2"
    assert free_version(tmp_path, "fold1") == "fold1"
