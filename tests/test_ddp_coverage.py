"""DDP coverage: a 2-process CPU DDP pipeline (bootstrap, then a pseudo-label round) predicts out of fold
exactly the recordings a 1-process run does, each once, in the same fold, in every round."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rfcx_lightning.run import main

from .conftest import run_cli_subprocess, smoke_args

pytestmark = pytest.mark.slow

ROUNDS = ("round0_bootstrap", "round1_coteach")


def pipeline_args(ws, data_root, *extra):
    return smoke_args(ws, data_root, "lb=none", "pipeline.sequence=[bootstrap,coteach]", *extra, stage="pipeline",
                      few_batches=True)


def oof(ws, name):
    return pd.read_csv(ws / name / "oof.csv", dtype={"recording_id": str}).set_index("recording_id")


def test_two_process_ddp_pipeline_covers_the_same_recordings(tmp_path, smoke_data_root):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(pipeline_args(single, smoke_data_root)) == 0
    result = run_cli_subprocess(pipeline_args(ddp, smoke_data_root, "trainer.devices=2", "trainer.strategy=ddp",
                                              "trainer.accelerator=cpu"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for name in ROUNDS:
        one, two = oof(single, name), oof(ddp, name)
        assert two.index.is_unique
        assert sorted(two.index) == sorted(one.index)                        # same OOF recordings
        assert (two.fold == one.fold.loc[two.index]).all()                   # in the same folds
        test_one = pd.read_csv(single / name / "submission.csv", dtype={"recording_id": str})
        test_two = pd.read_csv(ddp / name / "submission.csv", dtype={"recording_id": str})
        assert test_two.recording_id.tolist() == test_one.recording_id.tolist()
    state = json.loads((ddp / "state.json").read_text())
    assert [state["pipeline"]["rounds"][n]["status"] for n in ROUNDS] == ["done", "done"]
    assert state["stages"]["round1_coteach"]["teachers"] == ["round0_bootstrap"]
    assert not list(ddp.rglob("*.rank*.npz")) and not list(ddp.rglob("*.tmp"))
