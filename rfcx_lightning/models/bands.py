"""Band detectors: one binary classifier shared by every class, applied to each class's frequency band.

Why: RFCx gives ~10-30 labelled calls per species, and a multi-label network trained from scratch has to
learn each species' detector from those few boxes alone. But every species/songtype calls in a nearly
constant band (its boxes' ``f_min``/``f_max``), so "is there a call of this class here?" can be asked of
the class's band only, by one network that every TP/FP row of every species trains (11th and 14th place
RFCx solutions). The class enters twice: through the band the network looks at, and through a small
per-class correction of the shared linear read-out (a class embedding, zero at the start so the shared
detector is learnt first).

Two ways to show a class's band to the network (``mode``):

* ``crop``: the band (plus a margin) is resampled to ``rows`` mel rows, so every class is seen at the same
  scale; the frequency-position channel is resampled with it and still says where the band sits.
* ``mask``: the full spectrogram with everything outside the band zeroed (21st place's band masks); the
  network sees absolute frequency, at the cost of a full-size image per class.

Only the (item, class) pairs that carry labels are computed in training (``active``); prediction scores
every class, in chunks so a 60 s batch of 24 classes stays within memory. On a CPU the chunks are also
kept small in pixels (``predict_image_frames``): 4-5 band images of 60 s per backbone call ran 2.1-2.5x
faster than 128 (BENCHMARKS.md), because activations that fit the caches are not re-fetched from DRAM.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rfcx_lightning.models.backbones import backbone_num_features, create_backbone
from rfcx_lightning.models.detector import DetectorBase


# Band image pixels (images x time frames) per prediction call on a CPU: 5 band images of a 60 s recording
# at 50 frames/s, or 65 crops of 5 s (bench: the fastest whole-recording chunk was 4 images, windows 64-128).
AUTO_CPU_IMAGE_FRAMES = 16384


def class_bands_from_boxes(boxes: pd.DataFrame, n_classes: int) -> list[list[float]]:
    """Per class [f_min, f_max] in Hz: the median of its TP rows (FP rows if a class has no TP row).

    ``boxes`` is the validated box table (``class_index``, ``is_tp``, ``f_min``, ``f_max`` columns).
    """
    bands = []
    for c in range(n_classes):
        rows = boxes[boxes["class_index"] == c]
        if rows.empty:
            raise ValueError(f"class {c} has no TP or FP box, so its frequency band is unknown")
        tp = rows[rows["is_tp"]]
        rows = tp if not tp.empty else rows
        bands.append([float(rows["f_min"].median()), float(rows["f_max"].median())])
    return bands


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.hz_to_mel(np.asarray(hz, dtype=np.float64), htk=False)


def band_matrices(class_bands, mel_centers_hz: np.ndarray, mode: str, rows: int, margin: float) -> Tensor:
    """(C, R, M) linear maps from the M mel rows of a spectrogram to a class's band image of R rows.

    ``crop``: R = ``rows`` rows evenly spaced in mel between the band edges widened by ``margin`` (a share
    of the band's mel width on each side), each a linear interpolation of the two nearest mel rows.
    ``mask``: R = M, the identity on rows inside the widened band and zero elsewhere.
    """
    centers = _hz_to_mel(mel_centers_hz)
    n_mels = len(centers)
    mats = []
    for f_lo, f_hi in class_bands:
        lo, hi = _hz_to_mel([f_lo, f_hi])
        width = max(hi - lo, 1e-6)
        lo, hi = lo - margin * width, hi + margin * width
        if mode == "mask":
            inside = (centers >= lo) & (centers <= hi)
            if not inside.any():  # a band narrower than one mel row: keep the nearest row
                inside[np.argmin(np.abs(centers - (lo + hi) / 2))] = True
            mats.append(np.diag(inside.astype(np.float32)))
            continue
        targets = np.linspace(lo, hi, rows)
        pos = np.interp(targets, centers, np.arange(n_mels))  # fractional source row, clamped to the range
        low = np.floor(pos).astype(int).clip(0, n_mels - 1)
        high = (low + 1).clip(0, n_mels - 1)
        frac = (pos - low).astype(np.float32)
        mat = np.zeros((rows, n_mels), np.float32)
        mat[np.arange(rows), low] += 1 - frac
        mat[np.arange(rows), high] += frac
        mats.append(mat)
    return torch.from_numpy(np.stack(mats))


class BandDetector(DetectorBase):
    """Shared binary band classifier with a class embedding; same interface as ``SpeciesDetector``.

    forward(wave (B, N)) -> {"framewise_logits": (B, C, T_out), "clip_logits": (B, C)}.
    """

    def __init__(self, n_classes: int, backbone: str, class_bands, mode: str = "crop", rows: int = 32,
                 margin: float = 0.15, normalize_band: bool = True, normalize_seconds: float | None = None,
                 dropout: float = 0.2,
                 max_images: int = 128, predict_image_frames: int | str | None = "auto",
                 frontend: dict | None = None, pretrained_path: str | None = None,
                 spec_augment: dict | None = None, backbone_kwargs: dict | None = None):
        super().__init__(n_classes, frontend, spec_augment)
        if mode not in ("crop", "mask"):
            raise ValueError(f"band mode {mode!r}: choose 'crop' or 'mask'")
        if len(class_bands) != n_classes:
            raise ValueError(f"model.class_bands has {len(class_bands)} bands for {n_classes} classes")
        self.mode = mode
        self.normalize_band = bool(normalize_band) and mode == "crop"
        # frames of the moving window the band statistics are taken over (0: the whole image)
        self.normalize_frames = int(round(float(normalize_seconds or 0) * self.frontend.frames_per_second))
        self.max_images = int(max_images)
        if not (predict_image_frames in (None, "auto")
                or (type(predict_image_frames) is int and predict_image_frames > 0)):  # not bool, not str
            raise ValueError(f"model.band.predict_image_frames={predict_image_frames!r}: a positive number of "
                             "frames, 'auto' or null")
        self.predict_image_frames = predict_image_frames
        self.register_buffer("bands", band_matrices(class_bands, self.frontend.mel_centers_hz(), mode,
                                                    int(rows), float(margin)), persistent=False)
        self.backbone = create_backbone(backbone, in_chans=self.frontend.out_channels,
                                        pretrained_path=pretrained_path, **(backbone_kwargs or {}))
        features = backbone_num_features(self.backbone)
        self.dropout = nn.Dropout(dropout)
        self.shared = nn.Linear(features, 1)                                  # the shared detector
        self.class_weight = nn.Parameter(torch.zeros(n_classes, features))   # per-class correction
        self.class_bias = nn.Parameter(torch.zeros(n_classes))

    def band_images(self, spec: Tensor, items: Tensor, classes: Tensor) -> Tensor:
        """(N, ch, R, T) band images of the (item, class) pairs from spectrograms (B, ch, M, T)."""
        mats = self.bands[classes].to(spec.dtype)                        # (N, R, M)
        source = spec[items]                                              # (N, ch, M, T)
        if self.mode == "mask":  # mask the log-mel channel only; the position channel stays whole
            level = torch.einsum("nrm,nmt->nrt", mats, source[:, 0])
            images = torch.cat([level.unsqueeze(1), source[:, 1:]], dim=1)
        else:
            images = torch.einsum("nrm,nkmt->nkrt", mats, source)
        if self.normalize_band:  # per-band standardisation: the band's own noise floor becomes the reference
            level = images[:, :1]
            if 0 < self.normalize_frames < level.shape[-1]:
                mean, std = self._moving_statistics(level)
            else:
                mean, std = level.mean(dim=(2, 3), keepdim=True), level.std(dim=(2, 3), keepdim=True)
            images = torch.cat([(level - mean) / (std + 1e-5), images[:, 1:]], dim=1)
        return images

    def _moving_statistics(self, level: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std (N, 1, 1, T) of a band image (N, 1, R, T) over all rows and a centred window of
        ``normalize_frames`` frames (fewer at the edges).

        Why: statistics over the whole image make a 60 s image look different from the 5 s crops the
        network learnt from (docs/results.md "Post-processing options"), so one pass over a recording
        scored worse than windows. Over a window of the crop length, every frame of a long image is
        standardised as it would be in a crop centred on it.
        """
        k = self.normalize_frames | 1                                        # odd: centred
        rows = level.mean(dim=2)                                             # (N, 1, T)
        squares = (level * level).mean(dim=2)
        pool = functools.partial(F.avg_pool1d, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
        mean = pool(rows)
        var = (pool(squares) - mean * mean).clamp_min(0.0)
        return mean.unsqueeze(2), var.sqrt().unsqueeze(2)

    def score_pairs(self, spec: Tensor, items: Tensor, classes: Tensor) -> Tensor:
        """(N, T_out) framewise logits of the (item, class) pairs."""
        feats = self.backbone.forward_features(self.band_images(spec, items, classes))
        hidden = self.dropout(feats.mean(dim=2).transpose(1, 2))        # (N, T_out, F)
        logits = self.shared(hidden).squeeze(-1)
        correction = torch.einsum("ntf,nf->nt", hidden, self.class_weight[classes])
        return logits + correction + self.class_bias[classes].unsqueeze(-1)

    def chunk_size(self, spec: Tensor) -> int:
        """Band images per backbone call: ``max_images``, and at prediction at most ``predict_image_frames``
        images x time frames (``auto``: 16384 on a CPU, unlimited on a GPU, which wants big calls).

        Training keeps ``max_images`` alone: splitting a step's pairs would change batch-norm statistics.
        """
        budget = self.predict_image_frames
        if budget == "auto":
            budget = None if spec.device.type == "cuda" else AUTO_CPU_IMAGE_FRAMES
        if self.training or budget is None:
            return self.max_images
        return max(1, min(self.max_images, int(budget) // max(1, spec.shape[-1])))

    def forward_spectrogram(self, spec: Tensor, active: Tensor | None = None) -> dict[str, Tensor]:
        """Score the ``active`` (B, C) pairs (all of them if None); inactive cells get logit 0."""
        batch = spec.shape[0]
        if active is None:
            active = torch.ones(batch, self.n_classes, dtype=torch.bool, device=spec.device)
        items, classes = active.nonzero(as_tuple=True)
        if len(items) == 0:  # nothing labelled: one pair keeps the graph (and DDP) connected
            items = classes = torch.zeros(1, dtype=torch.long, device=spec.device)
        size = self.chunk_size(spec)
        chunks = [self.score_pairs(spec, items[i:i + size], classes[i:i + size]) for i in range(0, len(items), size)]
        pair_logits = torch.cat(chunks)
        framewise = pair_logits.new_zeros(batch, self.n_classes, pair_logits.shape[-1])
        framewise = framewise.index_put((items, classes), pair_logits)
        return {"framewise_logits": framewise, "clip_logits": framewise.amax(dim=-1)}
