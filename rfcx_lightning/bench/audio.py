"""Audio: building the int16 cache versus ``librosa.load``, and reading a crop from the cache versus decoding.

Build: per file, alternately, (a) :meth:`AudioCache.build` of that one file into a fresh folder (soundfile
decode, checks, soxr resample, int16, atomic write), (b) ``librosa.load(path, sr=...)`` (librosa is an
optional bench dependency; skipped with a note when missing), (c) ``soundfile.read`` alone, to show how
much of either is the FLAC decode itself. Then the whole set again with ``audio.workers`` processes.

Crop reads: random crops of ``crops.seconds``, alternately (a) from the memory-mapped cache (warm page
cache: the steady state of training), (b) decoding the whole FLAC and slicing, as the public notebooks
did, (c) a seek-decode of just the crop's samples plus resampling, the best decode-on-the-fly can do.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..data.audio import AudioCache, decode
from .setup import BenchSetup
from .timing import median, timed


def _decode_kwargs(setup: BenchSetup) -> dict:
    cfg = setup.cfg
    return dict(expected_sr=int(cfg.data.native_sample_rate), expected_duration_s=float(cfg.data.duration_s),
                downmix=bool(cfg.audio.downmix), allow_resample_other_rates=bool(cfg.audio.allow_other_rates))


def bench_cache_build(setup: BenchSetup, n_files: int = 8, n_parallel_files: int | None = None) -> dict:
    """Per file, alternately: a one-file cache build, ``librosa.load`` and ``soundfile.read`` alone; then a
    parallel build (``audio.workers`` processes) of ``n_parallel_files`` files (default ``n_files``): the
    pool's start-up is a one-off cost of a real build over thousands of files, so a handful of files would
    measure mostly that."""
    ctx = setup.ctx
    sr = int(setup.cfg.audio.sample_rate)
    all_ids = list(ctx.train.recording_ids)
    ids = all_ids[:n_files]
    paths = [ctx.data_root.audio_path("train", rid) for rid in ids]
    parallel_ids = all_ids[:n_parallel_files or n_files]
    parallel_paths = [ctx.data_root.audio_path("train", rid) for rid in parallel_ids]
    kwargs = _decode_kwargs(setup)
    try:
        import librosa
    except ImportError:  # optional: the comparison is skipped, not the benchmark
        librosa = None
    seconds = {"cache_build": 0.0, "soundfile_decode_only": 0.0}
    if librosa is not None:
        seconds["librosa_load"] = 0.0
    scratch = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=ctx.workspace))
    try:
        if librosa is not None:
            librosa.load(str(paths[0]), sr=sr)  # warm-up: librosa's lazy imports
        for i, (rid, path) in enumerate(zip(ids, paths)):
            cache = AudioCache(scratch / f"seq{i}", target_sr=sr)
            seconds["cache_build"] += timed(lambda: cache.build([("train", rid, path)], workers=1, progress=False,
                                                                **kwargs))
            if librosa is not None:
                seconds["librosa_load"] += timed(lambda: librosa.load(str(path), sr=sr))
            seconds["soundfile_decode_only"] += timed(lambda: sf.read(str(path), dtype="float32"))
        workers = int(setup.cfg.audio.workers)
        parallel = AudioCache(scratch / "parallel", target_sr=sr)
        parallel_s = timed(lambda: parallel.build([("train", r, p) for r, p in zip(parallel_ids, parallel_paths)],
                                                  workers=workers, progress=False, **kwargs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_s = {name: len(ids) / s for name, s in seconds.items()}
    result = {"files": len(ids), "target_sr": sr, "recordings_per_s": per_s,
              "parallel_workers": workers, "parallel_files": len(parallel_ids),
              "recordings_per_s_parallel_build": len(parallel_ids) / parallel_s,
              "decode_share_of_build": seconds["soundfile_decode_only"] / seconds["cache_build"]}
    if librosa is not None:
        result["librosa_version"] = librosa.__version__
        result["speedup_build_vs_librosa"] = per_s["cache_build"] / per_s["librosa_load"]
        result["speedup_parallel_build_vs_librosa"] = result["recordings_per_s_parallel_build"] / per_s["librosa_load"]
    return result


def bench_crop_read(setup: BenchSetup, n_crops: int = 200, n_decodes: int = 4, rounds: int = 3,
                    seed: int = 0) -> dict:
    ctx, cfg = setup.ctx, setup.cfg
    sr, native = int(cfg.audio.sample_rate), int(cfg.data.native_sample_rate)
    crop_s, duration = float(cfg.crops.seconds), float(cfg.data.duration_s)
    ids = list(ctx.train.recording_ids)
    rng = np.random.default_rng(seed)
    kwargs = _decode_kwargs(setup)

    def draws(n):
        return [(ids[int(rng.integers(len(ids)))], float(rng.uniform(0, duration - crop_s))) for _ in range(n)]

    def from_cache(crops):
        for rid, t in crops:
            ctx.cache.read("train", rid, int(t * sr), int(crop_s * sr))

    def decode_whole(crops):
        for rid, t in crops:
            decode(ctx.data_root.audio_path("train", rid), target_sr=sr, **kwargs)[int(t * sr): int((t + crop_s) * sr)]

    def decode_seek(crops):
        for rid, t in crops:
            data, rate = sf.read(str(ctx.data_root.audio_path("train", rid)), start=int(t * native),
                                 stop=int((t + crop_s) * native), dtype="float32")
            soxr.resample(data, rate, sr, quality="HQ")

    from_cache(draws(min(len(ids), 50)))  # open the memmaps once, as a running DataLoader worker has
    per_crop = {"cache": [], "decode_whole_flac": [], "decode_seek_crop": []}
    for _ in range(rounds):
        for name, fn, n in (("cache", from_cache, n_crops), ("decode_whole_flac", decode_whole, n_decodes),
                            ("decode_seek_crop", decode_seek, n_decodes)):
            crops = draws(n)
            per_crop[name].append(timed(lambda: fn(crops)) / n)
    latency = {name: median(v) for name, v in per_crop.items()}
    return {"crop_seconds": crop_s, "crops_from_cache": n_crops * rounds, "decodes": n_decodes * rounds,
            "latency_s": latency,
            "speedup_cache_vs_decode_whole": latency["decode_whole_flac"] / latency["cache"],
            "speedup_cache_vs_decode_seek": latency["decode_seek_crop"] / latency["cache"],
            "page_cache": "warm (the cache files were read before timing)"}


def rows(result: dict) -> list[tuple[str, str, str]]:
    build, crop = result.get("build", {}), result.get("crop_read", {})
    out = []
    if "speedup_build_vs_librosa" in build:
        out.append(("audio: cache build vs librosa.load (1 process each)", f"{build['speedup_build_vs_librosa']:.2f}x",
                    f"{build['files']} files; librosa {build['librosa_version']}"))
        out.append((f"audio: cache build with {build['parallel_workers']} workers vs librosa.load",
                    f"{build['speedup_parallel_build_vs_librosa']:.2f}x",
                    f"{build.get('parallel_files', build['files'])} files, pool start-up included; not alternated"))
    elif build:
        out.append(("audio: cache build vs librosa.load", "skipped", "librosa is not installed"))
    if build:
        out.append(("audio: FLAC decode share of a cache build", f"{build['decode_share_of_build']:.0%}",
                    "soundfile.read alone / build"))
    if crop:
        out.append(("audio: crop read, cache vs decoding the whole FLAC",
                    f"{crop['speedup_cache_vs_decode_whole']:.0f}x",
                    f"{crop['crop_seconds']:g} s crops, {crop['latency_s']['cache'] * 1e6:.0f} us from cache (warm)"))
        out.append(("audio: crop read, cache vs seek-decoding the crop",
                    f"{crop['speedup_cache_vs_decode_seek']:.0f}x", ""))
    return out
