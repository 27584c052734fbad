"""Crops around boxes: the anchored box is inside the crop, its cells are labelled, nothing else is."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from rfcx_lightning.data.audio import AudioCache
from rfcx_lightning.data.datamodule import (BoxCropDataset, CropSettings, FoldDataModule, LoaderSettings, RecordingSet,
                                            box_anchors)
from rfcx_lightning.data.labels import BoxIndex

SR = 8000


@pytest.fixture()
def tiny_set(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["000316000", "abc123def"]
    items = []
    for rid in ids:
        path = tmp_path / f"{rid}.flac"
        sf.write(path, (0.1 * rng.standard_normal(SR * 20)).astype(np.float32), SR)
        items.append(("train", rid, path))
    cache = AudioCache(tmp_path / "cache", target_sr=SR)
    cache.build(items, workers=1, progress=False, expected_sr=SR, expected_duration_s=20.0)
    boxes = pd.DataFrame({
        "recording_id": ["000316000", "000316000", "abc123def"], "species_id": [0, 1, 1],
        "songtype_id": [1, 1, 1], "t_min": [2.0, 10.0, 17.0], "t_max": [3.0, 11.5, 19.9],
        "f_min": [100.0, 200.0, 200.0], "f_max": [900.0, 1500.0, 1500.0],
        "is_tp": [True, False, True], "class_index": [0, 1, 1]})
    return cache, RecordingSet("train", tuple(ids), BoxIndex.from_frame(boxes, ids))


def make_dataset(cache, recordings, jitter, crop=4.0):
    anchors = box_anchors(recordings.boxes, np.ones(2, bool))
    return BoxCropDataset(cache, recordings, anchors, n_classes=2, crop_seconds=crop, label_hz=10,
                          sample_rate=SR, duration_s=20.0, jitter=jitter)


@pytest.mark.parametrize("jitter", [False, True])
def test_anchored_box_is_inside_the_crop_and_labelled(tiny_set, jitter):
    cache, recordings = tiny_set
    dataset = make_dataset(cache, recordings, jitter)
    assert len(dataset) == 3
    for _ in range(5):
        for i, (cls, target) in enumerate([(0, 1.0), (1, 0.0), (1, 1.0)]):
            item = dataset[i]
            assert item["wave"].shape == (4 * SR,) and item["targets"].shape == (2, 40)
            labelled = item["mask"][cls] > 0
            assert labelled.sum() >= 9                                   # the whole 1 s+ box
            assert (item["targets"][cls][labelled] == target).all()
            assert item["mask"][1 - cls].sum() == 0                       # other class unknown


def test_box_at_recording_end_and_long_box_crop(tiny_set):
    cache, recordings = tiny_set
    dataset = make_dataset(cache, recordings, jitter=True, crop=1.0)    # crop shorter than 1.5 s box
    for _ in range(10):
        start = dataset.crop_start(10.0, 11.5, float(np.random.rand()))
        assert 10.0 <= start <= 10.5
        assert dataset.crop_start(17.0, 19.9, 0.99) <= 19.0


def test_fold_split_uses_disjoint_recordings(tiny_set):
    cache, recordings = tiny_set
    dm = FoldDataModule(cache, recordings, np.array([0, 1]), fold=1, n_classes=2,
                        crops=CropSettings(seconds=4.0, label_hz=10, tp_repeat=3, fp_fraction=1.0, min_per_epoch=0),
                        loader=LoaderSettings(batch_size=2, num_workers=0, predict_batch_size=1),
                        sample_rate=SR, duration_s=20.0)
    train_rows = dm.train_dataset().anchors
    val_rows = dm.val_dataset().anchors
    assert sorted(set(train_rows)) == [0, 1] and list(val_rows) == [2]
    assert (train_rows == 0).sum() == 3                                   # TP row repeated


def test_epoch_sampler_keeps_every_tp_and_redraws_fp():
    from rfcx_lightning.data.datamodule import TPFPEpochSampler

    is_tp = np.array([True] * 4 + [False] * 20)
    sampler = TPFPEpochSampler(is_tp, fp_fraction=0.25, seed=1)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 9
    for epoch in (first, second):
        assert set(range(4)) <= set(epoch) and len(set(epoch)) == 9
    assert set(first) != set(second)                                   # FP subset redrawn
    again = TPFPEpochSampler(is_tp, fp_fraction=0.25, seed=1)
    assert list(again) == first                                        # same on every rank


def test_epoch_sampler_chains_draws_up_to_min_items():
    from rfcx_lightning.data.datamodule import TPFPEpochSampler

    is_tp = np.array([True] * 4 + [False] * 20)
    sampler = TPFPEpochSampler(is_tp, fp_fraction=0.25, seed=1, min_items=20)
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == 20                            # 9 + 9 + 2 of a third draw
    counts = np.bincount(epoch, minlength=24)
    assert (counts[:4] >= 2).all()                                     # every TP in each full draw
    assert counts[4:].sum() >= 10 and len(set(epoch[9:18])) == 9       # a second full, fresh draw
    big = TPFPEpochSampler(is_tp, fp_fraction=0.25, seed=1, min_items=5)
    assert len(big) == 9 and list(big) == list(TPFPEpochSampler(is_tp, 0.25, seed=1))  # never shortened


def test_crops_stay_inside_a_recording_shorter_than_the_grid(tiny_set, tmp_path):
    """``data.duration_s=auto``: a 9 s recording on a 20 s grid; a crop around its last box ends at its end."""
    cache, recordings = tiny_set
    short = tmp_path / "short.flac"
    sf.write(short, (0.1 * np.random.default_rng(1).standard_normal(SR * 9)).astype(np.float32), SR)
    cache.build([("train", "short", short)], workers=1, progress=False, expected_sr=SR, expected_duration_s=None)
    boxes = pd.DataFrame({"recording_id": ["short"], "species_id": [0], "songtype_id": [1], "t_min": [7.5],
                          "t_max": [8.5], "f_min": [100.0], "f_max": [900.0], "is_tp": [True], "class_index": [0]})
    rec = RecordingSet("train", ("short",), BoxIndex.from_frame(boxes, ["short"]))
    dataset = BoxCropDataset(cache, rec, np.array([0]), n_classes=1, crop_seconds=4.0, label_hz=10,
                             sample_rate=SR, duration_s=20.0, jitter=True)
    assert dataset.seconds("train", "short") == 9.0 and dataset.seconds("train", "abc123def") == 20.0
    starts = [dataset.crop_start(7.5, 8.5, u, dataset.seconds("train", "short")) for u in np.linspace(0, 0.999, 20)]
    assert min(starts) >= 4.5 and max(starts) <= 5.0                    # box inside, crop inside the 9 s
