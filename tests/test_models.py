"""Backbones, heads and the SpeciesDetector on tiny timm models (CPU, no downloaded weights)."""

from __future__ import annotations

import logging

import pytest
import torch

from rfcx_lightning.models.backbones import (
    adapt_input_channels,
    backbone_num_features,
    create_backbone,
    load_pretrained,
)
from rfcx_lightning.models.detector import SpeciesDetector
from rfcx_lightning.models.factory import backbone_kwargs, build_detector, model_settings
from rfcx_lightning.models.heads import FramewiseHead, SEDAttentionHead, build_head

from .conftest import module_blocks

SR = 32000
TINY = "mobilenetv3_small_050"
# nnAudio builds its kernels ~10x faster than torchlibrosa; the backend does not matter for model tests
FRONTEND = dict(n_mels=64, backend="nnaudio")


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("kind,cls", [("framewise", FramewiseHead), ("sed", SEDAttentionHead)])
@pytest.mark.parametrize("t", [1, 7, 40])
def test_head_shapes(kind, cls, t):
    head = build_head(kind, 32, 5, hidden=16).eval()
    assert isinstance(head, cls)
    framewise, clip = head(torch.randn(3, 32, 4, t))
    assert framewise.shape == (3, 5, t)
    assert clip.shape == (3, 5)


def test_framewise_head_clip_is_max_over_time():
    head = FramewiseHead(8, 3, dropout=0.0).eval()
    framewise, clip = head(torch.randn(2, 8, 4, 10))
    assert torch.equal(clip, framewise.amax(dim=-1))


def test_framewise_head_pools_frequency_only():
    head = FramewiseHead(8, 3, dropout=0.0).eval()
    feat = torch.randn(2, 8, 4, 10)
    shuffled = feat[:, :, torch.randperm(4)]  # frequency order must not matter, time order must
    assert torch.allclose(head(feat)[0], head(shuffled)[0], atol=1e-6)
    assert torch.allclose(head(feat)[0][..., :5], head(feat[..., :5])[0], atol=1e-6)


def test_sed_head_clip_is_a_weighted_mean_of_framewise():
    head = SEDAttentionHead(8, 3, dropout=0.0).eval()
    framewise, clip = head(torch.randn(2, 8, 4, 10))
    assert (clip <= framewise.amax(-1) + 1e-5).all() and (clip >= framewise.amin(-1) - 1e-5).all()


def test_unknown_head():
    with pytest.raises(ValueError, match="framewise"):
        build_head("transformer", 8, 3)


# ----------------------------------------------------------------------------- backbones


def test_backbone_keeps_frequency_and_time():
    bb = create_backbone(TINY, in_chans=2)
    feat = bb.forward_features(torch.randn(1, 2, 64, 160))
    assert feat.dim() == 4 and feat.shape[1] == backbone_num_features(bb)
    assert feat.shape[2] > 1 and feat.shape[3] > 1


def test_unknown_backbone_hints():
    with pytest.raises(ValueError, match="list_models"):
        create_backbone("mobilenetv3_smal_050", in_chans=1)


def test_adapt_input_channels_preserves_constant_input_response():
    w = torch.randn(4, 3, 3, 3)
    for n in (1, 2, 5):
        w2 = adapt_input_channels(w, n)
        assert w2.shape == (4, n, 3, 3)
        x3 = torch.ones(1, 3, 3, 3)
        xn = torch.ones(1, n, 3, 3)
        assert torch.allclose(torch.nn.functional.conv2d(x3, w), torch.nn.functional.conv2d(xn, w2), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_path_with_other_in_chans(tmp_path, suffix, caplog):
    import timm

    # an "ImageNet" checkpoint: 3 input channels and a classifier
    src = timm.create_model(TINY, pretrained=False, num_classes=10, in_chans=3)
    state = src.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="rfcx_lightning.models.backbones"):
        bb = create_backbone(TINY, in_chans=2, pretrained_path=str(path))
    first = bb.conv_stem.weight
    assert first.shape[1] == 2
    assert torch.allclose(first, adapt_input_channels(state["conv_stem.weight"], 2))
    # every other backbone tensor was loaded as is
    for key, value in bb.state_dict().items():
        if key != "conv_stem.weight" and key in state:
            assert torch.equal(value, state[key]), key
    assert "adapting conv_stem.weight" in caplog.text


def test_pretrained_path_from_a_detector_checkpoint(tmp_path):
    det = SpeciesDetector(4, backbone=TINY, frontend=dict(FRONTEND, freq_position_channel=False))
    path = tmp_path / "detector.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in det.state_dict().items()}}, path)
    bb = create_backbone(TINY, in_chans=2)
    missing, unexpected = load_pretrained(bb, path)
    assert missing == [] and unexpected == []
    assert torch.allclose(bb.conv_stem.weight, adapt_input_channels(det.backbone.conv_stem.weight, 2))


# ----------------------------------------------------------------------------- detector


