"""Post-processing of model outputs, the public entry point (the stage runner, the pseudo-label pool and
``stage=postprocess`` use it).

A model trained on TP/FP boxes sees every species about equally often, while in the field (and in the
RFCx test set) species 3 sings in ~92% of clips and species 19 in ~0.4%. Within a clip, LWLRAP ranks the
species against each other, so per-class calibration matters as much as detection; post-processing alone
moved single RFCx models by +0.02 to +0.04 LWLRAP. The pieces, each in its own module of
:mod:`rfcx_lightning.postprocessing`:

* calibration: odds scaling toward a prior given in the config or estimated (EM from the training balance);
* topk: per-class factors matching each clip's top-k to the prior (1st place);
* temporal: moving-average smoothing of framewise scores, clip aggregation (max / top-n mean / mean);
* ensemble: mean, rank mean and geometric mean of folds, rounds and stages;
* methods: the named calibrations ``postprocess.method`` selects.
"""

from __future__ import annotations

from .postprocessing.calibration import (estimate_prior, odds_factors, odds_scale_to_prior, scale_odds,
                                         training_balance)
from .postprocessing.ensemble import ENSEMBLES, ensemble, rank_normalize
from .postprocessing.methods import METHODS, Calibrated, calibrate
from .postprocessing.temporal import AGGREGATIONS, aggregate_clip, seconds_to_frames, smooth_framewise
from .postprocessing.topk import TopKFit, apply_factors, estimate_k, fit_topk_factors, topk_share

__all__ = [
    "AGGREGATIONS", "ENSEMBLES", "METHODS", "Calibrated", "TopKFit", "aggregate_clip", "apply_factors",
    "calibrate", "ensemble", "estimate_k", "estimate_prior", "fit_topk_factors", "odds_factors",
    "odds_scale_to_prior", "rank_normalize", "scale_odds", "seconds_to_frames", "smooth_framewise",
    "topk_share", "training_balance",
]
