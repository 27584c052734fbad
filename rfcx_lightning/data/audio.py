"""Decode each recording once and cache it as a memory-mapped int16 array.

Decoding a 60 s, 48 kHz FLAC and resampling it costs ~50-100 ms; a crop-based training loop touches each
recording many times per epoch, so decoding on the fly would bound the GPU by the CPU. The cache holds
one int16 `.npy` per recording at the model's sample rate (32 kHz: 3.84 MB per minute, ~18 GB for all
of train + test), opened with `np.load(mmap_mode='r')`, so a random crop reads only the pages it needs.

Every failure names the file: a silent zero array or a truncated clip would train on garbage without
any symptom until the score drops.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf
import soxr

from ..workspace import atomic_path, remove_temporary_files

__all__ = ["AudioError", "AudioCache", "AudioSettings", "decode", "to_int16"]

INT16_SCALE = 32767.0
# Temp files older than this are leftovers of an interrupted build (a live build writes one file in
# well under a minute); younger ones may belong to a concurrent builder and are left alone.
_STALE_TEMP_AGE_S = 3600.0


@dataclass(frozen=True)
class AudioSettings:
    """The ``audio:`` block (stages/base.yaml, each default written there): the cache's rate and builders."""

    sample_rate: int
    cache_dir: str
    workers: int
    downmix: bool
    allow_other_rates: bool

    def cache(self) -> "AudioCache":
        return AudioCache(Path(self.cache_dir).expanduser(), target_sr=self.sample_rate)


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and says why."""


def decode(
    path,
    *,
    target_sr: int = 32000,
    expected_sr: int | None = 48000,
    expected_duration_s: float | None = 60.0,
    duration_tolerance_s: float = 0.1,
    downmix: bool = False,
    allow_resample_other_rates: bool = False,
) -> np.ndarray:
    """Decode an audio file to float32 mono at `target_sr`, checking it is what the dataset promises.

    - A native rate other than `expected_sr` is an error unless `allow_resample_other_rates` (a different
      rate usually means a file from another dataset slipped in). `expected_sr=None` accepts any rate.
    - Multi-channel audio is an error unless `downmix=True`, which takes the mean of the channels.
    - Shorter than `expected_duration_s - duration_tolerance_s` is an error (truncated download);
      longer files are trimmed to `expected_duration_s`, so every cached recording has the same length
      (exactly round(expected_duration_s * target_sr) samples). `expected_duration_s=None` keeps the
      file's own length.
    - Empty, all-zero or non-finite audio is an error rather than a silent zero array.

    Resampling uses soxr at quality "HQ".
    """
    path = Path(path)
    try:
        data, native_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for missing/corrupt/unsupported files
        raise AudioError(f"{path}: cannot decode audio ({type(exc).__name__}: {exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio file (0 frames)")
    data = _to_mono(path, data, downmix)
    _check_rate(path, native_sr, expected_sr, allow_resample_other_rates)
    data = _fit_duration(path, data, native_sr, expected_duration_s, duration_tolerance_s)
    _check_content(path, data)
    out = _resample(data, native_sr, target_sr)
    if expected_duration_s is not None:
        out = _exact_length(out, int(round(expected_duration_s * target_sr)))
    return np.ascontiguousarray(out, dtype=np.float32)


def _to_mono(path: Path, data: np.ndarray, downmix: bool) -> np.ndarray:
    """(frames, channels) -> (frames,); stereo is an error unless explicitly downmixed."""
    channels = data.shape[1]
    if channels == 1:
        return data[:, 0]
    if not downmix:
        raise AudioError(f"{path}: {channels} channels, expected mono (pass downmix=True to average channels)")
    return data.mean(axis=1, dtype=np.float32)


def _check_rate(path: Path, native_sr: int, expected_sr: int | None, allow_other: bool) -> None:
    if expected_sr is not None and native_sr != expected_sr and not allow_other:
        raise AudioError(
            f"{path}: sample rate {native_sr} Hz, expected {expected_sr} Hz "
            "(pass allow_resample_other_rates=True to resample it anyway)"
        )


def _fit_duration(path: Path, data: np.ndarray, sr: int, expected_s: float | None, tol_s: float) -> np.ndarray:
    """Reject truncated files; trim longer ones to the expected duration."""
    if expected_s is None:
        return data
    actual_s = data.shape[0] / sr
    if actual_s < expected_s - tol_s:
        raise AudioError(
            f"{path}: {actual_s:.3f} s long, expected {expected_s} s (tolerance {tol_s} s): truncated file?"
        )
    return data[: int(round(expected_s * sr))]


def _check_content(path: Path, data: np.ndarray) -> None:
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if not np.any(data):
        raise AudioError(f"{path}: audio is all zeros (silent or corrupt file)")


def _resample(data: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return data
    return soxr.resample(data, sr_in, sr_out, quality="HQ")


def _exact_length(data: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad (by at most a few samples of resampler rounding) to exactly n samples."""
    if data.shape[0] >= n:
        return data[:n]
    return np.pad(data, (0, n - data.shape[0]))


