"""Band detectors: band images keep exactly the class's band, only labelled pairs are computed."""

import numpy as np
import pandas as pd
import pytest
import torch

from rfcx_lightning.models.bands import BandDetector, band_matrices, class_bands_from_boxes
from rfcx_lightning.models.factory import build_detector

from .conftest import module_blocks

FRONTEND = dict(n_fft=512, hop_length=320, n_mels=32, fmin=50.0, fmax=16000.0)
BANDS = [[500.0, 1500.0], [2000.0, 4000.0], [6000.0, 9000.0]]


def _detector(mode: str, **kw) -> BandDetector:
    torch.manual_seed(0)
    return BandDetector(3, "mobilenetv3_small_050", BANDS, mode=mode, rows=16, margin=0.0,
                        frontend=FRONTEND, **kw)


def test_band_mask_keeps_the_band_and_zeroes_the_rest():
    det = _detector("mask")
    centers = det.frontend.mel_centers_hz()
    spec = torch.randn(1, 2, 32, 20)
    for c, (lo, hi) in enumerate(BANDS):
        image = det.band_images(spec, torch.tensor([0]), torch.tensor([c]))[0]
        inside = torch.from_numpy((centers >= lo) & (centers <= hi))
        assert inside.any()
        assert torch.equal(image[0, inside], spec[0, 0, inside])           # the band is kept as is
        assert torch.count_nonzero(image[0, ~inside]) == 0                 # everything else is gone
        assert torch.equal(image[1], spec[0, 1])                           # the position channel stays whole


def test_band_crop_samples_only_inside_the_band():
    centers = np.linspace(100, 10000, 40)
    mats = band_matrices([[2000.0, 4000.0]], centers, "crop", rows=8, margin=0.0).numpy()[0]
    assert mats.shape == (8, 40)
    np.testing.assert_allclose(mats.sum(1), 1.0, atol=1e-6)                 # interpolation weights
    used = np.flatnonzero(mats.sum(0) > 0)
    assert centers[used].min() >= 2000 - 260 and centers[used].max() <= 4000 + 260  # one row of slack each side
    # a ramp in frequency stays a ramp: the crop is monotone and spans the band
    ramp = mats @ centers
    assert np.all(np.diff(ramp) > 0) and abs(ramp[0] - 2000) < 260 and abs(ramp[-1] - 4000) < 260


def test_only_active_pairs_are_scored_and_shapes_match_the_multilabel_detector():
    det = _detector("crop").eval()
    wave = torch.randn(2, 32000 * 2)
    active = torch.zeros(2, 3, dtype=torch.bool)
    active[1, 2] = True
    with torch.no_grad():
        out = det.forward_spectrogram(det.spectrogram(wave), active)
        full = det(wave)
    assert out["framewise_logits"].shape == full["framewise_logits"].shape == (2, 3, det.output_frames(64000))
    assert torch.count_nonzero(out["framewise_logits"][0]) == 0            # nothing computed for item 0
    torch.testing.assert_close(out["framewise_logits"][1, 2], full["framewise_logits"][1, 2])
    # chunking does not change results
    det.max_images = 1
    with torch.no_grad():
        torch.testing.assert_close(det(wave)["framewise_logits"], full["framewise_logits"])


