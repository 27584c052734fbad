"""Heads mapping backbone features (B, F, f', t') to framewise and clip logits.

Both heads pool the frequency axis away and keep time, because RFCx labels are time boxes: the masked
loss is evaluated per (class, frame), and whole-recording inference needs a score per frame. Both return
`(framewise_logits (B, C, t'), clip_logits (B, C))` and work for any t' (crops or full 60 s recordings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FramewiseHead(nn.Module):
    """1st-place style head: mean over frequency only, then a per-frame 1x1 classifier.

    The clip logit is the max over time, matching "is the species present anywhere in this clip".
    `hidden` adds one 1x1 conv + ReLU before the classifier, for a little capacity per frame.
    """

    def __init__(self, in_features: int, n_classes: int, dropout: float = 0.2, hidden: int | None = None,
                 freq_pool: str = "mean", freq_rows: int = 1):
        super().__init__()
        if freq_pool not in ("mean", "flatten"):
            raise ValueError(f"freq_pool={freq_pool!r}: choose 'mean' or 'flatten'")
        # "flatten" keeps the backbone's f' frequency rows as separate channels (band-aware: the classifier
        # sees where in frequency a pattern is, which a mean over frequency throws away)
        self.freq_pool = freq_pool
        in_features = in_features * (freq_rows if freq_pool == "flatten" else 1)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = in_features
        if hidden:
            layers += [nn.Conv1d(in_features, hidden, kernel_size=1), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Conv1d(width, n_classes, kernel_size=1))
        self.classifier = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        pooled = feat.flatten(1, 2) if self.freq_pool == "flatten" else feat.mean(dim=2)
        framewise = self.classifier(pooled)  # (B, C, t')
        return framewise, framewise.amax(dim=-1)


class SEDAttentionHead(nn.Module):
    """PANNs-style sound-event-detection head with attention pooling over time.

    Frequency is averaged away, the time series is smoothed with max+avg pooling (kernel 3, keeps length),
    projected to `hidden` (default: in_features) with ReLU, then two 1x1 convs give per-frame class logits
    (`cla`, the framewise output) and attention scores (`att`). The clip logit is the attention-weighted
    average of the framewise logits, w = softmax(tanh(att)) over time: a learned soft max-pooling that
    lets weakly (clip-level) labeled data train the framewise output too.
    """

    def __init__(self, in_features: int, n_classes: int, dropout: float = 0.2, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Conv1d(in_features, hidden, kernel_size=1)
        self.att = nn.Conv1d(hidden, n_classes, kernel_size=1)
        self.cla = nn.Conv1d(hidden, n_classes, kernel_size=1)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        x = feat.mean(dim=2)  # (B, F, t')
        x = F.max_pool1d(x, kernel_size=3, stride=1, padding=1) + F.avg_pool1d(
            x, kernel_size=3, stride=1, padding=1, count_include_pad=False
        )
        x = self.dropout(x)
        x = self.dropout(F.relu(self.fc(x)))
        framewise = self.cla(x)  # (B, C, t')
        weights = torch.softmax(torch.tanh(self.att(x)), dim=-1)
        clip = (weights * framewise).sum(dim=-1)
        return framewise, clip


HEADS = {"framewise": FramewiseHead, "sed": SEDAttentionHead}


def build_head(kind: str, in_features: int, n_classes: int, **kwargs) -> nn.Module:
    """Head factory: 'framewise' (FramewiseHead) or 'sed' (SEDAttentionHead)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}")
    return HEADS[kind](in_features, n_classes, **kwargs)
