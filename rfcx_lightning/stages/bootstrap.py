"""Stage ``bootstrap``: learn from the TP/FP boxes alone with the masked, time-aware loss.

Targets are 1 in TP boxes, 0 in FP boxes, and every other (class, frame) cell is left out of the loss:
most calls in RFCx are unlabelled, so "not labelled" must never be read as "absent" (1st place).
"""

from __future__ import annotations

from .base import StageModule
from .runner import KFoldStage


class BootstrapModule(StageModule):
    """The base's masked loss on the framewise logits; targets and mask come from the TP/FP box crops."""


class BootstrapStage(KFoldStage):
    """K folds of :class:`BootstrapModule` on TP/FP crops; the data module and runner are the shared ones."""

    kind = "bootstrap"
    module_class = BootstrapModule
