"""Front-end benchmark: the log-mel STFT paths side by side, and their share of a training step.

The spectrogram is computed inside the model (on the accelerator when there is one), so its cost is
part of every step; this measures which STFT implementation keeps that share small.
"""

from __future__ import annotations

import torch

from ..features.frontend import LogMelFrontend
from ..models.detector import SpeciesDetector
from .timing import alternate, best_of


def bench_frontend(batch: int = 16, seconds: float = 5.0, n_mels: int = 64, n_fft: int = 1024,
                   hop_length: int = 320, backbone: str = "mobilenetv3_small_050", repeats: int = 5,
                   device: str = "cpu") -> dict:
    """Time the three STFT paths alternately; then a full forward+backward step of a small detector."""
    wave = torch.randn(batch, int(seconds * 32000), device=device)
    kwargs = dict(n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    variants = {
        "torchlibrosa_fft": LogMelFrontend(backend="torchlibrosa", stft="fft", **kwargs).to(device),
        "torchlibrosa_conv": LogMelFrontend(backend="torchlibrosa", stft="conv", **kwargs).to(device),
        "nnaudio": LogMelFrontend(backend="nnaudio", **kwargs).to(device),
    }
    with torch.no_grad():
        for module in variants.values():
            module(wave)  # warm-up
        times = alternate({name: (lambda m=module: m(wave)) for name, module in variants.items()}, repeats)
    best = {name: min(t) for name, t in times.items()}

    model = SpeciesDetector(24, backbone=backbone, frontend=dict(kwargs)).to(device)
    optimizer = torch.optim.AdamW(model.parameters())

    def step():
        out = model(wave)
        out["framewise_logits"].mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    step_time = best_of(step, repeats)
    return {
        "batch": batch, "seconds": seconds, "n_mels": n_mels, "n_fft": n_fft, "hop_length": hop_length,
        "device": device, "seconds_per_batch": best,
        "speedup_fft_vs_torchlibrosa_conv": best["torchlibrosa_conv"] / best["torchlibrosa_fft"],
        "speedup_fft_vs_nnaudio": best["nnaudio"] / best["torchlibrosa_fft"],
        "train_step_seconds": step_time, "backbone": backbone,
        "frontend_share_of_train_step": best["torchlibrosa_fft"] / step_time,
    }


def rows(result: dict) -> list[tuple[str, str, str]]:
    """(measure, value, note) rows for the summary table."""
    return [
        ("front-end: torch.stft vs torchlibrosa Conv1d STFT", f"{result['speedup_fft_vs_torchlibrosa_conv']:.2f}x",
         f"batch {result['batch']} x {result['seconds']:g} s, {result['n_mels']} mels"),
        ("front-end: torch.stft vs nnAudio", f"{result['speedup_fft_vs_nnaudio']:.2f}x", ""),
        ("front-end share of a training step", f"{result['frontend_share_of_train_step']:.1%}",
         result["backbone"]),
    ]
