"""The pseudo-label pool (index, selection, loading, calibration) and the targets it serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfcx_lightning.postprocessing import odds_scale_to_prior
from rfcx_lightning.pseudo.pool import PoolError, PseudoLabelPool
from rfcx_lightning.pseudo.targets import (EpochItemSampler, TeacherSampler, clip_targets, crop_targets,
                                           draw_teacher, override_with_boxes)
from rfcx_lightning.workspace import write_npz

IDS = ["r0", "r1", "r2", "r3"]
C, FPS = 3, 2.0          # 3 classes, 2 frames per second -> 60 s = 120 frames


def write_stage(workspace, name, seed, n_frames=120, ids=IDS):
    """A stage's two prediction files, as KFoldStage.finalize writes them."""
    rng = np.random.default_rng(seed)
    paths = {}
    for split in ("oof", "test"):
        frames = rng.uniform(0.01, 0.6, (len(ids), C, n_frames)).astype(np.float16)
        path = workspace / name / f"{split}_framewise.npz"
        write_npz(path, recording_id=np.asarray(ids), framewise=frames, clip=frames.astype(np.float32).max(-1),
                  frames_per_second=np.float32(n_frames / 60.0))
        paths[split] = path
    return paths


@pytest.fixture
def pool(tmp_path):
    pool = PseudoLabelPool(tmp_path)
    for seed, name in enumerate(["bootstrap", "round1_coteach"]):
        paths = write_stage(tmp_path, name, seed)
        pool.add(name, name.split("_")[-1], paths["oof"], paths["test"], {"config": {"seed": seed}})
    return pool


def test_the_pool_is_a_view_of_state_json_with_relative_paths_and_add_is_idempotent(pool, tmp_path):
    raw = json.loads((tmp_path / "state.json").read_text())["stages"]
    assert list(raw) == ["bootstrap", "round1_coteach"]
    assert raw["bootstrap"]["outputs"]["oof_framewise.npz"] == "bootstrap/oof_framewise.npz"
    assert "created" in raw["bootstrap"]["provenance"]
    assert not (tmp_path / "pool").exists()                           # one record: state.json
    entries = PseudoLabelPool(tmp_path, writable=False).entries()
    assert [(e.round, e.kind) for e in entries] == [(None, "bootstrap"), (1, "coteach")]

    paths = write_stage(tmp_path, "bootstrap", seed=7)                  # the stage re-finalized
    pool.add("bootstrap", "bootstrap", paths["oof"], paths["test"], {"config": {"seed": 7}})
    reopened = PseudoLabelPool(tmp_path, writable=False)
    assert [(e.name, e.order) for e in reopened.entries()] == [("bootstrap", 0), ("round1_coteach", 1)]
    assert reopened.entries()[0].provenance["config"] == {"seed": 7}
    with pytest.raises(PoolError, match="read-only"):
        reopened.add("x", "x", paths["oof"], paths["test"])
    with pytest.raises(PoolError, match="do not exist"):
        pool.add("ghost", "x", tmp_path / "none.npz", paths["test"])


def test_unfinished_and_reference_runs_do_not_teach(pool, tmp_path):
    state = json.loads((tmp_path / "state.json").read_text())
    state["stages"]["round2_coteach"] = {"folds": {"0": {"status": "done"}}, "outputs": {}, "metrics": {}}
    oracle = dict(state["stages"]["bootstrap"], joins_pool=False)
    state["stages"]["oracle"] = oracle
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert [e.name for e in PseudoLabelPool(tmp_path).entries()] == ["bootstrap", "round1_coteach"]


def test_select_rules_and_empty_pool(pool, tmp_path):
    assert [e.name for e in pool.select("latest")] == ["round1_coteach"]
    assert [e.name for e in pool.select("all")] == ["bootstrap", "round1_coteach"]
    assert [e.name for e in pool.select(["round1_coteach", "bootstrap"])] == ["round1_coteach", "bootstrap"]
    assert [e.name for e in pool.select("latest", exclude=["round1_coteach"])] == ["bootstrap"]
    with pytest.raises(PoolError, match="no teacher named \\['nope'\\]"):
        pool.select(["nope"])
    with pytest.raises(PoolError, match="run stage=bootstrap first"):
        PseudoLabelPool(tmp_path / "empty").select("latest")


