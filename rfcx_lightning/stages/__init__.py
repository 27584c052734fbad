"""Stages: one LightningModule per stage on a shared base, and the K-fold runner that drives them.

``STAGES`` maps a ``stage=`` name to ``"module:Class"``; :func:`stage_class` imports it on demand, so a
stage's heavy imports are paid only when it runs and each stage lives in its own module.
"""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "bootstrap": "rfcx_lightning.stages.bootstrap:BootstrapStage",
    "template": "rfcx_lightning.stages.template:TemplateStage",
    "pretrain": "rfcx_lightning.stages.pretrain:PretrainStage",
    "coteach": "rfcx_lightning.stages.coteach:CoteachStage",
    "noisy_student": "rfcx_lightning.stages.noisy_student:NoisyStudentStage",
    "postprocess": "rfcx_lightning.stages.postprocess:PostprocessStage",
    "oracle": "rfcx_lightning.stages.oracle:OracleStage",
    "report": "rfcx_lightning.stages.report:ReportStage",
    "pipeline": "rfcx_lightning.orchestration.pipeline:PipelineStage",
    "detect": "rfcx_lightning.detection.stage:DetectStage",
}


def stage_class(kind: str):
    """The class that runs ``stage=<kind>``."""
    if kind not in STAGES:
        raise KeyError(f"unknown stage {kind!r}; choose one of {sorted(STAGES)}")
    module, _, name = STAGES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["STAGES", "stage_class"]
