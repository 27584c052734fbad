"""Outcomes: the bootstrap beats the prior alone, and a student round beats the teacher it learnt from.

One ``stage=pipeline`` run through the CLI, ``[bootstrap, coteach]``, on a small easy synthetic set of short
clips (64 train / 60 test clips of 20 s, 8 TP rows per species) with the default (``quick``) preset on 3 s
crops: the bootstrap 5 epochs of at least 512 crops, then a co-teaching round of 6 epochs on its
out-of-fold pseudo labels with 2 pseudo-labelled classes per crop (``pipeline.overrides``). About 3.3
minutes on 2 idle cores (bootstrap 2 x 23 s of training, co-teaching 2 x 51 s).

Measured (odds-scaled LWLRAP / raw; prior alone 0.685 test, 0.531 OOF): bootstrap 0.760 / 0.423 test,
0.570 / 0.501 OOF; its co-teaching student 0.787 / 0.669 test, 0.611 / 0.599 OOF: +0.027 / +0.246 on test
and +0.041 / +0.098 out of fold over its teacher (a second run of the same command: bootstrap 0.751 test,
so repeated runs differ by ~0.01). The assertions sit at about half of those margins. docs/results.md
"Rounds that beat their teacher" has the 3-fold figures at the realistic level.
"""

from __future__ import annotations

import json

import pytest

from rfcx_lightning.run import main

pytestmark = pytest.mark.slow


def test_bootstrap_beats_the_prior_and_its_student_beats_the_bootstrap(tmp_path):
    workspace = tmp_path / "ws"
    assert main(["stage=pipeline", f"workspace={workspace}", f"data.root={tmp_path / 'data'}",
                 f"audio.cache_dir={tmp_path / 'cache'}", "data.n_train=64", "data.n_test=60",
                 "data.duration_s=20", "data.tp_per_species=8", "data.difficulty=easy", "crops.seconds=3",
                 "trainer.max_epochs=5", "crops.min_per_epoch=512", "trainer.enable_progress_bar=false",
                 'pipeline.overrides={coteach:["trainer.max_epochs=6","coteach.pseudo_classes_per_item=2"]}',
                 "pipeline.sequence=[bootstrap,coteach]", "lb=holdout"]) == 0
    stages = json.loads((workspace / "state.json").read_text())["stages"]
    teacher, student = stages["round0_bootstrap"]["metrics"], stages["round1_coteach"]["metrics"]
    assert teacher["test_lwlrap"] > teacher["test_prior_lwlrap"] + 0.035, teacher
    assert teacher["oof_lwlrap"] > teacher["oof_prior_lwlrap"] + 0.02, teacher
    assert student["test_lwlrap"] > teacher["test_lwlrap"] + 0.012, (student, teacher)
    assert student["test_raw_lwlrap"] > teacher["test_raw_lwlrap"] + 0.12, (student, teacher)
    assert student["oof_lwlrap"] > teacher["oof_lwlrap"] + 0.02, (student, teacher)
    assert student["oof_raw_lwlrap"] > teacher["oof_raw_lwlrap"] + 0.05, (student, teacher)
