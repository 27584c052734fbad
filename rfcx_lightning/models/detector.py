"""SpeciesDetector: waveform -> log-mel -> timm CNN -> framewise + clip logits, in one nn.Module.

Everything from the raw waveform on is inside the module, so every stage (bootstrap, pseudo-label rounds,
inference on whole recordings) preprocesses identically and the front-end runs on the accelerator.
The model is fully convolutional in time: a 5-10 s training crop and a 60 s recording go through the
same code and give framewise outputs on the same time grid (`output_frames_per_second`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rfcx_lightning.features.augment import SpecAugment
from rfcx_lightning.features.frontend import LogMelFrontend
from rfcx_lightning.models.backbones import backbone_num_features, create_backbone
from rfcx_lightning.models.heads import build_head


class DetectorBase(nn.Module):
    """What every detector shares: the front-end inside the model, SpecAugment, the output time grid.

    Subclasses build ``self.backbone`` and implement ``forward_spectrogram(spec, active=None)`` returning
    ``{"framewise_logits": (B, C, T_out), "clip_logits": (B, C)}``.
    """

    def __init__(self, n_classes: int, frontend: dict | None = None, spec_augment: dict | None = None):
        super().__init__()
        self.n_classes = int(n_classes)
        self.frontend = LogMelFrontend(**(frontend or {}))
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment is not None else None
        self._frames_cache: dict[int, int] = {}

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def spectrogram(self, wave: Tensor) -> Tensor:
        """Front-end, plus SpecAugment in training mode only."""
        spec = self.frontend(wave)
        if self.spec_augment is not None and self.training:
            spec = self.spec_augment(spec)
        return spec

    def forward_spectrogram(self, spec: Tensor, active: Tensor | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, wave: Tensor) -> dict[str, Tensor]:
        return self.forward_spectrogram(self.spectrogram(wave))

    def output_frames(self, n_samples: int) -> int:
        """T_out for an input of `n_samples` samples, by a dry run (one class; cached per length).

        The dry run is done in eval mode under no_grad so BatchNorm running statistics are untouched.
        """
        n_samples = int(n_samples)
        if n_samples not in self._frames_cache:
            ref = next(self.backbone.parameters())
            spec = torch.zeros(1, self.frontend.out_channels, self.frontend.n_mels,
                               self.frontend.n_frames(n_samples), device=ref.device, dtype=ref.dtype)
            active = torch.zeros(1, self.n_classes, dtype=torch.bool, device=ref.device)
            active[0, 0] = True
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    out = self.forward_spectrogram(spec, active)
            finally:
                self.train(was_training)
            self._frames_cache[n_samples] = int(out["framewise_logits"].shape[-1])
        return self._frames_cache[n_samples]

    def output_frames_per_second(self, n_samples: int) -> float:
        """Framewise output rate for an input of `n_samples` samples: T_out / duration."""
        return self.output_frames(n_samples) / (int(n_samples) / self.sample_rate)


class SpeciesDetector(DetectorBase):
    """Framewise species detector.

    forward(wave (B, N)) -> {"framewise_logits": (B, C, T_out), "clip_logits": (B, C)}.
    SpecAugment (if configured) is applied between the front-end and the backbone in training mode only.
    """

    def __init__(
        self,
        n_classes: int,
        backbone: str = "efficientnet_b0",
        head: str = "framewise",
        frontend: dict | None = None,
        pretrained_path: str | None = None,
        spec_augment: dict | None = None,
        head_kwargs: dict | None = None,
        backbone_kwargs: dict | None = None,
    ):
        super().__init__(n_classes, frontend, spec_augment)
        self.backbone = create_backbone(
            backbone, in_chans=self.frontend.out_channels, pretrained_path=pretrained_path,
            **(backbone_kwargs or {}),
        )
        head_kwargs = dict(head_kwargs or {})
        if head_kwargs.get("freq_pool") == "flatten":
            head_kwargs["freq_rows"] = self._backbone_freq_rows()
        self.head = build_head(head, backbone_num_features(self.backbone), self.n_classes, **head_kwargs)

    @torch.no_grad()
    def _backbone_freq_rows(self) -> int:
        """Frequency rows f' the backbone leaves of n_mels (a dry run in eval mode, so BN stats are untouched)."""
        was_training = self.backbone.training
        self.backbone.eval()
        probe = torch.zeros(1, self.frontend.out_channels, self.frontend.n_mels, 64)
        rows = int(self.backbone.forward_features(probe).shape[2])
        self.backbone.train(was_training)
        return rows

    def forward_spectrogram(self, spec: Tensor, active: Tensor | None = None) -> dict[str, Tensor]:
        """Backbone + head on a front-end output (B, Ch, n_mels, T).

        ``active`` (B, C) names the classes the caller needs; a multi-label network scores all of them in
        one pass anyway, so it is accepted and ignored (the band detectors use it to skip work).
        """
        framewise, clip = self.head(self.backbone.forward_features(spec))
        return {"framewise_logits": framewise, "clip_logits": clip}
