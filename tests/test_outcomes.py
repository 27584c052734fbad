"""Outcomes: the bootstrap beats the prior alone, and a student round beats the teacher it learnt from.

One ``stage=pipeline`` run through the CLI, ``[bootstrap, coteach]``, on a small easy synthetic set (64 train /
40 test clips, 12 TP rows per species), 2 folds of the cpu preset for 10 epochs of one TP/FP draw each
(``crops.min_per_epoch=0``: the preset's 1152-crop epochs would triple the time). Round 1 co-teaches on the
bootstrap's out-of-fold pseudo labels (the cpu preset's coteach: teachers all, skill weights). About 12.6
minutes on 2 idle cores (bootstrap 4.4, coteach 8.1).

Measured (odds-scaled LWLRAP / raw; prior alone 0.701 test, 0.526 OOF): bootstrap 0.867 / 0.763 test,
0.634 / 0.587 OOF; its co-teaching student 0.931 / 0.907 test, 0.674 / 0.718 OOF: +0.064 / +0.145 on
test over its teacher. The assertions sit at about half of those margins (the bootstrap's as before:
+0.08 and +0.05 over the prior, measured +0.17 and +0.11). docs/results.md "Rounds that beat their
teacher" has the 3-fold figures at the realistic level.
"""

from __future__ import annotations

import json

import pytest

from rfcx_lightning.run import main

pytestmark = pytest.mark.slow


def test_bootstrap_beats_the_prior_and_its_student_beats_the_bootstrap(tmp_path):
    workspace = tmp_path / "ws"
    assert main(["stage=pipeline", f"workspace={workspace}", f"data.root={tmp_path / 'data'}",
                 f"audio.cache_dir={tmp_path / 'cache'}", "folds=2", "data.n_train=64", "data.n_test=40",
                 "data.tp_per_species=12", "data.difficulty=easy",
                 "trainer.max_epochs=10", "crops.min_per_epoch=0", "trainer.enable_progress_bar=false",
                 "pipeline.sequence=[bootstrap,coteach]", "lb=holdout"]) == 0
    stages = json.loads((workspace / "state.json").read_text())["stages"]
    teacher, student = stages["round0_bootstrap"]["metrics"], stages["round1_coteach"]["metrics"]
    assert teacher["test_lwlrap"] > teacher["test_prior_lwlrap"] + 0.08, teacher
    assert teacher["oof_lwlrap"] > teacher["oof_prior_lwlrap"] + 0.05, teacher
    assert student["test_lwlrap"] > teacher["test_lwlrap"] + 0.03, (student, teacher)
    assert student["test_raw_lwlrap"] > teacher["test_raw_lwlrap"] + 0.07, (student, teacher)
    assert student["oof_raw_lwlrap"] > teacher["oof_raw_lwlrap"] + 0.06, (student, teacher)
