"""The pseudo-label pool: every stage's framewise predictions, with provenance, ready to become targets.

Each K-fold stage run (bootstrap, template, coteach, noisy_student, ...) leaves out-of-fold framewise
predictions for every train recording and fold-averaged ones for every test recording
(``W/<name>/oof_framewise.npz``, ``W/<name>/test_framewise.npz``, float16), and records them in the
workspace's ``state.json`` when it finishes. The pool is a view of that record, not a second one: every
finished run with both files, in run order, except the reference runs that never teach (``"joins_pool":
false``, the oracle), with what produced them (stage kind, round, resolved config, checkpoints, metrics).
A rerun of a stage rewrites the same record, so an entry and its files never disagree.

Later rounds read teachers from the pool: :meth:`PseudoLabelPool.select` picks entries ("latest", "all",
or names), :meth:`PseudoLabelPool.load` stacks them into a :class:`TeacherStack` aligned to the recordings
a stage asks for, on one common time grid, optionally odds-scaled toward a class prior first (a model
trained on balanced TP/FP boxes does not know that species 3 sings in 92% of clips; its raw scores make
poor targets, exactly as they make a poor submission).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..postprocessing import odds_scale_to_prior
from ..workspace import RunState, parse_round_name, read_prediction_rows, run_kind, select_runs

__all__ = ["PoolEntry", "PoolError", "PseudoLabelPool", "TeacherStack"]

OUTPUTS = {"oof": "oof_framewise.npz", "test": "test_framewise.npz"}   # a run's files the pool serves
_SPLIT_KEY = {"train": "oof", "test": "test"}


class PoolError(RuntimeError):
    """The pool cannot serve what was asked (empty, unknown entry, a file missing or inconsistent)."""


@dataclass(frozen=True)
class PoolEntry:
    """One stage run's predictions. ``oof``/``test`` are paths relative to the workspace."""

    name: str
    kind: str
    order: int
    oof: str
    test: str
    round: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def path(self, split: str, workspace: Path) -> Path:
        if split not in _SPLIT_KEY:
            raise ValueError(f"split must be 'train' (out-of-fold) or 'test', got {split!r}")
        stored = Path(getattr(self, _SPLIT_KEY[split]))
        return stored if stored.is_absolute() else workspace / stored


@dataclass
class TeacherStack:
    """Predictions of several teachers on the same recordings, on one time grid.

    framewise: (n_teachers, n_recordings, C, T) float16 probabilities (None when loaded clip-only);
    clip: (n_teachers, n_recordings, C) float32 clip probabilities as the teachers produced them.
    """

    names: list[str]
    recording_ids: list[str]
    clip: np.ndarray
    framewise: np.ndarray | None
    frames_per_second: float

    def __post_init__(self) -> None:
        self._position = {rid: i for i, rid in enumerate(self.recording_ids)}

    @property
    def n_teachers(self) -> int:
        return len(self.names)

    @property
    def n_classes(self) -> int:
        return int(self.clip.shape[-1])

    def index_of(self, recording_id: str) -> int:
        try:
            return self._position[str(recording_id)]
        except KeyError:
            raise KeyError(f"recording {recording_id!r} is not in this teacher stack") from None


