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
* **frames.** ``frame_targets: scaled`` puts the clip's odds factor on every frame; ``localized`` keeps
  the teacher's frames only as *where* (their height above the recording's median) and the calibrated
  clip score as *how likely* (:func:`~rfcx_lightning.pseudo.pool.localize`);
* **weights.** ``weights: equal`` averages the teachers; ``best`` keeps the one whose out-of-fold frames
  rank the TP boxes above the FP boxes best (box AUROC, per class, averaged); ``skill`` weighs each by
  ``(box AUROC - 0.5) ** 2``, near ``best`` when one teacher is clearly better, near ``equal`` when they
  are alike. The boxes are the only labels a real data set has, so no hidden truth picks the teacher;
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
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from .pool import FRAME_TARGETS, PoolEntry, PoolError, PseudoLabelPool, TeacherStack

log = logging.getLogger(__name__)

__all__ = ["TeacherKeys", "TeacherSet", "TeacherSettings", "box_auroc", "prediction_box_auroc", "sharpen", "teacher_weights"]

CALIBRATIONS = ("prior", "estimated", "none")
WEIGHTS = ("equal", "best", "skill")


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
class TeacherKeys:
    """The teacher keys every pool stage block has (``coteach:``, ``noisy_student:``), as written there;
    stage settings classes extend it and :meth:`TeacherSettings.of` checks the values."""

    teachers: Any                 # latest | all | [name, ...]
    teacher: str                  # mean | sample: how several teachers make one target
    calibrate: Any                # prior | estimated | none
    sharpen: float | None         # T of p ** (1/T)
    weights: str                  # equal | best | skill
    frame_targets: str            # scaled | localized


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher keys of a stage block (``coteach:`` or ``noisy_student:``), checked and normalised.

    No defaults here: every value comes from the stage's YAML block (``stages/stage/*.yaml``), where each
    default is written once; :func:`rfcx_lightning.settings.from_block` has already failed on a missing key.
    """

    teachers: str | tuple[str, ...]
    calibrate: str
    sharpen: float
    frame_targets: str
    weights: str

    @classmethod
    def of(cls, keys: TeacherKeys, stage: str) -> "TeacherSettings":
        """Check the values of a parsed stage block (``CoteachSettings``, ``NoisyStudentSettings``)."""
        teachers = keys.teachers
        if teachers is None or (isinstance(teachers, str) and not teachers):
            raise ValueError(f"{stage}.teachers is empty: give latest, all or a list of run names")
        if not isinstance(teachers, str):
            teachers = tuple(str(t) for t in teachers)
        calibrate = str(keys.calibrate).lower()
        if calibrate in ("null", "false", "none"):
            calibrate = "none"
        if calibrate not in CALIBRATIONS:
            raise ValueError(f"{stage}.calibrate={keys.calibrate!r}: choose one of {', '.join(CALIBRATIONS)}")
        temperature = 1.0 if keys.sharpen is None else float(keys.sharpen)
        if not temperature > 0:
            raise ValueError(f"{stage}.sharpen={temperature}: the temperature T of p ** (1/T) must be > 0 "
                             "(1: off, < 1: sharper)")
        if keys.frame_targets not in FRAME_TARGETS:
            raise ValueError(f"{stage}.frame_targets={keys.frame_targets!r}: choose one of {', '.join(FRAME_TARGETS)}")
        if keys.weights not in WEIGHTS:
            raise ValueError(f"{stage}.weights={keys.weights!r}: choose one of {', '.join(WEIGHTS)}")
        return cls(teachers=teachers, calibrate=calibrate, sharpen=temperature, frame_targets=keys.frame_targets,
                   weights=keys.weights)


def box_auroc(framewise: np.ndarray, recording_ids: Sequence[str], boxes, duration_s: float) -> float:
    """Mean over classes (with both TP and FP boxes) of the AUROC of TP against FP box scores; NaN if none."""
    from ..postprocessing.repredict import box_scores

    known = set(map(str, recording_ids))
    boxes = boxes[boxes["recording_id"].astype(str).isin(known)]
    if not len(boxes):
        return float("nan")
    scores = box_scores(framewise, recording_ids, boxes, duration_s)
    is_tp, classes = boxes["is_tp"].to_numpy(bool), boxes["class_index"].to_numpy()
    per_class = [roc_auc_score(is_tp[classes == c], scores[classes == c]) for c in np.unique(classes)
                 if 0 < is_tp[classes == c].sum() < (classes == c).sum()]
    return float(np.mean(per_class)) if per_class else float("nan")


def prediction_box_auroc(path, boxes, duration_s: float) -> float:
    """:func:`box_auroc` of a stage's ``oof_framewise.npz`` (``path``), on the stage's own time grid.

    The one skill figure of a run, for the teacher set (``weights``) and the ensemble of rounds
    (``pipeline.ensemble_weights``) alike; a file without its arrays is an error naming it.
    """
    from ..workspace import read_npz

    data = read_npz(path)
    missing = [k for k in ("recording_id", "framewise") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (box AUROC); expected a stage's prediction file")
    return box_auroc(data["framewise"].astype(np.float32), [str(r) for r in data["recording_id"]], boxes,
                     duration_s)


def teacher_weights(aurocs: Sequence[float], rule: str) -> np.ndarray:
    """Weights (summing to 1) of teachers with these box AUROCs under ``rule`` (see the module docstring).

    NaN AUROCs (no class with TP and FP boxes) count as chance; with no teacher above chance the
    teachers are weighed equally.
    """
    aurocs = np.nan_to_num(np.asarray(aurocs, dtype=np.float64), nan=0.5)
    n = len(aurocs)
    if rule == "equal" or n == 1:
        return np.full(n, 1.0 / n)
    if rule == "best":
        weights = (np.arange(n) == int(np.argmax(aurocs))).astype(np.float64)
    elif rule == "skill":
        weights = np.clip(aurocs - 0.5, 0.0, None) ** 2
    else:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {rule!r}")
    return weights / weights.sum() if weights.sum() > 0 else np.full(n, 1.0 / n)


class TeacherSet:
    """The pinned pool entries of one stage run, loaded calibrated and sharpened (see the module docstring).

    ``stage`` is a :class:`~rfcx_lightning.stages.runner.KFoldStage`: its name (never its own teacher), its
    ``state.json`` record (where the choice is pinned) and its context (prior, class scheme, workspace).
    """

    def __init__(self, stage, settings: TeacherSettings):
        self.stage, self.settings = stage, settings
        self._entries: list[PoolEntry] | None = None
        self._weights: np.ndarray | None = None

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

    def weights(self) -> np.ndarray:
        """Each teacher's weight (``weights``), from its out-of-fold box AUROC; recorded in ``state.json``."""
        if self._weights is None:
            entries = self.entries()
            aurocs = [float("nan")] * len(entries)
            if self.settings.weights != "equal" and len(entries) > 1:
                ctx, duration_s = self.stage.ctx, float(self.stage.cfg.data.duration_s)
                aurocs = [prediction_box_auroc(e.path("train", ctx.workspace), ctx.boxes, duration_s)
                          for e in entries]
            self._weights = teacher_weights(aurocs, self.settings.weights)
            record = self.stage.state.stage(self.stage.name)
            record["teacher_weights"] = {e.name: {"weight": round(float(w), 4),
                                                  "box_auroc": None if np.isnan(a) else round(float(a), 4)}
                                         for e, w, a in zip(entries, self._weights, aurocs)}
            self.stage.state.save()
            log.info("%s: teacher weights %s", self.stage.name, record["teacher_weights"])
        return self._weights

    def load(self, split: str, recording_ids: Sequence[str], frames: bool = True) -> TeacherStack:
        """The teachers' predictions for ``recording_ids`` of ``split``, calibrated, then sharpened.

        With ``weights`` other than ``equal`` the stack holds one teacher: the weighted mean.
        """
        stack = self.pool.load(self.entries(), split, recording_ids, calibrate_prior=self.prior(), frames=frames,
                               frame_targets=self.settings.frame_targets)
        if self.settings.weights != "equal" and stack.n_teachers > 1:
            stack = combine(stack, self.weights())
        if self.settings.sharpen != 1.0:
            stack.clip = sharpen(stack.clip, self.settings.sharpen)
            if stack.framewise is not None:
                stack.framewise = sharpen(stack.framewise, self.settings.sharpen)
        return stack


def combine(stack: TeacherStack, weights: np.ndarray) -> TeacherStack:
    """One teacher: the ``weights``-weighted mean of the stack's teachers (clip and frames)."""
    w = np.asarray(weights, dtype=np.float32)
    framewise = None
    if stack.framewise is not None:
        framewise = np.tensordot(w, stack.framewise.astype(np.float32), axes=1)[None].astype(np.float16)
    name = "+".join(f"{w_:.2f}*{n}" for w_, n in zip(w, stack.names) if w_ > 0)
    return TeacherStack(names=[name], recording_ids=list(stack.recording_ids),
                        clip=np.tensordot(w, stack.clip, axes=1)[None].astype(np.float32), framewise=framewise,
                        frames_per_second=stack.frames_per_second)
