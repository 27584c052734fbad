"""Each logger choice writes inside the workspace; W&B stays offline without network."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rfcx_lightning.reporting.loggers import build_logger, free_version


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "wandb"])
def test_logger_writes_inside_the_workspace(tmp_path, monkeypatch, kind):
    """Nothing lands outside the workspace: not in the working directory, not in HOME, not beside it."""
    workspace, cwd, home = tmp_path / "ws", tmp_path / "cwd", tmp_path / "home"
    for folder in (cwd, home):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    # matplotlib (imported by Lightning) builds a font cache once per machine: a library's cache, not an
    # output of the run, so it goes to a folder of its own that the check below allows
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib-cache"))
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "XDG_CACHE_HOME",
                "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    if kind == "tensorboard":
        pytest.importorskip("tensorboardX")
    if kind == "wandb":
        pytest.importorskip("wandb")
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.create({"kind": kind, "project": "test", "offline": True})
    logger = build_logger(cfg, workspace, "bootstrap", "fold0")
    logger.log_metrics({"val/masked_auroc": 0.75}, step=1)
    logger.finalize("success")
    if kind == "wandb":
        logger.experiment.finish()
        assert list((workspace / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    else:
        assert (workspace / "logs" / "bootstrap" / "fold0").is_dir()
    outside = [p for p in tmp_path.rglob("*")
               if p.is_file() and workspace not in p.parents and tmp_path / "matplotlib-cache" not in p.parents]
    assert outside == [], f"written outside the workspace: {outside}"


def test_resumed_run_gets_a_new_log_version(tmp_path):
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0-1").mkdir()
    assert free_version(tmp_path, "fold0") == "fold0-2"
    assert free_version(tmp_path, "fold1") == "fold1"