def test_corrupt_state_fails_clearly(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(PoolError, match="state.json is not valid JSON"):
        PseudoLabelPool(tmp_path)


def test_load_aligns_recordings_and_resamples_other_grids(pool, tmp_path):
    paths = write_stage(tmp_path, "round2_noisy_student", seed=3, n_frames=60, ids=IDS[::-1])
    pool.add("round2_noisy_student", "noisy_student", paths["oof"], paths["test"])
    order = ["r2", "r0"]
    stack = pool.load(pool.select("all"), "train", order)
    assert stack.framewise.shape == (3, 2, C, 120) and stack.framewise.dtype == np.float16
    assert stack.frames_per_second == pytest.approx(FPS)
    with np.load(paths["oof"]) as own:                                # reversed ids, half the frames
        expected_clip = own["clip"][[1, 3]]
        coarse = own["framewise"][[1, 3]].astype(np.float32)
    np.testing.assert_allclose(stack.clip[2], expected_clip)
    fine = stack.framewise[2].astype(np.float32)                       # same curve on twice the frames
    np.testing.assert_allclose(fine.mean(-1), coarse.mean(-1), atol=0.01)
    np.testing.assert_allclose(fine[..., 1:-1:2], 0.75 * coarse[..., :-1] + 0.25 * coarse[..., 1:], atol=2e-3)
    with np.load(tmp_path / "bootstrap" / "test_framewise.npz") as test:
        np.testing.assert_array_equal(pool.load(pool.select(["bootstrap"]), "test", ["r3"]).framewise[0, 0],
                                      test["framewise"][3])
    with pytest.raises(PoolError, match="oof_framewise.npz: no prediction for 1 recording.*'zz'"):
        pool.load(pool.select("latest"), "train", ["r0", "zz"])


def test_calibration_maps_each_teachers_mean_to_the_prior(pool):
    prior = np.array([0.9, 0.2, 0.01])
    raw = pool.load(pool.select("all"), "train", IDS)
    stack = pool.load(pool.select("all"), "train", IDS, calibrate_prior=prior)
    for k in range(2):
        np.testing.assert_allclose(stack.clip[k],
                                   odds_scale_to_prior(raw.clip[k], prior, raw.clip[k].mean(0)), rtol=1e-5)
        # same per-class factor on every frame: the max over time is still the clip score
        np.testing.assert_allclose(stack.framewise[k].astype(np.float32).max(-1), stack.clip[k], atol=2e-3)
    assert stack.clip[:, :, 0].mean() > 0.8 and stack.clip[:, :, 2].mean() < 0.05

    estimated = pool.load(pool.select("all"), "train", IDS, calibrate_prior="estimated")
    common = raw.clip.mean(axis=(0, 1))
    for k in range(2):   # both teachers now average to their joint mean
        np.testing.assert_allclose(estimated.clip[k].mean(0), common, atol=0.03)
    with pytest.raises(ValueError, match="shape \\(2,\\), the teachers have 3 classes"):
        pool.load(pool.select("all"), "train", IDS, calibrate_prior=[0.1, 0.2])


def grid_stack(pool, tmp_path):
    """One teacher whose class 0 score on r0 is 1.0 exactly in teacher frames 20..21 (10.0-11.0 s)."""
    frames = np.zeros((len(IDS), C, 120), np.float16)
    frames[0, 0, 20:22] = 1.0
    frames[0, 1, :] = 0.3
    path = tmp_path / "grid" / "oof_framewise.npz"
    write_npz(path, recording_id=np.asarray(IDS), framewise=frames, clip=frames.astype(np.float32).max(-1),
              frames_per_second=np.float32(FPS))
    pool.add("grid", "bootstrap", path, path)
    return pool.load(pool.select(["grid", "bootstrap"]), "train", IDS)


def test_crop_targets_cover_the_window_on_any_grid(pool, tmp_path):
    stack = grid_stack(pool, tmp_path)
    fine = crop_targets(stack, 0, 0, start_s=9.0, crop_s=3.0, n_frames=75)     # 25 Hz label grid
    assert fine.shape == (C, 75) and fine.dtype == np.float32
    assert np.flatnonzero(fine[0] > 0.5).tolist() == list(range(25, 50))       # 10.0-11.0 s
    np.testing.assert_allclose(fine[1], 0.3, atol=1e-3)
    coarse = crop_targets(stack, 0, 0, start_s=8.0, crop_s=4.0, n_frames=2)    # 2 s cells: max keeps the call
    assert coarse[0].tolist() == [0.0, 1.0]                                  # 8-10 s, 10-12 s
    hard = crop_targets(stack, 0, 0, 9.0, 3.0, 75, hard_threshold=0.25)
    assert set(np.unique(hard)) == {0.0, 1.0} and hard[1].min() == 1.0 and hard[2].max() == 0.0
    mean = crop_targets(stack, "mean", 0, 9.0, 3.0, 75)
    other = crop_targets(stack, 1, 0, 9.0, 3.0, 75)
    np.testing.assert_allclose(mean, (fine + other) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="teacher must be 'mean' or an index in \\[0, 2\\)"):
        crop_targets(stack, 2, 0, 9.0, 3.0, 75)


def test_clip_targets_sources_and_hard_labels(pool, tmp_path):
    stack = grid_stack(pool, tmp_path)
    np.testing.assert_allclose(clip_targets(stack, 0, 0), [1.0, 0.3, 0.0], atol=1e-3)
    np.testing.assert_allclose(clip_targets(stack, 0, 0, source="framewise_max"), [1.0, 0.3, 0.0], atol=1e-3)
    assert clip_targets(stack, 0, 0, hard_threshold=0.5).tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(clip_targets(stack, "mean", 1), stack.clip[:, 1].mean(0))
    with pytest.raises(ValueError, match="'clip' or 'framewise_max'"):
        clip_targets(stack, 0, 0, source="median")


def test_boxes_override_pseudo_targets():
    pseudo = np.array([[0.9, 0.8, 0.1, 0.2]], np.float32)
    box_t = np.array([[0.0, 1.0, 1.0, 0.0]], np.float32)
    box_m = np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)                       # FP cell, TP cell, unknown x2
    targets, weights = override_with_boxes(pseudo, None, box_t, box_m, pseudo_weight=0.5)
    assert targets.tolist() == [[0.0, 1.0, pytest.approx(0.1), pytest.approx(0.2)]]
    assert weights.tolist() == [[1.0, 1.0, 0.5, 0.5]]
    _, weights = override_with_boxes(pseudo, np.array([[1, 1, 0, 1]]), box_t, box_m, pseudo_weight=0.3)
    assert weights.tolist() == [[1.0, 1.0, 0.0, pytest.approx(0.3)]]
    with pytest.raises(ValueError, match="shapes differ"):
        override_with_boxes(pseudo, None, box_t[:, :2], box_m, 0.5)


