"""The round orchestrator: plateau rule, round naming, config composition, and a scripted-LB pipeline run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.orchestration.ensemble import mean_scores, round_box_auroc, write_round_ensemble
from rfcx_lightning.orchestration.pipeline import PipelineSettings, PipelineStage, candidate_score, round_overrides
from rfcx_lightning.orchestration.rounds import (next_round_name, parse_round_name, plateau_decision,
                                                 round_name, standalone_run_name)
from rfcx_lightning.postprocessing import odds_scale_to_prior
from rfcx_lightning.run import load_config, main

from .conftest import smoke_args
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
    with pytest.raises(ValueError, match=r"pipeline.sequence\[1\] = 'cotech' is not a stage that can be a round"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.sequence=[bootstrap,cotech]"]).pipeline)
    with pytest.raises(ValueError, match=r"pipeline.sequence\[0\] = 'oracle' is not a stage that can be"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.sequence=[oracle,coteach]"]).pipeline)
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


def write_scores(path, ids, values, fold=None):
    frame = pd.DataFrame(values, columns=[f"s{i}" for i in range(len(values[0]))])
    if fold is not None:
        frame.insert(0, "fold", fold)
    frame.insert(0, "recording_id", ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def test_round_ensemble_is_the_mean_of_the_rounds_aligned_by_recording(tmp_path):
    write_scores(tmp_path / "r0" / "submission.csv", ["007", "b"], [[0.2, 0.4], [1.0, 0.0]])
    write_scores(tmp_path / "r1" / "submission.csv", ["b", "007"], [[0.0, 1.0], [0.6, 0.0]])   # other order
    write_scores(tmp_path / "r0" / "oof.csv", ["x"], [[0.5, 0.5]], fold=[2])
    write_scores(tmp_path / "r1" / "oof.csv", ["x"], [[0.1, 0.3]], fold=[2])
    written = write_round_ensemble([tmp_path / "r0", tmp_path / "r1"], tmp_path / "ensemble1")
    assert sorted(written) == ["oof.csv", "submission.csv"]                 # no submission_raw in the members
    sub = pd.read_csv(written["submission.csv"], dtype={"recording_id": str})
    assert sub["recording_id"].tolist() == ["007", "b"]                      # ids keep their zeros
    assert sub[["s0", "s1"]].values.tolist() == [[0.4, 0.2], [0.5, 0.5]]
    oof = pd.read_csv(written["oof.csv"])
    assert oof.columns.tolist() == ["recording_id", "fold", "s0", "s1"] and oof["s1"].tolist() == [0.4]
    prior = np.array([0.5, 0.2])                                              # OOF: each member scaled first
    scaled = mean_scores([tmp_path / "r0" / "oof.csv", tmp_path / "r1" / "oof.csv"], prior)
    expected = (odds_scale_to_prior(np.array([[0.5, 0.5]]), prior)
                + odds_scale_to_prior(np.array([[0.1, 0.3]]), prior)) / 2
    np.testing.assert_allclose(scaled[["s0", "s1"]].to_numpy(), expected)
    write_scores(tmp_path / "r2" / "submission.csv", ["007"], [[0.1, 0.1]])
    with pytest.raises(ValueError, match=r"r2/submission.csv: lacks recordings \['b'\]"):
        mean_scores([tmp_path / "r0" / "submission.csv", tmp_path / "r2" / "submission.csv"])
    weighted = write_round_ensemble([tmp_path / "r0", tmp_path / "r1"], tmp_path / "ensemble1w", weights=[3, 1])
    sub = pd.read_csv(weighted["submission.csv"], dtype={"recording_id": str})
    np.testing.assert_allclose(sub[["s0", "s1"]].to_numpy(), [[0.3, 0.3], [0.75, 0.25]])   # 3:1, normalised
    with pytest.raises(ValueError, match=r"ensemble weights \[1.0\]: need 2 non-negative values"):
        mean_scores([tmp_path / "r0" / "oof.csv", tmp_path / "r1" / "oof.csv"], weights=[1.0])


def test_a_rounds_skill_is_its_oof_box_auroc(tmp_path):
    """pipeline.ensemble_weights=skill reads each round's OOF frames on the TP/FP boxes; no frames: NaN."""
    from rfcx_lightning.workspace import write_npz

    frames = np.zeros((2, 1, 60), np.float32)
    frames[0, 0, 10] = 0.9                       # TP box of "a" scores above the FP box of "b"
    write_npz(tmp_path / "r0" / "oof_framewise.npz", recording_id=np.array(["a", "b"]), framewise=frames)
    boxes = pd.DataFrame({"recording_id": ["a", "b"], "class_index": [0, 0], "t_min": [10.0, 20.0],
                          "t_max": [11.0, 21.0], "is_tp": [True, False]})
    assert round_box_auroc(tmp_path / "r0", boxes, 60.0) == 1.0
    assert np.isnan(round_box_auroc(tmp_path / "missing", boxes, 60.0))
    with pytest.raises(ValueError, match="pipeline.ensemble_weights='best': choose equal or skill"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "pipeline.ensemble_weights=best"]).pipeline)


def test_candidates_the_better_of_a_round_and_its_ensemble():
    assert candidate_score({"lb": 0.5, "ensemble": {"lb": 0.7}}) == 0.7
    assert candidate_score({"lb": 0.8, "ensemble": {"lb": 0.7}}) == 0.8
    assert candidate_score({"lb": 0.8}) == 0.8 and candidate_score({"lb": None}) is None
    stage = PipelineStage.__new__(PipelineStage)
    stage.settings = PipelineSettings.from_cfg(load_config(["stage=pipeline",
                                                            "pipeline.sequence=[template,coteach]"]).pipeline)
    record = {"rounds": {"round0_template": {"lb": 0.9},
                         "round1_coteach": {"lb": 0.85, "ensemble": {"name": "ensemble1", "lb": 0.93}}}}
    assert stage.best_candidate(record, 1) == "ensemble1" and stage.best_candidate(record, 0) == "round0_template"
    assert stage.decide(record, 1).best == 1                     # the plateau rule sees 0.93 for round 1


