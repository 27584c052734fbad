"""stage=coteach: the mixed crops (box crops at the configured rate, pool targets, TP/FP override), the
two-network module, and bootstrap -> coteach through the CLI writing the same outputs as bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from rfcx_lightning.data.audio import AudioCache
from rfcx_lightning.data.datamodule import CropSettings, LoaderSettings, RecordingSet, box_anchors
from rfcx_lightning.data.labels import BoxIndex
from rfcx_lightning.pseudo.crops import PseudoCropDataset, RandomCropSource, mix_crops
from rfcx_lightning.pseudo.pool import PoolError, PseudoLabelPool, TeacherStack
from rfcx_lightning.pseudo.targets import crop_targets
from rfcx_lightning.run import load_config
from rfcx_lightning.settings import from_block
from rfcx_lightning.stages.coteach import CoteachDataModule, CoteachModule, CoteachSettings

from .conftest import module_blocks, smoke_args

SR, DURATION, CROP, N_FRAMES, C = 8000, 20.0, 4.0, 8, 2
TRAIN, TEST = ["000316000", "abc123def", "r3"], ["t0", "t1"]


@pytest.fixture(scope="module")
def crop_world(tmp_path_factory):
    """3 train + 2 test recordings of noise, a few boxes, and a teacher with a distinct value per cell."""
    tmp = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    items = []
    for split, ids in (("train", TRAIN), ("test", TEST)):
        for rid in ids:
            path = tmp / f"{split}_{rid}.flac"
            sf.write(path, (0.1 * rng.standard_normal(int(SR * DURATION))).astype(np.float32), SR)
            items.append((split, rid, path))
    cache = AudioCache(tmp / "cache", target_sr=SR)
    cache.build(items, workers=1, progress=False, expected_sr=SR, expected_duration_s=DURATION)
    boxes = pd.DataFrame({
        "recording_id": ["000316000", "000316000", "abc123def", "r3"], "species_id": [0, 1, 1, 0],
        "songtype_id": [1, 1, 1, 1], "t_min": [2.0, 10.0, 14.0, 5.0], "t_max": [3.0, 12.0, 15.5, 6.0],
        "f_min": [100.0] * 4, "f_max": [900.0] * 4, "is_tp": [True, False, True, False],
        "class_index": [0, 1, 1, 0]})
    train = RecordingSet("train", tuple(TRAIN), BoxIndex.from_frame(boxes, TRAIN))

    def stack(ids, offset):  # teacher value of (recording r, class c, frame t): distinct and in (0, 1)
        t = 40  # 2 frames per second
        frames = np.stack([[(offset + 10 * r + c + np.arange(t) / t) / 100 for c in range(C)]
                           for r in range(len(ids))])
        return TeacherStack(["teacher"], list(ids), clip=frames.max(-1)[None].astype(np.float32),
                            framewise=frames[None].astype(np.float16), frames_per_second=2.0)

    return cache, train, stack(TRAIN, 0), stack(TEST, 50)


def make_dataset(crop_world, p_box=0.5, with_test=True, n_items=400, pseudo_weight=0.5, mix_p=0.0):
    cache, train, train_stack, test_stack = crop_world
    anchors = box_anchors(train.boxes, np.ones(len(TRAIN), bool))
    sources = [RandomCropSource("train", tuple(TRAIN), train_stack, train.boxes)]
    if with_test:
        sources.append(RandomCropSource("test", tuple(TEST), test_stack, None))
    return PseudoCropDataset(cache, train, train_stack, anchors, sources, n_classes=C, crop_seconds=CROP,
                             n_frames=N_FRAMES, sample_rate=SR, duration_s=DURATION, n_items=n_items,
                             p_box_crop=p_box, pseudo_weight=pseudo_weight, seed=3, mix_p=mix_p)


@pytest.mark.parametrize("p_box", [0.0, 0.3, 0.5, 1.0])
def test_box_crops_come_at_the_configured_rate(crop_world, p_box):
    dataset = make_dataset(crop_world, p_box=p_box)
    is_box = np.array([dataset.window(0, i)[3] for i in range(2000)])
    assert abs(is_box.mean() - p_box) < 0.035          # binomial sd at 2000 draws <= 0.011
    item = dataset[(0, int(np.flatnonzero(is_box)[0]) if is_box.any() else 0)]
    assert bool(item["is_box_crop"]) == bool(is_box.any())


def test_random_crops_carry_pool_targets_at_the_pseudo_weight(crop_world):
    dataset = make_dataset(crop_world, p_box=0.0, pseudo_weight=0.4)
    seen_test = seen_train = 0
    for i in range(60):
        source, rec, start_s, is_box = dataset.window(1, i)
        item = dataset[(1, i)]
        assert not is_box and item["targets"].shape == (C, N_FRAMES)
        rid = source.recording_ids[rec]
        expected = crop_targets(source.stack, "mean", source.stack.index_of(rid), start_s, CROP, N_FRAMES)
        box = item["box_mask"].numpy() > 0
        assert np.allclose(item["targets"].numpy()[~box], expected[~box])   # the teacher, where no box is
        assert np.allclose(item["weights"].numpy()[~box], 0.4)
        wave = dataset.cache.read(source.split, rid, int(round(start_s * SR)), int(CROP * SR))
        assert np.array_equal(item["wave"].numpy(), wave.astype(np.float32))  # the audio of that window
        if source.split == "test":
            seen_test += 1
            assert not box.any()                                     # test recordings have no boxes
        else:
            seen_train += 1
    assert seen_test > 5 and seen_train > 5


def test_boxes_override_the_teacher_inside_them(crop_world):
    dataset = make_dataset(crop_world, p_box=1.0)
    boxes = dataset.recordings.boxes
    for i in range(40):
        _, rec, start_s, is_box = dataset.window(2, i)
        item = dataset[(2, i)]
        targets, weights, box = (item[k].numpy() for k in ("targets", "weights", "box_mask"))
        assert is_box and box.any()
        assert np.all(weights[box > 0] == 1.0) and np.all(weights[box == 0] == 0.5)
        rows = boxes.rows(rec)
        d = CROP / N_FRAMES
        for row in range(rows.start, rows.stop):  # a TP cell is 1 and an FP cell 0, whatever the teacher says
            c = int(boxes.class_index[row])
            frame = int((0.5 * (boxes.t_min[row] + boxes.t_max[row]) - start_s) // d)
            if 0 <= frame < N_FRAMES and box[c, frame]:
                assert targets[c, frame] == float(boxes.is_tp[row])
        # outside the boxes the teacher's value is kept
        teacher = crop_targets(dataset.train_stack, "mean", rec, start_s, CROP, N_FRAMES)
        assert np.allclose(targets[box == 0], teacher[box == 0])


def test_items_are_fixed_by_seed_epoch_and_index(crop_world):
    dataset = make_dataset(crop_world)
    a, b = dataset[(4, 7)], dataset[(4, 7)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    windows = {dataset.window(e, 7)[1:3] for e in range(8)}
    assert len(windows) > 1                                           # a new draw every epoch


def test_random_crops_never_use_the_held_out_fold(crop_world):
    cache, train, train_stack, _ = crop_world
    fold_of = np.array([0, 1, 1])
    settings = from_block(CoteachSettings, coteach_block(p_box_crop=0.5), "coteach")
    datamodule = CoteachDataModule(train_stack, None, settings, cache=cache, train=train, fold_of_recording=fold_of,
                                   fold=0, n_classes=C, sample_rate=SR, duration_s=DURATION,
                                   crops=CropSettings(seconds=CROP, label_hz=10, tp_repeat=1, fp_fraction=1.0,
                                                      min_per_epoch=0),
                                   loader=LoaderSettings(batch_size=4, num_workers=0, predict_batch_size=2))
    dataset = datamodule.train_dataset(n_frames=N_FRAMES)
    used = set()
    for i in range(300):
        source, rec, _, is_box = dataset.window(0, i)
        used.add(TRAIN[rec] if source is None else source.recording_ids[rec])
    assert used == {"abc123def", "r3"}                                # never fold 0's 000316000
    assert len(datamodule.val_dataset()) == 2                         # validation: fold 0's boxes
    with pytest.raises(RuntimeError, match="attached trainer"):  # the loader asks the model for its grid
        datamodule.train_dataloader()


TINY = module_blocks("model.detector=multilabel", "model.head_kwargs.freq_pool=mean", f"audio.sample_rate={SR}",
                     "model.frontend.n_fft=256", "model.frontend.hop_length=160", "model.frontend.n_mels=16",
                     "model.frontend.fmax=4000.0", "augment.gain_noise_p=0.5", "augment.mixup_p=0.0")


def test_mixed_crops_take_the_max_target_and_keep_box_cells_at_weight_one():
    """TP cell + pseudo 0.3 -> 1 (w 1); FP cell + pseudo 0.6 -> 0.6 (w 1); pseudo 0.2 + pseudo 0.7 -> 0.7."""
    wave = np.ones(4, np.float32)
    a = (wave, np.array([[1.0, 0.0, 0.2]], np.float32), np.array([[1.0, 1.0, 0.5]], np.float32),
         np.array([[1.0, 1.0, 0.0]], np.float32))
    b = (2 * wave, np.array([[0.3, 0.6, 0.7]], np.float32), np.full((1, 3), 0.5, np.float32),
         np.zeros((1, 3), np.float32))
    mixed_wave, targets, weights, box_mask = mix_crops(a, b)
    np.testing.assert_allclose(mixed_wave, 3 * wave)                       # heard at once: the sum
    np.testing.assert_allclose(targets, [[1.0, 0.6, 0.7]])
    np.testing.assert_allclose(weights, [[1.0, 1.0, 0.5]])
    np.testing.assert_allclose(box_mask, [[1.0, 1.0, 0.0]])               # co-teaching never drops these


def test_mix_p_mixes_that_share_of_items_and_leaves_the_rest_unchanged(crop_world):
    plain, mixed = make_dataset(crop_world, mix_p=0.0), make_dataset(crop_world, mix_p=0.5)
    partners = [mixed.mix_partner(0, i) for i in range(2000)]
    assert abs(np.mean([p is not None for p in partners]) - 0.5) < 0.035
    assert all(plain.mix_partner(0, i) is None for i in range(50))
    for i in range(40):                                        # the item's own window is never redrawn
        assert plain.window(0, i) == mixed.window(0, i)
        a, b = plain[(0, i)], mixed[(0, i)]
        if partners[i] is None:
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            partner = mixed.crop(*partners[i], 0, i)
            np.testing.assert_allclose(b["wave"].numpy(), a["wave"].numpy() + partner[0], atol=1e-6)
            np.testing.assert_allclose(b["targets"].numpy(), np.maximum(a["targets"].numpy(), partner[1]))
            assert (b["weights"].numpy() >= a["weights"].numpy()).all()
    with pytest.raises(ValueError, match="mix_p must be in"):
        make_dataset(crop_world, mix_p=1.5)


def coteach_block(**over) -> dict:
    """The recipe's ``coteach:`` block with ``over`` on top (``ema`` merged key by key)."""
    block = OmegaConf.to_container(load_config(["stage=coteach"]).coteach, resolve=True)
    block.update({k: v for k, v in over.items() if k != "ema"})
    block["ema"].update(over.get("ema") or {})
    return block


