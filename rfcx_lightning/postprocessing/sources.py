"""Reading the framewise outputs of finished stage runs from a workspace, for ensembling and re-scoring.

Every K-fold stage writes ``W/<name>/oof_framewise.npz`` (each train recording, predicted by the fold that
held it out) and per-fold test predictions ``W/<name>/fold<k>/test.npz`` (plus their fold mean,
``test_framewise.npz``); ``state.json`` lists them. Post-processing reads only these files, never the CSVs
it writes itself, so rerunning it is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..workspace import RunState, read_prediction_rows, select_runs



@dataclass
class StageOutputs:
    """One stage run's predictions, in the order of the recording ids asked for."""

    name: str
    oof_framewise: np.ndarray                # (N_train, C, T) float16
    oof_clip: np.ndarray                     # (N_train, C) the model's own clip scores
    test_framewise: list[np.ndarray]         # per fold (N_test, C, T); one item (the fold mean) if no fold files
    test_clip: list[np.ndarray]
    frames_per_second: float


def finished_stages(state: RunState, exclude: Sequence[str] = ()) -> list[str]:
    """Finished runs with framewise outputs (OOF and test), in run order, less ``exclude``.

    Runs flagged ``"joins_pool": false`` (the oracle, trained on the hidden truth) are never sources: as
    ``latest`` the oracle would otherwise become the post-processed ``W/submission.csv``.
    """
    return [name for name in state.finished_runs("oof_framewise.npz", "test_framewise.npz", references=False)
            if name not in exclude]


def resolve_sources(state: RunState, sources, exclude: Sequence[str] = ()) -> list[str]:
    """``latest`` (the newest stage run), ``all``, or a list of stage-run names (each must have finished)."""
    available = finished_stages(state, exclude)
    if not available:
        raise FileNotFoundError(f"{state.path}: no finished stage with framewise outputs; run stage=bootstrap first")
    return select_runs(available, sources, f"postprocess.sources: {state.path} has no finished run with "
                                           "framewise outputs named")


def _load(path: Path, ids: Sequence[str], what: str) -> dict[str, np.ndarray]:
    return read_prediction_rows(path, ids, ("framewise", "clip"), what, optional=("frames_per_second",))


def load_stage_outputs(state: RunState, name: str, train_ids: Sequence[str], test_ids: Sequence[str],
                       per_fold: bool = True) -> StageOutputs:
    """A stage run's OOF framewise predictions and its test predictions, per fold when ``per_fold``."""
    entry = state.stage(name)
    oof = _load(state.resolve(entry["outputs"]["oof_framewise.npz"]), train_ids, f"stage {name} OOF")
    fold_paths = [f.get("test") for _, f in sorted(entry.get("folds", {}).items(), key=lambda kv: int(kv[0]))]
    if per_fold and fold_paths and all(fold_paths) and all(state.resolve(p).exists() for p in fold_paths):
        tests = [_load(state.resolve(p), test_ids, f"stage {name} fold test") for p in fold_paths]
    else:
        tests = [_load(state.resolve(entry["outputs"]["test_framewise.npz"]), test_ids, f"stage {name} test")]
    fps = oof["frames_per_second"]
    return StageOutputs(name=name, oof_framewise=oof["framewise"], oof_clip=oof["clip"],
                        test_framewise=[t["framewise"] for t in tests], test_clip=[t["clip"] for t in tests],
                        frames_per_second=float(fps) if fps is not None else float("nan"))
