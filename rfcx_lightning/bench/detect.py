"""Detection (``stage=detect``): throughput, its cost against the test-set prediction path, flat memory.

* A short real bootstrap run (2 folds, a few batches, on a symlinked subset of the train recordings) makes
  a finished workspace; its fold models are what both paths below predict with.
* Throughput: ``stage=detect`` over the data root's test FLACs, in this process, timed around
  ``DetectStage.run`` (audio hours per wall hour). The test-set path is the runner's own: each fold's
  ``FoldDataModule`` "test" set through ``Trainer.predict`` + ``ShardedPredictionWriter``, reading the
  decoded int16 cache. The ratio is detection / test path on the same recordings with the same models;
  detection decodes and resamples the FLACs itself, the test path found them decoded.
* Memory: one child ``python -m rfcx_lightning.run stage=detect`` per file length (a 1-minute and a
  ``long_minutes`` file, cut from the test recordings), peak RSS sampled over its process tree. Audio is
  streamed in blocks, so the peak should not grow with the file; only the framewise output does (a few
  KB per second of audio).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import soundfile as sf

from ..inference import ShardedPredictionWriter
from ..config import load_config
from ..workspace import atomic_path
from .memory import passthrough, subset_root
from .procs import run_cli
from .setup import BenchSetup


def _finished_workspace(setup: BenchSetup, base: Path, train_batches: int, n_train: int) -> Path:
    """A short bootstrap run on the first ``n_train`` train recordings (a symlinked subset root, the
    shared audio cache): real fold models and OOF predictions, in minutes. What is timed is detection with
    them, not this run, so it predicts only two test recordings of its own."""
    ws = base / "ws"
    if (ws / "bootstrap" / "oof_framewise.npz").is_file():
        return ws
    shutil.rmtree(ws, ignore_errors=True)
    n_train = min(n_train, len(setup.ctx.train.recording_ids))
    data = subset_root(Path(setup.ctx.data_root.root), base / f"data_{n_train}", n_train, 2)
    args = ["stage=bootstrap", f"workspace={ws}", *passthrough(setup.overrides), "data=rfcx", f"data.root={data}",
            f"audio.cache_dir={setup.cfg.audio.cache_dir}", "folds=2", "trainer.max_epochs=1",
            f"++trainer.limit_train_batches={train_batches}", "++trainer.limit_val_batches=2",
            "trainer.enable_progress_bar=false"]
    run_cli(args, base / "bootstrap.log")
    return ws


def _test_path_seconds(setup: BenchSetup, ws: Path) -> float:
    """The runner's test prediction (every fold) on the same recordings and models, timed."""
    from ..postprocessing.repredict import run_module_class
    from ..workspace import RunState

    state = RunState(ws, writable=False)
    record = state.stage("bootstrap")
    module_class = run_module_class(record)
    stage, cfg, spent = setup.stage, setup.cfg, 0.0
    for fold, info in sorted(record["folds"].items()):
        module = module_class.load_from_checkpoint(str(state.resolve(info["checkpoint"])), map_location="cpu")
        datamodule = stage.build_datamodule(int(fold))
        datamodule.predict_name = "test"
        writer = ShardedPredictionWriter()
        trainer = pl.Trainer(accelerator=str(cfg.trainer.accelerator), devices=1, logger=False, callbacks=[writer],
                             enable_progress_bar=False, enable_model_summary=False,
                             precision=cfg.trainer.precision, default_root_dir=str(ws / "bench"))
        writer.start(ws / "bench" / f"test_fold{fold}.npz", datamodule.predict_sets["test"][1])
        started = time.perf_counter()
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
        writer.finish(trainer)
        spent += time.perf_counter() - started
    return spent


