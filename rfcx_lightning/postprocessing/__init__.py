"""Post-processing of model outputs, the package and its public API (the stage runner, the pseudo-label pool,
the ensemble of rounds and ``stage=postprocess`` import from here).

A model trained on TP/FP boxes sees every species about equally often, while in the field (and in the
RFCx test set) species 3 sings in ~92% of clips and species 19 in ~0.4%. Within a clip, LWLRAP ranks the
species against each other, so per-class calibration matters as much as detection; post-processing alone
moved single RFCx models by +0.02 to +0.04 LWLRAP. One module per job, each a handful of numpy functions:

* calibration: odds scaling toward a prior given in the config or estimated (EM from the training balance);
* topk: per-class factors matching each clip's top-k to the prior (1st place);
* temporal: moving-average smoothing of framewise scores, clip aggregation (max / top-n mean / mean);
* ensemble: mean, rank mean and geometric mean of folds, rounds and stages;
* methods: the named calibrations ``postprocess.method`` selects;
* chain: the configured chain of a stage's own submission; sources: whose predictions;
  repredict: re-prediction in other inference modes.
"""

from __future__ import annotations

from .calibration import (estimate_prior, odds_factors, odds_scale_to_prior, scale_odds,
                                         training_balance)
from .ensemble import ENSEMBLES, ensemble, rank_normalize
from .methods import METHODS, Calibrated, calibrate
from .temporal import AGGREGATIONS, aggregate_clip, seconds_to_frames, smooth_framewise
from .topk import TopKFit, apply_factors, estimate_k, fit_topk_factors, topk_share

__all__ = [
    "AGGREGATIONS", "ENSEMBLES", "METHODS", "Calibrated", "TopKFit", "aggregate_clip", "apply_factors",
    "calibrate", "ensemble", "estimate_k", "estimate_prior", "fit_topk_factors", "odds_factors",
    "odds_scale_to_prior", "rank_normalize", "scale_odds", "seconds_to_frames", "smooth_framewise",
    "topk_share", "training_balance",
]
