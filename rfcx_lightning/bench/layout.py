"""Memory layout: training steps with the convolution weights channels-last against the plain layout.

Why: on a CPU, oneDNN runs the small depthwise convolutions of the default MobileNetV3 in its own
blocked layout; with plain (NCHW) weights every convolution and its backward reorders its tensors, which
is where most of a CPU training step went (``torch.profiler``: ``convolution_backward`` 38-43% of the
step). ``model.channels_last`` (on by default) stores the weights channels-last once.

Both sides start from the same weights and take the same pre-made batches of the fold's real training
path, one step at a time (training step, backward, AdamW step), alternated ``rounds`` times in one
process, so machine load hits both alike. The first steps' losses must agree: the layout changes the
arithmetic's order, not its result.
"""

from __future__ import annotations

import copy
import itertools
import time

import numpy as np
import torch

from .setup import BenchSetup


def _step_times(module, batches: list[dict], warmup: int) -> tuple[list[float], float]:
    """Seconds of each step after ``warmup`` and the first step's loss."""
    module.log = lambda *args, **kwargs: None  # no Trainer attached: logging is not what is timed
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    times, first_loss = [], None
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        loss = module.training_step(batch, i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == 0:
            first_loss = float(loss.detach())
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times, first_loss


def bench_layout(setup: BenchSetup, steps: int = 12, warmup: int = 2, rounds: int = 3, fold: int = 0,
                 seed: int = 0) -> dict:
    """Median training-step seconds, plain vs channels-last, alternated ``rounds`` times."""
    loader = setup.stage.build_datamodule(fold).train_dataloader()
    batches = [{k: v.to(setup.device) for k, v in batch.items()} for batch in itertools.islice(loader, steps)]
    del loader
    torch.manual_seed(seed)
    reference = setup.stage.build_module(fold).to(setup.device)
    per_round: dict[str, list[float]] = {"plain": [], "channels_last": []}
    losses: dict[str, float] = {}
    for _ in range(rounds):
        for layout, memory_format in (("plain", torch.contiguous_format), ("channels_last", torch.channels_last)):
            module = copy.deepcopy(reference).to(memory_format=memory_format)
            torch.manual_seed(seed)  # the same dropout draws on both sides
            times, losses[layout] = _step_times(module, batches, warmup)
            per_round[layout].append(float(np.median(times)))
    plain, last = min(per_round["plain"]), min(per_round["channels_last"])
    return {"backbone": str(setup.cfg.model.backbone), "detector": str(setup.cfg.model.detector),
            "batch_size": int(setup.cfg.loader.batch_size), "crop_seconds": float(setup.cfg.crops.seconds),
            "device": str(setup.device), "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
            "rounds": rounds, "median_step_s": {"plain": per_round["plain"], "channels_last": per_round["channels_last"]},
            "speedup": plain / last, "first_loss": losses,
            "loss_difference": abs(losses["plain"] - losses["channels_last"])}


def rows(result: dict) -> list[tuple[str, str, str]]:
    steps = result["median_step_s"]
    return [("training step: channels-last vs plain weights", f"{result['speedup']:.2f}x faster",
             f"best-of-{result['rounds']} median step {min(steps['plain']):.3f} s vs {min(steps['channels_last']):.3f} s; "
             f"{result['backbone']} ({result['detector']}), batch {result['batch_size']} x {result['crop_seconds']:g} s, "
             f"{result['device']}, {result['threads']} threads; first losses differ by {result['loss_difference']:.1e}")]
