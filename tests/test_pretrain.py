"""stage=pretrain (masked-spectrogram SSL), model.init_from, and model.pretrained_path file formats."""

from __future__ import annotations

import importlib
import json
import logging
import shutil

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from rfcx_lightning.data.audio import AudioCache
from rfcx_lightning.models.backbones import create_backbone
from rfcx_lightning.models.detector import SpeciesDetector
from rfcx_lightning.models.init import BACKBONE_FORMAT, apply_init_from, save_backbone
from rfcx_lightning.run import available_stages, load_config, main
from rfcx_lightning.stages import STAGES, stage_class
from rfcx_lightning.stages.base import StageModule
from rfcx_lightning.stages.pretrain import MaskedSpectrogramModule, RecordingCropDataModule, patch_mask

from .conftest import module_blocks, smoke_args

FAST = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
FRONTEND = dict(n_fft=1024, hop_length=640, n_mels=32)


class NotData:
    """An arbitrary Python object: unpickling it means importing and running this module's code."""


def tiny_detector(**frontend) -> SpeciesDetector:
    return SpeciesDetector(n_classes=24, backbone="mobilenetv3_small_050", frontend={**FRONTEND, **frontend})


def backbones_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pretrain_workspace(tmp_path_factory, smoke_data_root):
    workspace = tmp_path_factory.mktemp("ws") / "pretrain"
    assert main(smoke_args(workspace, smoke_data_root, "stage=pretrain", *FAST)) == 0
    return workspace


