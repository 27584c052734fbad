"""The teacher set of a pseudo-label stage: which pool entries teach, on what scale, how sharp.

Both pseudo-label stages (``coteach``, ``noisy_student``) learn from earlier runs' predictions in the pool.
What they share lives here, once:

* **selection and pinning.** ``teachers: latest | all | [names]`` picks pool entries (never the run
  itself); the choice is pinned in ``state.json`` (``teachers``) the first time, so a resumed run trains
  every fold on the same targets even if the pool grew in between;
* **calibration.** ``calibrate: prior`` odds-scales each teacher per class so its mean clip score maps to
  ``score.prior`` (a model trained on balanced TP/FP boxes over-predicts rare species), ``estimated`` uses
  the teachers' joint mean as the prior, ``none`` keeps raw scores. With several teachers and ``mean``,
  the target is the mean of the *calibrated* probabilities: the template's NCC-sigmoid and a CNN's
  probabilities live on different scales, so averaging raw scores lets one of them dominate;
* **sharpening.** ``sharpen: T`` raises every calibrated teacher probability to the power ``1/T``
  (BirdCLEF 2025 1st place: soft pseudo labels sharpened per iteration with T = 1, 0.65, 0.55, 0.6).
  T < 1 pushes uncertain scores toward 0 and leaves confident ones near 1, so the diffuse low scores a
  teacher spreads over every frame stop reading as weak positives; T = 1 is the identity.

The teacher of round k in the default pipeline is ``teachers: all`` with ``mean``: the ensemble of every
earlier round, template included, so a round learns from targets at least as good as the best before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .pool import PoolEntry, PoolError, PseudoLabelPool, TeacherStack

log = logging.getLogger(__name__)

__all__ = ["TeacherSet", "TeacherSettings", "sharpen"]

CALIBRATIONS = ("prior", "estimated", "none")


def sharpen(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``p ** (1 / temperature)`` in the input's dtype (float16 frames stay float16); T = 1 is the identity."""
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"sharpen temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return probabilities
    out = np.power(np.clip(probabilities.astype(np.float32), 0.0, 1.0), 1.0 / temperature)
    return out.astype(probabilities.dtype)


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher keys of a stage block (``coteach:`` or ``noisy_student:``), checked."""

    teachers: str | tuple[str, ...] = "latest"
    calibrate: str = "prior"
    sharpen: float = 1.0

    @classmethod
    def from_block(cls, block: dict, stage: str, default_teachers: str = "latest") -> "TeacherSettings":
        teachers = block.get("teachers") or default_teachers
        if not isinstance(teachers, str):
            teachers = tuple(str(t) for t in teachers)
        calibrate = str(block.get("calibrate", "prior")).lower()
        if calibrate in ("null", "false"):
            calibrate = "none"
        if calibrate not in CALIBRATIONS:
            raise ValueError(f"{stage}.calibrate={block.get('calibrate')!r}: choose one of {', '.join(CALIBRATIONS)}")
        temperature = block.get("sharpen", 1.0)
        temperature = 1.0 if temperature is None else float(temperature)
        if not temperature > 0:
            raise ValueError(f"{stage}.sharpen={temperature}: the temperature T of p ** (1/T) must be > 0 "
                             "(1: off, < 1: sharper)")
        return cls(teachers=teachers, calibrate=calibrate, sharpen=temperature)


class TeacherSet:
    """The pinned pool entries of one stage run, loaded calibrated and sharpened (see the module docstring).

    ``stage`` is a :class:`~rfcx_lightning.stages.runner.KFoldStage`: its name (never its own teacher), its
    ``state.json`` record (where the choice is pinned) and its context (prior, class scheme, workspace).
    """

    def __init__(self, stage, settings: TeacherSettings):
        self.stage, self.settings = stage, settings
        self._entries: list[PoolEntry] | None = None

    @property
    def pool(self) -> PseudoLabelPool:
        return PseudoLabelPool(self.stage.ctx.workspace, writable=False)

    def entries(self) -> list[PoolEntry]:
        """The teachers, chosen once per run and pinned in ``state.json`` (``teachers``)."""
        if self._entries is None:
            record = self.stage.state.stage(self.stage.name)
            pinned = record.get("teachers")
            try:
                self._entries = self.pool.select(pinned or self.settings.teachers, exclude=[self.stage.name])
            except PoolError as err:
                raise PoolError(f"stage={self.stage.kind}: {err}") from err
            if not pinned:
                record["teachers"] = [e.name for e in self._entries]
                self.stage.state.save()
            log.info("%s: teachers %s", self.stage.name, [e.name for e in self._entries])
        return self._entries

    def prior(self) -> str | np.ndarray | None:
        """What :meth:`PseudoLabelPool.load` calibrates toward: the class prior, ``"estimated"`` or None."""
        mode = self.settings.calibrate
        if mode == "none":
            return None
        if mode == "estimated":
            return "estimated"
        ctx = self.stage.ctx
        if ctx.prior is None:
            raise ValueError(f"{self.stage.kind}.calibrate=prior needs score.prior (e.g. rfcx_test); set it or "
                             f"use {self.stage.kind}.calibrate=estimated|none")
        return ctx.prior[ctx.scheme.species_of_class]   # species prior -> each class of the scheme

    def load(self, split: str, recording_ids: Sequence[str], frames: bool = True) -> TeacherStack:
        """The teachers' predictions for ``recording_ids`` of ``split``, calibrated, then sharpened."""
        stack = self.pool.load(self.entries(), split, recording_ids, calibrate_prior=self.prior(), frames=frames)
        if self.settings.sharpen != 1.0:
            stack.clip = sharpen(stack.clip, self.settings.sharpen)
            if stack.framewise is not None:
                stack.framewise = sharpen(stack.framewise, self.settings.sharpen)
        return stack
