"""The benchmark command: runs end to end on tiny settings, writes its outputs atomically, resumes.

No timing assertions: the figures are only checked to be well-formed (finite, positive ratios, LWLRAP in
[0, 1]); what is asserted is that every benchmark really ran and its outputs are complete.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from rfcx_lightning.bench.cli import parse_args, run_benchmarks
from rfcx_lightning.bench.memory import subset_root
from rfcx_lightning.bench.procs import run_tracked
from rfcx_lightning.data.annotations import DataRoot, load_boxes

from .conftest import REPO

FAST = "frontend,training,layout,inference,audio"


def bench_args(tmp_path, data_root, only=FAST):
    return ["--size", "tiny", "--threads", "1", "--only", only, "--workspace", str(tmp_path / "ws"),
            "--json", str(tmp_path / "out" / "bench.json"), "--markdown", str(tmp_path / "out" / "bench.md"),
            "preset=smoke", f"data.root={data_root}", f"audio.cache_dir={data_root.parent / 'cache'}"]


def test_bench_command_runs_end_to_end_and_resumes(tmp_path, smoke_data_root, capsys):
    args = bench_args(tmp_path, smoke_data_root)
    done = subprocess.run([sys.executable, "-m", "rfcx_lightning.bench", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "training efficiency" in done.stdout  # the table went to stdout

    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    results = report["results"]
    assert list(results) == FAST.split(",")
    ratios = [results["frontend"]["speedup_fft_vs_nnaudio"], results["training"]["efficiency"],
              results["inference"]["speedup_whole_vs_windows"],
              results["audio"]["build"]["speedup_build_vs_librosa"],
              results["audio"]["crop_read"]["speedup_cache_vs_decode_whole"]]
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    inference = results["inference"]
    assert inference["recordings"] == 2 and inference["windows_per_recording"] > 50  # 3 s windows, 0.5 s hop
    assert 0 <= inference["lwlrap_whole"] <= 1 and 0 <= inference["lwlrap_windows"] <= 1
    assert inference["configured_predict"]["mode"] == "windows"                       # the default predict mode
    assert inference["speedup_configured_vs_windows"] > 0 and 0 <= inference["lwlrap_configured"] <= 1
    assert results["training"]["per_round"]["full"][0]["steps_timed"] == 2  # 4 steps - 1 warm-up - 1
    layout = results["layout"]
    assert layout["speedup"] > 0 and layout["loss_difference"] < 1e-4   # same weights, same batch: same loss
    assert set(report["load_avg"]) == set(results)
    assert report["machine"]["threads"] == 1  # --threads reached torch

    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "| training efficiency: full path / pre-made device batches |" in markdown
    assert "whole recording vs 0.5 s sliding windows" in markdown
    assert "training step: channels-last vs plain weights" in markdown
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md"]  # no temp files

    # the same command again: every benchmark is already in the JSON, nothing is redone
    again = run_benchmarks(args)
    assert again["results"] == results
    assert capsys.readouterr().out.count("done in an earlier run") == len(results)
    # a later run with another --only keeps the earlier results in the JSON
    subset = run_benchmarks(bench_args(tmp_path, smoke_data_root, only="frontend"))
    assert subset["results"] == results
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["results"] == results


def test_bad_benchmark_name_is_named(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--only", "training,bogus"])
    assert "bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["stray"])
    assert "stray" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--threads 0"):
        run_benchmarks(["--threads", "0"])


def test_process_tree_peak_memory_counts_child_allocations(tmp_path):
    code = "import numpy as np, time; a = np.ones(200 * 2**20 // 8); time.sleep(1.0)"
    run = run_tracked([sys.executable, "-c", code], tmp_path / "child.log", poll_s=0.02)
    assert run.returncode == 0
    assert run.peaks.anon >= 150 * 2**20  # the 200 MB array is private memory of the child
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_tracked([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "fail.log")


def test_subset_root_is_a_valid_smaller_data_root(tmp_path, smoke_data_root):
    dest = subset_root(smoke_data_root, tmp_path / "sub", n_train=5, n_test=2)
    root = DataRoot(dest)
    assert root.train_ids() == DataRoot(smoke_data_root).train_ids()[:5]
    assert len(root.test_ids()) == 2
    boxes, _ = load_boxes(root)  # validation passes: every box has its audio
    assert set(boxes["recording_id"]) <= set(root.train_ids())
    tp = pd.read_csv(dest / "train_tp.csv", dtype=str)
    assert tp.columns.tolist() == pd.read_csv(smoke_data_root / "train_tp.csv", dtype=str).columns.tolist()
    assert subset_root(smoke_data_root, dest, n_train=5, n_test=2) == dest  # reused, not rebuilt
    with pytest.raises(ValueError, match="subset of 99"):
        subset_root(smoke_data_root, tmp_path / "big", n_train=99, n_test=2)


@pytest.mark.slow
def test_memory_and_scaling_benchmarks_run(tmp_path, smoke_data_root):
    report = run_benchmarks(bench_args(tmp_path, smoke_data_root, only="memory,scaling"))
    memory, scaling = report["results"]["memory"], report["results"]["scaling"]
    assert [memory["runs"][str(n)]["train_recordings"] for n in (4, 8)] == [4, 8]
    assert all(r["peak_anon_tree_mb"] > 50 for r in memory["runs"].values())
    assert scaling["all_correct"] and scaling["runs"]["2"]["max_processes_seen"] >= 2
