"""The ensemble of rounds: a submission candidate the pipeline scores beside each round.

After round ``k`` the pipeline averages the clip scores of rounds ``0..k`` and lets the leaderboard score the
result like a round (``pipeline.ensemble``). Why: a template matcher and a CNN err differently (the
template misses individuals that sing differently from its templates, the CNN misses what its few boxes
never showed it), so their mean can beat both; a round that ends below its teacher still adds to the
ensemble, and the pipeline keeps whichever candidate the leaderboard likes best.

What is averaged is each round's *calibrated* clip scores, so no round dominates by the scale of its
scores: its ``submission.csv`` (odds-scaled toward the prior, or, for the noisy student, learnt on the
prior's scale) and its ``oof.csv`` (written before odds scaling, so each member is odds-scaled toward the
prior here first, the scaling its submission got); ``submission_raw.csv`` is the mean of the rounds' raw
scores. Rows are aligned by ``recording_id``; a round whose files lack a recording another round has is
an error naming the file.

``pipeline.ensemble_weights: skill`` weighs each round by ``(box AUROC - 0.5) ** 2`` of its out-of-fold
frames on the TP/FP boxes (:func:`~rfcx_lightning.pseudo.teachers.teacher_weights`, the rule the teachers
use): at the realistic level an equal mean let a weak bootstrap (box AUROC 0.63) pull the template (0.75)
and its student (0.70) down, OOF 0.816 against 0.827 weighted (docs/results.md "Rounds that beat their
teacher"). The boxes are the labels a real data set has, so no hidden truth picks the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..postprocessing import odds_scale_to_prior
from ..workspace import write_csv

__all__ = ["ENSEMBLE_FILES", "class_columns", "ensemble_name", "mean_scores", "round_box_auroc",
           "write_round_ensemble"]

#: the files averaged, each written to the ensemble's folder
ENSEMBLE_FILES = ("submission.csv", "submission_raw.csv", "oof.csv")


def ensemble_name(index: int) -> str:
    """``ensemble<k>``: the mean of rounds 0..k (its folder ``W/ensemble<k>/``)."""
    return f"ensemble{int(index)}"


def class_columns(columns) -> list[str]:
    """The ``s<k>`` score columns of a submission-format table, in their order."""
    return [c for c in columns if c.startswith("s") and c[1:].isdigit()]


def _read_scores(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"recording_id": str})
    if "recording_id" not in frame.columns:
        raise ValueError(f"{path}: no recording_id column; cannot ensemble it")
    return frame.set_index("recording_id")


def mean_scores(paths: Sequence[Path], prior: np.ndarray | None = None,
                weights: Sequence[float] | None = None) -> pd.DataFrame:
    """The (weighted) mean of score tables (``recording_id``, [``fold``], ``s0``..), rows in the first
    table's order.

    Every table must hold the same recordings and class columns; ``fold`` (in ``oof.csv``) is kept from the
    first table. With ``prior`` (one value per class column), each table is odds-scaled toward it first.
    ``weights``: one per table, normalised to sum 1 (None: equal).
    """
    if not paths:
        raise ValueError("an ensemble needs at least one member")
    weights = np.ones(len(paths)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(paths),) or (weights < 0).any() or not weights.sum() > 0:
        raise ValueError(f"ensemble weights {weights.tolist()}: need {len(paths)} non-negative values, not all 0")
    weights = weights / weights.sum()
    frames = [_read_scores(p) for p in paths]
    first = frames[0]
    classes = class_columns(first.columns)
    if prior is not None and len(prior) != len(classes):
        raise ValueError(f"{paths[0]}: {len(classes)} class columns, but the prior has {len(prior)} values")
    total = np.zeros((len(first), len(classes)))
    for path, frame, weight in zip(paths, frames, weights):
        missing = first.index.difference(frame.index)
        if len(missing) or set(classes) - set(frame.columns):
            what = f"recordings {list(missing[:5])}" if len(missing) else \
                f"class columns {sorted(set(classes) - set(frame.columns))}"
            raise ValueError(f"{path}: lacks {what} that {paths[0]} has; its round predicted another set")
        scores = frame.loc[first.index, classes].to_numpy(dtype=np.float64)
        total += weight * (scores if prior is None else odds_scale_to_prior(scores, prior))
    out = pd.DataFrame(total, index=first.index, columns=classes)
    if "fold" in first.columns:
        out.insert(0, "fold", first["fold"])
    return out.reset_index()


def write_round_ensemble(member_dirs: Sequence[Path], out_dir: Path, prior: np.ndarray | None = None,
                         weights: Sequence[float] | None = None) -> dict[str, Path]:
    """Average ``ENSEMBLE_FILES`` over ``member_dirs`` (files a member lacks are skipped for all) into
    ``out_dir``, atomically; returns the files written. ``prior``: the per-species prior the members'
    ``oof.csv`` are odds-scaled toward before averaging (None: averaged as written); ``weights``: one
    per member (None: equal)."""
    written = {}
    for file_name in ENSEMBLE_FILES:
        paths = [Path(d) / file_name for d in member_dirs]
        if all(p.is_file() for p in paths):
            table = mean_scores(paths, prior if file_name == "oof.csv" else None, weights)
            written[file_name] = write_csv(Path(out_dir) / file_name, table)
    if "submission.csv" not in written:
        raise FileNotFoundError(f"no submission.csv in every member of {[str(d) for d in member_dirs]}")
    return written


def round_box_auroc(run_dir: Path, boxes: pd.DataFrame, duration_s: float) -> float:
    """A finished round's out-of-fold box AUROC (its ``oof_framewise.npz`` on the TP/FP boxes); NaN without
    the file (a ``postprocess`` run) or without a class that has both kinds of box."""
    from ..pseudo.teachers import prediction_box_auroc

    path = Path(run_dir) / "oof_framewise.npz"
    return prediction_box_auroc(path, boxes, duration_s) if path.is_file() else float("nan")
