"""Stage ``postprocess``: re-score a workspace's stage outputs with the configured post-processing.

``python -m rfcx_lightning.run stage=postprocess workspace=W postprocess.method=topk_linear`` reads the
framewise predictions of finished stage runs in W (``postprocess.sources``: the latest, all, or named
runs), ensembles folds and runs, smooths and aggregates over time, calibrates toward the prior, and
rewrites ``W/submission.csv`` (the uncalibrated scores of the same chain beside it as
``submission_raw.csv``). Where clip labels are known (the synthetic data's hidden truth, or
``data.labels``) it scores the configured chain and, one setting at a time, every alternative listed under
``postprocess.compare`` on OOF and test, into ``W/postprocess/scores.csv``. With
``postprocess.inference.modes`` it also re-predicts with each fold's checkpoint in every inference mode
and scores those (see :mod:`rfcx_lightning.postprocessing.repredict`).

Nothing here trains; a rerun recomputes everything from the stage outputs in a few seconds (predictions
re-made for inference modes are kept and reused), so a killed run simply runs again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ..metrics import lwlrap, prior_baseline_lwlrap
from ..postprocessing.calibration import estimate_prior, training_balance
from ..postprocessing.chain import Option, PostprocessSettings, apply_option, class_scores
from ..postprocessing.sources import load_stage_outputs, resolve_sources
from ..settings import from_block
from ..workspace import write_csv, write_json
from .context import StageContext
from .runner import StageRun

log = logging.getLogger(__name__)


class PostprocessStage(StageRun):
    """Not a K-fold stage: it reads finished stages' outputs and writes a post-processed submission."""

    kind = "postprocess"

    def __init__(self, ctx: StageContext, name: str | None = None):
        super().__init__(ctx, name)
        self.pp = from_block(PostprocessSettings, self.cfg.postprocess, "postprocess")

    # -- configuration ----------------------------------------------------------------------------------
    def option(self, **changes: Any) -> Option:
        return dataclasses.replace(Option.from_config(self.pp), **changes)

    def alternatives(self, n_sources: int = 1) -> list[tuple[str, Option]]:
        """The configured option, then each listed alternative of one setting at a time (the source
        ensemble only when there are several sources)."""
        configured = self.option()
        rows, seen = [("configured", configured)], {configured}
        for key, values in (self.pp.compare or {}).items():
            if key == "ensemble" and n_sources < 2:
                continue
            if key not in Option.__dataclass_fields__:
                raise ValueError(f"postprocess.compare.{key}: not a post-processing setting; "
                                 f"choose from {list(Option.__dataclass_fields__)}")
            for value in values:
                option = dataclasses.replace(configured, **{key: type(getattr(configured, key))(value)})
                if option.aggregate == "clip" and option.smooth_seconds > 0:   # the head's clip output is not smoothed
                    option = dataclasses.replace(option, **({"aggregate": "max"} if key == "smooth_seconds"
                                                            else {"smooth_seconds": 0.0}))
                if option not in seen:
                    seen.add(option)
                    rows.append((key, option))
        return rows

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if not self.ctx.is_global_zero:
            return {}
        ctx = self.ctx
        stage_state = self.state.stage(self.name)
        stage_state["config"] = OmegaConf.to_container(self.cfg.postprocess, resolve=True)
        names = resolve_sources(self.state, self.pp.sources, exclude=[self.name])
        train_ids = list(ctx.train.recording_ids)
        sources = [load_stage_outputs(self.state, n, train_ids, ctx.test_ids) for n in names]
        log.info("postprocess: sources %s", names)
        balance = self._species_balance()

        def estimate(scores: np.ndarray) -> np.ndarray:
            return estimate_prior(scores, balance)

        results = {}
        rows = []
        for axis, option in self.alternatives(len(sources)):
            outputs = {}
            for split in ("oof", "test"):
                species = ctx.scheme.to_species_scores(class_scores(sources, split, option))
                outputs[split] = (species, apply_option(species, option, ctx.prior, estimate))
            results[option] = outputs
            rows.append({"varied": axis, **option.label(), **self._scores(outputs)})
        table = pd.DataFrame(rows)
        chosen = results[self.option()]
        scores = {k: v for k, v in rows[0].items() if k.endswith("_lwlrap")}
        scores.update(self._baselines())

        inference_rows = self._compare_inference(names[-1], estimate)
        written = self._write(chosen, table, inference_rows)
        stage_state.update(sources=names, outputs=written, metrics=scores,
                           factors={"test": chosen["test"][1].factors, "oof": chosen["oof"][1].factors})
        self.state.save()
        self._report(table, inference_rows)
        self._log_dashboard(names, chosen, table, inference_rows)
        return scores

    # -- pieces -----------------------------------------------------------------------------------------
    def _species_balance(self) -> np.ndarray:
        """Training balance (TP share of labelled boxes) per species column."""
        column = {s: i for i, s in enumerate(self.ctx.species)}
        boxes = self.ctx.boxes.assign(species_column=self.ctx.boxes["species_id"].map(column))
        return training_balance(boxes, len(self.ctx.species), class_column="species_column")

    def _truth(self, split: str) -> np.ndarray | None:
        frame = self.ctx.test_truth if split == "test" else self.ctx.train_truth
        if frame is None:
            return None
        return frame[[f"s{s}" for s in self.ctx.species]].to_numpy() > 0

    def _scores(self, outputs: dict) -> dict[str, float]:
        scores = {}
        for split, (raw, calibrated) in outputs.items():
            truth = self._truth(split)
            if truth is not None:
                scores[f"{split}_lwlrap"] = float(lwlrap(calibrated.scores, truth))
                scores[f"{split}_raw_lwlrap"] = float(lwlrap(raw, truth))
        return scores

    def _baselines(self) -> dict[str, float]:
        out = {}
        for split in ("oof", "test"):
            truth = self._truth(split)
            if truth is not None and self.ctx.prior is not None:
                out[f"{split}_prior_lwlrap"] = float(prior_baseline_lwlrap(truth, self.ctx.prior))
        return out

    def _compare_inference(self, source: str, estimate) -> list[dict]:
        modes = list(self.pp.inference.modes or [])
        if not modes:
            return []
        from ..postprocessing.repredict import InferenceComparison

        comparison = InferenceComparison(self.ctx, source, self.dir / "inference",
                                         scales=[float(s) for s in self.pp.inference.scales])
        rows = []
        for mode in modes:
            outputs, seconds = comparison.outputs(mode)
            option = self.option()
            scored = {}
            for split in ("oof", "test"):
                species = self.ctx.scheme.to_species_scores(class_scores([outputs], split, option))
                scored[split] = (species, apply_option(species, option, self.ctx.prior, estimate))
            rows.append({"mode": mode, "predict_seconds": round(seconds, 1), **self._scores(scored)})
        return rows

    def _write(self, chosen: dict, table: pd.DataFrame, inference_rows: list[dict]) -> dict[str, str]:
        ctx = self.ctx
        cols = [f"s{s}" for s in ctx.species]
        test_raw, test_cal = chosen["test"]
        oof_raw, oof_cal = chosen["oof"]

        def frame(ids, scores_):
            out = pd.DataFrame(np.asarray(scores_, np.float64), columns=cols)
            out.insert(0, "recording_id", list(ids))
            return out

        oof = frame(ctx.train.recording_ids, oof_cal.scores)
        oof.insert(1, "fold", ctx.fold_of_recording)
        files = {"submission.csv": frame(ctx.test_ids, test_cal.scores),
                 "submission_raw.csv": frame(ctx.test_ids, test_raw), "oof.csv": oof, "scores.csv": table}
        if inference_rows:
            files["inference_scores.csv"] = pd.DataFrame(inference_rows)
        written = {}
        for name, table_ in files.items():
            written[name] = self.state.relative(write_csv(self.dir / name, table_))
        for name in ("submission.csv", "submission_raw.csv"):   # the workspace's submission, rewritten
            write_csv(ctx.workspace / name, files[name])
        written["factors.json"] = self.state.relative(write_json(
            self.dir / "factors.json", {"test": test_cal.factors, "oof": oof_cal.factors,
                                        "test_info": test_cal.info, "oof_info": oof_cal.info}))
        return written

    def _report(self, table: pd.DataFrame, inference_rows: list[dict]) -> None:
        score_cols = [c for c in table.columns if c.endswith("_lwlrap")]
        if not score_cols:
            print(f"{self.name}: no clip labels known; wrote {self.dir / 'submission.csv'} unscored", flush=True)
            return
        shown = table[["varied", "smooth_seconds", "aggregate", "fold_ensemble", "fold_level", "ensemble", "method", "prior"]
                      + score_cols]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(f"{self.name}: LWLRAP of each option (first row: the configured one, written to submission.csv)")
            print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
            if inference_rows:
                print(pd.DataFrame(inference_rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    def _log_dashboard(self, names, chosen, table, inference_rows) -> None:
        if str(self.cfg.logger.kind) != "wandb":
            return
        from ..reporting.dashboard import log_postprocess_dashboard

        log_postprocess_dashboard(self.cfg.logger, self.ctx, self.state, self.name, names, chosen, table,
                                  inference_rows)
