"""Stage ``pipeline``: bootstrap, then pseudo-label rounds, until the leaderboard stops improving.

Round ``k`` runs the ``k``-th kind of ``pipeline.sequence`` (the last one repeated when
``pipeline.repeat_last``) as a normal K-fold stage named ``round<k>_<kind>``, configured by its own recipe
``stages/stage/<kind>.yaml`` composed with the user's overrides, so each round stage keeps its own config block.
After each round the ``lb=`` hook scores the round's ``submission.csv``; :func:`plateau_decision` says
whether to go on; the best round's submission is copied to ``W/submission.csv``.

The workspace is the state. ``state.json`` holds, under ``"pipeline"``, one entry per round (kind,
status, the stage's scores, the leaderboard score, wall time, the decision). Rerunning the same command
after a kill skips finished rounds (their decision is recomputed from the stored scores with the current
settings, so a larger ``max_rounds`` continues a finished pipeline), and the unfinished round's stage
skips its finished folds. Leftover temporary files of the killed run are removed first.

Under DDP (``trainer.devices=N trainer.strategy=ddp``) Lightning re-executes this command in every
rank; the ranks walk the same rounds, only rank 0 writes, scores and copies, and the other ranks wait for
rank 0 to record each round as done before reading its decision and starting the next round.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ..config import available_stages, load_config
from ..reporting.loggers import build_logger
from ..pseudo.teachers import teacher_weights
from ..settings import from_block
from ..workspace import RunState, atomic_path, remove_temporary_files, write_csv
from .ensemble import class_columns, ensemble_name, round_box_auroc, write_round_ensemble
from .leaderboard import Leaderboard, build_leaderboard
from .rounds import Decision, parse_round_name, plateau_decision, round_name

log = logging.getLogger(__name__)

#: the best round's files copied to the top of the workspace
BEST_FILES = ("submission.csv", "submission_raw.csv", "oof.csv")

#: recipes that cannot be a round: the pipeline itself, stages that train nothing on the data's boxes
#: (detect, report) and the oracle, which sees the hidden truth and must never teach
NOT_ROUNDS = frozenset({"pipeline", "detect", "report", "oracle"})

#: override keys that belong to the pipeline recipe only and would break a round stage's composition
PIPELINE_ONLY_KEYS = ("pipeline", "lb", "stage")

@dataclass(frozen=True)
class PipelineSettings:
    """The ``pipeline:`` block, typed and checked (defaults and meanings in ``stages/stage/pipeline.yaml``)."""

    sequence: tuple[str, ...]
    repeat_last: bool
    max_rounds: int
    patience: int
    min_delta: float
    overrides: dict[str, list[str]]   # by kind or by round name
    per_round: dict[str, list[Any]]   # dotted key -> value of round 0, 1, ...
    ensemble: bool                    # score the mean of rounds 0..k beside round k (orchestration/ensemble.py)
    ensemble_weights: str             # equal | skill: rounds weighed by their OOF box AUROC

    @classmethod
    def from_cfg(cls, block: DictConfig) -> "PipelineSettings":
        settings = from_block(cls, block, "pipeline")
        sequence = [settings.sequence] if isinstance(settings.sequence, str) else list(settings.sequence or [])
        if not sequence:
            raise ValueError("pipeline.sequence is empty: list the stage kinds to run, e.g. [bootstrap, coteach]")
        rounds = [s for s in available_stages() if s not in NOT_ROUNDS]
        for position, kind in enumerate(sequence):
            if kind not in rounds:
                raise ValueError(f"pipeline.sequence[{position}] = {kind!r} is not a stage that can be a round; "
                                 f"choose from {rounds}")
        overrides = settings.overrides or {}
        for kind, items in overrides.items():
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"pipeline.overrides.{kind} must be a list of key=value strings, got {items!r}")
        settings = dataclasses.replace(settings, sequence=tuple(sequence), overrides=dict(overrides),
                                       per_round=flatten_per_round(settings.per_round or {}))
        if settings.ensemble_weights not in ("equal", "skill"):
            raise ValueError(f"pipeline.ensemble_weights={settings.ensemble_weights!r}: choose equal or skill")
        if settings.max_rounds < 1:
            raise ValueError(f"pipeline.max_rounds must be >= 1, got {settings.max_rounds}")
        if settings.patience < 0:
            raise ValueError(f"pipeline.patience must be >= 0 (0: never stop early), got {settings.patience}")
        return settings

    def per_round_overrides(self, index: int) -> list[str]:
        """``key=value`` overrides of round ``index`` from ``per_round`` (past a list's end: its last item;
        a ``null`` item leaves the key as the recipe has it)."""
        items = []
        for key, values in self.per_round.items():
            value = values[min(index, len(values) - 1)]
            if value is not None:
                items.append(f"{key}={_override_value(value)}")
        return items

    def kind_of_round(self, index: int) -> str | None:
        """The stage kind of round ``index``, or ``None`` past the end of the sequence / ``max_rounds``."""
        if index >= self.max_rounds:
            return None
        if index < len(self.sequence):
            return self.sequence[index]
        return self.sequence[-1] if self.repeat_last else None


def flatten_per_round(block: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """``{coteach: {sharpen: [1, 0.65]}}`` or ``{"coteach.sharpen": [1, 0.65]}`` -> ``{"coteach.sharpen": [...]}``;
    every leaf must be a non-empty list (one value per round)."""
    flat: dict[str, list[Any]] = {}
    for key, value in block.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_per_round(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and len(value) > 0:
            flat[name] = list(value)
        else:
            raise ValueError(f"pipeline.per_round.{name} must be a non-empty list of values, one per round "
                             f"(round 0 first; null keeps the recipe's value), got {value!r}")
    return flat


def _override_value(value: Any) -> str:
    """A Hydra override value: lists and strings as Hydra reads them back."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def round_overrides(overrides: Sequence[str]) -> list[str]:
    """The user's overrides without the pipeline-only keys (``stage=``, ``pipeline.*``, ``lb=``/``lb.*``)."""
    kept = []
    for item in overrides:
        if item.startswith("--"):
            continue
        key = item.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] not in PIPELINE_ONLY_KEYS:
            kept.append(item)
    return kept