def tiny_module(**coteach):
    """A tiny pair; ``coteach`` keys over the recipe's block (the module checks the whole block)."""
    return CoteachModule(n_classes=C, model=TINY["model"], optim=dict(TINY["optim"], weight_decay=0.0),
                         augment=TINY["augment"], loss=dict(kind="bce"), coteach=coteach_block(peer_seed=7, **coteach))


def test_the_pair_differs_and_predicts_the_mean_of_its_probabilities():
    torch.manual_seed(0)
    module = tiny_module().eval()
    a = dict(module.model.named_parameters())
    assert any(not torch.equal(p, a[name]) for name, p in module.peer.named_parameters())
    wave = torch.randn(2, SR * 2)
    out = module.predict_step({"wave": wave, "index": torch.arange(2)}, 0)
    with torch.no_grad():
        expected = (torch.sigmoid(module.model(wave)["framewise_logits"]) +
                    torch.sigmoid(module.peer(wave)["framewise_logits"])) / 2
    assert torch.allclose(out["framewise"].float(), expected, atol=2e-3)   # float16 output


def test_peer_initialisation_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    first = tiny_module()
    after_first = torch.rand(1)
    torch.manual_seed(0)
    second = tiny_module()
    assert torch.equal(torch.rand(1), after_first)
    for p, q in zip(first.peer.parameters(), second.peer.parameters()):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("ema", [False, True])
