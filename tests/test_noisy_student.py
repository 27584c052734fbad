"""stage=noisy_student: weak clip targets, per-epoch teachers, config overrides, and the CLI after bootstrap."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from rfcx_lightning.data.labels import BoxIndex
from rfcx_lightning.pseudo.pool import PoolError, PseudoLabelPool, TeacherStack
from rfcx_lightning.pseudo.targets import TeacherSampler
from rfcx_lightning.run import load_config, main
from rfcx_lightning.stages.noisy_student import (NoisyStudentModule, NoisyStudentStage, WeakClipDataset,
                                                 paired_loader, weak_clip_targets)

from .conftest import module_blocks, smoke_args

C = 4


def boxes():
    """r0: TP of class 0 and FP of class 1; r1: FP of class 2 only; r2: nothing."""
    frame = pd.DataFrame({"recording_id": ["r0", "r0", "r1"], "class_index": [0, 1, 2],
                          "t_min": [1.0, 5.0, 9.0], "t_max": [2.0, 6.0, 10.0], "f_min": [100.0] * 3,
                          "f_max": [900.0] * 3, "is_tp": [True, False, False]})
    return BoxIndex.from_frame(frame, ["r0", "r1", "r2"])


def stack():
    """Two teachers on r0..r2; teacher 1 is teacher 0 shifted up by 0.2."""
    clip0 = np.array([[0.1, 0.7, 0.4, 0.2], [0.3, 0.6, 0.9, 0.05], [0.5, 0.5, 0.5, 0.5]], np.float32)
    return TeacherStack(names=["a", "b"], recording_ids=["r0", "r1", "r2"],
                        clip=np.stack([clip0, clip0 + 0.2]), framewise=None, frames_per_second=1.0)


def test_tp_boxes_win_at_weight_1_and_fp_boxes_leave_the_teacher_in_charge():
    targets, weights = weak_clip_targets(stack(), 0, 0, boxes(), 0, C, pseudo_weight=0.5)
    np.testing.assert_allclose(targets, [1.0, 0.7, 0.4, 0.2])        # TP class 0 -> 1 despite teacher 0.1
    np.testing.assert_allclose(weights, [1.0, 0.5, 0.5, 0.5])        # FP class 1: teacher's 0.7 at 0.5
    targets, weights = weak_clip_targets(stack(), 1, 1, boxes(), 1, C, pseudo_weight=0.3)
    np.testing.assert_allclose(targets, [0.5, 0.8, 1.1, 0.25], atol=1e-6)   # FP-only recording: all pseudo
    np.testing.assert_allclose(weights, [0.3] * 4)


def test_hard_mean_and_unannotated_recordings():
    targets, weights = weak_clip_targets(stack(), "mean", 2, None, -1, C, hard_threshold=0.55)
    assert targets.tolist() == [1.0, 1.0, 1.0, 1.0] and weights.tolist() == [0.5] * 4   # mean 0.6 >= 0.55
    targets, _ = weak_clip_targets(stack(), 0, 0, boxes(), 0, C, hard_threshold=0.5)
    assert targets.tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="predict 4 classes, the stage has 5"):
        weak_clip_targets(stack(), 0, 0, boxes(), 0, 5)


def test_dataset_draws_a_teacher_per_item_per_epoch():
    items = [("train", rid, i, i) for i, rid in enumerate(["r0", "r1", "r2"])]
    items += [("test", "t0", 0, -1)]
    test_stack = TeacherStack(["a", "b"], ["t0"], np.array([[[0.2] * C], [[0.4] * C]], np.float32), None, 1.0)
    dataset = WeakClipDataset(None, items, {"train": stack(), "test": test_stack}, boxes(), C, 10,
                              TeacherSampler(2, seed=3))
    sampler = TeacherSampler(2, seed=3)
    for epoch in range(6):
        for i in range(3):
            expected = stack().clip[sampler(epoch, i), i]
            targets, _ = dataset.targets(epoch, i)
            np.testing.assert_allclose(targets[1:], expected[1:])
        assert dataset.targets(epoch, 0)[0][0] == 1.0                    # the TP class, every epoch
    seen = {round(float(dataset.targets(epoch, 2)[0][0]), 3) for epoch in range(20)}
    assert seen == {0.5, 0.7}                             # both teachers over the epochs
    targets, weights = dataset.targets(0, 3)                             # a test recording: pool only
    assert {round(float(t), 3) for t in targets} in ({0.2}, {0.4}) and weights.tolist() == [0.5] * C


def test_student_overrides_apply_after_the_preset(tmp_path):
    cfg = load_config(["stage=noisy_student", "preset=cpu", f"workspace={tmp_path}",
                       "noisy_student.backbone=resnet18", "noisy_student.max_epochs=3"])
    ctx = SimpleNamespace(cfg=cfg, workspace=tmp_path, is_global_zero=True)
    stage = NoisyStudentStage(ctx, name="round1_noisy_student")
    assert cfg.augment.mixup_p == 0.0                                    # the cpu preset turns it off...
    assert stage.cfg.augment.mixup_p == 0.8 and stage.cfg.augment.spec_augment.p == 0.8   # ...the student not
    assert stage.cfg.model.backbone == "resnet18" and stage.cfg.trainer.max_epochs == 3
    assert stage.cfg.loader.batch_size == 8
    with pytest.raises(PoolError, match="stage=noisy_student: .*run stage=bootstrap first"):
        stage.teachers()


@pytest.mark.parametrize("n_boxes", [3, 40])
def test_paired_loader_steps_follow_the_clip_loader(n_boxes):
    """One clip batch and one box batch per step; the epoch is the clip loader's, whichever is longer."""
    clips = DataLoader(list(range(10)), batch_size=2)                      # 5 batches
    boxes = DataLoader(list(range(100, 100 + n_boxes)), batch_size=2)      # 2 or 20 batches
    steps = list(paired_loader(clips, boxes))
    assert len(steps) == 5
    assert [b["clips"].tolist() for b, _, _ in steps] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    drawn = [b["boxes"].tolist() for b, _, _ in steps]
    assert all(drawn) and {x for batch in drawn for x in batch} <= set(range(100, 100 + n_boxes))
    if n_boxes == 40:                                                     # cut short: the first 5 batches
        assert drawn == [[100 + 2 * i, 101 + 2 * i] for i in range(5)]