def _long_file(setup: BenchSetup, path: Path, minutes: float) -> Path:
    """A ``minutes``-long 48 kHz FLAC tiled from the test recordings (written once)."""
    if path.is_file():
        return path
    root = Path(setup.ctx.data_root.root)
    sources = [root / "test" / f"{rid}.flac" for rid in setup.ctx.test_ids]
    rate = sf.info(str(sources[0])).samplerate
    need = int(minutes * 60 * rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, sf.SoundFile(str(tmp), "w", samplerate=rate, channels=1, format="FLAC",
                                                  subtype="PCM_16") as out:
        written, k = 0, 0
        while written < need:
            audio, _ = sf.read(str(sources[k % len(sources)]), dtype="float32")
            audio = audio[:need - written]
            out.write(audio)
            written, k = written + len(audio), k + 1
    return path


def bench_detect(setup: BenchSetup, n_files: int | None = None, long_minutes: float = 60.0,
                 train_batches: int = 4, n_train: int = 24) -> dict:
    from ..detection.stage import DetectStage

    base = setup.ctx.workspace / "bench" / "detect"
    ws = _finished_workspace(setup, base, train_batches, n_train)
    root = Path(setup.ctx.data_root.root)
    ids = list(setup.ctx.test_ids)[:n_files] if n_files else list(setup.ctx.test_ids)
    folder = base / "test_audio"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for rid in ids:
        (folder / f"{rid}.flac").symlink_to((root / "test" / f"{rid}.flac").resolve())
    out = base / "out"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(["stage=detect", f"workspace={ws}", *passthrough(setup.overrides), f"detect.audio={folder}",
                       f"detect.out={out}", "detect.progress=false", "detect.source=bootstrap"])
    started = time.perf_counter()
    summary = DetectStage(cfg).run()
    detect_s = time.perf_counter() - started
    test_s = _test_path_seconds(setup, ws) if len(ids) == len(setup.ctx.test_ids) else float("nan")
    hours = summary["audio_hours"]

    memory = {}
    for minutes in (1.0, float(long_minutes)):
        audio = _long_file(setup, base / "long" / f"{minutes:g}min" / f"field_{minutes:g}min.flac", minutes)
        mem_out = base / f"out_{minutes:g}min"
        shutil.rmtree(mem_out, ignore_errors=True)
        child = run_cli(["stage=detect", f"workspace={ws}", *passthrough(setup.overrides),
                         f"detect.audio={audio.parent}", f"detect.out={mem_out}", "detect.progress=false",
                         "detect.source=bootstrap"], base / f"detect_{minutes:g}min.log")
        memory[f"{minutes:g}"] = {"minutes": minutes, "wall_s": child.wall_s, **child.peaks.as_mb()}
    short, long = memory["1"], memory[f"{float(long_minutes):g}"]
    return {"files": len(ids), "audio_hours": hours, "detect_s": detect_s, "test_path_s": test_s,
            "audio_hours_per_wall_hour": hours * 3600 / detect_s,
            "test_path_audio_hours_per_wall_hour": hours * 3600 / test_s if test_s == test_s else float("nan"),
            "detect_vs_test_path_time": detect_s / test_s if test_s == test_s else float("nan"),
            "events": summary["events"], "folds": 2, "memory": memory, "long_minutes": float(long_minutes),
            "peak_rss_ratio_long_vs_1min": long["peak_rss_main_mb"] / short["peak_rss_main_mb"],
            "long_file_audio_hours_per_wall_hour": long_minutes / 60 * 3600 / long["wall_s"]}


def rows(result: dict) -> list[tuple[str, str, str]]:
    m = result["memory"]
    short, long = m["1"], m[f"{result['long_minutes']:g}"]
    return [
        ("detect: audio hours per wall hour", f"{result['audio_hours_per_wall_hour']:.1f}",
         f"{result['files']} test FLACs, {result['folds']} fold models, decode + resample + windows"),
        ("detect: time vs the test-set prediction path", f"{result['detect_vs_test_path_time']:.2f}x",
         f"test path {result['test_path_audio_hours_per_wall_hour']:.1f} audio h/h from the decoded cache"),
        (f"detect: peak RSS, 1 min vs {result['long_minutes']:g} min file",
         f"{short['peak_rss_main_mb']:.0f} / {long['peak_rss_main_mb']:.0f} MB",
         f"ratio {result['peak_rss_ratio_long_vs_1min']:.2f}; {long['wall_s']:.0f} s wall for the long file "
         "(incl. start-up)"),
    ]
