"""The K-fold stage runner shared by every stage: train each fold, predict out of fold and test, merge.

Per fold: ``fit`` (resuming from ``last.ckpt`` if a previous run died mid-fold), then framewise
predictions of the held-out train recordings and of every test recording, each gathered across DDP ranks
by :class:`~rfcx_lightning.inference.ShardedPredictionWriter`. ``state.json`` marks a fold ``trained`` and
then ``done`` only after its files exist, so a rerun skips finished work and redoes nothing else.

After the last fold rank 0 writes the stage outputs (OOF framewise + ``oof.csv``, fold-mean test
framewise + ``submission.csv``) and scores them against clip labels when they are known.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from omegaconf import OmegaConf

from ..checkpointing import AtomicCheckpointIO, fold_checkpoints
from ..data.datamodule import CropSettings, FoldDataModule, LoaderSettings
from ..inference import ShardedPredictionWriter
from ..reporting.loggers import build_logger
from ..metrics import lwlrap, prior_baseline_lwlrap
from ..models.bands import class_bands_from_boxes
from ..postprocessing import odds_scale_to_prior
from ..postprocessing.chain import Option, fold_clip_scores
from ..settings import from_block
from ..workspace import RunState, read_npz, write_csv, write_npz
from .base import StageModule
from .context import StageContext

log = logging.getLogger(__name__)


class StageRun:
    """What every stage has: its context and config, its run ``name``, ``state.json`` and its folder.

    ``kind`` is the stage type (``stage=`` on the command line); ``name`` is this run of it: its folder
    ``W/<name>/`` and its key in ``state.json``. They are equal for a single run; the round orchestrator
    passes names such as ``round2_coteach`` so that every round keeps its own folder. Subclasses
    implement ``run() -> scores``.
    """

    kind: str = "stage"

    def __init__(self, ctx: StageContext, name: str | None = None):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.name = name or self.kind
        self.state = RunState(ctx.workspace, writable=ctx.is_global_zero)
        self.dir = ctx.workspace / self.name

    def run(self) -> dict[str, Any]:
        raise NotImplementedError


class KFoldStage(StageRun):
    """Subclasses set ``kind`` and ``module_class`` and change a fold through the hooks below, each of which
    takes the fold: ``module_kwargs`` (the stage's own module settings), ``model_config`` (e.g. a student
    fold started from its teacher's fold), ``build_datamodule`` (other training items).

    ``joins_pool = False`` marks a reference run that learnt from labels no real task has (the oracle,
    trained on the synthetic truth): its predictions must never teach a later round, so it is not added to
    the pseudo-label pool, not written over the workspace's own ``W/submission.csv`` / ``oof.csv``, and
    flagged ``"joins_pool": false`` in ``state.json`` so that source pickers (``postprocess.sources``) skip it.
    """

    module_class: type[StageModule] = StageModule
    joins_pool: bool = True

    # -- builders: the per-fold hooks a stage overrides ---------------------------------------------------
    def build_module(self, fold: int) -> StageModule:
        """The fold's module: the shared config blocks, ``model_config(fold)`` and ``module_kwargs(fold)``."""
        container = OmegaConf.to_container(self.cfg, resolve=True)
        return self.module_class(n_classes=self.ctx.scheme.n_classes, model=self.model_config(container["model"], fold),
                                 optim=container["optim"], augment=container["augment"],
                                 loss=container["loss"], predict=container["predict"], **self.module_kwargs(fold))

    def module_kwargs(self, fold: int) -> dict[str, Any]:
        """The stage's own constructor arguments of ``module_class`` (its settings block); none by default."""
        return {}

    def model_config(self, model: dict, fold: int | None = None) -> dict:
        """The ``model:`` block plus what the data decides: each class's band for the band detectors.

        ``fold`` is the fold the module is built for (``None`` outside a fold, e.g. for the band table)."""
        if model["detector"].startswith("band") and not model.get("class_bands"):   # class_bands: not a config key
            model = dict(model, class_bands=class_bands_from_boxes(self.band_boxes, self.ctx.scheme.n_classes))
        return model

    @property
    def band_boxes(self) -> pd.DataFrame:
        """The boxes whose median frequency band a band detector looks at for each class: the training boxes,
        unless a stage trains on other labels but must keep the bootstrap's network input (the oracle)."""
        return self.ctx.boxes

    def fold_data_kwargs(self, fold: int) -> dict[str, Any]:
        """The arguments of the fold's :class:`FoldDataModule` (held-out TP/FP crops for validation, the OOF
        and test prediction sets); a stage with other training items passes them to its subclass."""
        cfg, ctx = self.cfg, self.ctx
        held_out = [rid for rid, f in zip(ctx.train.recording_ids, ctx.fold_of_recording) if f == fold]
        return dict(
            cache=ctx.cache, train=ctx.train, fold_of_recording=ctx.fold_of_recording, fold=fold,
            n_classes=ctx.scheme.n_classes, crops=from_block(CropSettings, cfg.crops, "crops"),
            loader=self.loader_settings(), sample_rate=int(cfg.audio.sample_rate),
            duration_s=float(cfg.data.duration_s), seed=int(cfg.seed),
            predict_sets={"oof": ("train", held_out), "test": ("test", ctx.test_ids)})

    def loader_settings(self) -> LoaderSettings:
        """The ``loader:`` block; a stage with batches of its own (whole recordings, templates) overrides it."""
        return from_block(LoaderSettings, self.cfg.loader, "loader")

    def build_datamodule(self, fold: int) -> FoldDataModule:
        return FoldDataModule(**self.fold_data_kwargs(fold))

    def build_trainer(self, fold: int, fold_dir: Path, writer: ShardedPredictionWriter) -> pl.Trainer:
        checkpoints = fold_checkpoints(fold_dir / "checkpoints", monitor="val/masked_auroc", mode="max")
        trainer_kwargs = OmegaConf.to_container(self.cfg.trainer, resolve=True)
        return pl.Trainer(**trainer_kwargs, default_root_dir=str(fold_dir),
                          logger=build_logger(self.cfg.logger, self.ctx.workspace, self.name, f"fold{fold}"),
                          callbacks=[*checkpoints, writer], plugins=[AtomicCheckpointIO()])

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        stage_state = self.state.stage(self.name)
        stage_state["config"] = OmegaConf.to_container(self.cfg, resolve=True)
        self.state.save()
        for fold in range(self.ctx.n_folds):
            if self.state.fold_done(self.name, fold):
                log.info("%s fold %d: done in an earlier run, skipped", self.name, fold)
                continue
            self.run_fold(fold)
        return self.finalize() if self.ctx.is_global_zero else {}

    def run_fold(self, fold: int) -> None:
        fold_dir = self.dir / f"fold{fold}"
        last = fold_dir / "checkpoints" / "last.ckpt"
        pl.seed_everything(int(self.cfg.seed) + fold, workers=True, verbose=False)
        writer = ShardedPredictionWriter()
        trainer = self.build_trainer(fold, fold_dir, writer)
        datamodule, module = self.build_datamodule(fold), self.build_module(fold)
        fold_state = self.state.fold(self.name, fold)
        predict_ckpt = None
        if fold_state.get("status") != "trained":
            started = time.time()
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.state.update_fold(self.name, fold, status="trained", checkpoint=self.state.relative(last),
                                   metrics=metrics, train_seconds=round(time.time() - started, 1))
        else:
            predict_ckpt = str(last)
        self.state.update_fold(self.name, fold, status="done",
                               **self.predict_fold(writer, trainer, module, datamodule, fold_dir, predict_ckpt))

    @staticmethod
    def prediction_paths(fold_dir: Path) -> dict[str, Path]:
        """A fold's prediction files: the held-out train recordings (``oof``) and every test recording."""
        return {name: fold_dir / f"{name}.npz" for name in ("oof", "test")}

    def predict_fold(self, writer: ShardedPredictionWriter, trainer: pl.Trainer, module, datamodule,
                     fold_dir: Path, ckpt_path: str | None = None) -> dict[str, str]:
        """The fold's OOF and test predictions written; their paths as ``state.json`` records them."""
        written = writer.predict_sets(trainer, module, datamodule, self.prediction_paths(fold_dir), ckpt_path)
        return {name: self.state.relative(path) for name, path in written.items()}

    # -- outputs ----------------------------------------------------------------------------------------
    def finalize(self) -> dict[str, Any]:
        ctx = self.ctx
        train_ids = list(ctx.train.recording_ids)
        folds = [self.state.fold(self.name, k) for k in range(ctx.n_folds)]
        oof_parts = [read_npz(self.state.resolve(f["oof"])) for f in folds]
        test_parts = [read_npz(self.state.resolve(f["test"])) for f in folds]

        oof_ids = np.concatenate([p["recording_id"] for p in oof_parts])
        position = {rid: i for i, rid in enumerate(train_ids)}
        order = np.argsort([position[r] for r in oof_ids])
        if sorted(oof_ids.tolist()) != sorted(train_ids):
            raise RuntimeError("out-of-fold predictions do not cover every train recording exactly once")
        oof_fold = np.concatenate([np.full(len(p["recording_id"]), k) for k, p in enumerate(oof_parts)])[order]
        oof_frames = np.concatenate([p["framewise"] for p in oof_parts])[order]
        oof_model_clip = np.concatenate([p["clip"] for p in oof_parts])[order]
        test_frames = np.mean([p["framewise"].astype(np.float32) for p in test_parts], axis=0).astype(np.float16)

        fps = self._output_frames_per_second(oof_frames.shape[-1])
        write_npz(self.dir / "oof_framewise.npz", recording_id=np.asarray(train_ids), fold=oof_fold,
                  framewise=oof_frames, clip=oof_model_clip, frames_per_second=np.float32(fps),
                  seconds=self.recording_seconds(oof_parts, len(train_ids), order))
        write_npz(self.dir / "test_framewise.npz", recording_id=np.asarray(ctx.test_ids), framewise=test_frames,
                  clip=np.mean([p["clip"] for p in test_parts], axis=0), frames_per_second=np.float32(fps),
                  seconds=self.recording_seconds(test_parts[:1], len(ctx.test_ids)))

        # the CSVs' clip scores: the configured temporal chain (smoothing, aggregation, folds combined
        # framewise by default); the npz files above keep the model's own clip output
        option = Option.from_config(self.cfg.postprocess)
        oof_clip = fold_clip_scores([oof_frames], [oof_model_clip], option, fps)
        test_clip = fold_clip_scores([p["framewise"] for p in test_parts], [p["clip"] for p in test_parts],
                                     option, fps)

        species_cols = [f"s{s}" for s in ctx.species]
        oof_species = ctx.scheme.to_species_scores(oof_clip)
        test_species = ctx.scheme.to_species_scores(test_clip)
        oof_csv = pd.DataFrame(oof_species, columns=species_cols)
        oof_csv.insert(0, "fold", oof_fold)
        oof_csv.insert(0, "recording_id", train_ids)
        calibrated = self.calibrate(test_species)
        tables = {"oof.csv": oof_csv}
        for name, scores_ in (("submission.csv", calibrated), ("submission_raw.csv", test_species)):
            tables[name] = pd.DataFrame(scores_, columns=species_cols)
            tables[name].insert(0, "recording_id", ctx.test_ids)
        for name, table in tables.items():  # in the stage folder, and the newest stage's at the workspace top
            write_csv(self.dir / name, table)
            if self.joins_pool:
                write_csv(ctx.workspace / name, table)
        outputs = tuple(tables)

        scores = self.score({"test": calibrated, "test_raw": test_species,
                             "oof": self.calibrate(oof_species), "oof_raw": oof_species})
        stage_state = self.state.stage(self.name)
        stage_state["outputs"] = {k: self.state.relative(self.dir / k) for k in
                                  outputs + ("oof_framewise.npz", "test_framewise.npz")}
        stage_state["metrics"] = scores
        if not self.joins_pool:
            stage_state["joins_pool"] = False
        self.state.save()  # finished: its predictions are in the pseudo-label pool now (pseudo/pool.py)
        return scores

    def recording_seconds(self, parts: list[dict[str, np.ndarray]], n: int, order=None) -> np.ndarray:
        """Each recording's own length in seconds, beside its framewise row (whose frames run on to
        ``data.duration_s``, the longest recording, and are 0 past its own end): from the prediction files'
        ``n_valid`` (samples), concatenated in ``order``; ``data.duration_s`` for files without it."""
        grid = float(self.cfg.data.duration_s)
        if not parts or not all("n_valid" in p for p in parts):
            return np.full(n, grid, dtype=np.float32)
        samples = np.concatenate([p["n_valid"] for p in parts])
        samples = samples if order is None else samples[order]
        return np.minimum(samples / float(self.cfg.audio.sample_rate), grid).astype(np.float32)

    def _output_frames_per_second(self, n_frames: int) -> float:
        return n_frames / float(self.cfg.data.duration_s)

    def calibrate(self, species_scores: np.ndarray) -> np.ndarray:
        """Odds scaling toward the class prior (``score.odds_to_prior``); identity when off or no prior."""
        if self.ctx.prior is None or not self.cfg.score.odds_to_prior:
            return species_scores
        return odds_scale_to_prior(species_scores, self.ctx.prior)

    def score(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """LWLRAP of each prediction set against known clip labels, next to the prior-only baseline."""
        ctx = self.ctx
        scores = clip_label_scores(predictions, {"test": ctx.test_truth, "oof": ctx.train_truth}, ctx.species,
                                   ctx.prior)
        if scores:
            lines = [f"{self.name} scores (LWLRAP against the clip labels; *_raw: before odds scaling):"]
            lines += [f"  {k:<22} {v:.4f}" for k, v in scores.items()]
            print("\n".join(lines), flush=True)
        return scores


def clip_label_scores(predictions: dict[str, np.ndarray], truths: dict[str, pd.DataFrame | None],
                      species: list[int], prior: np.ndarray | None) -> dict[str, float]:
    """``<name>_lwlrap`` of each (N, n_species) prediction set against its split's clip labels, plus
    ``<split>_prior_lwlrap``, the prior-only baseline on the same clips (the floor a model must beat).

    ``name``'s split is its part before the first ``_`` (``test``, ``test_raw``, ``oof``, ``oof_raw``);
    ``truths[split]`` holds the labels in the predictions' row order, or ``None`` when the split has none
    (its predictions are then left unscored). The one scorer of the stages' own metrics and of
    ``stage=report``, so a report row equals the ``state.json`` metrics of the same files.
    """
    scores: dict[str, float] = {}
    cols = [f"s{s}" for s in species]
    for name, pred in predictions.items():
        split = name.split("_")[0]
        if truths.get(split) is None:
            continue
        y = truths[split][cols].to_numpy() > 0
        scores[f"{name}_lwlrap"] = float(lwlrap(pred, y))
        if prior is not None and f"{split}_prior_lwlrap" not in scores:
            scores[f"{split}_prior_lwlrap"] = float(prior_baseline_lwlrap(y, prior))
    return scores
