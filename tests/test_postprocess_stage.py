"""stage=postprocess on a real (smoke) bootstrap workspace, and the inference modes it compares."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rfcx_lightning.inference import combine_scales, predict_framewise
from rfcx_lightning.postprocessing import odds_scale_to_prior
from rfcx_lightning.run import load_config, run
from rfcx_lightning.workspace import RunState, read_npz

from .conftest import smoke_args


def _args(workspace, data_root, stage, *extra):
    return smoke_args(workspace, data_root, *extra, stage=stage)


@pytest.fixture(scope="module")
def workspace(smoke_data_root, tmp_path_factory):
    ws = tmp_path_factory.mktemp("pp") / "ws"
    run(load_config(_args(ws, smoke_data_root, "bootstrap")))
    return ws


def _postprocess(ws, data_root, *extra):
    return run(load_config(_args(ws, data_root, "postprocess", *extra)))


def test_rewrites_the_submission_with_the_configured_chain(workspace, smoke_data_root):
    scores = _postprocess(workspace, smoke_data_root)
    out = workspace / "postprocess"
    submission = pd.read_csv(workspace / "submission.csv", dtype={"recording_id": str})
    raw = pd.read_csv(workspace / "submission_raw.csv", dtype={"recording_id": str})
    # recomputed independently from the per-fold files: fold mean of the framewise scores, max over time,
    # odds scaled to the prior; the stage's own submission used the same chain
    state = RunState(workspace)
    folds = [read_npz(state.resolve(f["test"])) for f in state.stage("bootstrap")["folds"].values()]
    clip = np.mean([f["framewise"].astype(np.float32) for f in folds], 0).max(-1)
    prior = np.asarray(json.loads((out / "factors.json").read_text())["test"]["prior"])
    np.testing.assert_allclose(raw.iloc[:, 1:].to_numpy(), clip, atol=2e-6)
    np.testing.assert_allclose(submission.iloc[:, 1:].to_numpy(), odds_scale_to_prior(clip, prior), atol=2e-6)
    stage_raw = pd.read_csv(workspace / "bootstrap" / "submission_raw.csv", dtype={"recording_id": str})
    np.testing.assert_allclose(stage_raw.iloc[:, 1:].to_numpy(), clip, atol=2e-6)
    assert submission["recording_id"].tolist() == list(folds[0]["recording_id"])
    # every option of postprocess.compare was scored against the hidden truth, the configured one first
    table = pd.read_csv(out / "scores.csv")
    assert table["varied"].iloc[0] == "configured" and len(table) >= 10
    assert table[["oof_lwlrap", "test_lwlrap"]].notna().all().all()
    assert set(table["method"]) == {"raw", "odds", "topk_linear", "topk_power"}
    assert scores["test_lwlrap"] == pytest.approx(table["test_lwlrap"].iloc[0])
    assert {"test_raw_lwlrap", "test_prior_lwlrap", "oof_lwlrap"} <= set(scores)
    entry = RunState(workspace).stage("postprocess")
    assert entry["sources"] == ["bootstrap"] and entry["metrics"] == scores
    assert not list(workspace.rglob(".*.tmp"))


def test_method_and_smoothing_change_the_submission(workspace, smoke_data_root):
    _postprocess(workspace, smoke_data_root, "postprocess.method=topk_power", "postprocess.smooth_seconds=2",
                 "postprocess.compare=null")
    factors = json.loads((workspace / "postprocess" / "factors.json").read_text())
    assert set(factors["test"]) == {"odds", "topk_power", "prior"}
    assert factors["test_info"]["topk_error_after"] <= factors["test_info"]["topk_error_before"]
    table = pd.read_csv(workspace / "postprocess" / "scores.csv")
    assert len(table) == 1 and table["method"][0] == "topk_power" and table["smooth_seconds"][0] == 2.0


def test_ensembles_several_runs(workspace, smoke_data_root, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns("cache", "logs"))
    state = RunState(ws)
    copy = json.loads(json.dumps(state.stage("bootstrap")).replace("bootstrap/", "round1_copy/"))
    shutil.copytree(ws / "bootstrap", ws / "round1_copy")
    state.data["stages"]["round1_copy"] = copy
    state.save()
    _postprocess(ws, smoke_data_root, "postprocess.sources=all", "postprocess.compare=null")
    both = pd.read_csv(ws / "submission.csv")
    _postprocess(ws, smoke_data_root, "postprocess.sources=[bootstrap]", "postprocess.compare=null")
    one = pd.read_csv(ws / "submission.csv")
    np.testing.assert_allclose(both.iloc[:, 1:], one.iloc[:, 1:], atol=1e-6)   # two identical runs = one
    assert RunState(ws).stage("postprocess")["sources"] == ["bootstrap"]
    with pytest.raises(ValueError, match="round9"):
        _postprocess(ws, smoke_data_root, "postprocess.sources=[round9]")


def test_needs_finished_stage_outputs(smoke_data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="run stage=bootstrap first"):
        _postprocess(tmp_path / "empty", smoke_data_root)


def test_compares_inference_modes_and_reuses_predictions(workspace, smoke_data_root):
    extra = ("postprocess.inference.modes=[whole,windows,multiscale]", "postprocess.inference.scales=[3,60]",
             "postprocess.compare=null")
    _postprocess(workspace, smoke_data_root, *extra)
    out = workspace / "postprocess" / "inference"
    rows = pd.read_csv(workspace / "postprocess" / "inference_scores.csv")
    assert rows["mode"].tolist() == ["whole", "windows", "multiscale"]
    assert rows["test_lwlrap"].notna().all() and (rows["predict_seconds"] > 0).all()
    class_scale = json.loads((out / "multiscale_class_scale.json").read_text())["class_scale"]
    assert len(class_scale) == 24 and set(class_scale) <= {3.0, 60.0}
    # re-prediction in the stage's own mode (predict.mode, windows by default) reproduces its predictions,
    # and every mode gives the same frame grid
    state = RunState(workspace)
    original = read_npz(state.resolve(state.fold("bootstrap", 0)["test"]))
    again = read_npz(out / "windows" / "fold0" / "test.npz")
    np.testing.assert_allclose(again["framewise"].astype(np.float32), original["framewise"].astype(np.float32), atol=2e-3)
    shapes = {mode: read_npz(out / mode / "fold0" / "test.npz")["framewise"].shape for mode in ("whole", "windows")}
    assert len(set(shapes.values())) == 1, shapes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    _postprocess(workspace, smoke_data_root, *extra)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamps     # a rerun predicts nothing again




def test_multiscale_has_the_same_format_and_picks_each_class_from_its_scale(inference_model):
    wave = torch.randn(2, 8000 * 20)
    whole, whole_clip = predict_framewise(inference_model, wave, mode="whole")
    win, win_clip = predict_framewise(inference_model, wave, mode="windows", window_seconds=5.0, window_hop_seconds=2.5,
                                      sample_rate=8000)
    multi, multi_clip = predict_framewise(inference_model, wave, mode="multiscale", window_seconds=[20.0, 5.0],
                                          sample_rate=8000, class_scale=[20.0, 5.0, 20.0])
    assert multi.dtype == torch.float16 and multi.shape == whole.shape and multi_clip.shape == (2, 3)
    assert torch.equal(multi[:, 0], whole[:, 0]) and torch.equal(multi_clip[:, 2], whole_clip[:, 2])
    resampled = torch.nn.functional.interpolate(win.float(), size=whole.shape[-1], mode="linear")
    torch.testing.assert_close(multi[:, 1].float(), resampled[:, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(multi_clip[:, 1], win_clip[:, 1])
    mean, _ = predict_framewise(inference_model, wave, mode="multiscale", window_seconds=[20.0, 5.0], sample_rate=8000)
    torch.testing.assert_close(mean.float(), (whole.float() + resampled) / 2, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="not in"):
        combine_scales([whole], [whole_clip], [20.0], class_scale=[5.0, 20.0, 20.0])
    with pytest.raises(ValueError, match="predict.mode"):
        predict_framewise(inference_model, wave, mode="pyramid")
