"""Log-mel front-end that lives inside the model.

Why inside the model: training, validation and whole-recording inference must preprocess identically,
and the STFT is cheap on the accelerator but a bottleneck in data-loader workers. The filter banks are
registered as buffers, so `model.to(device)` moves them and the optimizer never sees them.

Why float32 even under AMP: log-mel in float16/bfloat16 under-/over-flows (the power spectrum spans
~10 orders of magnitude), which is the classic source of inf/NaN losses in mixed-precision audio training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BACKENDS = ("torchlibrosa", "nnaudio")
NORMALIZE_CHOICES = ("per_sample", "none")

_AMIN = 1e-10  # power floor before the log, as in librosa.power_to_db


def _params_to_buffers(module: nn.Module) -> None:
    """Turn every parameter of `module` (recursively) into a buffer of the same name.

    The third-party STFT/mel modules store their fixed kernels as frozen `nn.Parameter`s; as buffers they
    still move with `.to()` and are saved in the state dict under the same keys, but they no longer show up
    in `model.parameters()` (optimizers, EMA, parameter counts, DDP's unused-parameter checks).
    """
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().clone())


def power_to_db(power: Tensor, top_db: float | None) -> Tensor:
    """10*log10(power) with a per-item dynamic-range floor `max - top_db`.

    torchlibrosa's own `top_db` uses the maximum over the whole batch, which makes an item's features
    depend on its batch mates; here the floor is computed per item (over all dims but the first).
    """
    db = 10.0 * torch.log10(power.clamp_min(_AMIN))
    if top_db is not None:
        peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
        db = torch.maximum(db, peak - top_db)
    return db


class _FFTPowerSpectrogram(nn.Module):
    """|STFT|^2 with ``torch.stft`` (hann window, centred, reflect padding): (B, N) -> (B, 1, T, n_fft//2+1).

    The same framing and output as torchlibrosa's ``Spectrogram``, which computes the DFT as a Conv1d
    with n_fft x n_fft kernels; an FFT does that work in O(n log n) and measured 3x faster on CPU
    (BENCHMARKS.md), so it is the default STFT of the torchlibrosa backend (``stft="conv"`` keeps theirs).
    """

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        return spec.abs().pow(2).transpose(1, 2).unsqueeze(1)


class _TorchLibrosaMel(nn.Module):
    """Power mel spectrogram with torchlibrosa's mel filterbank; returns (B, n_mels, T)."""

    def __init__(self, sample_rate, n_fft, hop_length, n_mels, fmin, fmax, stft="fft"):
        super().__init__()
        from torchlibrosa.stft import LogmelFilterBank, Spectrogram

        if stft == "fft":
            self.stft = _FFTPowerSpectrogram(n_fft, hop_length)
        elif stft == "conv":
            self.stft = Spectrogram(
                n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window="hann",
                center=True, pad_mode="reflect", freeze_parameters=True,
            )
        else:
            raise ValueError(f"unknown stft {stft!r}; choose 'fft' or 'conv'")
        self.mel = LogmelFilterBank(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
            is_log=False, freeze_parameters=True,
        )
        _params_to_buffers(self)

    def forward(self, wave: Tensor) -> Tensor:
        spec = self.stft(wave)  # (B, 1, T, n_fft//2+1) power
        mel = self.mel(spec)  # (B, 1, T, n_mels)
        return mel[:, 0].transpose(1, 2)


class _NNAudioMel(nn.Module):
    """Power mel spectrogram via nnAudio (same centred framing as torchlibrosa); returns (B, n_mels, T)."""

    def __init__(self, sample_rate, n_fft, hop_length, n_mels, fmin, fmax, stft="conv"):
        super().__init__()
        from nnAudio.features import MelSpectrogram

        self.mel = MelSpectrogram(
            sr=sample_rate, n_fft=n_fft, win_length=n_fft, n_mels=n_mels, hop_length=hop_length,
            window="hann", center=True, pad_mode="reflect", power=2.0, htk=False, fmin=fmin, fmax=fmax,
            trainable_mel=False, trainable_STFT=False, verbose=False,
        )
        _params_to_buffers(self)

    def forward(self, wave: Tensor) -> Tensor:
        return self.mel(wave)


class LogMelFrontend(nn.Module):
    """Waveform (B, N) -> log-mel image (B, 1 or 2, n_mels, T), always float32.

    Channel 0 is the (optionally per-item standardized) log-mel power in dB, mel bin 0 = lowest frequency.
    Channel 1 (if `freq_position_channel`) holds the mel-bin index scaled to [0, 1], constant over time:
    CNNs are nearly translation invariant in frequency, but RFCx species are defined by *where* in frequency
    they call (2nd place "FreqConv" trick), so the network gets the position explicitly.
    """

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 2048,
        hop_length: int = 320,
        n_mels: int = 128,
        fmin: float = 50.0,
        fmax: float = 16000.0,
        backend: str = "torchlibrosa",
        normalize: str | None = "per_sample",
        freq_position_channel: bool = True,
        top_db: float | None = 80.0,
        stft: str = "fft",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown front-end backend {backend!r}; choose one of {BACKENDS}")
        normalize = "none" if normalize is None else normalize
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZE_CHOICES}")
        if fmax > sample_rate / 2:
            raise ValueError(f"fmax={fmax} is above the Nyquist frequency {sample_rate / 2}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin, self.fmax = float(fmin), float(fmax)
        self.backend = backend
        self.normalize = normalize
        self.freq_position_channel = bool(freq_position_channel)
        self.top_db = top_db
        mel_cls = _TorchLibrosaMel if backend == "torchlibrosa" else _NNAudioMel
        self.stft = stft if backend == "torchlibrosa" else "conv"  # nnAudio keeps its own STFT
        self.melspec = mel_cls(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, fmin, fmax, self.stft)
        position = torch.linspace(0.0, 1.0, self.n_mels).view(1, 1, self.n_mels, 1)
        self.register_buffer("freq_position", position, persistent=False)

    @property
    def out_channels(self) -> int:
        return 2 if self.freq_position_channel else 1

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def mel_centers_hz(self) -> "numpy.ndarray":
        """Centre frequency (Hz) of each mel row (Slaney mel scale, as both backends' filterbanks use)."""
        import librosa

        return librosa.mel_frequencies(self.n_mels + 2, fmin=self.fmin, fmax=self.fmax, htk=False)[1:-1]

    def n_frames(self, n_samples: int) -> int:
        """Number of centred STFT frames for a waveform of `n_samples` samples."""
        return int(n_samples) // self.hop_length + 1

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() == 3 and wave.shape[1] == 1:
            wave = wave[:, 0]
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform batch (B, N), got shape {tuple(wave.shape)}")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = wave.float()
            logmel = power_to_db(self.melspec(wave).float(), self.top_db)  # (B, n_mels, T)
            if self.normalize == "per_sample":
                mean = logmel.mean(dim=(1, 2), keepdim=True)
                std = logmel.std(dim=(1, 2), keepdim=True)
                logmel = (logmel - mean) / (std + 1e-5)
            image = logmel.unsqueeze(1)
            if self.freq_position_channel:
                position = self.freq_position.to(image.dtype).expand(image.shape[0], 1, -1, image.shape[-1])
                image = torch.cat([image, position], dim=1)
        return image

    def extra_repr(self) -> str:
        return (
            f"backend={self.backend!r}, stft={self.stft!r}, sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
            f"hop_length={self.hop_length}, n_mels={self.n_mels}, normalize={self.normalize!r}, "
            f"out_channels={self.out_channels}, top_db={self.top_db}"
        )