def to_int16(audio: np.ndarray) -> tuple[np.ndarray, float, int]:
    """float audio -> (int16 array, gain applied, number of clipped samples).

    Values are scaled by 32767. If the peak exceeds 1 (resampler overshoot on full-scale audio), the
    whole recording is scaled down by 1/peak instead of clipping, which would add broadband distortion
    exactly where calls are loudest; `gain` reports that factor (1.0 otherwise) so the caller can warn.
    """
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    gain = 1.0 / peak if peak > 1.0 else 1.0
    scaled = np.rint(audio * np.float32(gain * INT16_SCALE))
    clipped = int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
    return np.clip(scaled, -32768, 32767).astype(np.int16), gain, clipped


def _write_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` as .npy to a hidden temp name in the same directory, then os.replace it into place.

    os.replace within one directory is atomic, so a reader or a resumed build sees either no file or the
    complete one, never a half-written array.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _build_one(out_path: str, flac_path: str, decode_kwargs: dict) -> tuple[str, float, int]:
    """Worker: decode one file and write its cache entry. Returns (flac path, gain, clipped count)."""
    try:
        audio = decode(flac_path, **decode_kwargs)
        data, gain, clipped = to_int16(audio)
        _write_atomic(Path(out_path), data)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{flac_path}: failed to build cache entry {out_path} ({type(exc).__name__}: {exc})") from exc
    return flac_path, gain, clipped


class AudioCache:
    """One int16 .npy per recording at target_sr under cache_dir/<sr>hz/<split>/<id>.npy, opened with
    np.load(mmap_mode='r').

    Open memmaps are kept in a small LRU per process so repeated crop reads do not reopen files. The
    handles are dropped when pickling (DataLoader workers) and reopened lazily in the new process; a
    fork is detected by pid, so forked workers never share the parent's handle table.
    """

    def __init__(self, cache_dir, target_sr: int = 32000, max_open: int = 512):
        self.cache_dir = Path(cache_dir)
        self.target_sr = int(target_sr)
        self.max_open = int(max_open)
        self._reset_handles()

    # -- paths -------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.cache_dir / f"{self.target_sr}hz"

    def path(self, split: str, recording_id: str) -> Path:
        """Cache file of a recording; split and id must be plain names (they become path parts)."""
        for what, name in (("split", split), ("recording_id", recording_id)):
            if (not isinstance(name, str) or not name or "/" in name or "\\" in name or ".." in name
                    or name.startswith(".")):
                raise ValueError(f"invalid {what} {name!r}: must be a plain file name")
        return self.root / split / f"{recording_id}.npy"

    def has(self, split: str, recording_id: str) -> bool:
        return self.path(split, recording_id).is_file()

    # -- reading -----------------------------------------------------------------------------------
    def _reset_handles(self) -> None:
        self._handles: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._pid = os.getpid()

    def _open(self, split: str, recording_id: str) -> np.ndarray:
        """Memmap of a cached recording, reused from the LRU when possible."""
        if self._pid != os.getpid():
            self._reset_handles()
        key = (split, recording_id)
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            return handle
        path = self.path(split, recording_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in the audio cache (run AudioCache.build first)")
        handle = np.load(path, mmap_mode="r", allow_pickle=False)
        if handle.dtype != np.int16 or handle.ndim != 1:
            raise AudioError(f"{path}: expected a 1-D int16 array, found {handle.dtype} {handle.shape}")
        self._handles[key] = handle
        while len(self._handles) > self.max_open:
            self._handles.popitem(last=False)
        return handle

    def n_samples(self, split: str, recording_id: str) -> int:
        return int(self._open(split, recording_id).shape[0])

    def read(self, split: str, recording_id: str, start: int = 0, length: int | None = None) -> np.ndarray:
        """float32 samples [start, start+length) in [-1, 1].

        The window may extend past either edge of the recording (a crop centred on a box near the start
        or end); those samples are zeros and the output always has `length` samples. `length=None` reads
        to the end of the recording.
        """
        data = self._open(split, recording_id)
        n = data.shape[0]
        start = int(start)
        if length is None:
            length = max(n - start, 0)
        length = int(length)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        out = np.zeros(length, dtype=np.float32)
        lo, hi = max(start, 0), min(start + length, n)
        if hi > lo:
            out[lo - start: hi - start] = data[lo:hi].astype(np.float32) / np.float32(INT16_SCALE)
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_handles", None)
        state.pop("_pid", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    # -- building ----------------------------------------------------------------------------------
    def remove_stale_temp_files(self, max_age_s: float = _STALE_TEMP_AGE_S) -> int:
        """Delete temp files of interrupted builds older than `max_age_s`; returns how many.

        Younger temp files may be in flight in a concurrent build (e.g. another DDP rank), so they are
        left alone; they are never mistaken for cache entries since `has` only looks at final names.
        """
        if not self.root.is_dir():
            return 0
        return len(remove_temporary_files(self.root, older_than_s=max_age_s))

    def build(
        self,
        items: Iterable[tuple[str, str, Path]],
        *,
        workers: int = 2,
        progress: bool = True,
        mp_context: str | None = None,
        **decode_kwargs,
    ) -> int:
        """Decode and cache every (split, recording_id, flac_path) not cached yet; returns how many were built.

        Resumable: existing entries are skipped, and each entry appears atomically (temp file +
        os.replace). `workers <= 1` decodes in this process (easier to debug); otherwise a process pool
        (`mp_context`: 'fork', 'spawn', 'forkserver' or None for the platform default).
        The first failure cancels the pending files, waits for the running ones, and raises an
        AudioError naming the file. Recordings whose peak exceeded 1 after resampling are scaled down
        (see to_int16) and reported in one warning.
        """
        decode_kwargs = {"target_sr": self.target_sr, **decode_kwargs}
        if decode_kwargs["target_sr"] != self.target_sr:
            raise ValueError(f"target_sr={decode_kwargs['target_sr']} differs from the cache's {self.target_sr}")
        todo = self._pending(items)
        self.remove_stale_temp_files()
        if not todo:
            return 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"audio cache {self.target_sr} Hz", unit="file", disable=not progress)
        results: list[tuple[str, float, int]] = []
        try:
            if workers <= 1:
                for out_path, flac in todo:
                    results.append(_build_one(out_path, flac, decode_kwargs))
                    bar.update(1)
            else:
                results = self._build_parallel(todo, workers, decode_kwargs, bar, mp_context)
        finally:
            bar.close()
        self._warn_rescaled(results)
        return len(results)

    def _pending(self, items: Iterable[tuple[str, str, Path]]) -> list[tuple[str, str]]:
        """(cache path, flac path) of the items not cached yet; conflicting duplicates are an error."""
        seen: dict[tuple[str, str], str] = {}
        todo = []
        for split, recording_id, flac in items:
            key, flac = (split, recording_id), str(flac)
            if key in seen:
                if seen[key] != flac:
                    raise ValueError(f"{split}/{recording_id} listed twice with different files: {seen[key]}, {flac}")
                continue
            seen[key] = flac
            out = self.path(split, recording_id)
            if not out.is_file():
                todo.append((str(out), flac))
        return todo

    @staticmethod
    def _build_parallel(todo, workers, decode_kwargs, bar, mp_context) -> list[tuple[str, float, int]]:
        """Decode in a process pool; on the first error cancel what has not started, let the running
        workers finish (their files are complete and atomic), then raise naming the failed file."""
        results = []
        ctx = multiprocessing.get_context(mp_context) if mp_context else None
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx)
        try:
            futures = {pool.submit(_build_one, out, flac, decode_kwargs): flac for out, flac in todo}
            for fut in as_completed(futures):
                exc = fut.exception()
                if exc is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                    if isinstance(exc, AudioError):
                        raise exc
                    raise AudioError(f"{futures[fut]}: cache build failed ({type(exc).__name__}: {exc})") from exc
                results.append(fut.result())
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    @staticmethod
    def _warn_rescaled(results: list[tuple[str, float, int]]) -> None:
        rescaled = [(flac, gain) for flac, gain, _ in results if gain < 1.0]
        clipped = sum(c for _, _, c in results)
        if rescaled:
            shown = ", ".join(f"{Path(f).name} (gain {g:.4f})" for f, g in rescaled[:5])
            warnings.warn(
                f"{len(rescaled)} recording(s) peaked above full scale after resampling and were scaled "
                f"down instead of clipped: {shown}{' ...' if len(rescaled) > 5 else ''}",
                stacklevel=3,
            )
        if clipped:
            warnings.warn(f"{clipped} sample(s) clipped while converting to int16", stacklevel=3)
