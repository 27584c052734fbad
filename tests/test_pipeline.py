"""The round orchestrator: plateau rule, round naming, config composition, and a scripted-LB pipeline run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rfcx_lightning.orchestration.pipeline import PipelineSettings, round_overrides
from rfcx_lightning.orchestration.rounds import (next_round_name, parse_round_name, plateau_decision,
                                                 round_name, standalone_run_name)
from rfcx_lightning.run import load_config, main

from .test_leaderboard import install_fake_kaggle

FINISHED, RUNNING = {"outputs": {"submission.csv": "x"}}, {"outputs": {}}


def stop_round(scores, **settings) -> tuple[int, int]:
    """Feed a scripted LB sequence round by round, as the pipeline does; (round it stops after, best)."""
    for k in range(len(scores)):
        decision = plateau_decision(scores[:k + 1], **settings)
        if decision.stop:
            return k, decision.best
    raise AssertionError("never stopped")


def test_plateau_stops_after_patience_rounds_without_improvement():
    lb = [0.70, 0.75, 0.76, 0.755, 0.758, 0.90]
    assert stop_round(lb, patience=2, min_delta=0.0, max_rounds=10) == (4, 2)
    assert stop_round(lb, patience=1, min_delta=0.0, max_rounds=10) == (3, 2)
    # 0.76 beats 0.75 by less than min_delta: not an improvement, so the plateau starts at round 1
    assert stop_round(lb, patience=2, min_delta=0.02, max_rounds=10) == (3, 2)   # best is still the max
    assert stop_round(lb, patience=10, min_delta=0.0, max_rounds=4) == (3, 2)    # max_rounds
    assert not plateau_decision(lb, patience=10, min_delta=0.0, max_rounds=10).stop   # 0.90 improved
    assert plateau_decision(lb, patience=10, min_delta=0.0, max_rounds=10, has_next=False).reason == \
        "the sequence is finished"


def test_plateau_without_scores_runs_a_fixed_number_of_rounds():
    assert stop_round([None] * 5, patience=1, min_delta=0.0, max_rounds=3) == (2, 2)   # keeps the last
    assert plateau_decision([None, None], 1, 0.0, 10).stop is False
    decision = plateau_decision([0.5, 0.4, 0.45], patience=0, min_delta=0.0, max_rounds=10)  # 0: never early
    assert not decision.stop and decision.best == 0 and decision.stale == 2
    assert plateau_decision([0.5, 0.5], 1, 0.0, 10).best == 0          # ties: the earliest round
    with pytest.raises(ValueError):
        plateau_decision([], 1, 0.0, 10)


def test_round_names_and_standalone_numbering():
    assert round_name(0, "bootstrap") == "round0_bootstrap"
    assert parse_round_name("round12_noisy_student") == (12, "noisy_student")
    assert parse_round_name("bootstrap") is None
    # a standalone bootstrap is round 0; the next round stage is round 1, then 2
    assert next_round_name({"bootstrap": FINISHED}, "coteach") == "round1_coteach"
    assert next_round_name({"bootstrap": FINISHED, "round1_coteach": FINISHED}, "noisy_student") == \
        "round2_noisy_student"
    # the same command after a kill resumes its unfinished round instead of starting another
    assert next_round_name({"bootstrap": FINISHED, "round1_coteach": RUNNING}, "coteach") == "round1_coteach"
    # an abandoned unfinished round keeps its number (and folder)
    assert next_round_name({"round0_bootstrap": FINISHED, "round1_coteach": RUNNING}, "noisy_student") == \
        "round2_noisy_student"
    assert standalone_run_name({"bootstrap": FINISHED}, "bootstrap") == "bootstrap"      # not a round kind
    assert standalone_run_name({"round0_bootstrap": FINISHED}, "coteach") == "round1_coteach"


def test_settings_sequence_and_repeat_last():
    cfg = load_config(["stage=pipeline", "pipeline.sequence=[bootstrap,coteach]", "pipeline.repeat_last=true",
                       "pipeline.max_rounds=4"])
    settings = PipelineSettings.from_cfg(cfg.pipeline)
    assert [settings.kind_of_round(k) for k in range(5)] == ["bootstrap", "coteach", "coteach", "coteach", None]
    once = PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.sequence=[bootstrap,coteach]"]).pipeline)
    assert [once.kind_of_round(k) for k in range(3)] == ["bootstrap", "coteach", None]
    with pytest.raises(ValueError, match=r"pipeline.sequence\[1\] = 'cotech' is not a stage recipe"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.sequence=[bootstrap,cotech]"]).pipeline)
    with pytest.raises(ValueError, match="pipeline.sequence is empty"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.sequence=[]"]).pipeline)
    with pytest.raises(ValueError, match="pipeline.max_rounds must be >= 1"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.max_rounds=0"]).pipeline)


def test_pipeline_only_keys_do_not_reach_the_round_recipes():
    user = ["stage=pipeline", "preset=smoke", "lb=kaggle", "lb.poll_seconds=1", "pipeline.patience=3",
            "+pipeline.extra=1", "folds=4", "--cfg"]
    kept = round_overrides(user)
    assert kept == ["preset=smoke", "folds=4"]
    coteach = load_config(["stage=coteach", *kept])          # composes: its own block, the user's keys
    assert coteach.folds == 4 and "coteach" in coteach and "pipeline" not in coteach and "lb" not in coteach


def pipeline_args(ws, data_root, *extra):
    return ["stage=pipeline", "preset=smoke", f"workspace={ws}", f"data.root={data_root}",
            f"audio.cache_dir={data_root.parent / 'cache'}", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1", *extra]


@pytest.mark.slow
def test_scripted_leaderboard_stops_on_plateau_and_keeps_the_best_round(tmp_path, smoke_data_root, monkeypatch):
    """Fake kaggle scores 0.50, 0.60, 0.55: stop after round 2 (patience 1); W/submission.csv is round 1's.

    Round 2 trains with another learning rate, so its submission differs from round 1's, and the newest
    stage's submission (round 2, written by the stage) must have been replaced by the best one.
    """
    kaggle_state = install_fake_kaggle(tmp_path / "bin", [0.50, 0.60, 0.55, 0.9], monkeypatch)
    ws = tmp_path / "ws"
    args = pipeline_args(ws, smoke_data_root, "lb=kaggle", "lb.poll_seconds=0", "pipeline.sequence=[bootstrap]",
                         "pipeline.repeat_last=true", "pipeline.max_rounds=6", "pipeline.patience=1",
                         "pipeline.min_delta=0.01", 'pipeline.overrides={round2_bootstrap:["optim.lr=0.05"]}')
    assert main(args) == 0

    names = ["round0_bootstrap", "round1_bootstrap", "round2_bootstrap"]
    assert sorted(p.name for p in ws.glob("round*")) == names               # stopped on the plateau
    state = json.loads((ws / "state.json").read_text())
    record = state["pipeline"]
    assert list(record["rounds"]) == names
    assert [record["rounds"][n]["lb"] for n in names] == [0.50, 0.60, 0.55]
    assert all(record["rounds"][n]["status"] == "done" for n in names)
    assert record["best"] == "round1_bootstrap" and "no improvement" in record["stopped"]
    assert all("test_lwlrap" in record["rounds"][n]["scores"] for n in names)    # the stage's own scores too

    best = (ws / "round1_bootstrap" / "submission.csv").read_bytes()
    assert (ws / "submission.csv").read_bytes() == best
    assert (ws / "round2_bootstrap" / "submission.csv").read_bytes() != best
    submitted = json.loads(kaggle_state.read_text())["submissions"]
    assert [s["description"].split(":")[-1] for s in submitted] == names
    assert submitted[1]["content"] == best.decode()

    table = pd.read_csv(ws / "pipeline_rounds.csv")
    assert table["name"].tolist() == names and table["lb"].tolist() == [0.50, 0.60, 0.55]
    logged = pd.concat(pd.read_csv(p) for p in (ws / "logs" / "pipeline").glob("*/metrics.csv"))
    assert logged.sort_values("step")["round/lb"].tolist() == [0.50, 0.60, 0.55]

    # the same command again: nothing is retrained or resubmitted, the result is the same
    ckpt = ws / "round1_bootstrap" / "fold0" / "checkpoints" / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    assert main(args) == 0
    assert ckpt.stat().st_mtime_ns == mtime
    assert len(json.loads(kaggle_state.read_text())["submissions"]) == 3
    assert (ws / "submission.csv").read_bytes() == best
