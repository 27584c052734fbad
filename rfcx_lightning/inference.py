"""Whole-recording framewise prediction, and a DDP-safe prediction writer.

The network is fully convolutional in time, so a whole 60 s recording goes through in one pass and
yields one framewise output: no sliding windows, no repeated work on overlaps. ``mode="windows"``
(overlapping windows, averaged where they overlap) is kept for comparison and for models that need
a fixed input length. ``mode="multiscale"`` runs several window lengths (``window_seconds`` a list; a
length >= the recording is one whole pass) and either averages them or, with ``class_scale``, takes each
class from its own window length: a model trained on 5 s crops may see a 1 s croak best in 5 s windows
(the per-window normalisation matches training) and an 8 s trill best in whole recordings.
All modes return the same format on the same frame grid.

Under DDP ``trainer.predict`` only returns the local rank's share. :class:`ShardedPredictionWriter`
writes one shard per rank, and after a barrier rank 0 merges them, checks that every item appears
exactly once, and writes one file atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from .workspace import rank_shard, read_npz, write_npz


MODES = ("whole", "windows", "multiscale")


@torch.no_grad()
def predict_framewise(model: torch.nn.Module, wave: torch.Tensor, mode: str = "whole",
                      window_seconds: float | Sequence[float] = 10.0, window_hop_seconds: float = 5.0,
                      sample_rate: int | None = None,
                      class_scale: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Framewise probabilities (B, C, T) float16 and clip probabilities (B, C) float32 of whole recordings.

    ``multiscale``: ``window_seconds`` lists the window lengths (hop = half a window); ``class_scale``
    (one window length per class, each in ``window_seconds``) picks each class's scale, else the mean.
    """
    if mode == "whole":
        out = model(wave)
        framewise = torch.sigmoid(out["framewise_logits"].float())
        clip = torch.sigmoid(out["clip_logits"].float())
        return framewise.half(), clip
    if mode == "windows":
        return _predict_windows(model, wave, float(window_seconds), window_hop_seconds, sample_rate)
    if mode == "multiscale":
        return _predict_multiscale(model, wave, window_seconds, sample_rate, class_scale)
    raise ValueError(f"predict.mode={mode!r}: choose one of {MODES}")