def test_teacher_draws_are_deterministic_and_uniform():
    sampler = TeacherSampler(3, seed=5)
    draws = np.array([[sampler(epoch, item) for item in range(400)] for epoch in range(10)])
    again = np.array([[TeacherSampler(3, seed=5)(epoch, item) for item in range(400)] for epoch in range(10)])
    np.testing.assert_array_equal(draws, again)                                # same on any rank or worker
    assert draws[0].tolist() != [TeacherSampler(3, seed=6)(0, i) for i in range(400)]
    shares = np.bincount(draws.ravel(), minlength=3) / draws.size
    assert np.all(np.abs(shares - 1 / 3) < 0.03)                              # uniform over teachers
    assert np.mean([len(set(draws[:, i])) > 1 for i in range(400)]) > 0.9      # items change teacher over epochs
    assert TeacherSampler(3, mode="mean")(4, 2) == "mean" and draw_teacher(0, 0, 0, 1) == 0
    with pytest.raises(ValueError, match="'sample' or 'mean'"):
        TeacherSampler(3, mode="best")


def test_epoch_item_sampler_follows_the_trainer_epoch():
    sampler = EpochItemSampler(6, seed=1)
    sampler.set_epoch(3)
    first = list(sampler)
    assert {e for e, _ in first} == {3} and sorted(i for _, i in first) == list(range(6))
    assert list(sampler) == first                                              # resume: same epoch, same order
    sampler.set_epoch(4)
    assert [i for _, i in sampler] != [i for _, i in first] or len(first) < 3


def test_sample_pseudo_classes_keeps_box_classes_and_draws_per_item():
    import torch

    from rfcx_lightning.pseudo.targets import sample_pseudo_classes

    torch.manual_seed(0)
    weights = torch.full((8, 6, 5), 0.5)
    weights[:, 5] = 0.0                                      # a class without any label stays unlabelled
    keep = torch.zeros(8, 6, dtype=torch.bool)
    keep[:, 0] = True
    weights[:, 0, :2] = 1.0
    out = sample_pseudo_classes(weights, keep, per_item=2)
    assert torch.equal(out[:, 0], weights[:, 0])                       # box-labelled class untouched
    kept = (out[:, 1:5] > 0).any(-1)
    assert torch.equal(kept.sum(1), torch.full((8,), 2))              # exactly 2 pseudo classes per item
    assert torch.equal((out[:, 1:5] > 0).all(-1), kept)                # a class is kept whole or not at all
    assert (out[:, 5] == 0).all()
    assert torch.equal(sample_pseudo_classes(weights, keep, None), weights)
    clip = sample_pseudo_classes(weights[..., 0], keep, per_item=1)    # (B, C) clip weights too
    assert torch.equal((clip[:, 1:5] > 0).sum(1), torch.ones(8, dtype=torch.long))