def test_a_training_step_trains_both_networks_and_the_ema_copies_only_follow(ema):
    torch.manual_seed(0)
    module = tiny_module(drop_rate=0.3, ramp_epochs=0,
                         ema=dict(enabled=ema, decay=0.5, consistency_weight=1.0, ramp_epochs=0)).train()
    wave = torch.randn(4, SR * 2)
    n_out = module.model.output_frames(wave.shape[-1])
    targets = torch.rand(4, C, n_out)
    box = (torch.rand(4, C, n_out) < 0.2).float()
    weights = torch.where(box > 0, 1.0, 0.5)
    loss = module.training_step({"wave": wave, "targets": targets, "weights": weights, "box_mask": box}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in module.peer.parameters() if p.requires_grad)
    if ema:
        assert all(p.grad is None for p in module.ema_model.parameters())
        before = [p.clone() for p in module.ema_model.parameters()]
        with torch.no_grad():
            for p in module.model.parameters():
                p.add_(1.0)
        module.on_train_batch_end(None, None, 0)   # first update copies, the next ones average
        module.on_train_batch_end(None, None, 0)
        assert any(not torch.equal(b, p) for b, p in zip(before, module.ema_model.parameters()))


# -- end to end through the CLI -------------------------------------------------------------------------

def coteach_args(workspace, data_root, *extra):
    return smoke_args(workspace, data_root, *extra, few_batches=True)