def test_box_anchor_adds_the_framewise_box_loss():
    """With a paired batch the loss is clip loss + box_weight x box-crop loss, on the outputs each labels."""
    blocks = module_blocks("model.detector=multilabel", "model.backbone=resnet18", "model.frontend.hop_length=320",
                           "augment.gain_noise_p=0", "augment.mixup_p=0", "augment.spec_augment.p=0")
    kwargs = dict(n_classes=C, optim=blocks["optim"], model=blocks["model"], augment=blocks["augment"],
                  loss={"kind": "bce"})
    torch.manual_seed(0)
    wave = torch.randn(2, 16000)
    clips = {"wave": wave, "targets": torch.ones(2, C), "mask": torch.ones(2, C),
             "box_mask": torch.zeros(2, C, dtype=torch.bool)}
    module = NoisyStudentModule(box_weight=0.5, **kwargs).eval()  # eval: no dropout, BN fixed
    frames = module.model.output_frames(16000)
    boxes = {"wave": wave.flip(0), "targets": torch.zeros(2, C, frames), "mask": torch.ones(2, C, frames)}
    module.log = lambda *a, **k: None
    weak = module.masked_loss(wave, clips["targets"], clips["mask"], "clip_logits")
    anchor = module.masked_loss(boxes["wave"], boxes["targets"], boxes["mask"], "framewise_logits")
    both = module.training_step({"clips": clips, "boxes": boxes}, 0)
    assert torch.isclose(both, weak + 0.5 * anchor) and anchor > 0 and weak > 0
    assert torch.isclose(module.training_step(clips, 0), weak)          # a plain clip batch: no anchor


def test_negative_box_weight_is_refused(tmp_path):
    cfg = load_config(["stage=noisy_student", "preset=smoke", f"workspace={tmp_path}",
                       "noisy_student.box_weight=-1"])
    with pytest.raises(ValueError, match="noisy_student.box_weight=-1.0: must be >= 0"):
        NoisyStudentStage(SimpleNamespace(cfg=cfg, workspace=tmp_path, is_global_zero=True))


