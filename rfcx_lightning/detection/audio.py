"""Audio of new recordings, read in blocks: any rate, any channel count, any length, flat memory.

The training cache (:mod:`rfcx_lightning.data.audio`) decodes whole 60 s files; a field recorder's
night-long WAV would not fit. :class:`AudioStream` reads ``block_seconds`` of the file at a time with
soundfile, averages the channels and resamples with a ``soxr.ResampleStream`` (quality "HQ", the cache's
setting), whose output over consecutive blocks is the one-shot ``soxr.resample`` output sample for sample
(``tests/test_detect.py`` checks it). The length at the model's rate is known from the header before any
sample is read (``round(frames * sr / native_sr)``, soxr's own rounding), so prediction windows can be
placed before the file has been read; the stream is cut or zero-padded to exactly that length.

Every failure is an :class:`~rfcx_lightning.data.audio.AudioError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr

from ..data.audio import AudioError

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".aiff", ".aif")


def list_audio(root: str | Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Every file under ``root`` (recursive) whose suffix is in ``extensions`` (case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"detect.audio={root}: not a directory")
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted
                  and not p.name.startswith("."))


class AudioStream:
    """One file at ``target_sr`` mono, as consecutive float32 blocks (see the module docstring)."""

    def __init__(self, path: str | Path, target_sr: int, block_seconds: float = 30.0):
        self.path = Path(path)
        self.target_sr = int(target_sr)
        try:
            info = sf.info(str(self.path))
        except Exception as exc:  # libsndfile raises several types for corrupt/unsupported files
            raise AudioError(f"{self.path}: cannot decode audio ({type(exc).__name__}: {exc})") from exc
        self.native_sr, self.channels, self.native_frames = int(info.samplerate), int(info.channels), int(info.frames)
        if self.native_frames <= 0:
            raise AudioError(f"{self.path}: empty audio file (0 frames)")
        self.n_samples = self.native_frames if self.native_sr == self.target_sr else \
            int(round(self.native_frames * self.target_sr / self.native_sr))
        self.block_frames = max(1, int(block_seconds * self.native_sr))

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.target_sr

    def blocks(self) -> Iterator[np.ndarray]:
        """Consecutive mono float32 blocks at ``target_sr``; together exactly ``n_samples`` samples."""
        resampler = None if self.native_sr == self.target_sr else \
            soxr.ResampleStream(self.native_sr, self.target_sr, 1, dtype="float32", quality="HQ")
        emitted = 0
        try:
            with sf.SoundFile(str(self.path)) as handle:
                read = 0
                while read < self.native_frames:
                    data = handle.read(min(self.block_frames, self.native_frames - read), dtype="float32",
                                       always_2d=True)
                    if len(data) == 0:
                        raise AudioError(f"{self.path}: ends after {read} of {self.native_frames} frames "
                                         "(truncated file?)")
                    read += len(data)
                    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
                    if not np.all(np.isfinite(mono)):
                        raise AudioError(f"{self.path}: audio contains NaN or infinite samples")
                    out = mono if resampler is None else \
                        resampler.resample_chunk(mono, last=read >= self.native_frames)
                    out = out[:max(0, self.n_samples - emitted)]
                    emitted += len(out)
                    if len(out):
                        yield np.ascontiguousarray(out, dtype=np.float32)
        except AudioError:
            raise
        except Exception as exc:
            raise AudioError(f"{self.path}: cannot decode audio ({type(exc).__name__}: {exc})") from exc
        if emitted < self.n_samples:  # a resampler rounding short by a sample or two
            yield np.zeros(self.n_samples - emitted, dtype=np.float32)

    def read_all(self) -> np.ndarray:
        """The whole file at once (tests and short files); the concatenation of :meth:`blocks`."""
        return np.concatenate(list(self.blocks()))


def read_whole(path: str | Path, target_sr: int) -> np.ndarray:
    """Reference decode of a whole file with the training cache's decoder (one-shot soxr), same length."""
    from ..data.audio import _exact_length, decode

    stream = AudioStream(path, target_sr)
    audio = decode(path, target_sr=target_sr, expected_sr=None, expected_duration_s=None, downmix=True)
    return _exact_length(audio, stream.n_samples)