def test_coteach_without_a_pool_says_run_bootstrap_first(tmp_path, smoke_data_root):
    from rfcx_lightning.run import main

    with pytest.raises(PoolError, match="run stage=bootstrap first"):
        main(coteach_args(tmp_path / "ws", smoke_data_root, "stage=coteach"))


@pytest.mark.slow
def test_bootstrap_then_coteach_writes_the_same_outputs_and_joins_the_pool(tmp_path, smoke_data_root):
    from rfcx_lightning.run import main
    from rfcx_lightning.stages.coteach import CoteachStage
    from rfcx_lightning.stages.context import prepare_context

    ws = tmp_path / "ws"
    assert main(coteach_args(ws, smoke_data_root)) == 0
    assert main(coteach_args(ws, smoke_data_root, "stage=coteach", "coteach.include_test=true")) == 0
    state = json.loads((ws / "state.json").read_text())
    name = next(n for n in state["stages"] if n.endswith("coteach"))
    boot, cot = state["stages"]["bootstrap"], state["stages"][name]
    assert cot["teachers"] == ["bootstrap"]
    assert set(cot["outputs"]) == set(boot["outputs"])                # the same files as bootstrap ...
    assert {"test_lwlrap", "oof_lwlrap"} <= set(cot["metrics"])
    assert [cot["folds"][str(k)]["status"] for k in range(2)] == ["done", "done"]
    for key in ("oof_framewise.npz", "test_framewise.npz"):           # ... with the same shapes
        with np.load(ws / boot["outputs"][key]) as b, np.load(ws / cot["outputs"][key]) as c:
            assert c["framewise"].shape == b["framewise"].shape and c["framewise"].dtype == np.float16
            assert list(c["recording_id"]) == list(b["recording_id"])
            assert np.isfinite(c["framewise"].astype(np.float32)).all()
    submission = pd.read_csv(ws / cot["outputs"]["submission.csv"], dtype={"recording_id": str})
    assert submission.shape == (6, 25)
    pool = PseudoLabelPool(ws, writable=False)
    assert [e.name for e in pool.entries()] == ["bootstrap", name]       # added for the next round
    assert not list(ws.rglob("*.tmp"))
    # a fold checkpoint rebuilds the pair by itself (re-prediction loads it without the stage config)
    module = CoteachModule.load_from_checkpoint(str(ws / cot["folds"]["0"]["checkpoint"]), map_location="cpu")
    assert module.coteach.teachers == "all" and isinstance(module.peer, torch.nn.Module)

    # resuming the run keeps its teachers, even though the pool grew (its own entry is now the latest)
    ctx = prepare_context(load_config(coteach_args(ws, smoke_data_root, "stage=coteach")))
    assert CoteachStage(ctx, name=name).train_stack.names == ["bootstrap"]
    later = CoteachStage(ctx, name="round9_coteach")                        # teachers: all, weights: skill
    assert [e.name for e in later.teacher_set.entries()] == ["bootstrap", name]
    weights = json.loads((ws / "state.json").read_text())["stages"]["round9_coteach"]["teacher_weights"]
    assert set(weights) == {"bootstrap", name}
    assert sum(w["weight"] for w in weights.values()) == pytest.approx(1.0, abs=1e-3)
    assert later.train_stack.n_teachers == 1                                 # the weighted mean is one teacher
