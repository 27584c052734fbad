"""One post-processing option applied end to end: framewise outputs of one or more stage runs -> clip
scores per species -> calibrated scores.

Order, and why: smoothing and aggregation act on each model's framewise output (they are about time);
folds of one run are then combined (``fold_ensemble``), then runs/rounds/stages (``ensemble``), then
class scores become species scores (max over song types), and calibration comes last because it is fitted
on the very scores it changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .ensemble import ensemble
from .methods import Calibrated, calibrate
from .sources import StageOutputs
from .temporal import aggregate_clip, seconds_to_frames, smooth_framewise


@dataclass(frozen=True)
class Option:
    smooth_seconds: float = 0.0     # moving-average window; 0 = none
    aggregate: str = "max"          # max | topn_mean | mean | clip (the model's own clip output)
    top_n: int = 3
    fold_ensemble: str = "mean"
    ensemble: str = "mean"
    method: str = "odds"            # raw | odds | topk_linear | topk_power
    prior: str = "config"           # config | estimated

    def label(self) -> dict:
        return asdict(self)


def _clip(framewise: np.ndarray, clip: np.ndarray, option: Option, fps: float) -> np.ndarray:
    if option.aggregate == "clip":
        if option.smooth_seconds > 0:
            raise ValueError("postprocess.aggregate=clip uses the model's own clip output; it cannot be smoothed")
        return np.asarray(clip, np.float32)
    frames = smooth_framewise(framewise, seconds_to_frames(option.smooth_seconds, fps)) \
        if option.smooth_seconds > 0 else np.asarray(framewise, np.float32)
    return aggregate_clip(frames, option.aggregate, option.top_n)


def class_scores(sources: Sequence[StageOutputs], split: str, option: Option) -> np.ndarray:
    """Clip class scores (N, C) of ``split`` ("oof" or "test"), ensembled over folds and sources."""
    per_source = []
    for src in sources:
        if split == "oof":
            per_source.append(_clip(src.oof_framewise, src.oof_clip, option, src.frames_per_second))
        else:
            folds = [_clip(f, c, option, src.frames_per_second) for f, c in zip(src.test_framewise, src.test_clip)]
            per_source.append(ensemble(folds, option.fold_ensemble))
    return ensemble(per_source, option.ensemble)


def apply_option(species_scores: np.ndarray, option: Option, config_prior: np.ndarray | None,
                 estimate) -> Calibrated:
    """Calibrate species scores with ``option.method`` toward the configured or an estimated prior.

    ``estimate(scores) -> prior`` is called only for ``prior="estimated"``.
    """
    if option.method == "raw":
        return calibrate(species_scores, "raw", None)
    if option.prior == "config":
        prior = config_prior
    elif option.prior == "estimated":
        prior = estimate(species_scores)
    else:
        raise ValueError(f"postprocess.prior={option.prior!r}: choose config or estimated")
    result = calibrate(species_scores, option.method, prior)
    if prior is not None:
        result.factors["prior"] = np.asarray(prior, dtype=float).tolist()
    return result
