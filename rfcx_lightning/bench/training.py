"""Training efficiency: does the data pipeline keep the accelerator busy?

Two Lightning runs of the same model, same optimiser, same batch shape, alternated:

* ``full``: the real path: :class:`~rfcx_lightning.data.datamodule.FoldDataModule` (memory-mapped cache
  read, crop, three-state labels, collate, workers, pinned memory), host-to-device copy, front-end,
  augmentation, forward, backward, optimiser step;
* ``premade``: the same Trainer fed the same batches, fetched beforehand and already on the device, so
  it measures only what the model and the optimiser cost. The batches are those the full path draws (the
  same seeded epoch order), not one batch repeated: a band detector scores only each batch's labelled
  (crop, class) pairs, so batches differ in cost and one repeated batch would compare different work.

efficiency = throughput(full) / throughput(premade). 1.0 means data handling is completely hidden behind
the model's arithmetic. A :class:`StepTimes` callback also splits every full-path iteration into the
time spent waiting for the batch (loading + transfer) and the time in the step itself.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from .setup import BenchSetup


class StepTimes(pl.Callback):
    """Wall-clock start and end of every training batch.

    ``on_train_batch_start`` fires after the batch was fetched and moved to the device, so the gap from
    one batch's end to the next one's start is the data wait; start to end is the step.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.gpu_utilization: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the step's kernels belong to the step, not to the next data wait
            self._sample_gpu_utilization()
        self.ends.append(time.perf_counter())

    def _sample_gpu_utilization(self) -> None:
        """NVML's busy percentage over its last sample period; skipped when pynvml is not installed."""
        try:
            self.gpu_utilization.append(float(torch.cuda.utilization()))
        except Exception:  # no NVML: the efficiency ratio still says how busy the device is kept
            pass

    def summary(self, warmup: int, batch_size: int) -> dict[str, float]:
        """Steady-state figures after dropping the first ``warmup`` iterations (start-up, worker spawn)."""
        starts, ends = np.asarray(self.starts), np.asarray(self.ends)
        if len(starts) < warmup + 2:
            raise ValueError(f"need at least warmup + 2 = {warmup + 2} steps, got {len(starts)}")
        intervals = np.diff(starts)[warmup:]        # one full iteration: wait + step
        waits = (starts[1:] - ends[:-1])[warmup:]   # fetch + collate + host-to-device
        return {"steps_timed": int(len(intervals)),
                "crops_per_s_median": batch_size / float(np.median(intervals)),
                "crops_per_s_mean": batch_size / float(np.mean(intervals)),
                "data_wait_share": float(np.sum(waits) / np.sum(intervals)),
                "median_step_s": float(np.median((ends[1:] - starts[1:])[warmup:])),
                "median_wait_s": float(np.median(waits)),
                "gpu_utilization_mean": (float(np.mean(self.gpu_utilization[warmup:]))
                                         if len(self.gpu_utilization) > warmup else None)}


class PremadeBatches(IterableDataset):
    """Yields ``n`` ready-made batches, cycling through ``batches`` (use with ``batch_size=None``)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], n: int):
        self.batches, self.n = batches, n

    def __iter__(self):
        for i in range(self.n):
            yield self.batches[i % len(self.batches)]


def _trainer(setup: BenchSetup, steps: int, timer: StepTimes, name: str) -> pl.Trainer:
    cfg = setup.cfg.trainer
    return pl.Trainer(accelerator=str(cfg.accelerator), devices=1, precision=cfg.precision, max_steps=steps,
                      max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer], default_root_dir=str(setup.ctx.workspace / "bench" / name))


def _fresh_module(setup: BenchSetup, seed: int, fold: int):
    torch.manual_seed(seed)
    return setup.stage.build_module(fold)


def bench_training(setup: BenchSetup, steps: int = 30, warmup: int = 5, rounds: int = 2, fold: int = 0,
                   seed: int = 0) -> tuple[dict, Any]:
    """Alternate ``rounds`` x (premade, full) runs of ``steps`` steps; returns (results, last trained module)."""
    if steps < warmup + 2:
        raise ValueError(f"training benchmark: steps={steps} must be at least warmup + 2 = {warmup + 2}")
    batch_size = int(setup.cfg.loader.batch_size)
    datamodule = setup.stage.build_datamodule(fold)
    loader = datamodule.train_dataloader()
    # the full path's own first batches (one epoch at most; cycled if the epoch is shorter than the run)
    device_batches = [{k: v.to(setup.device) for k, v in batch.items()}
                      for batch in itertools.islice(loader, steps + 1)]
    if len(device_batches[0]["wave"]) != batch_size:
        raise ValueError(f"training benchmark: fold {fold} has fewer than loader.batch_size={batch_size} crops")
    del loader

    per_round: dict[str, list[dict]] = {"premade": [], "full": []}
    module = None
    for r in range(rounds):
        for variant in ("premade", "full"):
            timer = StepTimes()
            module = _fresh_module(setup, seed, fold)
            trainer = _trainer(setup, steps, timer, variant)
            if variant == "full":
                trainer.fit(module, datamodule=setup.stage.build_datamodule(fold))
            else:
                trainer.fit(module, train_dataloaders=DataLoader(PremadeBatches(device_batches, steps + 1),
                                                                 batch_size=None))
            per_round[variant].append(timer.summary(warmup, batch_size))

    def best(variant: str, key: str) -> float:
        return max(r[key] for r in per_round[variant])

    full_median, premade_median = best("full", "crops_per_s_median"), best("premade", "crops_per_s_median")
    full_mean, premade_mean = best("full", "crops_per_s_mean"), best("premade", "crops_per_s_mean")
    cfg = setup.cfg
    result = {
        "backbone": str(cfg.model.backbone), "batch_size": batch_size, "crop_seconds": float(cfg.crops.seconds),
        "num_workers": int(cfg.loader.num_workers), "precision": str(cfg.trainer.precision),
        "device": str(setup.device), "steps": steps, "warmup": warmup, "rounds": rounds,
        "crops_per_s_full": full_median, "crops_per_s_premade": premade_median,
        "efficiency": full_median / premade_median,
        "efficiency_mean_based": full_mean / premade_mean,
        "data_wait_share_full": min(r["data_wait_share"] for r in per_round["full"]),
        "gpu_utilization_full": per_round["full"][-1]["gpu_utilization_mean"],
        "per_round": per_round,
    }
    return result, module


def rows(result: dict) -> list[tuple[str, str, str]]:
    note = (f"{result['backbone']}, batch {result['batch_size']} x {result['crop_seconds']:g} s, "
            f"{result['num_workers']} workers, {result['precision']}, {result['device']}")
    return [
        ("training efficiency: full path / pre-made device batches", f"{result['efficiency']:.3f}",
         f"median step; mean-based {result['efficiency_mean_based']:.3f}; {note}"),
        ("training: share of iteration waiting for data", f"{result['data_wait_share_full']:.1%}", "full path"),
        *([("training: GPU utilization (NVML), full path", f"{result['gpu_utilization_full']:.0f}%", "")]
          if result.get("gpu_utilization_full") is not None else []),
        ("training throughput full / pre-made (crops/s)",
         f"{result['crops_per_s_full']:.1f} / {result['crops_per_s_premade']:.1f}", "absolute: GPU only"),
    ]
