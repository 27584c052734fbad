"""Stages: one LightningModule per stage on a shared base, and the K-fold runner that drives them."""

from .bootstrap import BootstrapModule, BootstrapStage

STAGES = {"bootstrap": BootstrapStage}

__all__ = ["BootstrapModule", "BootstrapStage", "STAGES"]