def predict_valid(predict, wave: torch.Tensor, n_valid: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``predict(wave) -> (framewise (B, C, T), clip (B, C))`` of a batch of recordings zero-padded to one
    length, with each recording shorter than the batch (``n_valid`` samples of its own) predicted on its
    own samples alone and its frames past its end set to 0.

    Why: a batch (and the N x C x T prediction files) needs one length, but zeros are not silence to a
    network whose front-end normalises per input, and the clip score of a padded pass would mix in what
    the model makes of them. A 0 frame never raises a max, the default clip aggregation. Recordings as
    long as the batch (every recording, when they all have ``data.duration_s``) take the batched pass alone;
    a shorter one costs a second, single-recording pass (the batched pass also gives the grid's frame
    count, which the template matcher and the networks define differently).
    """
    framewise, clip = predict(wave)
    if n_valid is None:
        return framewise, clip
    short = torch.nonzero(n_valid < wave.shape[-1]).flatten().tolist()
    if not short:
        return framewise, clip
    framewise, clip = framewise.clone(), clip.clone()
    t = framewise.shape[-1]
    for i in short:
        own_frames, own_clip = predict(wave[i:i + 1, :int(n_valid[i])])
        n = min(t, own_frames.shape[-1])
        framewise[i] = 0
        framewise[i, :, :n] = own_frames[0, :, :n].to(framewise.dtype)
        clip[i] = own_clip[0].to(clip.dtype)
    return framewise, clip


def predict_batch(predict, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``predict_step``'s output for :class:`ShardedPredictionWriter`: ``predict`` (wave -> framewise,
    clip) on the batch's recordings (:func:`predict_valid`), with the item indices and each recording's
    own length in samples (``n_valid``, when the batch says it), which the prediction files keep."""
    framewise, clip = predict_valid(predict, batch["wave"], batch.get("n_valid"))
    out = {"index": batch["index"], "framewise": framewise, "clip": clip}
    if "n_valid" in batch:
        out["n_valid"] = batch["n_valid"]
    return out


def _predict_multiscale(model, wave, scales, sample_rate, class_scale):
    scales = [float(s) for s in (scales if isinstance(scales, Sequence) and not isinstance(scales, str) else [scales])]
    if not scales:
        raise ValueError("predict.mode=multiscale needs predict.window_seconds to list window lengths")
    sr = sample_rate or model.frontend.sample_rate
    outputs = []
    for seconds in scales:
        if seconds * sr >= wave.shape[-1]:
            outputs.append(predict_framewise(model, wave, "whole"))
        else:
            outputs.append(_predict_windows(model, wave, seconds, seconds / 2, sr))
    return combine_scales([f for f, _ in outputs], [c for _, c in outputs], scales, class_scale)


def combine_scales(framewise: Sequence[torch.Tensor], clip: Sequence[torch.Tensor], scales: Sequence[float],
                   class_scale: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One output from several scales' outputs: each class from its scale in ``class_scale``, else the mean.

    Framewise outputs are put on the grid of the first scale (linear interpolation; window grids differ
    from the whole-recording grid by a frame or two of rounding).
    """
    t = framewise[0].shape[-1]
    frames = torch.stack([torch.nn.functional.interpolate(f.float(), size=t, mode="linear", align_corners=False)
                          if f.shape[-1] != t else f.float() for f in framewise])          # (S, B, C, T)
    clips = torch.stack([c.float() for c in clip])                                       # (S, B, C)
    if class_scale is None:
        return frames.mean(0).half(), clips.mean(0)
    scales = [float(s) for s in scales]
    if len(class_scale) != frames.shape[2]:
        raise ValueError(f"predict.class_scale has {len(class_scale)} entries, the model has {frames.shape[2]} classes")
    unknown = sorted({float(s) for s in class_scale} - set(scales))
    if unknown:
        raise ValueError(f"predict.class_scale uses window lengths {unknown} that are not in {scales}")
    index = torch.as_tensor([scales.index(float(s)) for s in class_scale], device=frames.device)
    classes = torch.arange(frames.shape[2], device=frames.device)
    return frames[index, :, classes].transpose(0, 1).half(), clips[index, :, classes].transpose(0, 1)


def _predict_windows(model, wave, window_seconds, hop_seconds, sample_rate):
    """Overlapping windows; framewise outputs placed on a common grid and averaged where they overlap.

    The stitched grid (frames per window x windows) can differ from the whole-recording grid by a frame
    or two of rounding; it is resampled onto the latter, so OOF files, pool targets and ensembles of runs
    predicted in different modes line up frame for frame. The placement is :class:`WindowStitcher`'s,
    shared with the streaming detector (``stage=detect``), which feeds it the same windows a few at a time.
    """
    sr = sample_rate or model.frontend.sample_rate
    win, hop = int(window_seconds * sr), int(hop_seconds * sr)
    n = wave.shape[-1]
    if n <= win:  # a recording no longer than one window is that one window: the whole-recording pass
        return predict_framewise(model, wave, "whole")
    starts = window_starts(n, win, hop)
    windows = torch.stack([wave[:, s:s + win] for s in starts], 1)  # (B, W, win)
    b, w = windows.shape[:2]
    frames, clip = window_probabilities(model, windows.reshape(b * w, -1))
    frames, clip = frames.reshape(b, w, *frames.shape[1:]), clip.reshape(b, w, -1)
    stitcher = WindowStitcher(n, win)
    stitcher.add(starts, frames, clip)
    t_whole = model.output_frames(n) if hasattr(model, "output_frames") else None
    return stitcher.finish(t_whole)


def window_probabilities(model: torch.nn.Module, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 probabilities of a batch of windows (W, n): framewise (W, C, t) and clip (W, C).

    Kept float32 (not the float16 of the final output) because the windows are averaged where they overlap.
    """
    out = model(windows)
    return torch.sigmoid(out["framewise_logits"].float()), torch.sigmoid(out["clip_logits"].float())


def window_starts(n: int, win: int, hop: int) -> list[int]:
    """Start samples of the prediction windows over ``n`` samples: every ``hop``, plus one flush with the end."""
    starts = list(range(0, max(1, n - win) + 1, hop))
    if starts[-1] + win < n:
        starts.append(n - win)
    return starts


class WindowStitcher:
    """Accumulates window outputs of one recording onto its stitched grid; :meth:`finish` averages them.

    Windows may be added in any number of calls (in any order), so a long file can be predicted a few
    windows at a time with memory bounded by the output grid, and the result is the very arithmetic of a
    one-shot pass over all windows. ``frames`` are (..., W, C, t_win) probabilities and ``clip`` (..., W, C);
    leading dimensions (recordings in a batch, fold models) are kept.
    """

    def __init__(self, n: int, win: int):
        self.n, self.win = int(n), int(win)
        self.acc: torch.Tensor | None = None
        self.clip: torch.Tensor | None = None

    def add(self, starts: Sequence[int], frames: torch.Tensor, clip: torch.Tensor) -> None:
        t_win = frames.shape[-1]
        if self.acc is None:
            self.t_total = int(round(t_win * self.n / self.win))
            self.acc = frames.new_zeros(*frames.shape[:-3], frames.shape[-2], self.t_total)
            self.count = frames.new_zeros(self.t_total)
        for j, s in enumerate(starts):
            t0 = min(int(round(int(s) / self.n * self.t_total)), self.t_total - t_win)
            self.acc[..., t0:t0 + t_win] += frames[..., j, :, :]
            self.count[t0:t0 + t_win] += 1
        window_max = clip.amax(-2)
        self.clip = window_max if self.clip is None else torch.maximum(self.clip, window_max)

    def finish(self, t_whole: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(framewise float16 on ``t_whole`` frames when given, clip float32): the mean where windows overlap."""
        if self.acc is None:
            raise RuntimeError("WindowStitcher.finish() before any window was added")
        framewise = self.acc / self.count.clamp_min(1)
        if t_whole is not None and t_whole != self.t_total:  # onto the whole-recording grid: every mode, same T
            shape = framewise.shape
            framewise = torch.nn.functional.interpolate(framewise.reshape(-1, shape[-2], shape[-1]), size=t_whole,
                                                        mode="linear", align_corners=False)
            framewise = framewise.reshape(*shape[:-1], t_whole)
        return framewise.half(), self.clip


class ShardedPredictionWriter(BasePredictionWriter):
    """Collects one ``trainer.predict`` run per rank and merges the shards on rank 0.

    Call :meth:`start` before ``trainer.predict`` and :meth:`finish` after it (on every rank).
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._reset(None, ())

    def _reset(self, out_path: Path | None, ids: Sequence[str]) -> None:
        self.out_path, self.recording_ids = out_path, list(ids)
        self._index: list[np.ndarray] = []
        self._framewise: list[np.ndarray] = []
        self._clip: list[np.ndarray] = []
        self._n_valid: list[np.ndarray] = []

    def start(self, out_path: str | Path, recording_ids: Sequence[str]) -> None:
        self._reset(Path(out_path), recording_ids)

    def predict_sets(self, trainer, module, datamodule, paths: dict[str, Path],
                     ckpt_path: str | None = None) -> dict[str, Path]:
        """The one prediction loop of the K-fold stages, the template stage and re-prediction: each named
        prediction set of ``datamodule`` (``predict_sets``: ``oof``, ``test``) predicted by ``module`` into its
        file in ``paths``, gathered across ranks. Returns the merged paths by set name."""
        written = {}
        for name, path in paths.items():
            datamodule.predict_name = name
            self.start(path, datamodule.predict_sets[name][1])
            trainer.predict(module, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
            written[name] = self.finish(trainer)
        return written

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch: Any,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        self._index.append(prediction["index"].cpu().numpy())
        self._framewise.append(prediction["framewise"].cpu().numpy().astype(np.float16))
        self._clip.append(prediction["clip"].cpu().numpy().astype(np.float32))
        if "n_valid" in prediction:
            self._n_valid.append(prediction["n_valid"].cpu().numpy().astype(np.int64))

    def finish(self, trainer, extra: dict[str, np.ndarray] | None = None) -> Path | None:
        """Write this rank's shard, wait for all ranks, merge on rank 0; returns the merged path."""
        assert self.out_path is not None, "call start() before trainer.predict"
        rank, world = trainer.global_rank, trainer.world_size
        shard = rank_shard(self.out_path, rank)
        if self._index:
            lengths = {"n_valid": np.concatenate(self._n_valid)} if len(self._n_valid) == len(self._index) else {}
            write_npz(shard, index=np.concatenate(self._index), framewise=np.concatenate(self._framewise),
                      clip=np.concatenate(self._clip), **lengths)
        else:  # a rank can get no item when there are fewer items than ranks
            write_npz(shard, index=np.zeros(0, np.int64), framewise=np.zeros((0, 0, 0), np.float16),
                      clip=np.zeros((0, 0), np.float32))
        trainer.strategy.barrier("prediction-shards")
        if rank == 0:
            shards = [rank_shard(self.out_path, r) for r in range(world)]
            merge_shards(shards, self.out_path, self.recording_ids, extra or {})
            for path in shards:
                path.unlink()
        trainer.strategy.barrier("prediction-merged")
        out = self.out_path
        self._reset(None, ())
        return out


def merge_shards(shards: Sequence[Path], out_path: Path, recording_ids: Sequence[str],
                 extra: dict[str, np.ndarray]) -> Path:
    """Concatenate rank shards, assert each item appears exactly once, order by item index, write atomically."""
    parts = [read_npz(p) for p in shards]
    parts = [p for p in parts if len(p["index"])]
    index = np.concatenate([p["index"] for p in parts])
    counts = np.bincount(index, minlength=len(recording_ids))
    if len(counts) != len(recording_ids) or not np.all(counts == 1):
        missing = [recording_ids[i] for i in np.flatnonzero(counts[:len(recording_ids)] == 0)][:5]
        repeated = [recording_ids[i] for i in np.flatnonzero(counts[:len(recording_ids)] > 1)][:5]
        raise RuntimeError(f"{out_path.name}: predictions must cover each recording exactly once; "
                           f"missing {missing}, repeated {repeated}")
    order = np.argsort(index)
    if all("n_valid" in p for p in parts):  # each recording's own length in samples (recordings of any length)
        extra = {"n_valid": np.concatenate([p["n_valid"] for p in parts])[order], **extra}
    return write_npz(out_path, recording_id=np.asarray(recording_ids, dtype=str),
                     framewise=np.concatenate([p["framewise"] for p in parts])[order],
                     clip=np.concatenate([p["clip"] for p in parts])[order], **extra)
