"""The template-matching teacher: NCC against brute force, a planted call, the FP rule, and stage=template."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rfcx_lightning.models.template import Template, TemplateBank, TemplateMatcher, band_rows, map_scores
from rfcx_lightning.run import main

from .conftest import smoke_args

SR = 32000
FRONTEND = dict(n_fft=1024, hop_length=640, n_mels=64)


def chirp(seconds: float, f0: float, f1: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))) * np.hanning(len(t))


def recording(events: list[tuple[float, np.ndarray]], seconds: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Noise with calls added at the given start times (s)."""
    wave = np.random.default_rng(seed).normal(0, 0.05, int(seconds * SR))
    for start, call in events:
        wave[int(start * SR): int(start * SR) + len(call)] += 0.3 * call
    return torch.tensor(wave, dtype=torch.float32)


UPSWEEP, DOWNSWEEP, CONFUSER = chirp(0.5, 2000, 4000), chirp(0.5, 4000, 2000), chirp(0.5, 2000, 3200)


def matcher_with(boxes: list[tuple[torch.Tensor, int, float, float, bool]], n_classes: int = 3,
                 **kwargs) -> TemplateMatcher:
    """A matcher whose bank holds one template per (source wave, class, t_min, t_max, is_tp), band 1.8-4.2 kHz."""
    matcher = TemplateMatcher(n_classes, SR, frontend=FRONTEND, **kwargs)
    templates = []
    for wave, cls, t0, t1, is_tp in boxes:
        feats = matcher.features(wave[None])[0]
        templates += matcher.cut(feats, [cls], [t0], [t1], [1800.0], [4200.0], [is_tp])
    matcher.set_bank(TemplateBank(templates, n_classes))
    return matcher


def test_ncc_equals_brute_force_pearson():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(2, 10, 50)), dtype=torch.float32)
    shapes = [(2, 4, 12), (0, 3, 13), (5, 5, 15), (1, 9, 14)]  # (row0, rows, frames), one length bucket
    templates = [Template(torch.tensor(rng.normal(size=(h, n)), dtype=torch.float32), r, 0, True)
                 for r, h, n in shapes]
    (group,) = TemplateBank(templates, n_classes=1, buckets_per_octave=2).groups
    ncc = group.ncc(x).numpy()
    for k, t in enumerate(templates):
        h, n = t.patch.shape
        for b in range(2):
            for start in range(50):
                if start + n > 50:
                    assert ncc[b, k, start] == -np.inf
                    continue
                window = x[b, t.row0:t.row0 + h, start:start + n].numpy().ravel()
                expected = np.corrcoef(window, t.patch.numpy().ravel())[0, 1]
                assert ncc[b, k, start] == pytest.approx(expected, abs=1e-4)


def test_scores_peak_at_the_planted_call():
    source = recording([(1.0, UPSWEEP)], seed=1)
    target = recording([(3.0, DOWNSWEEP), (6.2, UPSWEEP)], seed=2)   # the call at 6.2-6.7 s, a decoy at 3 s
    matcher = matcher_with([(source, 1, 1.0, 1.5, True)], mapping="linear")
    out = matcher(target[None])
    framewise = out["framewise"][0, 1]
    assert matcher.frames_per_second == pytest.approx(10.0)
    assert framewise.shape == (100,)                                  # 10 s at 10 frames per second
    peak_s = int(framewise.argmax()) / matcher.frames_per_second
    assert 6.2 - 0.1 <= peak_s <= 6.7                                 # output frame j covers [j/10, (j+1)/10)
    assert float(framewise.max()) > 0.9                               # linear map: NCC > 0.8
    assert float(framewise[28:36].max()) < float(framewise.max()) - 0.3  # the downsweep decoy scores far lower
    assert out["clip"][0, 1] == framewise.max()
    assert torch.all(out["framewise"][0, [0, 2]] == 0.0)             # classes without templates: NCC -1 -> 0
    assert torch.all((out["framewise"] >= 0) & (out["framewise"] <= 1))


def test_fp_templates_score_down_what_annotators_rejected():
    source = recording([(1.0, UPSWEEP), (4.0, CONFUSER)], seed=3)
    boxes = [(source, 0, 1.0, 1.5, True), (source, 0, 4.0, 4.5, False)]   # the confuser was boxed as FP
    waves = torch.stack([recording([(5.0, UPSWEEP)], seed=4), recording([(5.0, CONFUSER)], seed=5),
                         recording([], seed=6)])                            # call / confuser / noise only
    scores = {}
    for weight in (0.0, 1.0):
        matcher = matcher_with(boxes, fp_weight=weight)
        scores[weight] = matcher.raw_scores(matcher.features(waves))[:, 0].amax(-1)
    call, confuser, noise = scores[0.0]
    assert confuser > noise + 0.25            # TP templates alone: the confuser is a strong false alarm
    call, confuser, noise = scores[1.0]
    assert confuser < noise                   # with FP templates it scores no higher than noise
    assert call > max(confuser, noise) + 0.2  # and the call is still clearly found


