"""Batch-wise augmentations that run on the model's device, in the training step only.

They operate on whole batches of tensors (not per-item in data-loader workers) because the spectrogram is
computed on the accelerator, and because mixup needs partners from the same batch. Random draws accept an
optional `torch.Generator` so tests (and reproducible debugging) can pin them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class SpecAugmentSettings:
    """``augment.spec_augment``: the arguments of :class:`SpecAugment`."""

    p: float
    time_masks: int
    time_width: float
    freq_masks: int
    freq_width: float


@dataclass
class AugmentSettings:
    """The ``augment:`` block (stages/base.yaml): waveform gain/noise, mixup on the spectrogram, SpecAugment.

    Built by every stage module from its block (``rfcx_lightning.settings.from_block``): a misspelt key is
    an error naming it, not an augmentation silently left at a default.
    """

    gain_noise_p: float
    mixup_p: float
    mixup_alpha: float
    spec_augment: SpecAugmentSettings


def _rand(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) draws on `like`'s device, from `generator` (on its own device) if given."""
    if generator is None:
        return torch.rand(shape, device=like.device)
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


class SpecAugment(nn.Module):
    """Time and frequency masking on a (B, Ch, F, T) spectrogram, training mode only.

    Each item is augmented with probability `p`; it then gets `time_masks` bands of up to `time_width * T`
    frames and `freq_masks` bands of up to `freq_width * F` bins. Only channel 0 (the log-mel) is masked,
    and it is filled with the item's mean rather than zero: the input is standardized per item, so zero is
    not "silence", and the frequency-position channel must stay intact for the network to know where it is.
    """

    def __init__(self, time_masks: int = 2, time_width: float = 0.1, freq_masks: int = 2,
                 freq_width: float = 0.1, p: float = 0.5):
        super().__init__()
        for name, width in (("time_width", time_width), ("freq_width", freq_width)):
            if not 0.0 <= width <= 1.0:
                raise ValueError(f"{name} is a fraction of the axis and must lie in [0, 1], got {width}")
        self.time_masks = int(time_masks)
        self.time_width = float(time_width)
        self.freq_masks = int(freq_masks)
        self.freq_width = float(freq_width)
        self.p = float(p)

    @staticmethod
    def _band_mask(batch: int, length: int, n_masks: int, max_frac: float, like: Tensor, generator) -> Tensor:
        """(batch, length) bool: union of `n_masks` random bands of width <= max_frac*length per item."""
        positions = torch.arange(length, device=like.device)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=like.device)
        max_width = int(max_frac * length)
        if n_masks <= 0 or max_width <= 0:
            return mask
        for _ in range(n_masks):
            width = (_rand((batch, 1), like, generator) * (max_width + 1)).long().clamp_max(max_width)
            start = (_rand((batch, 1), like, generator) * (length - width + 1)).long()
            mask |= (positions >= start) & (positions < start + width)
        return mask

    def forward(self, spec: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training or self.p <= 0:
            return spec
        batch, _, n_freq, n_time = spec.shape
        apply = _rand((batch,), spec, generator) < self.p
        if not bool(apply.any()):
            return spec
        time_mask = self._band_mask(batch, n_time, self.time_masks, self.time_width, spec, generator)
        freq_mask = self._band_mask(batch, n_freq, self.freq_masks, self.freq_width, spec, generator)
        cells = (freq_mask[:, :, None] | time_mask[:, None, :]) & apply[:, None, None]  # (B, F, T)
        channel0 = spec[:, 0]
        fill = channel0.mean(dim=(1, 2), keepdim=True).expand_as(channel0)
        masked0 = torch.where(cells, fill, channel0)
        return torch.cat([masked0.unsqueeze(1), spec[:, 1:]], dim=1)

    def extra_repr(self) -> str:
        return (f"time_masks={self.time_masks}, time_width={self.time_width}, freq_masks={self.freq_masks}, "
                f"freq_width={self.freq_width}, p={self.p}")


def waveform_gain_noise(
    wave: Tensor,
    gain_db: tuple[float, float] = (-6.0, 6.0),
    noise_snr_db: tuple[float, float] = (10.0, 40.0),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random gain and additive white noise on a (B, N) waveform batch.

    Gain and noise are each applied to an item independently with probability `p`. The noise level is set
    from the item's own power and an SNR drawn uniformly in dB, so quiet and loud recordings are degraded
    alike. With the per-item standardized front-end, gain mostly exercises the dB floor (`top_db`) and
    numerical range; the noise changes what the network sees.
    """
    if wave.dim() != 2:
        raise ValueError(f"expected a waveform batch (B, N), got shape {tuple(wave.shape)}")
    batch = wave.shape[0]
    out = wave
    lo, hi = gain_db
    use_gain = _rand((batch, 1), wave, generator) < p
    gain = lo + (hi - lo) * _rand((batch, 1), wave, generator)
    out = out * torch.where(use_gain, 10.0 ** (gain / 20.0), torch.ones_like(gain)).to(out.dtype)
    lo, hi = noise_snr_db
    use_noise = _rand((batch, 1), wave, generator) < p
    snr_db = lo + (hi - lo) * _rand((batch, 1), wave, generator)
    signal_power = out.float().pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12)
    noise_std = torch.sqrt(signal_power / 10.0 ** (snr_db / 10.0)) * use_noise
    return out + _randn(out.shape, out, generator) * noise_std.to(out.dtype)


def _beta(alpha: float, size: int, generator: torch.Generator | None) -> np.ndarray:
    """Beta(alpha, alpha) draws reproducible through a torch generator (torch's Beta takes none)."""
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    return np.random.default_rng(seed).beta(alpha, alpha, size=size)


def mixup(
    x: Tensor,
    targets: Tensor,
    mask: Tensor,
    alpha: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mix each item with a shuffled partner from the same batch, keeping the masked-label semantics.

    x: waveform (B, N) or spectrogram (B, Ch, F, T), mixed linearly with lam ~ Beta(alpha, alpha) per item
    (the frequency-position channel is the same for every item, so mixing leaves it unchanged).
    targets (B, C, T): combined by max -- a call present in either part is present in the mix; RFCx labels
    are presence, not loudness, so a lam-weighted target would under-state a quiet but audible call.
    mask (B, C, T): a cell stays labeled only if the mix's label is known. It is known when both sides are
    labeled (the max of two known labels), or when either side is a labeled positive (present regardless of
    the other side). A labeled negative mixed with an unknown becomes unknown: the partner may hide a call.
    For binary masks this is (m1 & m2) | (m1 & t1==1) | (m2 & t2==1); fractional mask weights carry over
    as min(m1, m2) for the both-known case and as the positive side's weight otherwise.
    """
    batch = x.shape[0]
    device = generator.device if generator is not None else "cpu"
    perm = torch.randperm(batch, generator=generator, device=device).to(x.device)
    lam = torch.as_tensor(_beta(alpha, batch, generator), dtype=torch.float32, device=x.device)
    lam_x = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    mixed_x = lam_x * x + (1 - lam_x) * x[perm]

    t1, t2 = targets, targets[perm]
    m1, m2 = mask.to(torch.float32), mask[perm].to(torch.float32)
    both_known = torch.minimum(m1, m2)
    pos1 = torch.where(t1 >= 1, m1, torch.zeros_like(m1))
    pos2 = torch.where(t2 >= 1, m2, torch.zeros_like(m2))
    new_mask = torch.maximum(both_known, torch.maximum(pos1, pos2)).to(mask.dtype)
    new_targets = torch.maximum(t1, t2)
    return mixed_x, new_targets, new_mask
