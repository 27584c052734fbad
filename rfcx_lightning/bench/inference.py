"""Pseudo-label inference: one pass over the whole recording, and the configured ``predict:`` mode,
versus 0.5 s-step sliding windows.

The detector is fully convolutional in time, so a 60 s recording can go through once and yield framewise
and clip scores (``predict.mode=whole``). The library's default, ``predict.mode=windows`` (10 s windows,
5 s hop: 11 windows, 1.8x the audio), exists because band classifiers score better near their training
length. The 2nd-place RFCx solution ran the model on windows of the training-crop length every 0.5 s and
took the max over windows: ~9x (5 s windows) to ~17x (10 s windows) more audio through the network. The
paths are timed alternately on the same recordings with the same weights; their clip scores are scored with
LWLRAP against the hidden truth when it is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..inference import predict_framewise
from ..metrics import lwlrap
from .setup import BenchSetup, autocast
from .timing import timed


def load_module(setup: BenchSetup, checkpoint: Path | None, trained=None):
    """The model to predict with: a checkpoint's weights, else ``trained``, else freshly initialised."""
    module = setup.stage.build_module(fold=0)
    source = "freshly initialised (untrained)"
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if "state_dict" not in state:
            raise ValueError(f"--checkpoint {checkpoint}: not a Lightning checkpoint (no 'state_dict')")
        missing, unexpected = module.load_state_dict(state["state_dict"], strict=False)
        if missing:
            raise ValueError(f"--checkpoint {checkpoint}: does not match the configured model; "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        source = str(checkpoint)
    elif trained is not None:
        module, source = trained, "the training benchmark's model (a few steps)"
    return module.to(setup.device).eval(), source


def bench_inference(setup: BenchSetup, module, source: str, n_recordings: int | None = None,
                    hop_seconds: float = 0.5, window_seconds: float | None = None) -> dict:
    """Alternate whole-recording and sliding-window prediction over the first ``n_recordings`` test clips."""
    ctx, cfg = setup.ctx, setup.cfg
    ids = list(ctx.test_ids)[: n_recordings or None]
    if not ids:
        raise ValueError("inference benchmark: no test recordings")
    window_seconds = float(window_seconds or cfg.crops.seconds)
    batch = max(1, int(cfg.loader.predict_batch_size))
    n_samples = int(round(float(cfg.data.duration_s) * int(cfg.audio.sample_rate)))
    device = setup.device
    configured = dict(module.predict_cfg)
    paths = ["whole", "windows"] + (["configured"] if configured.get("mode", "whole") != "whole" else [])
    clips = {mode: [] for mode in paths}
    seconds = {mode: 0.0 for mode in paths}
    model = module.model

    def run(mode: str, wave: torch.Tensor):
        with torch.inference_mode(), autocast(cfg, device):
            if mode == "whole":
                return predict_framewise(model, wave, mode="whole")[1]
            if mode == "configured":
                return predict_framewise(model, wave, **configured)[1]
            # one recording at a time: its ~100 windows are already a large batch
            return torch.cat([predict_framewise(model, w[None], mode="windows", window_seconds=window_seconds,
                                                window_hop_seconds=hop_seconds)[1] for w in wave])

    first = torch.from_numpy(ctx.cache.read("test", ids[0], 0, n_samples))[None].to(device)
    for mode in clips:  # warm-up (allocator, cudnn autotuning)
        run(mode, first)
    for start in range(0, len(ids), batch):
        wave = torch.from_numpy(np.stack([ctx.cache.read("test", rid, 0, n_samples)
                                          for rid in ids[start:start + batch]])).to(device)
        for mode in clips:
            out = {}
            seconds[mode] += timed(lambda: out.setdefault("clip", run(mode, wave)))
            clips[mode].append(out["clip"].float().cpu().numpy())

    n_windows = len(range(0, n_samples - int(window_seconds * int(cfg.audio.sample_rate)) + 1,
                          int(hop_seconds * int(cfg.audio.sample_rate))))
    result = {"model": source, "backbone": str(cfg.model.backbone), "device": str(device),
              "recordings": len(ids), "window_seconds": window_seconds, "hop_seconds": hop_seconds,
              "windows_per_recording": n_windows, "predict_batch_size": batch,
              "recordings_per_s_whole": len(ids) / seconds["whole"],
              "recordings_per_s_windows": len(ids) / seconds["windows"],
              "speedup_whole_vs_windows": seconds["windows"] / seconds["whole"]}
    if "configured" in seconds:
        result.update(configured_predict={k: v for k, v in configured.items() if k != "class_scale"},
                      recordings_per_s_configured=len(ids) / seconds["configured"],
                      speedup_configured_vs_windows=seconds["windows"] / seconds["configured"])
    if ctx.test_truth is not None:
        cols = [f"s{s}" for s in ctx.species]
        truth = ctx.test_truth.set_index("recording_id").loc[ids, cols].to_numpy() > 0
        for mode, parts in clips.items():
            species = ctx.scheme.to_species_scores(np.concatenate(parts))
            result[f"lwlrap_{mode}"] = float(lwlrap(species, truth))
            # as in submission.csv: odds-scaled to the prior (score.odds_to_prior)
            result[f"lwlrap_{mode}_calibrated"] = float(lwlrap(setup.stage.calibrate(species), truth))
        if "configured" in clips:
            result["lwlrap_configured_minus_windows"] = result["lwlrap_configured"] - result["lwlrap_windows"]
            result["lwlrap_calibrated_configured_minus_windows"] = (result["lwlrap_configured_calibrated"]
                                                                    - result["lwlrap_windows_calibrated"])
        result["lwlrap_whole_minus_windows"] = result["lwlrap_whole"] - result["lwlrap_windows"]
        result["lwlrap_calibrated_whole_minus_windows"] = (result["lwlrap_whole_calibrated"]
                                                           - result["lwlrap_windows_calibrated"])
    return result


def rows(result: dict) -> list[tuple[str, str, str]]:
    note = (f"{result['recordings']} recordings, {result['windows_per_recording']} windows of "
            f"{result['window_seconds']:g} s per recording; model: {result['model']}")
    out = [("inference: whole recording vs 0.5 s sliding windows", f"{result['speedup_whole_vs_windows']:.1f}x",
            note)]
    if "speedup_configured_vs_windows" in result:
        setting = ", ".join(f"{k}={v}" for k, v in result["configured_predict"].items())
        out.append(("inference: configured predict mode vs 0.5 s sliding windows",
                    f"{result['speedup_configured_vs_windows']:.1f}x", setting))
        if "lwlrap_configured" in result:
            out.append(("inference: test LWLRAP configured / windows (odds-scaled)",
                        f"{result['lwlrap_configured_calibrated']:.4f} / {result['lwlrap_windows_calibrated']:.4f}",
                        f"difference {result['lwlrap_calibrated_configured_minus_windows']:+.4f}; raw "
                        f"{result['lwlrap_configured']:.4f} / {result['lwlrap_windows']:.4f}"))
    if "lwlrap_whole" in result:
        out.append(("inference: test LWLRAP whole / windows (raw scores)",
                    f"{result['lwlrap_whole']:.4f} / {result['lwlrap_windows']:.4f}",
                    f"difference {result['lwlrap_whole_minus_windows']:+.4f}"))
        out.append(("inference: test LWLRAP whole / windows (odds-scaled)",
                    f"{result['lwlrap_whole_calibrated']:.4f} / {result['lwlrap_windows_calibrated']:.4f}",
                    f"difference {result['lwlrap_calibrated_whole_minus_windows']:+.4f}"))
    return out
