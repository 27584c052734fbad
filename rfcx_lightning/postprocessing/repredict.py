"""Inference options compared on one stage run: whole recording, overlapping windows, multi-scale.

Each fold's last checkpoint re-predicts its held-out train recordings and the test recordings in every
mode, with the stage's own data module and a real ``Trainer.predict`` + :class:`ShardedPredictionWriter`
(so the comparison runs the production path). Predictions are written per mode and fold under
``W/postprocess/inference/<mode>/fold<k>/{oof,test}.npz`` and reused by a rerun.

Multi-scale: every window length in ``scales`` is predicted once (``window<s>``; a length >= the recording
is the whole pass); ``multiscale_mean`` averages them, ``multiscale`` takes each class from the scale whose
out-of-fold predictions separate that class's TP boxes from its FP boxes best (box AUROC: the only labels
a real RFCx train set has), via :func:`rfcx_lightning.inference.combine_scales`, the same code as
``predict.mode=multiscale predict.class_scale=[...]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics.functional.classification import binary_auroc

from ..inference import ShardedPredictionWriter, combine_scales
from ..stages.base import StageModule
from ..workspace import RunState, read_npz, write_json
from .sources import StageOutputs


class InferenceComparison:
    def __init__(self, ctx, source: str, out_dir: Path, scales: Sequence[float]):
        self.ctx, self.source, self.out_dir = ctx, source, Path(out_dir)
        self.scales = [float(s) for s in scales]
        self.state = RunState(ctx.workspace, writable=False)
        self.seconds: dict[str, float] = {}

    # -- prediction -------------------------------------------------------------------------------------
    def predict_config(self, mode: str) -> dict:
        cfg = self.ctx.cfg
        if mode == "whole":
            return {"mode": "whole"}
        if mode == "windows":
            return {"mode": "windows", "window_seconds": float(cfg.predict.window_seconds),
                    "window_hop_seconds": float(cfg.predict.window_hop_seconds)}
        if mode.startswith("window"):
            seconds = float(mode[len("window"):])
            if seconds >= float(cfg.data.duration_s):
                return {"mode": "whole"}
            return {"mode": "windows", "window_seconds": seconds, "window_hop_seconds": seconds / 2}
        raise ValueError(f"postprocess.inference.modes: unknown mode {mode!r}; choose whole, windows, "
                         "multiscale, multiscale_mean or window<seconds>")

    def scale_mode(self, seconds: float) -> str:
        """The mode that predicts one scale; a window as long as the recording is the whole pass (shared)."""
        return "whole" if seconds >= float(self.ctx.cfg.data.duration_s) else f"window{seconds:g}"

    def _module_class(self) -> type[StageModule]:
        return run_module_class(self.state.stage(self.source))

    def _predict_mode(self, mode: str) -> list[dict[str, Path]]:
        """Per fold: paths of the mode's OOF and test predictions (made now unless a rerun finds them)."""
        from ..stages import stage_class

        ctx, cfg = self.ctx, self.ctx.cfg
        kind = (self.state.stage(self.source).get("config") or {}).get("stage", {}).get("name") or "bootstrap"
        stage = stage_class(kind)(ctx, name=self.source)
        module_class, paths, spent = self._module_class(), [], 0.0
        for fold in range(ctx.n_folds):
            fold_state = self.state.fold(self.source, fold)
            if fold_state.get("status") != "done":
                raise RuntimeError(f"stage {self.source} fold {fold} is not done; finish it before comparing inference")
            fold_dir = self.out_dir / mode / f"fold{fold}"
            targets = stage.prediction_paths(fold_dir)
            paths.append(targets)
            if all(p.exists() for p in targets.values()):
                continue
            module = module_class.load_from_checkpoint(str(self.state.resolve(fold_state["checkpoint"])),
                                                       map_location="cpu")
            module.predict_cfg = self.predict_config(mode)
            datamodule = stage.build_datamodule(fold)
            writer = ShardedPredictionWriter()
            trainer = pl.Trainer(accelerator=str(cfg.trainer.accelerator), devices=1, logger=False,
                                 callbacks=[writer], enable_progress_bar=False, enable_model_summary=False,
                                 precision=cfg.trainer.precision, default_root_dir=str(fold_dir))
            started = time.time()
            writer.predict_sets(trainer, module, datamodule, targets)
            spent += time.time() - started
        timing = self.out_dir / mode / "seconds.json"
        if spent > 0:
            write_json(timing, {"predict_seconds": spent})
        self.seconds[mode] = read_npz_seconds(timing)
        return paths

    # -- assembly ---------------------------------------------------------------------------------------
    def _assemble(self, per_fold: list[dict[str, np.ndarray]], tests: list[dict[str, np.ndarray]], fps: float,
                  name: str) -> StageOutputs:
        train_ids = list(self.ctx.train.recording_ids)
        ids = np.concatenate([p["recording_id"] for p in per_fold]).astype(str)
        position = {r: i for i, r in enumerate(ids)}
        order = np.asarray([position[r] for r in train_ids])
        return StageOutputs(name=name,
                            oof_framewise=np.concatenate([p["framewise"] for p in per_fold])[order],
                            oof_clip=np.concatenate([p["clip"] for p in per_fold])[order],
                            test_framewise=[t["framewise"] for t in tests], test_clip=[t["clip"] for t in tests],
                            frames_per_second=fps)

    def _load(self, mode: str) -> tuple[list[dict], list[dict]]:
        paths = self._predict_mode(mode)
        return [read_npz(p["oof"]) for p in paths], [read_npz(p["test"]) for p in paths]

    def outputs(self, mode: str) -> tuple[StageOutputs, float]:
        """The mode's predictions as a :class:`StageOutputs`, and the seconds its prediction took."""
        fps_of = lambda frames: frames.shape[-1] / float(self.ctx.cfg.data.duration_s)  # noqa: E731
        if mode not in ("multiscale", "multiscale_mean"):
            oof, test = self._load(mode)
            return self._assemble(oof, test, fps_of(oof[0]["framewise"]), mode), self.seconds[mode]
        per_scale = {s: self._load(self.scale_mode(s)) for s in self.scales}
        seconds = sum(self.seconds[self.scale_mode(s)] for s in self.scales)
        class_scale = None
        if mode == "multiscale":
            class_scale = self.choose_scales({s: self._assemble(*per_scale[s], 1.0, f"window{s:g}")
                                              for s in self.scales})
            write_json(self.out_dir / "multiscale_class_scale.json", {"class_scale": class_scale})
        combined = []
        for split in (0, 1):
            parts = []
            for fold in range(self.ctx.n_folds):
                frames = [torch.from_numpy(per_scale[s][split][fold]["framewise"].astype(np.float32)) for s in self.scales]
                clips = [torch.from_numpy(per_scale[s][split][fold]["clip"]) for s in self.scales]
                f, c = combine_scales(frames, clips, self.scales, class_scale)
                parts.append({"recording_id": per_scale[self.scales[0]][split][fold]["recording_id"],
                              "framewise": f.numpy(), "clip": c.numpy()})
            combined.append(parts)
        return self._assemble(combined[0], combined[1], fps_of(combined[0][0]["framewise"]), mode), seconds

    def choose_scales(self, by_scale: dict[float, StageOutputs]) -> list[float]:
        """Per class, the scale whose OOF framewise scores rank its TP boxes above its FP boxes best."""
        boxes = self.ctx.boxes
        train_ids = list(self.ctx.train.recording_ids)
        duration = float(self.ctx.cfg.data.duration_s)
        choice = []
        for cls in range(self.ctx.scheme.n_classes):
            sel = boxes[boxes["class_index"] == cls]
            best, best_auc = self.scales[-1], -1.0
            for scale, outputs in by_scale.items():
                scores = box_scores(outputs.oof_framewise, train_ids, sel, duration).tolist()
                labels = sel["is_tp"].to_numpy().astype(int)
                if len(set(labels)) < 2:
                    continue
                auc = float(binary_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)))
                if auc > best_auc + 1e-9:
                    best, best_auc = scale, auc
            choice.append(best)
        return choice


