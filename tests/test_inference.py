"""Whole-recording and windowed inference give the same output format on the same frame grid."""

from __future__ import annotations

import pytest
import torch

from rfcx_lightning.inference import predict_framewise




def test_whole_and_windows_share_the_output_format(inference_model):
    wave = torch.randn(2, 8000 * 20)
    whole_frames, whole_clip = predict_framewise(inference_model, wave, mode="whole")
    win_frames, win_clip = predict_framewise(inference_model, wave, mode="windows", window_seconds=5.0,
                                             window_hop_seconds=2.5, sample_rate=8000)
    assert whole_frames.dtype == win_frames.dtype == torch.float16
    assert whole_frames.shape[:2] == win_frames.shape[:2] == (2, 3)
    assert whole_frames.shape[-1] == win_frames.shape[-1]               # windows resampled onto the whole grid
    assert whole_clip.shape == win_clip.shape == (2, 3)
    assert ((win_frames >= 0) & (win_frames <= 1)).all() and ((win_clip >= 0) & (win_clip <= 1)).all()


def test_unknown_mode_is_refused(inference_model):
    with pytest.raises(ValueError, match="predict.mode"):
        predict_framewise(inference_model, torch.randn(1, 8000), mode="sliding")
