"""Prediction windows over long files, streamed: the data side of ``stage=detect``.

A run's test predictions go through :func:`rfcx_lightning.inference.predict_framewise` on whole 60 s
recordings. Here a file can last hours, so the same windows (:func:`~rfcx_lightning.inference.window_starts`)
are cut from the stream of audio blocks and sent a few at a time (``detect.batch_windows``); the
prediction writer stitches them with the same :class:`~rfcx_lightning.inference.WindowStitcher`. Memory
holds one block plus one window, whatever the file's length.

Which windows (:func:`prediction_passes`), per ``predict.mode`` of the run:

* ``windows``: ``window_seconds`` every ``window_hop_seconds``; a file no longer than one window is one
  whole pass (what windows of a recording shorter than a window amount to).
* ``whole``: the file in one pass when it is no longer than the run's recordings (``data.duration_s``);
  a longer file is cut into windows of that length with half overlap, because one pass over an hour of
  audio would need memory in proportion to it (and the model never saw such inputs).
* ``multiscale``: every scale of ``window_seconds``, each as in ``_predict_multiscale`` (a scale no
  shorter than the file is a whole pass); combined by the writer with ``combine_scales``.

Under DDP each rank takes every ``world``-th file (and each DataLoader worker every ``workers``-th of
those), so each file is read by exactly one process and its windows arrive in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..data.audio import AudioError
from ..inference import window_starts
from .audio import AudioStream


@dataclass(frozen=True)
class Pass:
    """One set of windows over a file: ``win`` samples every ``hop`` (a whole pass: win = n)."""

    win: int
    hop: int
    scale: float | None = None     # multiscale: the window length (s) this pass stands for


def prediction_passes(n: int, sample_rate: int, predict: dict, duration_s: float) -> list[Pass]:
    """The passes that predict an ``n``-sample file as the run predicted its test recordings."""
    mode = str(predict.get("mode", "whole"))
    sr = int(sample_rate)
    if mode == "whole":
        full = int(round(float(duration_s) * sr))
        return [Pass(n, n)] if n <= full else [Pass(full, full // 2)]
    if mode == "windows":
        win, hop = int(float(predict["window_seconds"]) * sr), int(float(predict["window_hop_seconds"]) * sr)
        return [Pass(n, n)] if n <= win else [Pass(win, hop)]
    if mode == "multiscale":
        scales = predict["window_seconds"]
        scales = [float(s) for s in (scales if isinstance(scales, Sequence) and not isinstance(scales, str)
                                     else [scales])]
        if not scales:
            raise ValueError("predict.mode=multiscale needs predict.window_seconds to list window lengths")
        return [Pass(n, n, s) if s * sr >= n else Pass(int(s * sr), int(s / 2 * sr), s) for s in scales]
    raise ValueError(f"predict.mode={mode!r}: choose whole, windows or multiscale")


def stream_windows(stream: AudioStream, win: int, hop: int, batch_windows: int
                   ) -> Iterator[tuple[list[int], np.ndarray]]:
    """(start samples, (W, win) float32 windows) batches over ``stream``, in start order.

    Only the samples from the next window's start on are kept between blocks.
    """
    n = stream.n_samples
    starts = window_starts(n, win, hop)
    buffer, offset = np.zeros(0, np.float32), 0    # buffer holds samples [offset, offset + len(buffer))
    blocks = stream.blocks()
    batch_starts: list[int] = []
    batch: list[np.ndarray] = []
    for i, s in enumerate(starts):
        while offset + len(buffer) < min(s + win, n):
            block = next(blocks, None)
            if block is None:
                break
            buffer = np.concatenate([buffer, block])
        window = buffer[s - offset:s - offset + win]
        if len(window) < min(win, n - s):
            raise AudioError(f"{stream.path}: stream ended at sample {offset + len(buffer)} of {n}")
        batch_starts.append(s)
        batch.append(window)
        if len(batch) == batch_windows:
            yield batch_starts, np.stack(batch)
            batch_starts, batch = [], []
        following = starts[i + 1] if i + 1 < len(starts) else n
        drop = max(0, min(len(buffer), following - offset))     # nothing before the next window is needed
        buffer, offset = buffer[drop:], offset + drop
    if batch:
        yield batch_starts, np.stack(batch)


class WindowStream(IterableDataset):
    """Window batches of the files this process owns; a file that cannot be read yields an error item.

    Items (already batches; the DataLoader uses ``batch_size=None``): ``file`` (index into ``files``),
    ``pass`` (index into the file's passes), ``starts``, ``wave`` (W, win), ``n`` (samples), ``win``,
    ``last_in_pass``, ``last`` (the file's final item) and ``seconds`` (new audio this item covers, for the
    progress bar); or ``file`` and ``error`` (a message naming the file).
    """

    def __init__(self, files: Sequence[str | Path], indices: Sequence[int], sample_rate: int, predict: dict,
                 duration_s: float, batch_windows: int = 8, block_seconds: float = 30.0):
        self.files = [str(f) for f in files]
        self.indices = list(indices)          # the files of this rank
        self.sample_rate, self.predict, self.duration_s = int(sample_rate), dict(predict), float(duration_s)
        self.batch_windows, self.block_seconds = max(1, int(batch_windows)), float(block_seconds)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.indices if worker is None else self.indices[worker.id::worker.num_workers]
        for index in mine:
            yield from self._file_items(index)

    def _file_items(self, index: int) -> Iterator[dict]:
        path = self.files[index]
        try:
            stream = AudioStream(path, self.sample_rate, self.block_seconds)
            passes = prediction_passes(stream.n_samples, self.sample_rate, self.predict, self.duration_s)
            for p, spec in enumerate(passes):
                batches = list_lazily(stream_windows(AudioStream(path, self.sample_rate, self.block_seconds),
                                                     spec.win, spec.hop, self.batch_windows))
                covered = 0
                for starts, wave, last_in_pass in batches:
                    end = min(stream.n_samples, starts[-1] + spec.win)
                    seconds = max(0, end - covered) / self.sample_rate / len(passes)
                    covered = max(covered, end)
                    yield {"file": index, "pass": p, "starts": torch.as_tensor(starts, dtype=torch.long),
                           "wave": torch.from_numpy(wave), "n": stream.n_samples, "win": spec.win,
                           "last_in_pass": last_in_pass, "last": last_in_pass and p == len(passes) - 1,
                           "seconds": seconds}
        except AudioError as err:
            yield {"file": index, "error": str(err)}
        except Exception as err:  # anything else a broken file can make a decoder raise
            yield {"file": index, "error": f"{path}: {type(err).__name__}: {err}"}


def list_lazily(batches: Iterator[tuple[list[int], np.ndarray]]) -> Iterator[tuple[list[int], np.ndarray, bool]]:
    """``batches`` with a flag on the last one (one batch of look-ahead, not the whole list)."""
    previous = next(batches, None)
    while previous is not None:
        current = next(batches, None)
        yield previous[0], previous[1], current is None
        previous = current
