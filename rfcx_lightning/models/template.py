"""Template matching: normalized cross-correlation (NCC) of log-mel spectrograms with TP/FP box patches.

Why a template matcher in a library of trained detectors: it needs no training, so it scores every
recording from the first minute of a project, seeds the pseudo-label pool as "round 0", and is the
baseline a trained model has to beat (the RFCx hosts found their candidate calls this way; their FP rows
are the false alarms of exactly such a detector).

How it scores:

* **Features** (:class:`TemplateFeatures`): a plain log-mel in dB (the project's
  :class:`~rfcx_lightning.features.frontend.LogMelFrontend`, no per-sample normalisation, no position
  channel), optionally minus each mel row's median over time (stationary background: insect tones, rain
  and coloured noise have a constant level per band, a call does not), then standardised per recording.
  Templates and scored recordings go through this same function.
* **Templates** (:func:`cut_templates`): the feature patch of a box, restricted to the mel rows whose centre
  frequency lies in ``[f_min - margin, f_max + margin]`` (a species sings in its own band, and rows outside
  it only add noise to the correlation) and to the STFT frames centred in ``[t_min, t_max]``.
* **Sliding NCC** (:class:`TemplateBank`): for a template of ``H`` rows and ``L`` frames, at every start frame
  ``t`` the Pearson correlation of the template with the recording's patch at the same rows, frames
  ``t..t+L-1`` (the classic ``match_template``: both patches mean-centred, scale-free). Templates are
  grouped by class, TP/FP and length (zero-padded to a common shape within a group), and per group two
  ``conv1d`` calls, batched over recordings, give every template's numerator, window sum and window
  energy at once. Each placement's NCC is then spread over the frames it starts (a frame is scored by the
  best placement covering it), so a call lights up over its length, as a trained framewise model's does;
  an FP placement's NCC reaches one template length further on both sides, to veto any TP placement that
  overlaps it.
* **Class score** (:class:`TemplateMatcher`): per (recording, class, frame) the max over the class's TP
  templates, minus ``fp_weight`` x the max (floored at 0) over its FP templates (what the annotators
  rejected for that class scores down), mapped to [0, 1]; max-pooled to the output grid; the clip score is
  the max over frames (as the framewise heads do).

Output grid: STFT frame ``i`` is centred at ``i * hop / sample_rate`` s. Output frame ``j`` covers
``[j / fps, (j + 1) / fps)`` with ``fps = sample_rate / (hop * pool_frames)`` and holds the max over the
``pool_frames`` STFT frames centred inside it (the same convention as the label grids in ``data/labels.py``).
Everything is torch, device agnostic: the bank's tensors are buffers, so ``.to(device)`` moves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features.frontend import LogMelFrontend

DENOISE_CHOICES = ("none", "row_median")
MAPPING_CHOICES = ("linear", "clip", "sigmoid")
_EPS = 1e-6           # floor of a window's variance per cell (standardised features): flat windows score ~0


class TemplateFeatures(nn.Module):
    """Waveform (B, N) -> standardised log-mel (B, n_mels, T), float32, the input of every NCC."""

    def __init__(self, sample_rate: int = 32000, n_fft: int = 1024, hop_length: int = 640, n_mels: int = 64,
                 fmin: float = 50.0, fmax: float = 16000.0, top_db: float | None = 80.0,
                 denoise: str = "row_median"):
        super().__init__()
        if denoise not in DENOISE_CHOICES:
            raise ValueError(f"template denoise={denoise!r}: choose one of {DENOISE_CHOICES}")
        self.frontend = LogMelFrontend(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                                       n_mels=n_mels, fmin=fmin, fmax=fmax, normalize="none",
                                       freq_position_channel=False, top_db=top_db)
        self.denoise = denoise
        self.fmin, self.fmax = float(fmin), float(fmax)

    @property
    def frames_per_second(self) -> float:
        return self.frontend.frames_per_second

    @property
    def n_mels(self) -> int:
        return self.frontend.n_mels

    def mel_centres_hz(self) -> np.ndarray:
        """Centre frequency of each mel row (the librosa/slaney filters the front-end uses)."""
        import librosa

        return librosa.mel_frequencies(self.n_mels + 2, fmin=self.fmin, fmax=self.fmax)[1:-1]

    @torch.no_grad()
    def forward(self, wave: Tensor) -> Tensor:
        x = self.frontend(wave)[:, 0]                                   # (B, n_mels, T) dB
        if self.denoise == "row_median":
            x = x - x.median(dim=-1, keepdim=True).values
        mean = x.mean(dim=(1, 2), keepdim=True)
        std = x.std(dim=(1, 2), keepdim=True)
        return (x - mean) / (std + 1e-5)


@dataclass
class Template:
    """One box's feature patch: rows ``row0 .. row0 + H - 1`` of the features, ``L`` frames long."""

    patch: Tensor          # (H, L) float32
    row0: int
    class_index: int
    is_tp: bool


