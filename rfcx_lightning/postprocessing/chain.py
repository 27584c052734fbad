"""One post-processing option applied end to end: framewise outputs of one or more stage runs -> clip
scores per species -> calibrated scores.

Order, and why: the folds of one run are combined first, on their framewise scores (``fold_level:
frames``, the default): a clip's score is then the max over time of what the folds agree on, not the mean
of each fold's own max, and one fold's spurious peak is diluted instead of counted in full (+0.037 test
LWLRAP for the hard-level bootstrap, +0.007 at medium, neutral for the template teacher; docs/results.md
"Combining folds framewise"). Smoothing and aggregation then act on the framewise scores (they are about
time); ``fold_level: clips`` aggregates each fold first and combines the clip scores (the head's own
``clip`` output can only be combined that way). Then runs/rounds/stages are combined (``ensemble``),
class scores become species scores (max over song types), and calibration comes last because it is fitted
on the very scores it changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..settings import from_block
from .ensemble import ensemble
from .methods import Calibrated, calibrate
from .sources import StageOutputs
from .temporal import aggregate_clip, seconds_to_frames, smooth_framewise


@dataclass
class InferenceSettings:
    """``postprocess.inference``: re-prediction modes and multiscale window lengths (stage=postprocess)."""

    modes: list | None              # null or []: none
    scales: list


@dataclass
class PostprocessSettings:
    """The ``postprocess:`` block (stages/base.yaml): the chain every K-fold stage's submission goes
    through (its :class:`Option` keys) plus what only ``stage=postprocess`` reads."""

    sources: Any                    # latest | all | [run names]
    fold_ensemble: str
    fold_level: str
    ensemble: str
    smooth_seconds: float
    aggregate: str
    top_n: int
    method: str
    prior: str
    compare: dict | None            # null: no alternatives scored
    inference: InferenceSettings


@dataclass(frozen=True)
class Option:
    """One post-processing option (the defaults are ``postprocess:``'s, in stages/base.yaml)."""

    smooth_seconds: float           # moving-average window; 0 = none
    aggregate: str                  # max | topn_mean | mean | clip (the model's own clip output)
    top_n: int
    fold_ensemble: str
    fold_level: str                 # frames: combine folds' framewise scores, then aggregate | clips
    ensemble: str
    method: str                     # raw | odds | topk_linear | topk_power
    prior: str                      # config | estimated

    def label(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, pp: PostprocessSettings | Mapping[str, Any]) -> "Option":
        """The option a ``postprocess:`` config block describes, every key checked (:func:`from_block`)."""
        settings = pp if isinstance(pp, PostprocessSettings) else from_block(PostprocessSettings, pp, "postprocess")
        option = cls(**{k: getattr(settings, k) for k in cls.__dataclass_fields__})
        if option.fold_level not in FOLD_LEVELS:
            raise ValueError(f"postprocess.fold_level={option.fold_level!r}: choose one of {FOLD_LEVELS}")
        return option


FOLD_LEVELS = ("frames", "clips")


def _clip(framewise: np.ndarray, clip: np.ndarray, option: Option, fps: float) -> np.ndarray:
    if option.aggregate == "clip":
        if option.smooth_seconds > 0:
            raise ValueError("postprocess.aggregate=clip uses the model's own clip output; it cannot be smoothed")
        return np.asarray(clip, np.float32)
    frames = smooth_framewise(framewise, seconds_to_frames(option.smooth_seconds, fps)) \
        if option.smooth_seconds > 0 else np.asarray(framewise, np.float32)
    return aggregate_clip(frames, option.aggregate, option.top_n)


def fold_clip_scores(framewise: Sequence[np.ndarray], clip: Sequence[np.ndarray], option: Option,
                     frames_per_second: float) -> np.ndarray:
    """Clip class scores (N, C) from the folds' framewise (N, C, T) and clip (N, C) outputs of one run.

    ``fold_level=frames`` combines the framewise scores with ``fold_ensemble`` and aggregates once;
    ``clips`` (and ``aggregate=clip``, the head's own output) aggregates each fold and combines the clips.
    One fold (out-of-fold predictions) gives the same either way.
    """
    if option.fold_level == "frames" and option.aggregate != "clip":
        frames = framewise[0] if len(framewise) == 1 else ensemble(framewise, option.fold_ensemble)
        return _clip(frames, None, option, frames_per_second)
    folds = [_clip(f, c, option, frames_per_second) for f, c in zip(framewise, clip)]
    return folds[0] if len(folds) == 1 else ensemble(folds, option.fold_ensemble)


def class_scores(sources: Sequence[StageOutputs], split: str, option: Option) -> np.ndarray:
    """Clip class scores (N, C) of ``split`` ("oof" or "test"), ensembled over folds and sources."""
    per_source = []
    for src in sources:
        if split == "oof":
            per_source.append(fold_clip_scores([src.oof_framewise], [src.oof_clip], option, src.frames_per_second))
        else:
            per_source.append(fold_clip_scores(src.test_framewise, src.test_clip, option, src.frames_per_second))
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
