"""The detector a ``model:`` config block describes: the one place that knows every detector class.

Apart from :mod:`~rfcx_lightning.models.detector` (the multi-label detector and the base every detector
shares) and :mod:`~rfcx_lightning.models.bands` (the band detectors, built on that base), so neither
module imports the other's users: bands -> detector, factory -> both.
"""

from __future__ import annotations

from torch import nn

from rfcx_lightning.models.bands import BandDetector
from rfcx_lightning.models.detector import SpeciesDetector

__all__ = ["backbone_kwargs", "build_detector"]


def backbone_kwargs(model: dict) -> dict:
    """timm keyword arguments of the backbone: ``model.backbone_kwargs`` plus ``model.drop_path_rate``.

    Stochastic depth has its own key because it is a per-round student setting (BirdCLEF 2025 1st place:
    0.15 helped only in self-training), set through ``pipeline.per_round`` or a stage recipe; 0 leaves
    the backbone exactly as before (timm's default).
    """
    kwargs = dict(model.get("backbone_kwargs") or {})
    rate = float(model.get("drop_path_rate") or 0.0)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.drop_path_rate={rate}: must be in [0, 1)")
    if rate > 0:
        kwargs["drop_path_rate"] = rate
    return kwargs


def build_detector(n_classes: int, model: dict, spec_augment: dict | None = None) -> nn.Module:
    """The detector a ``model:`` config block describes.

    ``model.detector``: ``multilabel`` (default; :class:`SpeciesDetector`, one network scoring every class
    from the whole spectrogram) or ``band_crop`` / ``band_mask`` (:class:`~rfcx_lightning.models.bands.BandDetector`,
    one binary classifier shared by all classes and applied to each class's frequency band; needs
    ``model.class_bands``, which the stage runner fills in from the TP boxes).
    """
    kind = model.get("detector") or "multilabel"
    common = dict(frontend=dict(model.get("frontend") or {}), pretrained_path=model.get("pretrained_path"),
                  spec_augment=dict(spec_augment) if spec_augment else None,
                  backbone_kwargs=backbone_kwargs(model))
    if kind == "multilabel":
        return SpeciesDetector(n_classes=n_classes, backbone=model["backbone"], head=model["head"],
                               head_kwargs=dict(model.get("head_kwargs") or {}), **common)
    if kind in ("band_crop", "band_mask"):
        if not model.get("class_bands"):
            raise ValueError(f"model.detector={kind} needs model.class_bands (one [f_min, f_max] in Hz per class)")
        band = dict(model.get("band") or {})
        return BandDetector(n_classes=n_classes, backbone=model["backbone"], class_bands=model["class_bands"],
                            mode=kind.split("_", 1)[1], dropout=float((model.get("head_kwargs") or {}).get("dropout", 0.2)),
                            **band, **common)
    raise ValueError(f"model.detector={kind!r}: choose multilabel, band_crop or band_mask")
