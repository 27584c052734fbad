"""Benchmarks, measured side by side in one process: ``python -m rfcx_lightning.bench [--json PATH]``.

Every figure is a ratio of two implementations timed alternately on the same inputs, so machine load
affects both alike. Absolute numbers are printed too, but only GPU absolutes belong in BENCHMARKS.md.

Measured now:
* ``frontend``: log-mel of a batch of crops with the FFT STFT (torch.stft) versus torchlibrosa's
  Conv1d STFT and nnAudio's, same framing and mel filterbank; and the share of a training step it costs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from .features.frontend import LogMelFrontend
from .models.detector import SpeciesDetector
from .workspace import write_json


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_frontend(batch: int = 16, seconds: float = 5.0, n_mels: int = 64, n_fft: int = 1024,
                   hop_length: int = 320, backbone: str = "mobilenetv3_small_050", repeats: int = 5,
                   device: str = "cpu") -> dict:
    """Time the three STFT paths alternately; then a full forward+backward step of a small detector."""
    wave = torch.randn(batch, int(seconds * 32000), device=device)
    kwargs = dict(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    variants = {
        "torchlibrosa_fft": LogMelFrontend(backend="torchlibrosa", stft="fft", **kwargs),
        "torchlibrosa_conv": LogMelFrontend(backend="torchlibrosa", stft="conv", **kwargs),
        "nnaudio": LogMelFrontend(backend="nnaudio", **kwargs),
    }
    times = {name: [] for name in variants}
    with torch.no_grad():
        for module in variants.values():
            module.to(device)(wave)  # warm-up
        for _ in range(repeats):  # alternate, so load drifts hit every variant alike
            for name, module in variants.items():
                times[name].append(_best_of(lambda: module(wave), 1))
    best = {name: min(t) for name, t in times.items()}

    model = SpeciesDetector(24, backbone=backbone, frontend=dict(kwargs)).to(device)
    optimizer = torch.optim.AdamW(model.parameters())

    def step():
        out = model(wave)
        out["framewise_logits"].mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    step_time = _best_of(step, repeats)
    return {
        "batch": batch, "seconds": seconds, "n_mels": n_mels, "n_fft": n_fft, "hop_length": hop_length,
        "seconds_per_batch": best,
        "speedup_fft_vs_torchlibrosa_conv": best["torchlibrosa_conv"] / best["torchlibrosa_fft"],
        "speedup_fft_vs_nnaudio": best["nnaudio"] / best["torchlibrosa_fft"],
        "train_step_seconds": step_time, "backbone": backbone,
        "frontend_share_of_train_step": best["torchlibrosa_fft"] / step_time,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "device": args.device},
               "frontend": bench_frontend(batch=args.batch, repeats=args.repeats, device=args.device)}
    front = results["frontend"]
    print(f"{'benchmark':<44} {'value':>10}")
    for name, seconds in front["seconds_per_batch"].items():
        print(f"{'log-mel ' + name + ' (s / batch)':<44} {seconds:>10.4f}")
    print(f"{'speed-up fft vs torchlibrosa conv STFT':<44} {front['speedup_fft_vs_torchlibrosa_conv']:>9.2f}x")
    print(f"{'speed-up fft vs nnAudio':<44} {front['speedup_fft_vs_nnaudio']:>9.2f}x")
    print(f"{'front-end share of a training step':<44} {front['frontend_share_of_train_step']:>10.2%}")
    if args.json:
        write_json(args.json, results)
    print(json.dumps(results["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
