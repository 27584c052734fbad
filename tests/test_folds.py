"""Multilabel-stratified folds by recording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.data.folds import load_or_make_folds, make_folds, stratification_matrix

N_CLASSES = 4


def _data(seed: int = 0):
    """60 recordings: 40 with TP boxes (10 per class), 10 with only FP boxes, 10 without any box."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:09d}" for i in range(60)]  # all-digit ids with leading zeros
    rows = []
    for i in range(40):
        rows.append((ids[i], i % N_CLASSES, True))
        if rng.random() < 0.5:
            rows.append((ids[i], int(rng.integers(N_CLASSES)), False))
    for i in range(40, 50):
        rows.append((ids[i], i % N_CLASSES, False))
        rows.append((ids[i], (i + 1) % N_CLASSES, False))
    boxes = pd.DataFrame(rows, columns=["recording_id", "class_index", "is_tp"])
    return ids, boxes


def test_every_id_once_including_fp_only_and_unlabeled():
    ids, boxes = _data()
    folds = make_folds(ids, boxes, N_CLASSES, 5, seed=1)
    assert list(folds.columns) == ["recording_id", "fold"]
    assert folds["recording_id"].tolist() == ids
    assert set(folds["fold"]) == set(range(5))
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 2
    # FP-only and unlabeled recordings are spread over several folds
    assert folds["fold"].iloc[40:50].nunique() >= 3
    assert folds["fold"].iloc[50:].nunique() >= 3


def test_balanced_per_class():
    ids, boxes = _data()
    folds = make_folds(ids, boxes, N_CLASSES, 5, seed=3)
    fold_of = dict(zip(folds["recording_id"], folds["fold"]))
    tp = boxes[boxes["is_tp"]].assign(fold=lambda f: f["recording_id"].map(fold_of))
    per = tp.groupby(["class_index", "fold"])["recording_id"].nunique().unstack(fill_value=0)
    assert per.shape == (N_CLASSES, 5)
    assert per.to_numpy().min() >= 1 and per.to_numpy().max() <= 3  # 10 per class over 5 folds


def test_deterministic_per_seed():
    ids, boxes = _data()
    a = make_folds(ids, boxes, N_CLASSES, 4, seed=7)
    b = make_folds(ids, boxes, N_CLASSES, 4, seed=7)
    c = make_folds(ids, boxes, N_CLASSES, 4, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(c["fold"])


def test_invalid_k_and_unknown_ids():
    ids, boxes = _data()
    with pytest.raises(ValueError):
        make_folds(ids, boxes, N_CLASSES, 1, seed=0)
    with pytest.raises(ValueError):
        make_folds(ids[:3], boxes[boxes["recording_id"].isin(ids[:3])], N_CLASSES, 4, seed=0)
    with pytest.raises(ValueError, match="not in recording_ids"):
        make_folds(ids[:10], boxes, N_CLASSES, 2, seed=0)


def test_stratification_matrix():
    boxes = pd.DataFrame({"recording_id": ["a", "a", "b"], "class_index": [0, 1, 1], "is_tp": [True, False, False]})
    m = stratification_matrix(["a", "b", "c"], boxes, 2)
    np.testing.assert_array_equal(m, [[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]])


def test_load_or_make_round_trip(tmp_path):
    ids, boxes = _data()
    path = tmp_path / "ws" / "folds.csv"
    made = load_or_make_folds(path, ids, boxes, N_CLASSES, 5, seed=0)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["folds.csv"]
    loaded = load_or_make_folds(path, ids, boxes, N_CLASSES, 5, seed=123)  # file wins over the seed
    assert loaded["recording_id"].tolist() == ids  # leading zeros survive the CSV
    np.testing.assert_array_equal(loaded["fold"].to_numpy(), made["fold"].to_numpy())
    # asked in another order: same assignment, returned in the asked order
    again = load_or_make_folds(path, ids[::-1], boxes, N_CLASSES, 5, seed=0)
    assert again["recording_id"].tolist() == ids[::-1]
    np.testing.assert_array_equal(again["fold"].to_numpy(), made["fold"].to_numpy()[::-1])


def test_load_mismatch_errors(tmp_path):
    ids, boxes = _data()
    path = tmp_path / "folds.csv"
    load_or_make_folds(path, ids, boxes, N_CLASSES, 5, seed=0)
    with pytest.raises(ValueError, match="delete"):
        load_or_make_folds(path, ids + ["999999999"], boxes, N_CLASSES, 5, seed=0)
    with pytest.raises(ValueError, match="delete"):
        load_or_make_folds(path, ids[:-1], boxes[boxes["recording_id"] != ids[-1]], N_CLASSES, 5, seed=0)
    with pytest.raises(ValueError, match="expected 0..3"):
        load_or_make_folds(path, ids, boxes, N_CLASSES, 4, seed=0)