def box_scores(framewise: np.ndarray, recording_ids: Sequence[str], boxes, duration_s: float) -> np.ndarray:
    """Per box (rows of ``boxes``: recording_id, class_index, t_min, t_max): the max framewise score of its
    class over the frames the box touches (at least one frame).

    ``framewise`` (N, C, T) holds the rows of ``recording_ids`` over ``duration_s`` seconds. The score a box
    gets is what a detector thresholding frames sees inside it, so it serves both to choose a scale per
    class (box AUROC, here) and to choose detection thresholds on TP/FP boxes (``stage=detect``).
    """
    row = {str(r): i for i, r in enumerate(recording_ids)}
    t = framewise.shape[-1]
    out = np.empty(len(boxes), dtype=np.float64)
    for k, (r, c, a, b) in enumerate(zip(boxes["recording_id"], boxes["class_index"], boxes["t_min"],
                                         boxes["t_max"])):
        first = int(a / duration_s * t)
        out[k] = float(framewise[row[str(r)], int(c), first:max(first + 1, int(np.ceil(b / duration_s * t)))].max())
    return out


def run_module_class(record: dict) -> type[StageModule]:
    """The LightningModule class of a stage run, from its ``state.json`` record (the config's stage name).

    Loading a checkpoint with its own class restores modules that hold more than one network (coteach);
    an unknown or missing kind falls back to the shared :class:`StageModule`.
    """
    from ..stages import stage_class

    kind = (record.get("config") or {}).get("stage", {}).get("name")
    try:
        return stage_class(kind).module_class if kind else StageModule
    except (KeyError, ImportError, AttributeError):
        return StageModule


def read_npz_seconds(path: Path) -> float:
    import json

    return float(json.loads(Path(path).read_text())["predict_seconds"]) if Path(path).exists() else float("nan")