@pytest.mark.parametrize("head", ["framewise", "sed"])
def test_detector_forward_backward_on_5s_crop(head):
    torch.manual_seed(0)
    model = SpeciesDetector(24, backbone=TINY, head=head, frontend=FRONTEND, spec_augment={}).train()
    wave = torch.randn(2, SR * 5)
    out = model(wave)
    n_out = model.output_frames(wave.shape[1])
    assert out["framewise_logits"].shape == (2, 24, n_out)
    assert out["clip_logits"].shape == (2, 24)
    (out["framewise_logits"].mean() + out["clip_logits"].mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert list(model.frontend.parameters()) == []


def test_detector_whole_recording_and_time_grid():
    model = SpeciesDetector(24, backbone="resnet10t", frontend=FRONTEND).eval()
    with torch.no_grad():
        out = model(torch.randn(1, SR * 60))
    t60 = out["framewise_logits"].shape[-1]
    assert out["framewise_logits"].shape == (1, 24, t60)
    assert t60 == model.output_frames(SR * 60)
    # the same backbone stride for crops and whole recordings: rates agree to within one frame
    fps60 = model.output_frames_per_second(SR * 60)
    fps10 = model.output_frames_per_second(SR * 10)
    assert abs(fps60 - fps10) <= 1.0 / 10
    assert abs(fps60 * 32 - model.frontend.frames_per_second) < 1.0  # resnet10t: 32x downsampling


def test_output_frames_dry_run_does_not_touch_batchnorm():
    model = SpeciesDetector(3, backbone=TINY, frontend=FRONTEND).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.output_frames_per_second(SR * 3)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_spec_augment_only_in_training():
    model = SpeciesDetector(3, backbone=TINY, frontend=FRONTEND,
                            spec_augment=dict(p=1.0, time_width=0.5, freq_width=0.5))
    wave = torch.randn(2, SR)
    model.eval()
    assert torch.equal(model.spectrogram(wave), model.frontend(wave))
    model.train()
    assert not torch.equal(model.spectrogram(wave), model.frontend(wave))


def test_detector_under_bf16_autocast_keeps_float32_spectrogram():
    model = SpeciesDetector(3, backbone=TINY, frontend=FRONTEND).eval()
    wave = torch.randn(1, SR * 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        spec = model.spectrogram(wave)
        out = model.forward_spectrogram(spec)
    assert spec.dtype == torch.float32
    assert torch.isfinite(out["framewise_logits"].float()).all()


def test_flatten_head_keeps_frequency_rows_as_channels():
    """freq_pool='flatten' sees where in frequency a pattern is; its input width is F x f'."""
    model = SpeciesDetector(5, backbone="mobilenetv3_small_050",
                            frontend=dict(n_mels=64, n_fft=512, hop_length=320),
                            head_kwargs=dict(freq_pool="flatten"))
    rows = model._backbone_freq_rows()
    assert rows == 2
    assert model.head.classifier[-1].in_channels == backbone_num_features(model.backbone) * rows
    out = model(torch.randn(2, 32000))
    assert out["framewise_logits"].shape[:2] == (2, 5) and out["clip_logits"].shape == (2, 5)


def test_drop_path_rate_reaches_the_timm_backbone_and_zero_leaves_it_unchanged():
    model = module_blocks("model.detector=multilabel", "model.head_kwargs.freq_pool=mean")["model"]
    assert backbone_kwargs(model_settings(dict(model, drop_path_rate=0.0))) == {}
    assert backbone_kwargs(model_settings(dict(model, drop_path_rate=0.15, backbone_kwargs={"x": 1}))) == \
        {"x": 1, "drop_path_rate": 0.15}

    def drop_paths(net):
        return [m for m in net.modules() if type(m).__name__ == "DropPath"]

    assert not drop_paths(build_detector(3, dict(model, drop_path_rate=0.0)))
    assert drop_paths(build_detector(3, dict(model, drop_path_rate=0.15)))
    with pytest.raises(ValueError, match=r"model.drop_path_rate=1.5: must be in \[0, 1\)"):
        backbone_kwargs(model_settings(dict(model, drop_path_rate=1.5)))


@pytest.mark.parametrize("change, message", [
    (dict(backbnoe="resnet18"), r"unknown key\(s\) model\.backbnoe"),
    (dict(frontend=dict(n_mles=64)), r"model\.frontend: unknown key\(s\) model\.frontend\.n_mles"),
    (dict(channels_last="yes"), r"model\.channels_last='yes': expected true or false"),
])
def test_a_misspelt_or_mistyped_model_key_is_an_error_naming_it(change, message):
    model = module_blocks()["model"]
    if "frontend" in change:
        change = dict(frontend={**model["frontend"], **change["frontend"]})
    with pytest.raises(ValueError, match=message):
        build_detector(3, {**model, **change})


def test_the_front_end_assumes_the_rate_the_cache_holds():
    """model.frontend.sample_rate is audio.sample_rate: a 48 kHz cache gets a 48 kHz mel filterbank."""
    model = module_blocks("audio.sample_rate=48000", "model.detector=multilabel")["model"]
    assert model["frontend"]["sample_rate"] == 48000
    assert build_detector(3, model).frontend.sample_rate == 48000