def test_band_rows_and_mapping_rules():
    centres = np.array([100.0, 200.0, 400.0, 800.0, 1600.0])
    assert band_rows(centres, 150, 900, 0.0, 2) == (1, 4)
    assert band_rows(centres, 150, 900, 150.0, 2) == (0, 4)          # the margin widens the band
    assert band_rows(centres, 500, 600, 0.0, 2) == (2, 4)            # between centres: nearest rows, min_rows
    s = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0])
    assert map_scores(s, "linear").tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]
    assert map_scores(s, "clip").tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert map_scores(s, "sigmoid", 0.5, 10.0)[3] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mapping='rank'"):
        TemplateMatcher(2, SR, frontend=FRONTEND, mapping="rank")


def test_a_box_outside_the_recording_is_named():
    matcher = TemplateMatcher(2, SR, frontend=FRONTEND)
    feats = matcher.features(recording([], seconds=2.0)[None])[0]
    with pytest.raises(ValueError, match=r"box 1 \(class 1, t 5.000-6.000 s\) is outside the 2.0 s"):
        matcher.cut(feats, [0, 1], [0.5, 5.0], [1.0, 6.0], [1000, 1000], [2000, 2000], [True, True])


# -- the stage, end to end through the CLI -----------------------------------------------------------------
def template_args(workspace, data_root, *extra):
    return smoke_args(workspace, data_root, *extra, stage="template")


@pytest.fixture(scope="module")
def template_workspace(tmp_path_factory, smoke_data_root):
    workspace = tmp_path_factory.mktemp("ws") / "template"
    assert main(template_args(workspace, smoke_data_root)) == 0
    return workspace


def test_stage_writes_the_outputs_of_a_trained_stage(template_workspace, smoke_data_root):
    ws, root = template_workspace, smoke_data_root
    read = lambda p: pd.read_csv(p, dtype={"recording_id": str})  # noqa: E731
    train_ids = sorted(p.stem for p in (root / "train").glob("*.flac"))
    test_ids = read(root / "sample_submission.csv").recording_id.tolist()
    for name in ("submission.csv", "submission_raw.csv"):
        table = read(ws / "template" / name)
        assert table.columns.tolist() == ["recording_id"] + [f"s{k}" for k in range(24)]
        assert table.recording_id.tolist() == test_ids
        values = table.iloc[:, 1:].to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    assert read(ws / "submission.csv").equals(read(ws / "template" / "submission.csv"))
    oof = read(ws / "oof.csv")
    assert sorted(oof.recording_id) == train_ids and set(oof.fold) == {0, 1}

    with np.load(ws / "template" / "oof_framewise.npz") as oof_frames:
        assert set(oof_frames.files) == {"recording_id", "fold", "framewise", "clip", "frames_per_second", "seconds"}
        assert (oof_frames["seconds"] == 60.0).all()                  # each recording's own length
        assert oof_frames["framewise"].dtype == np.float16
        assert oof_frames["framewise"].shape == (len(train_ids), 24, 600)  # 60 s at 10 frames per second
        assert float(oof_frames["frames_per_second"]) == 10.0
        # the clip score is the max over frames, as for the framewise heads
        np.testing.assert_allclose(oof_frames["clip"], oof_frames["framewise"].astype(np.float32).max(-1),
                                   atol=1e-3)
    with np.load(ws / "template" / "test_framewise.npz") as test_frames:
        assert test_frames["framewise"].shape == (len(test_ids), 24, 600)

    state = json.loads((ws / "state.json").read_text())["stages"]["template"]
    folds_csv = pd.read_csv(ws / "folds.csv", dtype={"recording_id": str})
    tp = pd.read_csv(root / "train_tp.csv", dtype={"recording_id": str})
    for k in range(2):
        fold = state["folds"][str(k)]
        assert fold["status"] == "done" and (ws / fold["templates"]).exists()
        # templates come from the training folds' boxes only, never from the recordings being scored
        training = set(folds_csv.recording_id[folds_csv.fold != k])
        assert fold["n_tp_templates"] == int(tp.recording_id.isin(training).sum())
    assert {"test_lwlrap", "test_raw_lwlrap", "test_prior_lwlrap", "oof_lwlrap"} <= set(state["metrics"])
    assert not list(ws.rglob("*.tmp")) and not list(ws.rglob("*.rank*.npz"))


def test_rerun_skips_done_folds_and_reuses_cut_templates(template_workspace, smoke_data_root):
    ws = template_workspace
    before = np.load(ws / "template" / "test_framewise.npz")["framewise"]
    fold0, templates1 = ws / "template" / "fold0" / "test.npz", ws / "template" / "fold1" / "templates.pt"
    fold0_mtime, templates1_mtime = fold0.stat().st_mtime_ns, templates1.stat().st_mtime_ns

    # pretend the run died after cutting fold 1's templates, before scoring
    state_path = ws / "state.json"
    state = json.loads(state_path.read_text())
    state["stages"]["template"]["folds"]["1"]["status"] = "trained"
    state_path.write_text(json.dumps(state))
    (ws / "template" / "fold1" / "test.npz").unlink()

    assert main(template_args(ws, smoke_data_root)) == 0
    assert json.loads(state_path.read_text())["stages"]["template"]["folds"]["1"]["status"] == "done"
    assert fold0.stat().st_mtime_ns == fold0_mtime            # finished fold untouched
    assert templates1.stat().st_mtime_ns == templates1_mtime  # templates loaded, not cut again
    np.testing.assert_array_equal(np.load(ws / "template" / "test_framewise.npz")["framewise"], before)
