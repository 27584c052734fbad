"""``stage=detect``: a finished workspace's models applied to a folder of new recordings.

    python -m rfcx_lightning.run stage=detect workspace=W detect.audio=DIR detect.out=OUT [detect.source=best]

What is reused, so detection scores a file exactly as the run scored its test recordings:

* the run's own resolved config from ``state.json`` (front-end, ``predict.mode`` windows, ``postprocess``
  fold combination, ``score.prior`` odds scaling, sample rate, data root), not this command's;
* its fold models (each fold's ``last.ckpt``, the weights its test predictions came from), loaded with the
  stage's own LightningModule class (:func:`~rfcx_lightning.postprocessing.repredict.run_module_class`);
* the windows, stitching and probabilities of :mod:`rfcx_lightning.inference` (``window_starts``,
  ``WindowStitcher``, ``window_probabilities``, ``combine_scales``), fed a few windows at a time from a
  block-wise audio stream (:mod:`rfcx_lightning.detection.data`) so memory stays flat in the file length;
* the fold combination and clip aggregation of :func:`rfcx_lightning.postprocessing.chain.fold_clip_scores`.

Prediction is a real ``Trainer.predict`` with a prediction writer (:class:`DetectionWriter`); each file's
result is written atomically to ``OUT/.parts/`` as soon as its last window is in, so a killed run resumes
where it stopped, and under DDP each rank takes its share of the files and rank 0 merges the parts after a
barrier (the pattern of :class:`~rfcx_lightning.inference.ShardedPredictionWriter`). Parts hold framewise
scores, not events, so a rerun with another ``detect.threshold`` re-thresholds without predicting again.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from ..data.audio import AudioError
from ..inference import WindowStitcher, combine_scales, window_probabilities
from ..postprocessing.chain import Option, fold_clip_scores
from ..postprocessing.ensemble import ensemble
from ..settings import from_block
from ..workspace import RunState, read_npz, run_finished, run_kind, write_csv, write_json, write_npz
from .audio import AudioStream, list_audio
from .data import WindowStream, prediction_passes
from .events import ONSETS, ThresholdRule, class_thresholds, merge_events, onset_offset

log = logging.getLogger(__name__)

#: stage kinds whose runs hold no fold models to detect with
NOT_DETECTORS = ("postprocess", "pretrain", "pipeline", "detect", "report")
PARTS = ".parts"
ON_ERROR = ("skip", "fail")


class DetectError(RuntimeError):
    """Detection cannot go on; the message names the file, run or config key."""


# -- the run to detect with ----------------------------------------------------------------------------------
def resolve_source(state: RunState, source: str) -> str:
    """``best``: the pipeline's best run, else the newest finished stage run; else a run name, checked."""
    stages = state.data.get("stages", {})

    def finished(name: str) -> bool:
        return run_finished(stages.get(name) or {}) and run_kind(name, stages[name]) not in NOT_DETECTORS

    if source == "best":
        best = (state.data.get("pipeline") or {}).get("best")
        if best:
            if best not in stages:
                raise DetectError(f"{state.path}: the pipeline's best candidate {best!r} is an ensemble of "
                                  "several runs, not one run with fold models; pick one with detect.source=<run>")
            source = best
        else:
            # runs flagged "joins_pool": false (the oracle, trained on hidden truth) are references, not picks
            done = [name for name in state.finished_runs(references=False) if finished(name)]
            if not done:
                raise DetectError(f"{state.path}: no finished stage run to detect with; run stage=bootstrap "
                                  "(or the pipeline) in this workspace first")
            return done[-1]
    if source not in stages:
        raise DetectError(f"detect.source={source!r}: {state.path} has no such run; it has {sorted(stages)}")
    if not finished(source):
        raise DetectError(f"detect.source={source!r}: not a finished stage run with fold models (its "
                          f"outputs recorded); see {state.path}")
    return source