def test_student_starts_from_the_newest_fitting_teacher_of_its_fold(tmp_path):
    """Only a teacher's own fold model with the student's backbone may start a student fold; the template
    teacher (no network) and a teacher of another backbone never do. ``teacher`` fails loudly without one,
    ``auto`` falls back to scratch, ``scratch`` never looks."""
    cfg = load_config(["stage=noisy_student", "preset=smoke", f"workspace={tmp_path}", "noisy_student.init=teacher"])
    backbone = cfg.model.backbone

    def entry(name, order, arch, folds=(0,)):
        checkpoints = {}
        for fold in range(2):
            path = f"{name}/fold{fold}/checkpoints/last.ckpt" if fold in folds else None
            if path:
                (tmp_path / path).parent.mkdir(parents=True)
                (tmp_path / path).write_bytes(b"")
            checkpoints[str(fold)] = {"last": path}
        return SimpleNamespace(name=name, order=order, provenance={"config": {"model": {"backbone": arch}},
                                                                   "checkpoints": checkpoints})

    teachers = [entry("round0_template", 0, None, folds=()), entry("round1_coteach", 1, backbone),
                entry("round2_coteach", 2, backbone), entry("round3_big", 3, "efficientnet_b0", folds=(0, 1))]
    stage = NoisyStudentStage(SimpleNamespace(cfg=cfg, workspace=tmp_path, is_global_zero=True), name="round4_ns")
    stage.teachers = lambda: teachers
    assert stage.teacher_checkpoint(0) == tmp_path / "round2_coteach/fold0/checkpoints/last.ckpt"
    assert stage.teacher_checkpoint(1) is None
    model = {"detector": "multilabel", "backbone": backbone}
    assert stage.model_config(model, fold=0)["init_from"] == str(tmp_path / "round2_coteach/fold0/checkpoints/last.ckpt")
    assert stage.state.fold("round4_ns", 0)["init_from"] == "round2_coteach/fold0/checkpoints/last.ckpt"
    with pytest.raises(ValueError, match="noisy_student.init=teacher: no teacher of round4_ns has a fold-1"):
        stage.model_config(model, fold=1)
    assert "init_from" not in stage.model_config(model)                  # outside a fold: nothing to start from
    stage.init_mode = "auto"
    assert "init_from" not in stage.model_config(model, fold=1)
    stage.init_mode = "scratch"
    assert "init_from" not in stage.model_config(model, fold=0)


def test_unknown_init_mode_is_refused(tmp_path):
    cfg = load_config(["stage=noisy_student", "preset=smoke", f"workspace={tmp_path}", "noisy_student.init=teachers"])
    with pytest.raises(ValueError, match="noisy_student.init='teachers': choose one of auto, teacher, scratch"):
        NoisyStudentStage(SimpleNamespace(cfg=cfg, workspace=tmp_path, is_global_zero=True))


@pytest.mark.slow
def test_cli_bootstrap_then_noisy_student(tmp_path, smoke_data_root):
    ws = tmp_path / "ws"
    args = smoke_args(ws, smoke_data_root, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    student = ["stage=noisy_student"] + args[1:]
    with pytest.raises(PoolError, match="run stage=bootstrap first"):
        main(student)
    assert not (ws / "round1_noisy_student" / "fold0").exists()          # failed before any training

    assert main(args) == 0
    assert main(student) == 0
    out = ws / "round1_noisy_student"
    for name in ("oof_framewise.npz", "test_framewise.npz", "oof.csv", "submission.csv", "submission_raw.csv"):
        assert (out / name).exists(), name
    with np.load(out / "oof_framewise.npz") as frames:
        assert frames["framewise"].dtype == np.float16 and frames["framewise"].shape[:2] == (12, 24)
    submission = pd.read_csv(ws / "submission.csv", dtype={"recording_id": str})
    assert len(submission) == 6 and np.isfinite(submission.iloc[:, 1:].to_numpy()).all()

    state = json.loads((ws / "state.json").read_text())["stages"]["round1_noisy_student"]
    assert state["teachers"] == ["bootstrap"]
    assert [state["folds"][str(k)]["status"] for k in range(2)] == ["done", "done"]
    assert state["config"]["augment"]["mixup_p"] == 0.8
    # each fold started from the bootstrap's model of the same fold, and trained on box crops too
    assert [state["folds"][str(k)]["init_from"] for k in range(2)] == [
        f"bootstrap/fold{k}/checkpoints/last.ckpt" for k in range(2)]
    metrics = pd.read_csv(ws / "logs" / "round1_noisy_student" / "fold0" / "metrics.csv")
    assert metrics["train/box_loss"].notna().any() and metrics["train/clip_loss"].notna().any()
    entries = PseudoLabelPool(ws, writable=False).entries()
    assert [(e.name, e.kind, e.round) for e in entries] == [("bootstrap", "bootstrap", None),
                                                           ("round1_noisy_student", "noisy_student", 1)]
    assert entries[1].provenance["checkpoints"]["0"]["last"].endswith("fold0/checkpoints/last.ckpt")
    assert not list(ws.rglob("*.tmp"))