def band_rows(centres_hz: np.ndarray, f_min: float, f_max: float, margin_hz: float, min_rows: int) -> tuple[int, int]:
    """Mel rows [r0, r1) whose centre lies in the box band widened by ``margin_hz``; at least ``min_rows``.

    A narrow band (100-300 Hz at a few kHz) can fall between two row centres; then the rows nearest the
    band centre are taken, so every template has a frequency extent.
    """
    inside = np.flatnonzero((centres_hz >= f_min - margin_hz) & (centres_hz <= f_max + margin_hz))
    n_rows = len(centres_hz)
    min_rows = max(1, min(int(min_rows), n_rows))
    if len(inside) >= min_rows:
        return int(inside[0]), int(inside[-1]) + 1
    centre = int(np.argmin(np.abs(centres_hz - 0.5 * (f_min + f_max))))
    r0 = min(max(0, centre - (min_rows - 1) // 2), n_rows - min_rows)
    return r0, r0 + min_rows


def cut_templates(features: Tensor, centres_hz: np.ndarray, frames_per_second: float, class_index, t_min, t_max,
                  f_min, f_max, is_tp, margin_hz: float = 0.0, min_rows: int = 2,
                  min_frames: int = 3) -> list[Template]:
    """Templates from the boxes of one recording, given its features (n_mels, T) from :class:`TemplateFeatures`.

    Frames: the STFT frames centred in [t_min, t_max] (at least ``min_frames``, grown around the box centre
    for very short boxes). Raises naming the box when a box lies outside the features.
    """
    n_frames = features.shape[-1]
    out = []
    for k in range(len(class_index)):
        if not (0 <= t_min[k] < t_max[k]) or t_min[k] * frames_per_second >= n_frames:
            raise ValueError(f"box {k} (class {int(class_index[k])}, t {t_min[k]:.3f}-{t_max[k]:.3f} s) "
                             f"is outside the {n_frames / frames_per_second:.1f} s of features")
        f0 = math.ceil(t_min[k] * frames_per_second - 1e-9)
        f1 = min(math.floor(t_max[k] * frames_per_second + 1e-9) + 1, n_frames)
        if f1 - f0 < min_frames:
            mid = (f0 + f1) // 2
            f0 = max(0, min(mid - min_frames // 2, n_frames - min_frames))
            f1 = min(n_frames, f0 + min_frames)
        r0, r1 = band_rows(centres_hz, float(f_min[k]), float(f_max[k]), margin_hz, min_rows)
        out.append(Template(features[r0:r1, f0:f1].float().clone(), r0, int(class_index[k]), bool(is_tp[k])))
    return out


class _TemplateGroup(nn.Module):
    """Templates of one class, one polarity (TP or FP) and similar length, zero-padded into conv1d weights.

    ``weight`` (K, H, L_max) holds each template mean-centred and scaled to unit norm, ``mask`` its own
    rectangle (ones), so one conv of the recording's band gives the NCC numerator and the window sum, and
    a conv of its square the window energy (float32 is enough: the features are standardised). Measured
    on CPU, this beat cumulative sums with per-template look-ups (the gathers cost more than the conv).
    """

    def __init__(self, templates: list[Template]):
        super().__init__()
        self.class_index, self.is_tp = templates[0].class_index, templates[0].is_tp
        self.row0 = min(t.row0 for t in templates)
        row1 = max(t.row0 + t.patch.shape[0] for t in templates)
        lengths = [t.patch.shape[1] for t in templates]
        self.min_length = min(lengths)
        weight = torch.zeros(len(templates), row1 - self.row0, max(lengths))
        mask = torch.zeros_like(weight)
        for k, t in enumerate(templates):
            h, length = t.patch.shape
            rows = slice(t.row0 - self.row0, t.row0 - self.row0 + h)
            mask[k, rows, :length] = 1.0
            centred = t.patch - t.patch.mean()
            norm = centred.norm()
            if norm > 0:  # a flat patch (silence) matches nothing: its weight stays zero, its NCC 0
                weight[k, rows, :length] = centred / norm
        self.register_buffer("weight_and_mask", torch.cat([weight, mask]))
        self.register_buffer("mask", mask)
        self.register_buffer("cells", mask.sum((1, 2))[:, None])
        self.register_buffer("lengths", torch.tensor(lengths))

    def ncc(self, x: Tensor) -> Tensor:
        """(B, K, T) NCC of each template starting at every frame; starts that run past the end get -inf."""
        k, h, lmax = self.mask.shape
        t = x.shape[-1]
        band = F.pad(x[:, self.row0: self.row0 + h], (0, lmax - 1))
        num, sums = F.conv1d(band, self.weight_and_mask).split(k, dim=1)
        energy = F.conv1d(band * band, self.mask)
        var = energy - sums * sums / self.cells
        # |num| <= sqrt(var) (Cauchy-Schwarz, unit-norm template), so the floor only tames flat windows
        ncc = num * torch.rsqrt(var.clamp_min(_EPS * self.cells))
        past_end = torch.arange(t, device=x.device)[None, :] + self.lengths[:, None] > t
        return ncc.masked_fill(past_end, float("-inf"))

    def best(self, x: Tensor) -> Tensor:
        """(B, T): max NCC over the group's templates, each placement spread over the frames it covers.

        A TP placement scores the ``min_length`` frames it starts (``min_length`` is within
        2^(1/buckets_per_octave) of every member's length), so a frame is scored by the best placement
        covering it and a call lights up over its length. An FP placement reaches one more length on
        either side: it must veto every TP placement that overlaps it, and the best TP and FP alignments
        on one sound can differ by a few frames.
        """
        best = self.ncc(x).amax(1, keepdim=True)
        n = self.min_length
        before, after = (n - 1, 0) if self.is_tp else (2 * n - 1, n)
        spread = F.max_pool1d(F.pad(best, (before, after), value=float("-inf")), before + after + 1, 1)
        return spread[:, 0]


class TemplateBank(nn.Module):
    """Every template of a fold, grouped by (class, TP/FP, length bucket) for batched NCC.

    ``buckets_per_octave`` bounds the zero padding: templates in one group differ in length by at most a
    factor ``2 ** (1 / buckets_per_octave)``, so the conv does little work on padding.
    """

    def __init__(self, templates: list[Template], n_classes: int, buckets_per_octave: int = 2):
        super().__init__()
        bad = [t.class_index for t in templates if not 0 <= t.class_index < n_classes]
        if bad:
            raise ValueError(f"template class index {bad[0]} outside [0, {n_classes})")
        self.n_classes = int(n_classes)
        self.templates = templates
        groups: dict[tuple[int, bool, int], list[Template]] = {}
        for t in templates:
            bucket = int(math.floor(buckets_per_octave * math.log2(t.patch.shape[1])))
            groups.setdefault((t.class_index, not t.is_tp, bucket), []).append(t)
        self.groups = nn.ModuleList(_TemplateGroup(groups[key]) for key in sorted(groups))

    def __len__(self) -> int:
        return len(self.templates)

    def class_maxima(self, x: Tensor, with_fp: bool = True) -> tuple[Tensor, Tensor]:
        """Per (recording, class, frame): max NCC over the class's TP templates and over its FP templates
        (-inf where a class has none; FP groups are skipped, all -inf, unless ``with_fp``)."""
        b, _, t = x.shape
        tp = x.new_full((b, self.n_classes, t), float("-inf"))
        fp = x.new_full((b, self.n_classes, t), float("-inf"))
        for group in self.groups:
            if group.is_tp or with_fp:
                target = tp if group.is_tp else fp
                target[:, group.class_index] = torch.maximum(target[:, group.class_index], group.best(x))
        return tp, fp

    # -- persistence: a fold's bank is saved so a resumed run does not cut it again ---------------------
    def to_dict(self) -> dict:
        return {"n_classes": self.n_classes,
                "patches": [t.patch.cpu() for t in self.templates],
                "row0": [t.row0 for t in self.templates],
                "class_index": [t.class_index for t in self.templates],
                "is_tp": [t.is_tp for t in self.templates]}

    @classmethod
    def from_dict(cls, data: dict, buckets_per_octave: int = 2) -> "TemplateBank":
        templates = [Template(p, int(r), int(c), bool(tp)) for p, r, c, tp in
                     zip(data["patches"], data["row0"], data["class_index"], data["is_tp"])]
        return cls(templates, int(data["n_classes"]), buckets_per_octave)


def map_scores(raw: Tensor, mapping: str, center: float = 0.0, scale: float = 1.0) -> Tensor:
    """Class scores (NCC, minus the FP term) to [0, 1].

    ``linear``: (s + 1) / 2 clamped (keeps every rank; NCC's own range is [-1, 1]). ``clip``: s clamped to
    [0, 1] (anti-correlation counts as no evidence). ``sigmoid``: sigmoid(scale * (s - center)).
    Clip-level LWLRAP before odds scaling is rank based, so only the odds-scaled scores depend on the map.
    """
    if mapping == "linear":
        return ((raw + 1) / 2).clamp(0, 1)
    if mapping == "clip":
        return raw.clamp(0, 1)
    if mapping == "sigmoid":
        return torch.sigmoid(scale * (raw - center))
    raise ValueError(f"template mapping={mapping!r}: choose one of {MAPPING_CHOICES}")


class TemplateMatcher(nn.Module):
    """Waveform (B, N) -> ``{"framewise": (B, C, T_out) in [0, 1], "clip": (B, C)}`` from a template bank.

    Set the bank with :meth:`set_bank` (templates cut from :meth:`features` of the training recordings).
    A class without TP templates scores -1 (the lowest NCC) before mapping.
    """

    def __init__(self, n_classes: int, sample_rate: int = 32000, frontend: dict | None = None,
                 denoise: str = "row_median", freq_margin_hz: float = 0.0, min_rows: int = 2, min_frames: int = 3,
                 fp_weight: float = 0.0, mapping: str = "sigmoid", sigmoid_center: float = 0.3,
                 sigmoid_scale: float = 10.0, pool_frames: int = 5, buckets_per_octave: int = 2):
        super().__init__()
        if mapping not in MAPPING_CHOICES:
            raise ValueError(f"template mapping={mapping!r}: choose one of {MAPPING_CHOICES}")
        if int(pool_frames) < 1:
            raise ValueError(f"template pool_frames must be >= 1, got {pool_frames}")
        if fp_weight < 0:
            raise ValueError(f"template fp_weight must be >= 0, got {fp_weight}")
        self.n_classes = int(n_classes)
        self.features = TemplateFeatures(sample_rate=sample_rate, denoise=denoise, **(frontend or {}))
        self.freq_margin_hz, self.min_rows, self.min_frames = float(freq_margin_hz), int(min_rows), int(min_frames)
        self.fp_weight, self.mapping = float(fp_weight), mapping
        self.sigmoid_center, self.sigmoid_scale = float(sigmoid_center), float(sigmoid_scale)
        self.pool_frames, self.buckets_per_octave = int(pool_frames), int(buckets_per_octave)
        self.bank: TemplateBank | None = None

    @property
    def frames_per_second(self) -> float:
        """Rate of the output grid (after pooling)."""
        return self.features.frames_per_second / self.pool_frames

    def cut(self, features: Tensor, class_index, t_min, t_max, f_min, f_max, is_tp) -> list[Template]:
        """Templates of one recording's boxes, from its (n_mels, T) features."""
        return cut_templates(features, self.features.mel_centres_hz(), self.features.frames_per_second,
                             class_index, t_min, t_max, f_min, f_max, is_tp, margin_hz=self.freq_margin_hz,
                             min_rows=self.min_rows, min_frames=self.min_frames)

    def set_bank(self, bank: TemplateBank) -> None:
        if bank.n_classes != self.n_classes:
            raise ValueError(f"template bank has {bank.n_classes} classes, the matcher {self.n_classes}")
        self.bank = bank

    def raw_scores(self, feats: Tensor) -> Tensor:
        """(B, C, T) TP max minus ``fp_weight`` x FP max (floored at 0), at the STFT frame rate."""
        if self.bank is None:
            raise RuntimeError("TemplateMatcher has no templates: call set_bank first")
        tp, fp = self.bank.class_maxima(feats, with_fp=self.fp_weight > 0)
        score = torch.where(torch.isfinite(tp), tp, torch.full_like(tp, -1.0))
        if self.fp_weight > 0:
            score = score - self.fp_weight * torch.where(torch.isfinite(fp), fp, torch.zeros_like(fp)).clamp_min(0)
        return score

    @torch.no_grad()
    def forward(self, wave: Tensor) -> dict[str, Tensor]:
        feats = self.features(wave)
        n_out = wave.shape[-1] // (self.features.frontend.hop_length * self.pool_frames)
        probs = map_scores(self.raw_scores(feats), self.mapping, self.sigmoid_center, self.sigmoid_scale)
        probs = probs[..., : n_out * self.pool_frames]   # drop the last centred frame(s) past the grid
        framewise = F.max_pool1d(probs, self.pool_frames) if self.pool_frames > 1 else probs
        return {"framewise": framewise, "clip": framewise.amax(-1)}
