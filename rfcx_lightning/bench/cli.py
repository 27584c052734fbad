"""``python -m rfcx_lightning.bench [options] [overrides...]``: every benchmark in one run, one table.

Overrides are the CLI's (``preset=cpu``, ``data.root=PATH``, ``audio.cache_dir=PATH``, ...): the
benchmarks run the configuration ``python -m rfcx_lightning.run stage=bootstrap OVERRIDES`` would.
Results go to a JSON file (and a markdown table) after every benchmark, atomically; rerunning the same
command skips the benchmarks already in the JSON (``--fresh`` redoes them), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..workspace import write_json
from . import report

BENCHMARKS = ("frontend", "training", "layout", "inference", "audio", "memory", "scaling", "detect")

# per --size: keyword arguments of each benchmark
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {"frontend": dict(batch=2, seconds=1.0, repeats=2),
             "training": dict(steps=4, warmup=1, rounds=1),
             "layout": dict(steps=3, warmup=1, rounds=1),
             "inference": dict(n_recordings=2),
             "audio_build": dict(n_files=2), "audio_crop": dict(n_crops=20, n_decodes=1, rounds=1),
             "memory": dict(sizes=(4, 8), n_test=2, train_batches=2),
             "scaling": dict(),
             "detect": dict(long_minutes=2.0, train_batches=2)},
    # a loaded or small CPU machine: the same measurements, fewer repetitions
    "small": {"frontend": dict(repeats=3),
              "training": dict(steps=14, warmup=3, rounds=2),
              "layout": dict(steps=10, warmup=2, rounds=3),
              "inference": dict(n_recordings=None),
              "audio_build": dict(n_files=4, n_parallel_files=40),
              "audio_crop": dict(n_crops=100, n_decodes=2, rounds=3),
              "memory": dict(sizes=None, n_test=4, train_batches=4),
              "scaling": dict(),
              "detect": dict(long_minutes=20.0)},
    "default": {"frontend": dict(repeats=5),
                "training": dict(steps=30, warmup=5, rounds=2),
                "layout": dict(steps=14, warmup=2, rounds=5),
                "inference": dict(n_recordings=None),
                "audio_build": dict(n_files=8, n_parallel_files=120),
                "audio_crop": dict(n_crops=200, n_decodes=4, rounds=3),
                "memory": dict(sizes=None, n_test=10, train_batches=8),
                "scaling": dict(),
                "detect": dict(long_minutes=60.0)},
}
DEFAULT_OVERRIDES = {"tiny": ["preset=smoke"], "small": [], "default": []}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rfcx_lightning.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="tiny: seconds, for tests (preset=smoke unless overridden); small: fewer repetitions "
                             "for a loaded CPU machine; default: the figures")
    parser.add_argument("--workspace", type=Path, default=Path("bench_workspace"),
                        help="data, cache and scratch runs go here (default ./bench_workspace)")
    parser.add_argument("--json", type=Path, default=None, help="results JSON (default WORKSPACE/bench.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="results table (default WORKSPACE/bench.md)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained Lightning checkpoint for the inference benchmark's LWLRAP comparison")
    parser.add_argument("--fresh", action="store_true", help="ignore results already in the JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads here and in child runs (OMP_NUM_THREADS); 1 on a CPU "
                             "shared with other jobs, where threads waiting on each other dominate")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        parser.error(f"unrecognised arguments {bad}: overrides are key=value")
    args.overrides = overrides or list(DEFAULT_OVERRIDES[args.size])
    args.benchmarks = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    args.workspace = args.workspace.expanduser().resolve()
    args.json = args.json or args.workspace / "bench.json"
    args.markdown = args.markdown or args.workspace / "bench.md"
    return args


def _settings(args: argparse.Namespace) -> dict:
    """What must match for earlier results in the JSON to be reused."""
    return {"size": args.size, "overrides": list(args.overrides), "workspace": str(args.workspace),
            "checkpoint": str(args.checkpoint) if args.checkpoint else None, "threads": args.threads}


def _load_previous(args: argparse.Namespace) -> dict:
    if args.fresh or not args.json.is_file():
        return {}
    try:
        previous = json.loads(args.json.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{args.json}: not valid JSON ({err}); delete it or pass --fresh") from err
    if previous.get("settings") != _settings(args):
        print(f"{args.json}: written with other settings; starting afresh", flush=True)
        return {}
    return previous


def run_benchmarks(argv: Sequence[str] | None = None) -> dict:
    """Run the selected benchmarks; returns the report dict that is also written as JSON."""
    args = parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads {args.threads}: must be >= 1")
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
            os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the memory and scaling runs
        return _run(args, argv)
    finally:  # importable: leave the caller's process as it was
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    args.workspace.mkdir(parents=True, exist_ok=True)
    previous = _load_previous(args)
    sizes = SIZES[args.size]
    from .setup import compose, device_of

    cfg = compose(args.workspace, args.overrides)  # cheap: fails early on a bad override, names the device
    out = {"command": "python -m rfcx_lightning.bench " + shlex.join(list(argv if argv is not None else sys.argv[1:])),
           "settings": _settings(args), "machine": _machine(device_of(cfg)),
           # results of earlier runs with the same settings are kept, whatever --only they had
           "results": dict(previous.get("results", {})), "load_avg": dict(previous.get("load_avg", {}))}
    state = {"setup": None, "trained": None, "cfg": cfg}

    def setup():
        if state["setup"] is None:
            from .setup import prepare

            state["setup"] = prepare(args.workspace, args.overrides)
        return state["setup"]

    for name in args.benchmarks:
        if name in out["results"]:
            print(f"{name}: done in an earlier run (in {args.json}), skipped", flush=True)
            continue
        before = os.getloadavg()[0]
        out["results"][name] = _run_one(name, setup, state, args, sizes)
        out["load_avg"][name] = [before, os.getloadavg()[0]]
        write_json(args.json, out)
        report.write_markdown(args.markdown, out)
    print(report.text_table(report.table_rows(out["results"])), flush=True)
    print(f"results: {args.json}, {args.markdown}", flush=True)
    return out


def _run_one(name: str, setup, state: dict, args: argparse.Namespace, sizes: dict) -> dict:
    print(f"== {name}", flush=True)
    if name == "frontend":
        from .frontend import bench_frontend
        from .setup import device_of

        cfg = state["cfg"]  # needs no data
        front = cfg.model.frontend
        kwargs = dict(batch=int(cfg.loader.batch_size), seconds=float(cfg.crops.seconds), n_mels=int(front.n_mels),
                      n_fft=int(front.n_fft), hop_length=int(front.hop_length), backbone=str(cfg.model.backbone),
                      device=str(device_of(cfg)))
        return bench_frontend(**{**kwargs, **sizes["frontend"]})
    if name == "training":
        from .training import bench_training

        result, state["trained"] = bench_training(setup(), **sizes["training"])
        return result
    if name == "layout":
        from .layout import bench_layout

        return bench_layout(setup(), **sizes["layout"])
    if name == "inference":
        from .inference import bench_inference, load_module

        module, source = load_module(setup(), args.checkpoint, state["trained"])
        return bench_inference(setup(), module, source, **sizes["inference"])
    if name == "audio":
        from .audio import bench_cache_build, bench_crop_read

        return {"build": bench_cache_build(setup(), **sizes["audio_build"]),
                "crop_read": bench_crop_read(setup(), **sizes["audio_crop"])}
    if name == "memory":
        from .memory import bench_memory

        return bench_memory(setup(), **sizes["memory"])
    if name == "scaling":
        from .scaling import bench_scaling

        return bench_scaling(args.workspace, **sizes["scaling"])
    if name == "detect":
        from .detect import bench_detect

        return bench_detect(setup(), **sizes["detect"])
    raise KeyError(name)


def _machine(device: torch.device) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv: Sequence[str] | None = None) -> int:
    run_benchmarks(argv)
    return 0
