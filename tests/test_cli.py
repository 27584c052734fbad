"""End to end: the bootstrap stage through the CLI on the smoke preset, its outputs, resume, and DDP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.run import load_config, main

from .conftest import run_cli_subprocess, smoke_args

pytestmark = pytest.mark.slow


def read_ids_csv(path):
    return pd.read_csv(path, dtype={"recording_id": str})


@pytest.fixture(scope="module")
def smoke_workspace(tmp_path_factory, smoke_data_root):
    workspace = tmp_path_factory.mktemp("ws") / "smoke"
    assert main(smoke_args(workspace, smoke_data_root)) == 0
    return workspace


def test_smoke_run_writes_every_output(smoke_workspace, smoke_data_root):
    ws = smoke_workspace
    train_ids = sorted(p.stem for p in (smoke_data_root / "train").glob("*.flac"))
    test_ids = read_ids_csv(smoke_data_root / "sample_submission.csv").recording_id.tolist()

    submission = read_ids_csv(ws / "submission.csv")
    assert submission.columns.tolist() == ["recording_id"] + [f"s{k}" for k in range(24)]
    assert submission.recording_id.tolist() == test_ids
    assert np.isfinite(submission.iloc[:, 1:].to_numpy()).all()

    oof = read_ids_csv(ws / "oof.csv")
    assert sorted(oof.recording_id) == train_ids          # every train recording exactly once
    assert oof.recording_id.is_unique and set(oof.fold) == {0, 1}

    with np.load(ws / "bootstrap" / "oof_framewise.npz") as frames:
        assert frames["framewise"].dtype == np.float16
        assert frames["framewise"].shape[:2] == (len(train_ids), 24)
    with np.load(ws / "bootstrap" / "test_framewise.npz") as frames:
        assert frames["framewise"].shape[:2] == (len(test_ids), 24)

    state = json.loads((ws / "state.json").read_text())
    stage = state["stages"]["bootstrap"]
    assert [stage["folds"][str(k)]["status"] for k in range(2)] == ["done", "done"]
    assert {"test_lwlrap", "test_prior_lwlrap"} <= set(stage["metrics"])
    for k in range(2):
        assert (ws / stage["folds"][str(k)]["checkpoint"]).exists()
    # nothing half-written left behind
    assert not list(ws.rglob("*.tmp")) and not list(ws.rglob("*.rank*.npz"))


def test_rerun_skips_finished_folds_and_resumes_a_partial_one(smoke_workspace, smoke_data_root, capsys):
    ws = smoke_workspace
    state_path = ws / "state.json"
    fold0 = ws / "bootstrap" / "fold0" / "test.npz"
    fold0_mtime = fold0.stat().st_mtime_ns
    ckpt1 = ws / "bootstrap" / "fold1" / "checkpoints" / "last.ckpt"
    ckpt1_mtime = ckpt1.stat().st_mtime_ns

    # pretend the run died after fold 1 trained but before its predictions were written
    state = json.loads(state_path.read_text())
    state["stages"]["bootstrap"]["folds"]["1"]["status"] = "trained"
    state_path.write_text(json.dumps(state))
    (ws / "bootstrap" / "fold1" / "test.npz").unlink()

    assert main(smoke_args(ws, smoke_data_root)) == 0
    state = json.loads(state_path.read_text())
    assert state["stages"]["bootstrap"]["folds"]["1"]["status"] == "done"
    assert fold0.stat().st_mtime_ns == fold0_mtime            # finished fold untouched
    assert ckpt1.stat().st_mtime_ns == ckpt1_mtime            # trained fold not retrained
    assert (ws / "bootstrap" / "fold1" / "test.npz").exists()


def test_two_process_ddp_covers_every_recording_once(tmp_path, smoke_data_root, smoke_workspace):
    ws = tmp_path / "ddp"
    result = run_cli_subprocess(smoke_args(ws, smoke_data_root, "trainer.devices=2", "trainer.strategy=ddp",
                                           "trainer.accelerator=cpu"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    oof = read_ids_csv(ws / "oof.csv")
    single = read_ids_csv(smoke_workspace / "oof.csv")
    assert oof.recording_id.is_unique
    assert sorted(oof.recording_id) == sorted(single.recording_id)   # same OOF set as one process
    assert (oof.set_index("recording_id").fold == single.set_index("recording_id").fold).all()
    assert len(read_ids_csv(ws / "submission.csv")) == len(read_ids_csv(smoke_workspace / "submission.csv"))
    assert not list(ws.rglob("*.rank*.npz"))


def test_overrides_compose():
    cfg = load_config(["stage=bootstrap", "preset=full", "model.backbone=resnet18", "folds=4", "seed=3",
                       "trainer.max_epochs=2", "logger=tensorboard", "data=rfcx", "data.root=/x"])
    assert cfg.model.backbone == "resnet18" and cfg.folds == 4 and cfg.seed == 3
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.logger.kind == "tensorboard" and cfg.data.kind == "rfcx"
    with pytest.raises(SystemExit, match="not a stage recipe"):
        load_config(["stage=nope"])


def test_missing_data_root_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.*does not exist"):
        main(["stage=bootstrap", "data=rfcx", f"data.root={tmp_path / 'nothing'}", f"workspace={tmp_path / 'ws'}"])
    assert not (tmp_path / "ws" / "submission.csv").exists()
