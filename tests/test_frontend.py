"""Front-end and augmentation: shapes, float32 under AMP, position channel, SpecAugment, mixup rules."""

from __future__ import annotations

import pytest
import torch

from rfcx_lightning.features.augment import SpecAugment, mixup, waveform_gain_noise
from rfcx_lightning.features.frontend import LogMelFrontend

SR = 32000


@pytest.fixture(scope="module")
def wave():
    torch.manual_seed(0)
    return torch.randn(2, SR * 2)


@pytest.mark.parametrize("backend", ["torchlibrosa", "nnaudio"])
@pytest.mark.parametrize("position", [True, False])
def test_output_shape(wave, backend, position):
    fe = LogMelFrontend(n_mels=64, backend=backend, freq_position_channel=position)
    out = fe(wave)
    assert fe.out_channels == (2 if position else 1)
    assert out.shape == (2, fe.out_channels, 64, fe.n_frames(wave.shape[1]))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert fe.frames_per_second == SR / 320


def test_backends_agree(wave):
    kw = dict(n_mels=64, normalize="none", freq_position_channel=False)
    a = LogMelFrontend(backend="torchlibrosa", **kw)(wave)
    b = LogMelFrontend(backend="nnaudio", **kw)(wave)
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-3)


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="torchlibrosa"):
        LogMelFrontend(backend="librosa")


def test_filter_banks_are_buffers_not_parameters():
    fe = LogMelFrontend(n_mels=64)
    assert list(fe.parameters()) == []
    assert any("melW" in name for name, _ in fe.named_buffers())
    assert any("melW" in key for key in fe.state_dict())


@pytest.mark.parametrize("backend", ["torchlibrosa", "nnaudio"])
def test_float32_under_bf16_autocast(wave, backend):
    fe = LogMelFrontend(n_mels=64, backend=backend)
    reference = fe(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(wave.to(torch.bfloat16))
    assert out.dtype == torch.float32
    # the input was rounded to bf16, the rest must have run in float32
    assert torch.allclose(out, reference, atol=0.05)


def test_per_sample_normalization(wave):
    same = wave[:1].repeat(2, 1)
    out = LogMelFrontend(n_mels=64, freq_position_channel=False)(same * torch.tensor([[1.0], [100.0]]))
    mean = out.mean(dim=(1, 2, 3))
    std = out.std(dim=(1, 2, 3))
    assert torch.allclose(mean, torch.zeros(2), atol=1e-4)
    assert torch.allclose(std, torch.ones(2), atol=1e-3)
    # gain invariance: per-item standardization removes a constant dB offset
    assert torch.allclose(out[0], out[1], atol=1e-3)


def test_position_channel(wave):
    out = LogMelFrontend(n_mels=64)(wave)
    pos = out[:, 1]
    assert pos.min() == 0.0 and pos.max() == 1.0
    assert (pos[:, 1:, :] > pos[:, :-1, :]).all()  # increasing with the mel bin
    assert (pos == pos[:, :, :1]).all()  # constant over time


def test_single_channel_input_shape_accepted(wave):
    fe = LogMelFrontend(n_mels=32)
    assert torch.equal(fe(wave.unsqueeze(1)), fe(wave))


# ----------------------------------------------------------------------------- SpecAugment


def test_specaugment_identity_in_eval():
    aug = SpecAugment(p=1.0).eval()
    x = torch.randn(4, 2, 64, 100)
    assert aug(x) is x


def test_specaugment_masks_only_channel0_with_mean():
    aug = SpecAugment(time_masks=2, time_width=0.3, freq_masks=2, freq_width=0.3, p=1.0).train()
    x = torch.randn(8, 2, 64, 100)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 1], x[:, 1])
    changed = out[:, 0] != x[:, 0]
    assert changed.flatten(1).any(dim=1).all()
    mean = x[:, 0].mean(dim=(1, 2))
    for i in range(8):
        assert torch.allclose(out[i, 0][changed[i]], mean[i].expand(int(changed[i].sum())))


def test_specaugment_p0_is_identity():
    x = torch.randn(4, 2, 32, 50)
    assert torch.equal(SpecAugment(p=0.0).train()(x), x)


