"""Scaling: wall time of the same ``preset=smoke`` run with 1 and 2 DDP processes on CPU.

Correctness first: both runs must write out-of-fold predictions for exactly the same train recordings,
each once (the prediction writer merges one shard per rank). Both share one pre-built data root and
audio cache, so the wall times cover training and prediction, not data preparation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from .procs import run_cli
from .setup import prepare


def bench_scaling(workspace: Path, processes: tuple[int, ...] = (1, 2), extra: tuple[str, ...] = ()) -> dict:
    base = Path(workspace) / "bench" / "scaling"
    data, cache = base / "data", base / "cache"
    common = ["preset=smoke", f"data.root={data}", f"audio.cache_dir={cache}", *extra]
    ctx = prepare(base / "prepare", common).ctx  # generate data + cache once, outside the timed runs
    train_ids = sorted(ctx.train.recording_ids)
    runs = {}
    for n in processes:
        ws = base / f"ddp{n}"
        shutil.rmtree(ws, ignore_errors=True)
        ddp = [f"trainer.devices={n}", "trainer.accelerator=cpu"] + (["trainer.strategy=ddp"] if n > 1 else [])
        run = run_cli(["stage=bootstrap", f"workspace={ws}", *common, *ddp], base / f"ddp{n}.log")
        oof = pd.read_csv(ws / "oof.csv", dtype={"recording_id": str})
        ids = oof["recording_id"].tolist()
        runs[str(n)] = {"processes": n, "wall_s": run.wall_s, "oof_recordings": len(ids),
                        "oof_covers_each_train_recording_once": sorted(ids) == train_ids,
                        "max_processes_seen": run.peaks.processes}
    first, last = runs[str(processes[0])], runs[str(processes[-1])]
    return {"runs": runs, "speedup": first["wall_s"] / last["wall_s"],
            "all_correct": all(r["oof_covers_each_train_recording_once"] for r in runs.values())}


def rows(result: dict) -> list[tuple[str, str, str]]:
    walls = " / ".join(f"{r['wall_s']:.0f} s" for r in result["runs"].values())
    procs = " vs ".join(str(r["processes"]) for r in result["runs"].values())
    return [(f"DDP on CPU: preset=smoke wall time, {procs} processes", walls,
             f"speed-up {result['speedup']:.2f}x; OOF set correct: {result['all_correct']}")]
