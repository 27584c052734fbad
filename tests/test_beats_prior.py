"""Outcome: the bootstrap trained end to end through the CLI ranks species better than the prior alone.

A small easy synthetic set (64 train / 40 test clips, 12 TP rows per species), 2 folds of the cpu preset
(the band classifier) for 10 epochs of one TP/FP draw each (``crops.min_per_epoch=0``: the preset's
1152-crop epochs would triple the time), about 4.2 minutes on 2 idle cores. Measured (odds-scaled LWLRAP, prior
alone 0.701 test / 0.526 out of fold): 6 epochs 0.825 / 0.575, 10 epochs 0.867 / 0.638, 16 epochs 0.919 /
0.693. The assertions sit at about half of the 10-epoch margins, to leave room for run-to-run noise.
"""

from __future__ import annotations

import json

import pytest

from rfcx_lightning.run import main

pytestmark = pytest.mark.slow


def test_bootstrap_beats_the_prior_only_baseline(tmp_path):
    workspace = tmp_path / "ws"
    assert main(["stage=bootstrap", f"workspace={workspace}", "folds=2", "data.n_train=64", "data.n_test=40",
                 "data.tp_per_species=12", "data.difficulty=easy", "trainer.max_epochs=10", "crops.min_per_epoch=0",
                 "trainer.enable_progress_bar=false"]) == 0
    metrics = json.loads((workspace / "state.json").read_text())["stages"]["bootstrap"]["metrics"]
    assert metrics["test_lwlrap"] > metrics["test_prior_lwlrap"] + 0.08, metrics
    assert metrics["oof_lwlrap"] > metrics["oof_prior_lwlrap"] + 0.05, metrics