# ----------------------------------------------------------------------------- waveform gain / noise


def test_waveform_gain_noise_shapes_and_identity_at_p0(wave):
    g = torch.Generator().manual_seed(1)
    assert torch.equal(waveform_gain_noise(wave, p=0.0, generator=g), wave)
    out = waveform_gain_noise(wave, p=1.0, noise_snr_db=(20.0, 20.0), gain_db=(0.0, 0.0), generator=g)
    noise = out - wave
    snr = 10 * torch.log10(wave.pow(2).mean(1) / noise.pow(2).mean(1))
    assert torch.allclose(snr, torch.full_like(snr, 20.0), atol=0.5)


# ----------------------------------------------------------------------------- mixup


def _swapping_generator() -> torch.Generator:
    """A generator whose first randperm(2) swaps the two items, so each is mixed with the other."""
    g = torch.Generator()
    for seed in range(100):
        g.manual_seed(seed)
        if torch.randperm(2, generator=g).tolist() == [1, 0]:
            return g.manual_seed(seed)
    raise AssertionError("no swapping seed found")


def test_mixup_target_and_mask_rules():
    # item 0: class0 TP, class1 FP, class2 unknown, class3 FP,  class4 unknown
    # item 1: class0 unknown, class1 unknown, class2 TP, class3 FP, class4 unknown
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]]).unsqueeze(-1)
    m = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0]]).unsqueeze(-1)
    x = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    mx, mt, mm = mixup(x, t, m, alpha=0.5, generator=_swapping_generator())
    expected_t = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    expected_m = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])  # TP wins; FP+unknown -> unknown; FP+FP -> FP
    for i in range(2):
        assert torch.equal(mm[i, :, 0], expected_m)
        assert torch.equal(mt[i, :, 0] * mm[i, :, 0], expected_t * expected_m)
    # linear mix with a per-item lambda in [0, 1]
    lam0 = (mx[0, 0] - 3.0) / (1.0 - 3.0)
    lam1 = (mx[1, 0] - 1.0) / (3.0 - 1.0)
    assert 0 <= lam0 <= 1 and 0 <= lam1 <= 1
    assert torch.allclose(mx[:, 0], mx[:, 1])


def test_mixup_spectrogram_keeps_position_channel_and_is_reproducible():
    spec = torch.randn(6, 2, 16, 20)
    spec[:, 1] = torch.linspace(0, 1, 16).view(1, 16, 1)
    t = (torch.rand(6, 24, 20) > 0.5).float()
    m = (torch.rand(6, 24, 20) > 0.5).float()
    a = mixup(spec, t, m, generator=torch.Generator().manual_seed(3))
    b = mixup(spec, t, m, generator=torch.Generator().manual_seed(3))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert torch.allclose(a[0][:, 1], spec[:, 1], atol=1e-6)
    assert a[0].shape == spec.shape and a[1].shape == t.shape and a[2].shape == m.shape


def test_mixup_fractional_mask_weights():
    t = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]]])  # (B=2, C=2, T=1)
    m = torch.tensor([[[0.4], [0.4]], [[1.0], [1.0]]])
    _, mt, mm = mixup(torch.zeros(2, 4), t, m, generator=_swapping_generator())
    # class 0: positive (weight 0.4) with a labeled negative -> positive, weight 0.4
    # class 1: both labeled negatives -> min weight 0.4
    assert torch.allclose(mm[:, 0, 0], torch.tensor([0.4, 0.4]))
    assert torch.allclose(mm[:, 1, 0], torch.tensor([0.4, 0.4]))
    assert torch.equal(mt[:, 0, 0], torch.tensor([1.0, 1.0]))


def test_fft_stft_matches_torchlibrosa_conv_stft():
    """The FFT path is a faster implementation of the same transform, not a different feature."""
    wave = torch.randn(2, 32000)
    kwargs = dict(n_fft=1024, hop_length=320, n_mels=64, normalize="none", freq_position_channel=False)
    fft = LogMelFrontend(stft="fft", **kwargs)(wave)
    conv = LogMelFrontend(stft="conv", **kwargs)(wave)
    assert fft.shape == conv.shape
    assert torch.allclose(fft, conv, atol=1e-3)
