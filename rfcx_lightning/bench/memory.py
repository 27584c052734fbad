"""Memory: peak memory of a training run at two dataset sizes.

The same short CLI run (2 folds, a fixed number of training batches, prediction of every held-out and
test recording) on a small and a 4x larger subset of the data root. Subsets are built from symlinks to
the source FLACs with filtered CSVs, and share the source's audio cache, so nothing is decoded again.
What should grow with the dataset is only the label tables (box arrays, folds) and the prediction
outputs; the audio is memory-mapped, so its pages appear in RSS as file-backed, reclaimable page cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..data.annotations import DataRoot
from ..workspace import atomic_dir, write_csv
from .procs import run_cli
from .setup import BenchSetup

# overrides that choose the data, the workspace or the cache: the memory runs set their own
_OWN_KEYS = ("data=", "data.", "workspace=", "audio.cache_dir=")


def subset_root(source: Path, dest: Path, n_train: int, n_test: int) -> Path:
    """A Kaggle-layout root with the first ``n_train`` / ``n_test`` recordings of ``source`` (symlinks).

    Built in a temporary folder and renamed, so an interrupted build never leaves a half root; an
    existing complete root is reused.
    """
    if (dest / "sample_submission.csv").is_file():
        return dest
    src = DataRoot(source)
    train, test = src.train_ids()[:n_train], src.test_ids()[:n_test]
    if len(train) < n_train or len(test) < n_test:
        raise ValueError(f"{source}: has {len(src.train_ids())} train / {len(src.test_ids())} test recordings, "
                         f"a subset of {n_train} / {n_test} was asked for")
    with atomic_dir(dest) as tmp:
        for split, ids in (("train", train), ("test", test)):
            (tmp / split).mkdir(parents=True)
            for rid in ids:
                os.symlink(src.audio_path(split, rid).resolve(), tmp / split / f"{rid}.flac")
        for name, ids in (("train_tp.csv", train), ("train_fp.csv", train), ("sample_submission.csv", test)):
            frame = pd.read_csv(source / name, dtype=str, keep_default_na=False)
            write_csv(tmp / name, frame[frame["recording_id"].isin(set(ids))], float_format=None)
    return dest


def passthrough(overrides: Sequence[str]) -> list[str]:
    """The bench's overrides minus those naming data, workspace or cache."""
    return [o for o in overrides if not o.lstrip("+").startswith(_OWN_KEYS)]


def bench_memory(setup: BenchSetup, sizes: Sequence[int] | None = None, n_test: int = 10,
                 train_batches: int = 8) -> dict:
    root = Path(setup.ctx.data_root.root)
    n_available = len(setup.ctx.train.recording_ids)
    sizes = list(sizes or (max(4, n_available // 4), n_available))
    n_test = min(n_test, len(setup.ctx.test_ids))
    base = setup.ctx.workspace / "bench" / "memory"
    runs = {}
    for n in sizes:
        data = subset_root(root, base / f"data_{n}", n, n_test)
        ws = base / f"run_{n}"
        shutil.rmtree(ws, ignore_errors=True)  # a fresh run every time: a resumed one would skip training
        args = ["stage=bootstrap", f"workspace={ws}", *passthrough(setup.overrides), "data=rfcx",
                f"data.root={data}", f"audio.cache_dir={setup.cfg.audio.cache_dir}", "folds=2",
                "trainer.max_epochs=1", f"++trainer.limit_train_batches={train_batches}",
                "++trainer.limit_val_batches=2", "trainer.enable_progress_bar=false"]
        run = run_cli(args, base / f"run_{n}.log")
        boxes = sum(len(pd.read_csv(data / f, dtype=str)) for f in ("train_tp.csv", "train_fp.csv"))
        runs[str(n)] = {"train_recordings": n, "test_recordings": n_test, "boxes": boxes,
                        "wall_s": run.wall_s, **run.peaks.as_mb()}
    small, large = runs[str(sizes[0])], runs[str(sizes[-1])]
    return {"sizes": sizes, "train_batches": train_batches, "runs": runs,
            "anon_growth_mb": large["peak_anon_tree_mb"] - small["peak_anon_tree_mb"],
            "anon_ratio_large_vs_small": large["peak_anon_tree_mb"] / small["peak_anon_tree_mb"],
            "main_rss_ratio_large_vs_small": large["peak_rss_main_mb"] / small["peak_rss_main_mb"]}


def rows(result: dict) -> list[tuple[str, str, str]]:
    s, l = (result["runs"][str(n)] for n in (result["sizes"][0], result["sizes"][-1]))
    return [
        (f"memory: peak private RSS, {s['train_recordings']} vs {l['train_recordings']} train recordings",
         f"{s['peak_anon_tree_mb']:.0f} / {l['peak_anon_tree_mb']:.0f} MB",
         f"ratio {result['anon_ratio_large_vs_small']:.2f}; all processes ({l['max_processes']} at most)"),
        ("memory: peak RSS of the main process (incl. mapped cache pages)",
         f"{s['peak_rss_main_mb']:.0f} / {l['peak_rss_main_mb']:.0f} MB",
         f"ratio {result['main_rss_ratio_large_vs_small']:.2f}"),
    ]