def test_prediction_chunks_are_bounded_in_pixels_on_cpu_but_training_steps_are_not():
    det = _detector("crop").eval()
    wave = torch.randn(2, 32000 * 2)
    spec = det.spectrogram(wave)
    frames = spec.shape[-1]
    assert det.predict_image_frames == "auto" and det.chunk_size(spec) == max(1, min(128, 16384 // frames))
    det.predict_image_frames = 2 * frames                       # two band images per backbone call
    assert det.chunk_size(spec) == 2
    with torch.no_grad():
        chunked = det(wave)["framewise_logits"]
        det.predict_image_frames = None
        assert det.chunk_size(spec) == det.max_images
        torch.testing.assert_close(chunked, det(wave)["framewise_logits"])
    det.predict_image_frames = 1
    assert det.chunk_size(spec) == 1                              # never fewer than one image
    det.train()
    assert det.chunk_size(spec) == det.max_images                 # a training step is one call (batch norm)
    for bad in ("fast", 0, True):
        with pytest.raises(ValueError, match="predict_image_frames"):
            _detector("crop", predict_image_frames=bad)


def test_class_bands_from_boxes_prefers_tp_rows_and_names_empty_classes():
    boxes = pd.DataFrame({"class_index": [0, 0, 0, 1], "is_tp": [True, True, False, False],
                          "f_min": [100.0, 300.0, 5000.0, 800.0], "f_max": [900.0, 1100.0, 9000.0, 1600.0]})
    assert class_bands_from_boxes(boxes, 2) == [[200.0, 1000.0], [800.0, 1600.0]]
    with pytest.raises(ValueError, match="class 2"):
        class_bands_from_boxes(boxes, 3)


def test_build_detector_needs_bands_for_band_detectors():
    model = module_blocks("model.detector=band_crop")["model"]
    with pytest.raises(ValueError, match="class_bands"):
        build_detector(3, model)
    with pytest.raises(ValueError, match="band_crop"):
        build_detector(3, dict(model, detector="bands"))


def test_shared_detector_fits_band_labels_through_the_class_pairs():
    """Gradients reach the shared detector and the class embedding: a fixed batch is fitted in a few steps.

    The batch holds a tone in class 0's band or class 1's band; only the labelled (item, class) pairs are
    scored, as in training.
    """
    torch.manual_seed(0)
    det = BandDetector(2, "mobilenetv3_small_050", [[1000.0, 2000.0], [5000.0, 7000.0]], rows=16,
                       frontend=FRONTEND, dropout=0.0)
    t = torch.arange(16000) / 32000.0
    freqs = torch.tensor([1500.0, 6000.0] * 4)
    wave = 0.3 * torch.randn(8, 16000) + torch.sin(2 * torch.pi * freqs[:, None] * t)
    labels = torch.stack([freqs == 1500.0, freqs == 6000.0], 1).float()
    active = torch.ones(8, 2, dtype=torch.bool)

    def loss_now():
        logits = det.forward_spectrogram(det.spectrogram(wave), active)["clip_logits"]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)

    opt = torch.optim.Adam(det.parameters(), lr=3e-3)
    first = float(loss_now())
    for _ in range(15):
        loss = loss_now()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert det.class_weight.grad is not None and det.class_weight.grad.abs().sum() > 0
    assert float(loss_now()) < 0.5 * first


def test_moving_window_normalisation_matches_a_crop_centred_on_the_frame():
    # frontend: 32 kHz / hop 320 = 100 frames per second, so 2 s = 200 frames (a 201-frame centred window)
    local = _detector("crop", normalize_seconds=2.0)
    whole_image = _detector("crop")
    assert local.normalize_frames == 200
    gen = torch.Generator().manual_seed(0)
    spec = torch.randn(1, 2, 32, 1500, generator=gen) * torch.linspace(1, 6, 1500) + 3   # level drifts in time
    items, classes = torch.tensor([0]), torch.tensor([1])
    long_pass = local.band_images(spec, items, classes)[0, 0]
    for centre in (400, 1000):
        crop = spec[..., centre - 100:centre + 101]
        in_crop = whole_image.band_images(crop, items, classes)[0, 0, :, 100]
        torch.testing.assert_close(long_pass[:, centre], in_crop, atol=0.01, rtol=0.01)
    # statistics over the whole image instead would not match: the level drifts 6x across the recording
    assert (whole_image.band_images(spec, items, classes)[0, 0, :, 400] - long_pass[:, 400]).abs().max() > 0.1
    assert local.band_images(spec[..., :150], items, classes).shape[-1] == 150   # shorter than the window
