"""Multilabel-stratified K-fold split by recording.

Folds are by recording, so boxes of one minute never sit on both sides of a split. Stratifying on TP
*and* FP presence per class keeps both label kinds balanced: with ~50 TP recordings per species, a
naive split can leave a fold with almost no positives (or no hard negatives) of a species, and the
out-of-fold score (and the pseudo labels built from it) then swings with the seed.

The fold file is written once per workspace and reused: later stages (OOF predictions, pseudo-label
rounds) must see exactly the same split, or their held-out predictions leak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from ..workspace import atomic_path

__all__ = ["load_or_make_folds", "make_folds", "stratification_matrix"]


def stratification_matrix(recording_ids: list[str], boxes: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(n_recordings, 2 * n_classes) bool: [TP presence per class | FP presence per class]."""
    for col in ("recording_id", "class_index", "is_tp"):
        if col not in boxes.columns:
            raise ValueError(f"boxes lack column {col!r}")
    position = {rid: i for i, rid in enumerate(recording_ids)}
    box_ids = boxes["recording_id"].astype(str).to_numpy()
    rows = np.fromiter((position.get(r, -1) for r in box_ids), dtype=np.int64, count=len(box_ids))
    if np.any(rows < 0):
        unknown = sorted(set(box_ids[rows < 0]))
        raise ValueError(f"{len(unknown)} recording id(s) in the boxes are not in recording_ids, e.g. {unknown[:5]}")
    cls = boxes["class_index"].to_numpy().astype(np.int64)
    if np.any((cls < 0) | (cls >= n_classes)):
        raise ValueError(f"class_index out of range [0, {n_classes})")
    is_tp = boxes["is_tp"].to_numpy().astype(bool)
    matrix = np.zeros((len(recording_ids), 2 * n_classes), dtype=bool)
    matrix[rows, np.where(is_tp, cls, n_classes + cls)] = True
    return matrix


def make_folds(recording_ids: list[str], boxes: pd.DataFrame, n_classes: int, n_folds: int, seed: int) -> pd.DataFrame:
    """Columns recording_id, fold (0..n_folds-1), one row per id in the given order.

    Recordings with only FP boxes, or none at all, are included and spread evenly (the stratifier
    distributes all-zero rows across folds).
    """
    recording_ids = [str(r) for r in recording_ids]
    if len(set(recording_ids)) != len(recording_ids):
        raise ValueError("recording_ids contains duplicates")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if n_folds > len(recording_ids):
        raise ValueError(f"n_folds={n_folds} is larger than the number of recordings ({len(recording_ids)})")
    matrix = stratification_matrix(recording_ids, boxes, n_classes)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(recording_ids), -1, dtype=np.int64)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros((len(recording_ids), 1)), matrix)):
        fold[test_idx] = k
    assert np.all(fold >= 0), "stratifier left a recording without a fold"
    return pd.DataFrame({"recording_id": pd.Series(recording_ids), "fold": fold})


def _check_folds(folds: pd.DataFrame, recording_ids: list[str], n_folds: int, path: Path) -> pd.DataFrame:
    """Validate a saved fold table against the current data; return it in `recording_ids` order."""
    advice = f"delete {path} to re-make the folds, or use a new workspace"
    if list(folds.columns[:2]) != ["recording_id", "fold"]:
        raise ValueError(f"{path}: expected columns recording_id, fold; found {list(folds.columns)}; {advice}")
    saved = folds["recording_id"].tolist()
    if len(set(saved)) != len(saved):
        raise ValueError(f"{path}: some recording ids appear more than once; {advice}")
    missing = sorted(set(recording_ids) - set(saved))
    extra = sorted(set(saved) - set(recording_ids))
    if missing or extra:
        raise ValueError(
            f"{path} does not match the data: {len(missing)} recording(s) missing from the file "
            f"(e.g. {missing[:3]}), {len(extra)} not in the data (e.g. {extra[:3]}); {advice}"
        )
    fold = pd.to_numeric(folds["fold"], errors="coerce")
    if fold.isna().any() or set(fold.astype(int)) != set(range(n_folds)):
        found = sorted(set(folds["fold"].tolist()))
        raise ValueError(f"{path} holds folds {found[:10]}, expected 0..{n_folds - 1}; {advice}")
    table = pd.DataFrame({"recording_id": pd.Series(saved), "fold": fold.astype(np.int64).to_numpy()})
    return table.set_index("recording_id").loc[recording_ids].reset_index()


def load_or_make_folds(path, recording_ids: list[str], boxes: pd.DataFrame, n_classes: int, n_folds: int,
                       seed: int) -> pd.DataFrame:
    """Read the fold file if it exists (and matches these ids and n_folds), else make and save it.

    The file is written to a temp name and os.replace'd, so a crash never leaves a partial fold file
    that a later run would trust.
    """
    path = Path(path)
    recording_ids = [str(r) for r in recording_ids]
    if path.exists():
        saved = pd.read_csv(path, dtype={"recording_id": str}, keep_default_na=False)
        return _check_folds(saved, recording_ids, n_folds, path)
    folds = make_folds(recording_ids, boxes, n_classes, n_folds, seed)
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)
    return folds
