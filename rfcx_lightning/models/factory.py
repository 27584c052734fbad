"""The detector a ``model:`` config block describes: the one place that knows every detector class.

Apart from :mod:`~rfcx_lightning.models.detector` (the multi-label detector and the base every detector
shares) and :mod:`~rfcx_lightning.models.bands` (the band detectors, built on that base), so neither
module imports the other's users: bands -> detector, factory -> both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from rfcx_lightning.models.bands import BandDetector
from rfcx_lightning.models.detector import SpeciesDetector
from rfcx_lightning.settings import from_block

__all__ = ["BandSettings", "FrontendSettings", "ModelSettings", "backbone_kwargs", "build_detector",
           "model_settings"]


@dataclass
class FrontendSettings:
    """``model.frontend``: the log-mel front-end (:class:`~rfcx_lightning.features.frontend.LogMelFrontend`).
    ``sample_rate`` is ``${audio.sample_rate}`` in the tree: the rate the cache holds is the rate the mel
    filterbank assumes."""

    sample_rate: int
    backend: str
    stft: str
    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    normalize: str | None
    freq_position_channel: bool


@dataclass
class BandSettings:
    """``model.band``: the band detectors' images (:class:`~rfcx_lightning.models.bands.BandDetector`)."""

    rows: int
    margin: float
    normalize_band: bool
    normalize_seconds: float | None
    max_images: int
    predict_image_frames: Any          # a positive int, "auto" or null (checked by BandDetector)


@dataclass
class ModelSettings:
    """The ``model:`` block (stages/base.yaml), checked key by key; ``class_bands`` is not a config key but
    what the data decides (the runner's ``model_config`` fills it from the TP boxes for band detectors)."""

    detector: str
    backbone: str
    head: str
    pretrained_path: str | None
    init_from: str | None
    frontend: FrontendSettings
    head_kwargs: dict
    backbone_kwargs: dict
    channels_last: bool
    drop_path_rate: float
    band: BandSettings
    class_bands: list | None = None


def model_settings(model: ModelSettings | Mapping[str, Any]) -> ModelSettings:
    """``model`` as :class:`ModelSettings`: a config block (or a checkpoint's saved ``model`` hyper-parameter)
    is checked key by key; settings pass through."""
    return model if isinstance(model, ModelSettings) else from_block(ModelSettings, model, "model")


def backbone_kwargs(model: ModelSettings) -> dict:
    """timm keyword arguments of the backbone: ``model.backbone_kwargs`` plus ``model.drop_path_rate``.

    Stochastic depth has its own key because it is a per-round student setting (BirdCLEF 2025 1st place:
    0.15 helped only in self-training), set through ``pipeline.per_round`` or a stage recipe; 0 leaves
    the backbone exactly as before (timm's default).
    """
    kwargs = dict(model.backbone_kwargs)
    rate = model.drop_path_rate
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.drop_path_rate={rate}: must be in [0, 1)")
    if rate > 0:
        kwargs["drop_path_rate"] = rate
    return kwargs


def build_detector(n_classes: int, model: ModelSettings | Mapping[str, Any],
                   spec_augment: Mapping[str, Any] | None = None) -> nn.Module:
    """The detector a ``model:`` config block describes.

    ``model.detector``: ``multilabel`` (default; :class:`SpeciesDetector`, one network scoring every class
    from the whole spectrogram) or ``band_crop`` / ``band_mask`` (:class:`~rfcx_lightning.models.bands.BandDetector`,
    one binary classifier shared by all classes and applied to each class's frequency band; needs
    ``model.class_bands``, which the stage runner fills in from the TP boxes).
    """
    model = model_settings(model)
    kind = model.detector
    common = dict(frontend=dataclasses.asdict(model.frontend), pretrained_path=model.pretrained_path,
                  spec_augment=dict(spec_augment) if spec_augment else None,
                  backbone_kwargs=backbone_kwargs(model))
    if kind == "multilabel":
        return SpeciesDetector(n_classes=n_classes, backbone=model.backbone, head=model.head,
                               head_kwargs=dict(model.head_kwargs), **common)
    if kind in ("band_crop", "band_mask"):
        if not model.class_bands:
            raise ValueError(f"model.detector={kind} needs model.class_bands (one [f_min, f_max] in Hz per class)")
        return BandDetector(n_classes=n_classes, backbone=model.backbone, class_bands=model.class_bands,
                            mode=kind.split("_", 1)[1], dropout=float(model.head_kwargs["dropout"]),
                            **dataclasses.asdict(model.band), **common)
    raise ValueError(f"model.detector={kind!r}: choose multilabel, band_crop or band_mask")
