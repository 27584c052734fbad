"""The bootstrap recipe learns: a small detector trained with the masked loss separates calls by band.

Two classes call in different frequency bands; each training crop labels only the frames of its own call
(TP) and of a confuser burst in the other class's band (FP); every other cell is unknown. After a few
dozen steps the framewise scores of held-out crops must rank true call frames above everything else.
"""

from __future__ import annotations

import math

import torch

from rfcx_lightning.losses import build_loss
from rfcx_lightning.metrics import MaskedFrameAUROC
from rfcx_lightning.models.detector import SpeciesDetector

SR, SECONDS, LABEL_HZ = 8000, 2.0, 25
BANDS = (500.0, 2000.0)


def make_batch(n: int, generator: torch.Generator):
    t = torch.arange(int(SR * SECONDS)) / SR
    wave = 0.05 * torch.randn(n, t.numel(), generator=generator)
    n_frames = int(SECONDS * LABEL_HZ)
    targets, mask = torch.zeros(n, 2, n_frames), torch.zeros(n, 2, n_frames)
    for i in range(n):
        cls = int(torch.randint(2, (), generator=generator))
        start = float(torch.rand((), generator=generator)) * 1.2
        on = (t >= start) & (t < start + 0.6)
        chirp = torch.sin(2 * math.pi * BANDS[cls] * t * (1 + 0.05 * torch.sin(2 * math.pi * 3 * t)))
        wave[i] += 0.3 * chirp * on
        frames = slice(int(start * LABEL_HZ), int((start + 0.6) * LABEL_HZ))
        targets[i, cls, frames], mask[i, cls, frames] = 1, 1
        mask[i, 1 - cls, frames] = 1          # the other species is known absent there (an FP box)
    return wave, targets, mask


def test_masked_training_separates_species_by_band():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SpeciesDetector(2, backbone="mobilenetv3_small_050",
                            frontend=dict(sample_rate=SR, n_fft=256, hop_length=64, n_mels=32, fmin=50.0,
                                          fmax=4000.0))
    loss_fn = build_loss("bce")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        wave, targets, mask = make_batch(12, gen)
        loss = loss_fn(model(wave)["framewise_logits"], targets, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    metric = MaskedFrameAUROC()
    with torch.no_grad():
        wave, targets, mask = make_batch(32, torch.Generator().manual_seed(123))
        metric.update(model(wave)["framewise_logits"], targets, mask)
    assert metric.compute() > 0.9
