"""Stage ``bootstrap``: learn from the TP/FP boxes alone with the masked, time-aware loss.

Targets are 1 in TP boxes, 0 in FP boxes, and every other (class, frame) cell is left out of the loss:
most calls in RFCx are unlabelled, so "not labelled" must never be read as "absent" (1st place). The one
exception is ``bootstrap.negatives``: a few unlabelled classes of each crop become negatives at a small weight,
scaled down for common species, because a detector that has never seen ordinary background in a band
fires on it over a whole minute (docs/results.md "Bootstrap fold-0 diagnosis").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.labels import add_unlabelled_negatives
from ..settings import from_block
from .base import StageModule
from .runner import KFoldStage


@dataclass
class NegativesSettings:
    """``bootstrap.negatives``: weak negatives for classes with no label in a crop (stages/stage/bootstrap.yaml)."""

    per_crop: int
    weight: float
    prior_scaled: bool


@dataclass
class BootstrapSettings:
    """The ``bootstrap:`` block. Only the bootstrap (and the oracle, which composes the bootstrap's recipe)
    has one: the pool stages never label an unlabelled cell negative, their teachers do."""

    negatives: NegativesSettings


class BootstrapModule(StageModule):
    """The base's masked loss on the framewise logits, plus optional weak negatives for unlabelled classes."""

    def __init__(self, n_classes: int, model: dict, optim: dict, augment: dict, loss: dict,
                 predict: dict | None = None, negative_weights: list[float] | None = None,
                 negatives_per_crop: int = 0):
        super().__init__(n_classes, model, optim, augment, loss, predict)
        weights = negative_weights if negative_weights is not None else [0.0] * n_classes
        if len(weights) != n_classes:
            raise ValueError(f"negative_weights has {len(weights)} entries for {n_classes} classes")
        self.register_buffer("negative_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.negatives_per_crop = int(negatives_per_crop)

    def training_labels(self, batch):
        return add_unlabelled_negatives(batch["targets"], batch["mask"], self.negative_weights,
                                        self.negatives_per_crop)


def negative_class_weights(weight: float, prior_scaled: bool, class_prior: np.ndarray | None,
                           n_classes: int) -> list[float]:
    """Per-class weight of the weak negatives: ``weight``, times ``1 - prior`` when ``prior_scaled``.

    Scaling by the prior is the positive-unlabelled correction: a species in 90% of the clips calls in a
    sizeable share of random crops, so calling its unlabelled cells negative would mostly be wrong.
    """
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"bootstrap.negatives.weight must be in [0, 1], got {weight}")
    weights = np.full(n_classes, weight)
    if prior_scaled and class_prior is not None:
        weights = weights * (1.0 - np.asarray(class_prior, dtype=np.float64))
    return [float(w) for w in weights]


class BootstrapStage(KFoldStage):
    """K folds of :class:`BootstrapModule` on TP/FP crops; the data module and runner are the shared ones."""

    kind = "bootstrap"
    module_class = BootstrapModule

    def module_kwargs(self, fold: int) -> dict:
        """``bootstrap.negatives``: implied negatives per crop and their class weights (prior-scaled)."""
        negatives, ctx = from_block(BootstrapSettings, self.cfg.bootstrap, "bootstrap").negatives, self.ctx
        prior = None if ctx.prior is None else ctx.prior[ctx.scheme.species_of_class]
        return dict(negatives_per_crop=negatives.per_crop,
                    negative_weights=negative_class_weights(negatives.weight, negatives.prior_scaled, prior,
                                                            ctx.scheme.n_classes))