def load_fold_modules(state: RunState, source: str) -> list[pl.LightningModule]:
    """The run's fold models, each from its ``last.ckpt``, with the stage's own module class."""
    from ..postprocessing.repredict import run_module_class

    record = state.stage(source)
    kind = record["config"]["stage"]["name"]
    if kind == "template":
        raise DetectError(f"detect.source={source!r} is a template-matching run (fold<k>/templates.pt): its "
                          "scores denoise and normalise over the whole recording, which cannot be streamed over "
                          "long files; detect with a trained run (bootstrap, coteach, noisy_student)")
    module_class = run_module_class(record)
    modules = []
    for fold, info in sorted(record["folds"].items(), key=lambda item: int(item[0])):
        path = state.resolve(info.get("checkpoint") or f"{source}/fold{fold}/checkpoints/last.ckpt")
        if not path.is_file():
            raise DetectError(f"detect.source={source!r}: fold {fold} checkpoint {path} is missing")
        modules.append(module_class.load_from_checkpoint(str(path), map_location="cpu").eval())
    return modules


def predictor_of(module: torch.nn.Module) -> torch.nn.Module:
    """The network a stage module predicts with (``predictor()`` where a stage has one, e.g. coteach)."""
    return module.predictor() if hasattr(module, "predictor") else module.model


