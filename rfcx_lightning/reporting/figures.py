"""Images for dashboards and notebooks without a plotting library: a spectrogram with TP/FP boxes and the
model's framewise predictions overlaid, as an RGB uint8 array (W&B's ``wandb.Image`` and PIL take it).

Why not matplotlib: it is not a dependency of the library, and these images are logged from training
machines; numpy + PIL (already required through torchvision) draw what is needed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy.signal import spectrogram

TP_COLOR, FP_COLOR = (60, 220, 90), (240, 60, 60)
CURVE_COLORS = [(255, 200, 0), (0, 200, 255), (255, 120, 255), (255, 255, 255), (160, 120, 255)]


def _viridis_like(x: np.ndarray) -> np.ndarray:
    """A dark-blue -> green -> yellow ramp for values in [0, 1] (close enough to viridis for reading)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def spectrogram_with_boxes(wave: np.ndarray, sample_rate: int, boxes: Sequence[dict] = (),
                           framewise: np.ndarray | None = None, curve_labels: Sequence[str] = (),
                           width: int = 600, height: int = 200, strip: int = 80,
                           fmax: float | None = None) -> np.ndarray:
    """RGB image (height + strip, width, 3): log spectrogram (low frequencies at the bottom) with boxes
    (dicts with t_min, t_max, f_min, f_max, is_tp) and, below it, framewise score curves (K, T) in [0, 1].
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise ValueError(f"spectrogram_with_boxes needs a non-empty mono waveform, got shape {wave.shape}")
    duration = len(wave) / sample_rate
    fmax = float(fmax or sample_rate / 2)
    freqs, _, power = spectrogram(wave, fs=sample_rate, nperseg=1024, noverlap=512)
    power = power[freqs <= fmax]
    db = 10 * np.log10(power + 1e-10)
    lo, hi = np.percentile(db, [5, 99.5])
    norm = (db - lo) / max(hi - lo, 1e-6)
    img = Image.fromarray(_viridis_like(norm[::-1])).resize((width, height), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height + (strip if framewise is not None else 0)), (20, 20, 20))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)

    def x_of(t):
        return float(t) / duration * (width - 1)

    def y_of(f):
        return (1 - min(float(f), fmax) / fmax) * (height - 1)

    for box in boxes:
        color = TP_COLOR if box.get("is_tp", True) else FP_COLOR
        draw.rectangle([x_of(box["t_min"]), y_of(box["f_max"]), x_of(box["t_max"]), y_of(box["f_min"])],
                       outline=color, width=2)
        if box.get("label"):
            draw.text((x_of(box["t_min"]) + 2, y_of(box["f_max"]) + 1), str(box["label"]), fill=color)
    if framewise is not None:
        curves = np.atleast_2d(np.asarray(framewise, np.float32))
        top = height + 4
        span = strip - 8
        for k, curve in enumerate(curves):
            xs = np.linspace(0, width - 1, len(curve))
            ys = top + (1 - np.clip(curve, 0, 1)) * span
            color = CURVE_COLORS[k % len(CURVE_COLORS)]
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=color, width=2)
            if k < len(curve_labels):
                draw.text((4 + 60 * k, top), str(curve_labels[k]), fill=color)
    return np.asarray(canvas)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str = "", width: int = 520,
              row: int = 18, vmax: float | None = None) -> np.ndarray:
    """Horizontal bars with their values, as an RGB uint8 array (LWLRAP per round, positives per class)."""
    values = [float(v) for v in values]
    if len(labels) != len(values):
        raise ValueError(f"bar_chart: {len(labels)} labels for {len(values)} values")
    top = 22 if title else 4
    canvas = Image.new("RGB", (width, top + row * len(values) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0))
    finite = [v for v in values if np.isfinite(v)]
    vmax = float(vmax if vmax is not None else max(finite, default=1.0)) or 1.0
    left, right = 150, width - 60
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        draw.text((4, y + 3), str(label)[:24], fill=(0, 0, 0))
        if np.isfinite(value):
            draw.rectangle([left, y + 3, left + (right - left) * max(value, 0) / vmax, y + row - 3], fill=(70, 110, 200))
            draw.text((right + 4, y + 3), f"{value:.3g}", fill=(0, 0, 0))
    return np.asarray(canvas)