class PseudoLabelPool:
    """The teachers available to pseudo-label stages: a view of ``W/state.json`` (see the module docstring).

    Only one process (global rank 0) should write; readers open it with ``writable=False``.
    """

    def __init__(self, workspace: str | Path, writable: bool = True):
        self.workspace = Path(workspace)
        self.writable = writable
        try:
            self.state = RunState(self.workspace, writable=writable)
        except ValueError as err:                            # state.json is not JSON
            raise PoolError(str(err)) from err
        self.path = self.state.path

    def entries(self) -> list[PoolEntry]:
        """Every finished run that teaches, in run order (its position in ``state.json``)."""
        names = self.state.finished_runs(*OUTPUTS.values(), references=False)
        return [self._entry(order, name, self.state.data["stages"][name]) for order, name in enumerate(names)]

    def _entry(self, order: int, name: str, record: dict[str, Any]) -> PoolEntry:
        config = record.get("config") or {}
        round_ = (config.get("stage") or {}).get("round")
        if round_ is None:
            parsed = parse_round_name(name)
            round_ = parsed[0] if parsed else None
        checkpoints = {fold: {"last": info.get("checkpoint"), "val_metrics": info.get("metrics", {})}
                       for fold, info in sorted(record.get("folds", {}).items())}
        provenance = {"run": name, "config": config, "checkpoints": checkpoints,
                      "metrics": record.get("metrics", {}), **record.get("provenance", {})}
        return PoolEntry(name=name, kind=run_kind(name, record), order=order, oof=record["outputs"][OUTPUTS["oof"]],
                         test=record["outputs"][OUTPUTS["test"]], round=None if round_ is None else int(round_),
                         provenance=provenance)

    def __len__(self) -> int:
        return len(self.entries())

    def add(self, name: str, kind: str, oof_path: str | Path, test_path: str | Path,
            provenance: dict[str, Any] | None = None, round: int | None = None) -> PoolEntry:
        """Record predictions made outside a stage run (another tool's, a notebook's) as a finished run of
        ``kind``, so they teach like one; adding a name again replaces its files and keeps its position.

        A stage run needs no call: finishing records its outputs, which is what the pool reads.
        """
        if not self.writable:
            raise PoolError(f"pool of {self.workspace} was opened read-only")
        for label, path in (("oof", oof_path), ("test", test_path)):
            resolved = path if Path(path).is_absolute() else self.workspace / path
            if not Path(resolved).is_file():
                raise PoolError(f"pool entry {name!r}: {label} predictions {resolved} do not exist")
        self.state = RunState(self.workspace)                # the latest record: another run may have saved
        record = self.state.stage(name)
        record["outputs"] = {OUTPUTS[split]: self.state.relative(self.state.resolve(str(path)))
                             for split, path in (("oof", oof_path), ("test", test_path))}
        record["config"] = {**record.get("config", {}), "stage": {"name": kind, "round": round}}
        record["provenance"] = {**(provenance or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.state.save()
        return next(e for e in self.entries() if e.name == name)

    def select(self, which: str | Sequence[str] = "latest", exclude: Sequence[str] = ()) -> list[PoolEntry]:
        """Entries by rule: ``"latest"`` (the newest), ``"all"``, or a list of names (in that order).

        ``exclude`` drops names first, so a stage that is rerun never teaches itself.
        """
        entries = self.entries()
        available = [e for e in entries if e.name not in set(exclude)]
        if not available:
            raise PoolError(f"the pseudo-label pool of {self.workspace} has no teacher"
                            f"{' besides ' + ', '.join(exclude) if exclude and entries else ''}: "
                            "run stage=bootstrap first (every finished stage adds its predictions)")
        by_name = {e.name: e for e in sorted(available, key=lambda e: e.order)}
        return [by_name[n] for n in select_runs(list(by_name), which, "pool has no teacher named", PoolError)]

    # -- predictions ------------------------------------------------------------------------------------
    def load(self, entries: Sequence[PoolEntry], split: str, recording_ids: Sequence[str],
             calibrate_prior: str | Sequence[float] | np.ndarray | None = None,
             frames: bool = True, frame_targets: str = "scaled") -> TeacherStack:
        """Stack the teachers' predictions for ``recording_ids`` (in that order) of ``split``.

        Teachers with different output grids (another backbone or hop) are resampled to the first
        teacher's grid. ``calibrate_prior``: None (raw), a per-class prior (C,), or ``"estimated"`` (the
        teachers' own mean clip score per class, averaged over teachers). ``frames=False`` loads clip
        scores only, for clip-level stages. ``frame_targets``: how calibration reaches the frames
        (:func:`calibrate`).
        """
        if not entries:
            raise PoolError("load() needs at least one pool entry; run stage=bootstrap first")
        recording_ids = [str(r) for r in recording_ids]
        clips, framewise, fps = [], [], None
        for entry in entries:
            path = entry.path(split, self.workspace)
            part = _read_predictions(path, recording_ids, need_frames=frames)
            clips.append(part["clip"])
            if frames:
                if fps is None:
                    fps, n_frames = part["fps"], part["framewise"].shape[-1]
                framewise.append(resample_time(part["framewise"], n_frames))
            elif fps is None:
                fps = part["fps"]
        n_classes = {c.shape[-1] for c in clips}
        if len(n_classes) != 1:
            raise PoolError(f"teachers {[e.name for e in entries]} disagree on the class count {sorted(n_classes)}")
        stack = TeacherStack(names=[e.name for e in entries], recording_ids=recording_ids,
                             clip=np.stack(clips).astype(np.float32),
                             framewise=np.stack(framewise) if frames else None,
                             frames_per_second=float(fps))
        if calibrate_prior is not None:
            calibrate(stack, calibrate_prior, frame_targets)
        return stack


def _read_predictions(path: Path, recording_ids: list[str], need_frames: bool) -> dict[str, Any]:
    """One teacher's predictions for ``recording_ids``; errors name the file and what is wrong with it."""
    keys = ["clip", "frames_per_second"] + (["framewise"] if need_frames else [])
    try:
        data = read_prediction_rows(path, recording_ids, keys, what="teacher predictions")
    except ValueError as err:
        raise PoolError(str(err)) from None
    out = {"clip": data["clip"].astype(np.float32), "fps": float(data["frames_per_second"])}
    if need_frames:
        out["framewise"] = data["framewise"].astype(np.float16)
    return out


def resample_time(framewise: np.ndarray, n_frames: int) -> np.ndarray:
    """(N, C, T) -> (N, C, n_frames) float16 by linear interpolation at frame centres (identity if equal)."""
    t = framewise.shape[-1]
    if t == n_frames:
        return framewise.astype(np.float16)
    src = (np.arange(t) + 0.5) / t
    dst = (np.arange(n_frames) + 0.5) / n_frames
    flat = framewise.reshape(-1, t).astype(np.float32)
    out = np.stack([np.interp(dst, src, row) for row in flat]) if len(flat) else np.zeros((0, n_frames))
    return out.reshape(*framewise.shape[:-1], n_frames).astype(np.float16)


FRAME_TARGETS = ("scaled", "localized")


def calibrate(stack: TeacherStack, prior: str | Sequence[float] | np.ndarray,
              frame_targets: str = "scaled") -> TeacherStack:
    """Odds-scale each teacher, per class, so its mean clip score over these recordings maps to ``prior``.

    ``"estimated"`` uses the mean clip score of all teachers as the prior, which pulls teachers onto a
    common scale without outside knowledge. How the frames follow (``frame_targets``):

    * ``scaled``: the clip's odds factor on every frame (monotonic, so the max over time of the scaled
      frames is still the scaled clip score). For a common species (prior 0.9) the factor is ~10, which
      lifts a teacher's diffuse background (0.3) to 0.8 on every frame: the student then learns "present
      everywhere" and loses that species' clip ranking (docs/results.md "Rounds that beat their teacher");
    * ``localized``: :func:`localize`: where the call is from the raw frames, how likely from the
      calibrated clip score; background frames go to 0 and the max over time is still the clip score.
    """
    if frame_targets not in FRAME_TARGETS:
        raise ValueError(f"frame_targets must be one of {', '.join(FRAME_TARGETS)}, got {frame_targets!r}")
    if isinstance(prior, str):
        if prior != "estimated":
            raise ValueError(f"calibrate_prior must be None, 'estimated' or per-class values, got {prior!r}")
        prior = stack.clip.astype(np.float64).mean(axis=(0, 1))
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (stack.n_classes,):
        raise ValueError(f"calibrate_prior has shape {prior.shape}, the teachers have {stack.n_classes} classes")
    for k in range(stack.n_teachers):
        reference = stack.clip[k].astype(np.float64).mean(axis=0)
        stack.clip[k] = odds_scale_to_prior(stack.clip[k], prior, reference)
        if stack.framewise is None:
            continue
        frames = stack.framewise[k]                                         # (N, C, T)
        if frame_targets == "localized":
            stack.framewise[k] = localize(frames, stack.clip[k]).astype(np.float16)
            continue
        flat = np.moveaxis(frames, 1, -1).reshape(-1, stack.n_classes)      # (N*T, C)
        scaled = odds_scale_to_prior(flat, prior, reference).reshape(frames.shape[0], frames.shape[2], -1)
        stack.framewise[k] = np.moveaxis(scaled, -1, 1).astype(np.float16)
    return stack


def localize(framewise: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """(N, C, T) frame targets = the frame's height above the recording's median, as a share of the peak's,
    times the (calibrated) clip score (N, C).

    A teacher's frames say *where* a call is (their shape over time) better than *how likely* it is (their
    level, which for a template is a correlation, not a probability); the calibrated clip score says how
    likely. Frames at or below the median get 0, the peak gets the clip score, so ``max over time`` of the
    result is the clip score. A flat row (no peak) spreads the clip score over every frame.
    """
    frames = np.asarray(framewise, dtype=np.float32)
    median = np.median(frames, axis=-1, keepdims=True)
    height = frames.max(axis=-1, keepdims=True) - median
    shape = np.where(height > 1e-6, np.clip((frames - median) / np.maximum(height, 1e-6), 0.0, 1.0), 1.0)
    return shape * np.asarray(clip, dtype=np.float32)[..., None]