def remove_stale_temps(workspace: Path) -> list[Path]:
    """Delete temporary files a killed run left in the workspace; returns what was removed.

    Only safe before anything else writes in the workspace, which is why the pipeline calls it on rank 0
    at start-up, before the first round (other DDP ranks start later, at the first ``fit``).
    """
    removed = remove_temporary_files(workspace)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", len(removed))
    return removed


def candidate_score(entry: dict[str, Any]) -> float | None:
    """A finished round's score for the plateau rule: the better of its own LB score and its ensemble's."""
    scores = [s for s in (entry.get("lb"), (entry.get("ensemble") or {}).get("lb")) if s is not None]
    return max(scores) if scores else None


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(source.read_bytes())


class PipelineStage:
    """Runs the configured rounds; see the module docstring. ``overrides``: the command line's overrides."""

    kind = "pipeline"

    def __init__(self, cfg: DictConfig, overrides: Sequence[str] = ()):
        self.cfg = cfg
        self.settings = PipelineSettings.from_cfg(cfg.pipeline)
        self.overrides = round_overrides(overrides)
        self.workspace = Path(str(cfg.workspace)).expanduser().resolve()
        self.is_global_zero = rank_zero_only.rank == 0
        self.leaderboard: Leaderboard = build_leaderboard(cfg.lb, cfg.data)
        self._logger = None
        self._box_aurocs: dict[str, float] = {}   # a finished round's skill, computed once per run

    # -- state ------------------------------------------------------------------------------------------
    def _load(self) -> tuple[RunState, dict[str, Any]]:
        """A fresh read of ``state.json`` (stages write it too) and its ``"pipeline"`` record."""
        state = RunState(self.workspace, writable=self.is_global_zero)
        record = state.data.setdefault("pipeline", {})
        record.setdefault("id", uuid.uuid4().hex[:8])
        record.setdefault("rounds", {})
        return state, record

    def _scores_up_to(self, record: dict[str, Any], index: int) -> list[float | None]:
        """Per round, the better LB score of the round and of the ensemble of rounds up to it."""
        return [candidate_score(record["rounds"].get(self.name_of_round(i), {})) for i in range(index + 1)]

    def name_of_round(self, index: int) -> str:
        return round_name(index, self.settings.kind_of_round(index))

    def decide(self, record: dict[str, Any], index: int) -> Decision:
        """The stopping decision after round ``index``, from the stored scores and the current settings."""
        s = self.settings
        return plateau_decision(self._scores_up_to(record, index), s.patience, s.min_delta, s.max_rounds,
                                has_next=s.kind_of_round(index + 1) is not None)

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.workspace.mkdir(parents=True, exist_ok=True)
        if self.is_global_zero:
            remove_stale_temps(self.workspace)
            state, _ = self._load()
            state.save()
        index, last = 0, 0
        while (kind := self.settings.kind_of_round(index)) is not None:
            last = index
            name = round_name(index, kind)
            _, record = self._load()
            if record["rounds"].get(name, {}).get("status") == "done":
                log.info("pipeline: %s finished in an earlier run, skipped", name)
            else:
                self.run_round(index, kind, name)
            _, record = self._load()
            decision = self.decide(record, index)
            if decision.stop:
                print(f"pipeline: stopping after {name}: {decision.reason}", flush=True)
                break
            index += 1
        return self.finish(last) if self.is_global_zero else {}

    def round_config(self, kind: str, name: str) -> DictConfig:
        """The round's own recipe + the user's overrides + ``pipeline.overrides`` for its kind, then its name."""
        extra = self.settings.overrides
        index = parse_round_name(name)[0]
        composed = load_config([f"stage={kind}", *self.overrides, *extra.get(kind, []), *extra.get(name, [])])
        per_round = [item for item in self.settings.per_round_overrides(index)
                     if item.split("=", 1)[0].split(".", 1)[0] in composed]   # coteach.* skips other kinds
        if not per_round:
            return composed
        return load_config([f"stage={kind}", *self.overrides, *per_round, *extra.get(kind, []),
                            *extra.get(name, [])])

    def run_round(self, index: int, kind: str, name: str) -> None:
        from ..stages import stage_class
        from ..stages.context import prepare_context, wait_for

        started = time.time()
        if self.is_global_zero:  # recorded before the stage loads state.json, so its saves keep it
            state, record = self._load()
            entry = record["rounds"].setdefault(name, {"index": index, "kind": kind, "wall_seconds": 0.0})
            entry.update(status="running", attempts=entry.get("attempts", 0) + 1)
            state.save()
        print(f"pipeline: {name} ({kind}) starting", flush=True)
        stage = stage_class(kind)(prepare_context(self.round_config(kind, name)), name=name)
        scores = stage.run()
        if not self.is_global_zero:
            # rank 0 may still be finalizing and waiting for a leaderboard (kaggle: up to its timeout)
            wait_for(lambda: self._load()[1]["rounds"].get(name, {}).get("status") == "done",
                     f"the end of {name}", timeout_s=3600.0 + float(self.cfg.lb.get("timeout_seconds", 0)))
            return
        score = self.leaderboard.score(stage.dir / "submission.csv", f"{self._load()[1]['id']}:{name}")
        state, record = self._load()
        entry = record["rounds"][name]
        elapsed = round(time.time() - started, 1)
        entry.update(scores=scores, lb=score, lb_kind=self.leaderboard.kind,
                     wall_seconds=round(entry.get("wall_seconds", 0.0) + elapsed, 1))
        state.stage(name)["wall_seconds"] = entry["wall_seconds"]
        if self.settings.ensemble and index > 0:
            entry["ensemble"] = self.score_ensemble(index, record)
        decision = self.decide(record, index)
        self.keep_best(record, decision.best)
        best = self.best_candidate(record, decision.best)
        entry.update(status="done", decision={"stop": decision.stop, "reason": decision.reason, "best": best})
        record["best"] = best
        state.save()
        self.log_round(index, name, entry)
        lb_text = "no score" if score is None else f"{score:.4f}"
        if entry.get("ensemble", {}).get("lb") is not None:
            lb_text += f" ({entry['ensemble']['name']} {entry['ensemble']['lb']:.4f})"
        print(f"pipeline: {name} done in {entry['wall_seconds']:.0f} s; lb={self.leaderboard.kind} {lb_text}; "
              f"best so far {record['best']}", flush=True)

    def score_ensemble(self, index: int, record: dict[str, Any]) -> dict[str, Any]:
        """Write and score ``ensemble<index>``, the mean of rounds 0..index (``orchestration/ensemble.py``)."""
        name = ensemble_name(index)
        members = [self.name_of_round(i) for i in range(index + 1)]
        weights = self.ensemble_weights(members)
        write_round_ensemble([self.workspace / m for m in members], self.workspace / name, self.species_prior(),
                             weights)
        score = self.leaderboard.score(self.workspace / name / "submission.csv", f"{record['id']}:{name}")
        return {"name": name, "members": members, "weights": [round(float(w), 4) for w in weights], "lb": score}

    def ensemble_weights(self, members: list[str]) -> np.ndarray:
        """Each member's weight in the ensemble (``pipeline.ensemble_weights``; orchestration/ensemble.py)."""
        if self.settings.ensemble_weights == "equal":
            return np.full(len(members), 1.0 / len(members))
        todo = [m for m in members if m not in self._box_aurocs]
        if todo:
            from ..data.annotations import DataRoot
            from ..stages.context import load_data_boxes, resolve_data_root

            # the root exists by now (round 0 made it); resolving it again makes nothing
            boxes, _, grid_seconds = load_data_boxes(self.cfg, DataRoot(resolve_data_root(self.cfg, True)))
            for member in todo:
                self._box_aurocs[member] = round_box_auroc(self.workspace / member, boxes, grid_seconds)
        aurocs = [self._box_aurocs[m] for m in members]
        weights = teacher_weights(aurocs, "skill")
        print("pipeline: ensemble weights " + ", ".join(f"{m} {w:.2f} (box AUROC {a:.3f})"
                                                         for m, w, a in zip(members, weights, aurocs)), flush=True)
        return weights

    def species_prior(self):
        """``score.prior`` per submission column (the scale of the rounds' submissions), or None."""
        from ..stages.context import class_prior

        columns = pd.read_csv(self.workspace / self.name_of_round(0) / "submission.csv", nrows=0).columns
        return class_prior(self.cfg, len(class_columns(columns)))

    def best_candidate(self, record: dict[str, Any], best: int) -> str:
        """The name of round ``best`` or of its ensemble, whichever the leaderboard scored higher."""
        entry = record["rounds"].get(self.name_of_round(best), {})
        ensemble = entry.get("ensemble") or {}
        if ensemble.get("lb") is not None and (entry.get("lb") is None or ensemble["lb"] > entry["lb"]):
            return ensemble["name"]
        return self.name_of_round(best)

    def keep_best(self, record: dict[str, Any], best: int) -> None:
        """Copy the best candidate's submission (and raw submission, OOF) to the top of the workspace."""
        best_dir = self.workspace / self.best_candidate(record, best)
        for file_name in BEST_FILES:
            if (best_dir / file_name).exists():
                copy_atomic(best_dir / file_name, self.workspace / file_name)

    def log_round(self, index: int, name: str, entry: dict[str, Any]) -> None:
        """One logger step per round: the leaderboard score and the stage's own scores."""
        if self._logger is None:
            self._logger = build_logger(self.cfg.logger, self.workspace, "pipeline", "rounds")
        metrics = {f"round/{k}": float(v) for k, v in (entry.get("scores") or {}).items()}
        if entry.get("lb") is not None:
            metrics["round/lb"] = float(entry["lb"])
        if (entry.get("ensemble") or {}).get("lb") is not None:
            metrics["round/ensemble_lb"] = float(entry["ensemble"]["lb"])
        metrics["round/wall_seconds"] = float(entry["wall_seconds"])
        self._logger.log_metrics(metrics, step=index)
        self._logger.save()

    def finish(self, last: int) -> dict[str, Any]:
        """Copy the best round again (idempotent), write ``W/pipeline_rounds.csv``, return the summary."""
        state, record = self._load()
        decision = self.decide(record, last)
        self.keep_best(record, decision.best)
        rows = []
        for name, entry in record["rounds"].items():
            rows.append({"round": entry["index"], "name": name, "kind": entry["kind"], "lb": entry.get("lb"),
                         **{k: v for k, v in (entry.get("scores") or {}).items()},
                         "wall_seconds": entry.get("wall_seconds")})
            if entry.get("ensemble"):
                rows.append({"round": entry["index"], "name": entry["ensemble"]["name"], "kind": "ensemble",
                             "lb": entry["ensemble"].get("lb"), "members": "+".join(entry["ensemble"]["members"])})
        write_csv(self.workspace / "pipeline_rounds.csv", pd.DataFrame(rows))
        record["best"] = self.best_candidate(record, decision.best)
        record["stopped"] = decision.reason
        state.save()
        if self._logger is not None:
            self._logger.finalize("success")
        print(f"pipeline: best round {record['best']} -> {self.workspace / 'submission.csv'}", flush=True)
        return {"best": record["best"], "rounds": record["rounds"]}