def whole_grid_frames(net: torch.nn.Module, n: int, dry_run_samples: int) -> int:
    """Frames of the whole-recording output grid of ``n`` samples (what ``predict_framewise`` maps onto).

    Up to ``dry_run_samples`` (the run's recording length) it is the model's own dry run, exactly as the
    run's predictions. Beyond, a dry run would cost memory in proportion to the file (the bench measured
    +80 MB per minute), so the backbone's time stride ``s`` is found from probes of a few fixed lengths
    (``T = ceil(frames / s)``, exact for stride-2 'same' convolutions) and applied; a model that fits no
    stride is dry-run anyway (with a warning).
    """
    if n <= dry_run_samples:
        return net.output_frames(n)
    frontend = net.frontend
    probes = [257, 1000, 1024, 2049]
    outputs = [net.output_frames((f - 1) * frontend.hop_length) for f in probes]
    for stride in (1, 2, 4, 8, 16, 32, 64, 128):
        if all(t == -(-f // stride) for f, t in zip(probes, outputs)):
            return -(-frontend.n_frames(n) // stride)
    log.warning("detect: no time stride fits the model's output grid; dry-running %d samples", n)
    return net.output_frames(n)


# -- Lightning pieces ----------------------------------------------------------------------------------------
class DetectModule(pl.LightningModule):
    """The run's fold models side by side: one window batch in, every fold's probabilities out (K, ...)."""

    def __init__(self, folds: Sequence[pl.LightningModule]):
        super().__init__()
        self.folds = torch.nn.ModuleList(folds)

    def predictors(self) -> list[torch.nn.Module]:
        return [predictor_of(m) for m in self.folds]

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if "error" in batch:
            return batch
        probs = [window_probabilities(net, batch["wave"]) for net in self.predictors()]
        out = {k: v for k, v in batch.items() if k != "wave"}
        out["frames"] = torch.stack([f for f, _ in probs])       # (K, W, C, t)
        out["clip"] = torch.stack([c for _, c in probs])         # (K, W, C)
        return out


class DetectDataModule(pl.LightningDataModule):
    """Each rank streams every ``world``-th file not done yet (the same split on every rank)."""

    def __init__(self, job: "DetectStage"):
        super().__init__()
        self.job = job

    def predict_dataloader(self) -> DataLoader:
        job = self.job
        indices = job.todo(self.trainer.global_rank, self.trainer.world_size)
        dataset = WindowStream(job.files, indices, job.sample_rate, job.predict_cfg, job.duration_s,
                               batch_windows=job.batch_windows, block_seconds=job.block_seconds)
        workers = min(job.num_workers, len(indices))
        return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False)


class DetectionWriter(BasePredictionWriter):
    """Stitches each file's windows as they arrive; writes the file's part when its last window is in."""

    def __init__(self, job: "DetectStage"):
        super().__init__(write_interval="batch")
        self.job = job
        self.pending: dict[int, dict[int, WindowStitcher]] = {}
        self.progress = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0 and self.job.progress_bar:
            from tqdm.auto import tqdm

            indices = self.job.todo(0, trainer.world_size)
            hours = sum(self.job.durations[i] for i in indices) / 3600
            self.progress = tqdm(total=hours, unit="h audio", desc="detect", dynamic_ncols=True,
                                 bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio "
                                            "[{elapsed}<{remaining}{postfix}]")
            self.files_total, self.files_done, self.started = len(indices), 0, time.monotonic()
            self.progress.set_postfix_str(f"files 0/{self.files_total}")

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch: Any,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        index = int(prediction["file"])
        if "error" in prediction:
            self.pending.pop(index, None)
            self.job.record_error(index, prediction["error"])
            self._advance(0.0, file_done=True)
            return
        stitchers = self.pending.setdefault(index, {})
        p = int(prediction["pass"])
        if p not in stitchers:
            stitchers[p] = WindowStitcher(int(prediction["n"]), int(prediction["win"]))
        stitchers[p].add(prediction["starts"].tolist(), prediction["frames"].float().cpu(),
                         prediction["clip"].float().cpu())
        if prediction["last"]:
            passes = self.pending.pop(index)
            self.job.finish_file(index, int(prediction["n"]), [passes[k] for k in sorted(passes)],
                                 pl_module.predictors()[0])
        self._advance(float(prediction["seconds"]), file_done=bool(prediction["last"]))

    def _advance(self, seconds: float, file_done: bool) -> None:
        if self.progress is None:
            return
        self.progress.update(seconds / 3600)
        self.files_done += int(file_done)
        speed = self.progress.n * 3600 / max(1e-9, time.monotonic() - self.started)
        self.progress.set_postfix_str(f"files {self.files_done}/{self.files_total}, {speed:.1f}x real time",
                                      refresh=file_done)


# -- the stage ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectSettings:
    """The ``detect:`` block, typed and checked (defaults and meanings in ``stages/stage/detect.yaml``)."""

    audio: str | None
    out: str | None
    source: str
    threshold: Any                # f1 | precision:<p> | a number
    onset: str                    # peak | threshold
    clip_gate: float              # events only where the file's calibrated class probability reaches it; 0: off
    on_error: str
    framewise: bool
    batch_windows: int
    block_seconds: float
    num_workers: int
    progress: bool
    data_root: str | None
    extensions: Any


class DetectStage:
    """Runs detection end to end: resolve the run, thresholds, predict (resumable, DDP), merge the outputs."""

    kind = "detect"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        d = self.settings = from_block(DetectSettings, cfg.detect, "detect")
        for key in ("audio", "out"):
            if not getattr(d, key):
                raise DetectError(f"stage=detect needs detect.{key}=PATH")
        self.workspace = Path(str(cfg.workspace)).expanduser().resolve()
        if not (self.workspace / "state.json").is_file():
            raise DetectError(f"workspace={self.workspace}: no state.json; point workspace= at a finished "
                              "workspace (the one stage=bootstrap or stage=pipeline wrote)")
        self.audio_root = Path(str(d.audio)).expanduser().resolve()
        self.out = Path(str(d.out)).expanduser().resolve()
        self.parts = self.out / PARTS
        self.on_error = d.on_error
        if self.on_error not in ON_ERROR:
            raise DetectError(f"detect.on_error={self.on_error!r}: choose one of {ON_ERROR}")
        self.rule = ThresholdRule.parse(d.threshold)
        if d.onset not in ONSETS:
            raise DetectError(f"detect.onset={d.onset!r}: choose one of {', '.join(ONSETS)}")
        self.onset = d.onset
        if not 0.0 <= float(d.clip_gate) < 1.0:
            raise DetectError(f"detect.clip_gate={d.clip_gate!r}: a probability in [0, 1) (0: off)")
        self.clip_gate = float(d.clip_gate)
        self.batch_windows = d.batch_windows
        self.block_seconds = d.block_seconds
        self.num_workers = d.num_workers
        self.write_framewise = d.framewise
        self.progress_bar = d.progress
        self.is_global_zero = rank_zero_only.rank == 0

        self.state = RunState(self.workspace, writable=False)
        self.source = resolve_source(self.state, d.source)
        record = self.state.stage(self.source)
        self.run_cfg = OmegaConf.create(record["config"])
        run = self.run_cfg
        self.sample_rate = int(run.audio.sample_rate)
        self.duration_s = float(run.data.duration_s)
        self.predict_cfg = OmegaConf.to_container(run.predict, resolve=True)
        postprocess = OmegaConf.to_container(run.postprocess, resolve=True)
        postprocess.pop("odds_to_prior", None)   # recorded there by workspaces written before it moved to score:
        self.option = Option.from_config(postprocess)
        if self.option.fold_ensemble == "rank_mean":
            raise DetectError(f"run {self.source}: postprocess.fold_ensemble=rank_mean ranks scores across "
                              "recordings, which a file-by-file detector cannot do; detect with mean or "
                              "geometric_mean (the run's config)")
        self.files = [str(p) for p in list_audio(self.audio_root, d.extensions)]
        if not self.files:
            raise DetectError(f"detect.audio={self.audio_root}: no audio file (FLAC, WAV, ...) under it")
        self.relative = [Path(f).relative_to(self.audio_root).as_posix() for f in self.files]
        self.keys = [r.replace("/", "__") for r in self.relative]
        self.durations = [self._duration(f) for f in self.files]
        self._load_labels(d)

    # -- setup --------------------------------------------------------------------------------------------
    def _duration(self, path: str) -> float:
        try:
            return AudioStream(path, self.sample_rate).duration_s
        except AudioError:
            return 0.0

    def _load_labels(self, d: DetectSettings) -> None:
        """Class scheme, per-class bands and thresholds: from the run's boxes and out-of-fold predictions."""
        from ..data.annotations import DataRoot, load_boxes
        from ..stages.context import class_prior, odds_to_prior

        run = self.run_cfg
        root = Path(str(d.data_root or run.data.root)).expanduser()
        if not root.is_dir():
            raise DetectError(f"run {self.source}: its data root {root} (data.root) is not there; detection needs "
                              "its TP/FP boxes for thresholds and bands: pass detect.data_root=PATH")
        self.boxes, self.scheme = load_boxes(DataRoot(root), scheme_by_songtype=bool(run.data.by_songtype),
                                             duration_s=self.duration_s,
                                             native_sample_rate=int(run.data.native_sample_rate))
        self.class_names = self.scheme.class_names
        self.species_cols = [f"s{s}" for s in self.scheme.species]
        self.prior = class_prior(run, len(self.scheme.species)) if odds_to_prior(run) else None
        self.bands, self.class_ids = [], []
        nyquist = self.sample_rate / 2
        species_of = self.scheme.species_of_class
        for c in range(self.scheme.n_classes):
            rows = self.boxes[self.boxes["class_index"] == c]
            tp = rows[rows["is_tp"]]
            rows = tp if len(tp) else rows
            self.bands.append((float(rows["f_min"].median()), float(rows["f_max"].median())) if len(rows)
                              else (0.0, nyquist))
            if self.scheme.by_songtype:
                species, songtype = self.scheme.pairs[c]
            else:  # a species class: the songtype its boxes have most often
                species = self.scheme.species[int(species_of[c])]
                songtype = int(rows["songtype_id"].mode().iloc[0]) if len(rows) else -1
            self.class_ids.append((int(species), int(songtype)))
        oof_path = self.workspace / self.source / "oof_framewise.npz"
        if not oof_path.is_file():
            raise DetectError(f"run {self.source}: {oof_path} is missing; thresholds are chosen on its "
                              "out-of-fold predictions")
        oof = read_npz(oof_path)
        oof_ids = [str(r) for r in oof["recording_id"]]
        self.thresholds = class_thresholds(oof["framewise"], oof_ids, self.boxes, self.class_names,
                                           self.duration_s, self.rule)
        self.gate = self.clip_gate_calibration(run, oof)
        self.onset_offset_s, self.onset_boxes = None, None
        if self.onset == "peak":
            self.onset_offset_s, self.onset_boxes = onset_offset(
                oof["framewise"], oof_ids, self.boxes, self.thresholds["threshold"].to_numpy(np.float32),
                self.duration_s)

    def per_class(self, values: np.ndarray | None) -> dict[str, float | int] | None:
        """``{class name: value}`` for ``summary.json``, counts kept whole (None stays None:
        ``detect.onset=threshold``)."""
        if values is None:
            return None
        return {name: round(v, 4) if isinstance(v, float) else v
                for name, v in zip(self.class_names, np.asarray(values).tolist())}

    def clip_gate_calibration(self, run: DictConfig, oof: dict) -> tuple[np.ndarray, np.ndarray] | None:
        """(class prior, reference) for ``detect.clip_gate``: a file's clip score of a class, odds-scaled so
        that the run's mean OOF clip score maps onto the class's prior (``score.prior``), is the probability
        that the class is in the file; events of a class below ``clip_gate`` there are dropped. The
        reference comes from the training recordings, so a file's gate does not depend on which other files
        are detected with it. None (no gate) when ``clip_gate`` is 0 or the run has no prior."""
        from ..stages.context import class_prior

        prior = class_prior(run, len(self.scheme.species))
        if self.clip_gate <= 0 or prior is None:
            if self.clip_gate > 0:
                log.warning("detect.clip_gate=%g needs score.prior in the run's config; no gate", self.clip_gate)
            return None
        return prior[self.scheme.species_of_class], np.asarray(oof["clip"], np.float64).mean(0)

    def gate_events(self, table: pd.DataFrame, clip: np.ndarray) -> pd.DataFrame:
        """The events of one file whose class passes the clip gate (all of them without a gate)."""
        if self.gate is None or not len(table):
            return table
        from ..postprocessing import odds_scale_to_prior

        prior, reference = self.gate
        probability = odds_scale_to_prior(np.asarray(clip, np.float64)[None], prior, reference)[0]
        return table[probability[table["class_index"].to_numpy(int)] >= self.clip_gate].reset_index(drop=True)

    def meta(self) -> dict:
        record = self.state.stage(self.source)
        return {"workspace": str(self.workspace), "source": self.source,
                "checkpoints": {k: f.get("checkpoint") for k, f in sorted(record["folds"].items())},
                "predict": self.predict_cfg, "postprocess": self.option.label(),
                "sample_rate": self.sample_rate}

    def check_parts(self) -> None:
        """OUT/.parts belongs to one run's models: a rerun with another source would mix two detectors."""
        path = self.parts / "meta.json"
        meta = json.loads(json.dumps(self.meta()))
        if path.exists():
            found = json.loads(path.read_text())
            if found != meta:
                changed = sorted(k for k in meta if found.get(k) != meta[k])
                raise DetectError(f"detect.out={self.out} holds results of another detector ({', '.join(changed)} "
                                  f"differ: {path}); use a new detect.out or delete {self.parts}")
        elif self.is_global_zero:
            write_json(path, meta)

    def part_path(self, index: int) -> Path:
        return self.parts / f"{self.keys[index]}.npz"

    def error_path(self, index: int) -> Path:
        return self.parts / f"{self.keys[index]}.error.json"

    def todo(self, rank: int, world: int) -> list[int]:
        """This rank's files (every ``world``-th of all, so ranks never overlap) that have no part yet."""
        return [i for i in range(rank, len(self.files), world) if not self.part_path(i).exists()]

    # -- per file (called by the writer) ----------------------------------------------------------------------
    def record_error(self, index: int, message: str) -> None:
        if self.on_error == "fail":
            raise DetectError(f"detect.on_error=fail: {message}")
        log.warning("detect: skipped %s", message)
        write_json(self.error_path(index), {"file": self.relative[index], "error": message})

    def finish_file(self, index: int, n: int, passes: list[WindowStitcher], net: torch.nn.Module) -> None:
        """Per-fold framewise of every pass -> the run's scale and fold combination -> the file's part."""
        t_whole = whole_grid_frames(net, n, int(round(self.duration_s * self.sample_rate)))
        outputs = [st.finish(t_whole) for st in passes]                       # each (K, C, T), (K, C)
        if len(outputs) > 1:                                                  # multiscale
            specs = prediction_passes(n, self.sample_rate, self.predict_cfg, self.duration_s)
            framewise, clip = combine_scales([f for f, _ in outputs], [c for _, c in outputs],
                                             [s.scale for s in specs], self.predict_cfg.get("class_scale"))
        else:
            framewise, clip = outputs[0]
        framewise, clip = framewise.numpy(), clip.numpy()                     # float16 per fold, as the run's
        k = len(framewise)
        fps = framewise.shape[-1] / (n / self.sample_rate)
        folds = [framewise[i:i + 1] for i in range(k)]
        combined = folds[0] if k == 1 else ensemble(folds, self.option.fold_ensemble)
        scores = fold_clip_scores(folds, [clip[i:i + 1] for i in range(k)], self.option, fps)[0]
        write_npz(self.part_path(index), framewise=np.asarray(combined[0], np.float16),
                  clip=np.asarray(scores, np.float32), frames_per_second=np.float32(fps), n_samples=np.int64(n))
        if self.error_path(index).exists():                                   # an earlier run failed on it
            self.error_path(index).unlink()

    # -- the run --------------------------------------------------------------------------------------------
    def build_trainer(self, writer: DetectionWriter) -> pl.Trainer:
        # items carry their file index; Lightning's batch indices (absent for an IterableDataset) are unused
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        trainer = self.cfg.trainer
        return pl.Trainer(accelerator=str(trainer.accelerator), devices=trainer.devices, strategy=trainer.strategy,
                          precision=self.run_cfg.trainer.precision, logger=False, callbacks=[writer],
                          enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                          default_root_dir=str(self.parts))

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.check_parts()
        done = sum(self.part_path(i).exists() for i in range(len(self.files)))
        if done and self.is_global_zero:
            print(f"detect: {done} of {len(self.files)} files already done in {self.parts}; resuming", flush=True)
        writer = DetectionWriter(self)
        trainer = self.build_trainer(writer)
        if len(self.files) > done:
            module = DetectModule(load_fold_modules(self.state, self.source))
            trainer.predict(module, datamodule=DetectDataModule(self), return_predictions=False)
        trainer.strategy.barrier("detect-parts")
        summary = {}
        if trainer.global_rank == 0:
            summary = self.merge(wall_seconds=time.time() - started)
        trainer.strategy.barrier("detect-merged")
        return summary

    # -- outputs --------------------------------------------------------------------------------------------
    def merge(self, wall_seconds: float) -> dict[str, Any]:
        """Every file's part -> detections.csv, raven/, clip scores, submissions, errors.csv, thresholds.csv."""
        from ..data.raven import write_selection_table
        from ..postprocessing import odds_scale_to_prior

        thresholds = self.thresholds["threshold"].to_numpy(np.float32)
        events, clip_rows, errors, done = [], [], [], []
        missing = []
        for i, (rel, key) in enumerate(zip(self.relative, self.keys)):
            part, error = self.part_path(i), self.error_path(i)
            if not part.exists():
                if error.exists():
                    errors.append(json.loads(error.read_text()))
                else:
                    missing.append(rel)
                continue
            data = read_npz(part)
            fps, n = float(data["frames_per_second"]), int(data["n_samples"])
            duration = n / self.sample_rate
            table = self.gate_events(merge_events(data["framewise"], thresholds, fps, duration, self.onset_offset_s),
                                     data["clip"])
            cls = table["class_index"].to_numpy(int)
            bands = np.asarray(self.bands, np.float64).reshape(-1, 2)
            ids = np.asarray(self.class_ids, np.int64).reshape(-1, 2)
            frame = pd.DataFrame({"file": rel, "start_s": table["start_s"], "end_s": table["end_s"],
                                  "class": [self.class_names[c] for c in cls], "species_id": ids[cls, 0],
                                  "songtype_id": ids[cls, 1], "score": table["score"],
                                  "f_min": bands[cls, 0], "f_max": bands[cls, 1]})
            events.append(frame)
            write_selection_table(self.out / "raven" / f"{key}.selections.txt",
                                  pd.DataFrame({"begin_s": frame["start_s"], "end_s": frame["end_s"],
                                                "low_hz": frame["f_min"], "high_hz": frame["f_max"],
                                                "species": frame["class"], "score": frame["score"]}))
            if self.write_framewise:
                write_npz(self.out / "framewise" / f"{key}.npz", framewise=data["framewise"],
                          frames_per_second=data["frames_per_second"], classes=np.asarray(self.class_names))
            clip_rows.append(self.scheme.to_species_scores(data["clip"][None])[0])
            done.append(i)
        if missing:
            raise DetectError(f"{self.parts}: no result for {len(missing)} file(s), e.g. {missing[:3]}; every "
                              "file must be predicted exactly once (rerun the same command to finish them)")
        columns = ["file", "start_s", "end_s", "class", "species_id", "songtype_id", "score", "f_min", "f_max"]
        detections = pd.concat(events, ignore_index=True) if events else pd.DataFrame(columns=columns)
        write_csv(self.out / "detections.csv", detections[columns])
        write_csv(self.out / "errors.csv", pd.DataFrame(errors, columns=["file", "error"]))
        write_csv(self.out / "thresholds.csv", self.thresholds)

        species = np.asarray(clip_rows, np.float64).reshape(-1, len(self.species_cols))
        recording_ids = self.recording_ids(done)
        clip_scores = pd.DataFrame(species, columns=self.species_cols)
        clip_scores.insert(0, "recording_id", recording_ids)
        clip_scores.insert(0, "file", [self.relative[i] for i in done])
        write_csv(self.out / "clip_scores.csv", clip_scores)
        raw = clip_scores.drop(columns="file")
        write_csv(self.out / "submission_raw.csv", raw)
        calibrated = raw.copy()
        if self.prior is not None and len(species):
            calibrated[self.species_cols] = odds_scale_to_prior(species, self.prior)
        write_csv(self.out / "submission.csv", calibrated)

        hours = sum(self.durations[i] for i in done) / 3600
        summary = {"source": self.source, "files": len(self.files), "detected": len(done), "errors": len(errors),
                   "events": int(len(detections)), "audio_hours": round(hours, 4),
                   "wall_seconds": round(wall_seconds, 1), "threshold": str(self.rule), "onset": self.onset,
                   "onset_offset_s": self.per_class(self.onset_offset_s), "onset_offset_boxes": self.per_class(self.onset_boxes),
                   "clip_gate": self.clip_gate if self.gate is not None else 0.0,
                   "odds_to_prior": self.prior is not None}
        write_json(self.out / "summary.json", summary)
        print(f"detect ({self.source}): {len(done)} files, {summary['events']} events, {len(errors)} unreadable "
              f"file(s) (errors.csv); outputs in {self.out}", flush=True)
        return summary

    def recording_ids(self, indices: Sequence[int]) -> list[str]:
        """File stems (a Kaggle recording id for ``<id>.flac``), or the key without suffix if stems repeat."""
        stems = [Path(self.relative[i]).stem for i in indices]
        if len(set(stems)) == len(stems):
            return stems
        return [str(Path(self.keys[i]).with_suffix("")) for i in indices]