def test_pretrain_writes_a_backbone_checkpoint(pretrain_workspace):
    ws = pretrain_workspace
    payload = torch.load(ws / "pretrain" / "backbone.pt", map_location="cpu", weights_only=True)
    assert payload["format"] == BACKBONE_FORMAT
    assert payload["config"]["backbone"] == "mobilenetv3_small_050" and payload["config"]["in_chans"] == 2
    assert payload["config"]["frontend"]["n_mels"] == 32
    assert any(k.endswith("conv_stem.weight") for k in payload["state_dict"])

    stage = json.loads((ws / "state.json").read_text())["stages"]["pretrain"]
    assert stage["status"] == "done" and stage["outputs"]["backbone"] == "pretrain/backbone.pt"
    assert {"val_ssl_loss_initial", "val_ssl_loss"} <= set(stage["metrics"])
    assert (ws / stage["checkpoint"]).exists()
    assert not list(ws.rglob("*.tmp"))

    # the weights are the trained ones: equal to the backbone inside Lightning's last.ckpt
    ckpt = torch.load(ws / stage["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    from_ckpt = {k[len("model.backbone."):]: v for k, v in ckpt.items() if k.startswith("model.backbone.")}
    assert backbones_equal(from_ckpt, payload["state_dict"])


def test_rerun_skips_and_a_killed_run_resumes_from_last_ckpt(pretrain_workspace, smoke_data_root, tmp_path, caplog):
    ws = tmp_path / "ws"
    shutil.copytree(pretrain_workspace, ws)
    before = (ws / "pretrain" / "backbone.pt").stat().st_mtime_ns
    assert main(smoke_args(ws, smoke_data_root, "stage=pretrain", *FAST)) == 0
    assert (ws / "pretrain" / "backbone.pt").stat().st_mtime_ns == before    # done: nothing redone

    # a run killed after epoch 1 of 2: last.ckpt exists, backbone.pt and the "done" mark do not
    state = json.loads((ws / "state.json").read_text())
    initial = state["stages"]["pretrain"]["metrics"]["val_ssl_loss_initial"]
    state["stages"]["pretrain"]["status"] = "training"
    (ws / "state.json").write_text(json.dumps(state))
    (ws / "pretrain" / "backbone.pt").unlink()
    with caplog.at_level(logging.INFO):
        assert main(smoke_args(ws, smoke_data_root, "stage=pretrain", "trainer.max_epochs=2", *FAST)) == 0
    assert "Restoring states from the checkpoint" in caplog.text
    after = json.loads((ws / "state.json").read_text())["stages"]["pretrain"]
    assert after["status"] == "done" and after["metrics"]["val_ssl_loss_initial"] == initial
    ckpt = torch.load(ws / "pretrain" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4                   # 2 epochs of 2 batches in all
    assert (ws / "pretrain" / "backbone.pt").exists()


def stage_module_kinds() -> list[str]:
    """Every registered stage whose module exists now and trains a StageModule subclass.

    Stages that are being written may not exist yet; stages that train nothing (template matching,
    postprocess) inherit or lack ``module_class`` and are left out.
    """
    kinds = []
    for kind, target in STAGES.items():
        try:
            importlib.import_module(target.partition(":")[0])
        except ModuleNotFoundError:
            continue
        module_class = getattr(stage_class(kind), "module_class", None)
        if (isinstance(module_class, type) and issubclass(module_class, StageModule)
                and module_class is not StageModule):
            kinds.append(kind)
    return kinds


def build_stage_module(kind: str, *overrides: str) -> StageModule:
    """``kind``'s LightningModule from its own recipe (smoke preset), built as the K-fold runner builds it
    (the runner adds the class bands the band detectors need from the boxes; here they are made up).

    Built from the config rather than through the stage object, because some stages (coteach) need an
    earlier stage's predictions before they can be constructed; the module itself does not.
    """
    cfg = load_config([f"stage={kind}", "preset=smoke", *overrides])
    container = OmegaConf.to_container(cfg, resolve=True)
    model = dict(container["model"], class_bands=[[1000.0 + 100 * c, 4000.0 + 100 * c] for c in range(24)])
    module_class = stage_class(kind).module_class
    return module_class(n_classes=24, model=model, optim=container["optim"], augment=container["augment"],
                        loss=container["loss"], predict=container["predict"], **module_class.block_kwargs(container))


def detectors_in(module: StageModule) -> list[torch.nn.Module]:
    """Every detector a stage trains (coteach has two), i.e. every submodule with a front-end and a backbone."""
    return [m for m in module.modules() if hasattr(m, "frontend") and hasattr(m, "backbone")]


@pytest.mark.parametrize("kind", stage_module_kinds())
def test_init_from_loads_the_pretrained_backbone_into_every_stage_module(kind, pretrain_workspace):
    if kind not in available_stages():
        pytest.skip(f"stage {kind!r} has no recipe yet")
    backbone_pt = pretrain_workspace / "pretrain" / "backbone.pt"
    expected = torch.load(backbone_pt, map_location="cpu", weights_only=True)["state_dict"]
    detectors = detectors_in(build_stage_module(kind, f"model.init_from={backbone_pt}"))
    assert detectors and all(backbones_equal(d.backbone.state_dict(), expected) for d in detectors)
    # without init_from the same stage starts elsewhere, so the comparison above is not vacuous
    scratch = detectors_in(build_stage_module(kind))
    assert not any(backbones_equal(d.backbone.state_dict(), expected) for d in scratch)


def test_init_from_accepts_a_lightning_checkpoint_of_a_stage(pretrain_workspace):
    ckpt_path = pretrain_workspace / "pretrain" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    detector = tiny_detector()
    assert apply_init_from(detector, ckpt_path) is None                       # no stored config in a .ckpt
    expected = {k[len("model.backbone."):]: v for k, v in ckpt.items() if k.startswith("model.backbone.")}
    assert backbones_equal(detector.backbone.state_dict(), expected)


def test_mismatched_checkpoints_fail_naming_the_file_and_the_keys(tmp_path):
    one_channel = tmp_path / "one_channel.pt"
    save_backbone(tiny_detector(freq_position_channel=False), one_channel)
    with pytest.raises(ValueError, match=r"one_channel\.pt.*shape mismatch.*conv_stem\.weight.*\(16, 1, 3, 3\)"):
        apply_init_from(tiny_detector(), one_channel)

    other = tmp_path / "other_backbone.pt"
    save_backbone(SpeciesDetector(n_classes=24, backbone="resnet10t", frontend=FRONTEND), other)
    with pytest.raises(ValueError, match=r"other_backbone\.pt holds a 'resnet10t'.*'mobilenetv3_small_050'"):
        apply_init_from(tiny_detector(), other)

    # a bare state dict of another architecture (no stored config): the key check names the keys
    bare = tmp_path / "bare.pt"
    torch.save({f"backbone.{k}": v for k, v in create_backbone("resnet10t", 2).state_dict().items()}, bare)
    with pytest.raises(ValueError, match=r"bare\.pt does not fit.*keys missing from the file \(blocks\..*"
                                         r"keys the backbone does not have \(conv1\.0\.weight"):
        apply_init_from(tiny_detector(), bare)

    no_backbone = tmp_path / "head_only.pt"
    torch.save({"head.weight": torch.zeros(3)}, no_backbone)
    with pytest.raises(ValueError, match=r"head_only\.pt has no backbone weights.*head\.weight"):
        apply_init_from(tiny_detector(), no_backbone)

    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        apply_init_from(tiny_detector(), tmp_path / "missing.pt")


def test_weight_files_are_loaded_weights_only(tmp_path):
    """init_from and pretrained_path refuse a pickle that would run code; pretrained_path reads .safetensors."""
    from safetensors.torch import save_file

    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": NotData()}, pickled)
    with pytest.raises(ValueError, match=r"pickled\.pt cannot be read as a weights-only checkpoint"):
        apply_init_from(tiny_detector(), pickled)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        create_backbone("mobilenetv3_small_050", 2, pretrained_path=str(pickled))

    source = tiny_detector()
    weights = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "w.pth")
    save_backbone(source, tmp_path / "backbone.pt")
    for name in ("w.safetensors", "w.pth", "backbone.pt"):   # backbone.pt works as pretrained_path too
        loaded = create_backbone("mobilenetv3_small_050", 2, pretrained_path=str(tmp_path / name))
        assert backbones_equal(loaded.state_dict(), weights), name


def test_patch_mask_hides_the_requested_share_of_patches():
    mask = patch_mask(4, 32, 70, (16, 16), 0.5, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert mask.shape == (4, 32, 70)
    grid = mask[:, ::16, ::16]                                        # one cell per patch: 2 x 5 patches
    assert grid.flatten(1).sum(1).tolist() == [5, 5, 5, 5]
    again = patch_mask(4, 32, 70, (16, 16), 0.5, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_ssl_loss_goes_down_on_tiny_data(smoke_data_root, pretrain_workspace):  # the fixture builds the cache
    """A few epochs on 18 recordings: the masked-reconstruction loss on fixed validation crops drops."""
    pl.seed_everything(0, workers=True, verbose=False)
    cache = AudioCache(smoke_data_root.parent / "cache", target_sr=32000)
    recordings = [(split, p.stem) for split in ("train", "test") for p in (cache.root / split).glob("*.npy")]
    assert len(recordings) == 18
    datamodule = RecordingCropDataModule(cache, recordings, crop_seconds=3.0, sample_rate=32000,
                                         crops_per_recording=2, val_crops_per_recording=1, batch_size=8,
                                         num_workers=0)
    blocks = module_blocks("model.detector=multilabel", "augment.gain_noise_p=0", "augment.mixup_p=0",
                           "augment.spec_augment.p=0")
    module = MaskedSpectrogramModule(
        n_classes=24, model=blocks["model"], optim=dict(lr=3e-3, weight_decay=1e-2, warmup_epochs=0),
        augment=blocks["augment"], loss={"kind": "bce"},
        ssl=dict(crops_per_recording=2, val_crops_per_recording=1, mask_ratio=0.6, mask_patch=[8, 16]))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/ssl_loss"]
    head = {k: v.clone() for k, v in module.model.head.state_dict().items()}
    trainer.fit(module, datamodule=datamodule)
    after = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/ssl_loss"]
    assert after < 0.85 * before, (before, after)
    assert backbones_equal(module.model.head.state_dict(), head)          # the head is frozen