def test_per_round_settings_give_each_round_its_value():
    cfg = load_config(["stage=pipeline", "pipeline.sequence=[template,coteach,coteach,noisy_student]",
                       "pipeline.per_round={coteach:{sharpen:[null,1.0,0.65]},"
                       "model:{backbone:[null,mobilenetv3_small_050,mobilenetv3_small_075]}}"])
    settings = PipelineSettings.from_cfg(cfg.pipeline)
    assert settings.per_round_overrides(0) == []                              # null: the recipe's value
    assert settings.per_round_overrides(2) == ["coteach.sharpen=0.65", "model.backbone=mobilenetv3_small_075"]
    assert settings.per_round_overrides(5) == settings.per_round_overrides(2)  # past the end: the last item
    stage = PipelineStage.__new__(PipelineStage)
    stage.settings, stage.overrides = settings, ["preset=smoke"]
    round2 = stage.round_config("coteach", "round2_coteach")
    assert round2.coteach.sharpen == 0.65 and round2.model.backbone == "mobilenetv3_small_075"
    round3 = stage.round_config("noisy_student", "round3_noisy_student")      # no coteach block: skipped
    assert "coteach" not in round3 and round3.model.backbone == "mobilenetv3_small_075"
    with pytest.raises(ValueError, match="pipeline.per_round.coteach.sharpen must be a non-empty list"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline",
                                               "pipeline.per_round={coteach:{sharpen:0.5}}"]).pipeline)


def test_preset_full_brings_the_rounds_gpu_settings_and_other_presets_none():
    full = PipelineSettings.from_cfg(load_config(["stage=pipeline", "preset=full"]).pipeline)
    assert "model.backbone=efficientnet_b2" in full.per_round_overrides(3)            # students grow
    assert "coteach.sharpen=0.65" in full.per_round_overrides(3)
    assert PipelineSettings.from_cfg(load_config(["stage=pipeline"]).pipeline).per_round == {}
    assert load_config(["stage=bootstrap", "preset=full"]).crops.min_per_epoch == 4096  # longer epochs


def pipeline_args(ws, data_root, *extra):
    return smoke_args(ws, data_root, *extra, stage="pipeline", few_batches=True)


@pytest.mark.slow
def test_scripted_leaderboard_stops_on_plateau_and_keeps_the_best_round(tmp_path, smoke_data_root, monkeypatch):
    """Fake kaggle scores round 0 0.50, round 1 0.60, its ensemble 0.70, round 2 0.55, its ensemble 0.65:
    stop after round 2 (patience 1); W/submission.csv is ensemble1's, the mean of rounds 0 and 1.

    Round 2 trains with another learning rate, so its submission differs from round 1's, and the newest
    stage's submission (round 2, written by the stage) must have been replaced by the best candidate.
    """
    kaggle_state = install_fake_kaggle(tmp_path / "bin", [0.50, 0.60, 0.70, 0.55, 0.65, 0.9], monkeypatch)
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
    assert [record["rounds"][n].get("ensemble", {}).get("lb") for n in names] == [None, 0.70, 0.65]
    assert record["rounds"]["round2_bootstrap"]["ensemble"]["members"] == names
    assert all(record["rounds"][n]["status"] == "done" for n in names)
    assert record["best"] == "ensemble1" and "no improvement" in record["stopped"]
    assert all("test_lwlrap" in record["rounds"][n]["scores"] for n in names)    # the stage's own scores too

    best = (ws / "ensemble1" / "submission.csv").read_bytes()
    members = [pd.read_csv(ws / n / "submission.csv", dtype={"recording_id": str}) for n in names[:2]]
    ensemble = pd.read_csv(ws / "ensemble1" / "submission.csv", dtype={"recording_id": str})
    classes = [c for c in ensemble.columns if c.startswith("s")]
    np.testing.assert_allclose(ensemble[classes], (members[0][classes] + members[1][classes]) / 2, atol=2e-6)
    assert (ws / "submission.csv").read_bytes() == best
    assert (ws / "round2_bootstrap" / "submission.csv").read_bytes() != best
    submitted = json.loads(kaggle_state.read_text())["submissions"]
    assert [s["description"].split(":")[-1] for s in submitted] == \
        ["round0_bootstrap", "round1_bootstrap", "ensemble1", "round2_bootstrap", "ensemble2"]
    assert submitted[2]["content"] == best.decode()

    table = pd.read_csv(ws / "pipeline_rounds.csv")
    assert table["name"].tolist() == ["round0_bootstrap", "round1_bootstrap", "ensemble1", "round2_bootstrap",
                                      "ensemble2"]
    assert table["lb"].tolist() == [0.50, 0.60, 0.70, 0.55, 0.65]
    logged = pd.concat(pd.read_csv(p) for p in (ws / "logs" / "pipeline").glob("*/metrics.csv"))
    assert logged.sort_values("step")["round/lb"].tolist() == [0.50, 0.60, 0.55]

    # the same command again: nothing is retrained or resubmitted, the result is the same
    ckpt = ws / "round1_bootstrap" / "fold0" / "checkpoints" / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    assert main(args) == 0
    assert ckpt.stat().st_mtime_ns == mtime
    assert len(json.loads(kaggle_state.read_text())["submissions"]) == 5
    assert (ws / "submission.csv").read_bytes() == best
