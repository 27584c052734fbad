"""Three-state frame targets, hand-checked on small grids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rfcx_lightning.data.labels import (BoxIndex, add_unlabelled_negatives, clip_targets, frame_targets,
                                       pool_frame_labels)


def _boxes(rows):
    """rows: (recording_id, class_index, t_min, t_max, is_tp)."""
    frame = pd.DataFrame(rows, columns=["recording_id", "class_index", "t_min", "t_max", "is_tp"])
    frame["f_min"], frame["f_max"] = 100.0, 2000.0
    return frame


@pytest.fixture()
def index() -> BoxIndex:
    boxes = _boxes([
        ("000316000", 0, 1.0, 2.0, True),    # TP class 0 covering frames 1
        ("rec_b", 1, 0.0, 1.0, False),
        ("000316000", 1, 2.6, 4.0, False),   # FP class 1: frame 2 covered 0.4 (<half), frame 3 fully
        ("000316000", 0, 3.2, 3.4, False),   # FP class 0: frame 3 covered only 0.2
        ("000316000", 2, 0.5, 1.2, True),    # TP class 2 touching frames 0 and 1
        ("000316000", 2, 0.0, 2.0, False),   # FP class 2 overlapping the TP: TP wins
    ])
    return BoxIndex.from_frame(boxes, ["empty", "000316000", "rec_b"])


def test_box_index_csr(index):
    assert index.recording_ids == ["empty", "000316000", "rec_b"]
    assert index.offsets.tolist() == [0, 0, 5, 6]
    assert index.rows(0) == slice(0, 0) and index.n_boxes(1) == 5
    assert index.index_of("000316000") == 1
    assert index.class_index[index.rows(2)].tolist() == [1]
    assert index.is_tp[index.rows(1)].tolist() == [True, False, False, True, False]  # file order kept
    with pytest.raises(KeyError):
        index.index_of("316000")


def test_box_index_rejects_unknown_ids():
    with pytest.raises(ValueError, match="not in recording_ids"):
        BoxIndex.from_frame(_boxes([("x", 0, 1.0, 2.0, True)]), ["y"])


def test_frame_targets_hand_checked(index):
    # 5 frames of 1 s over [0, 5)
    t, m = frame_targets(index, 1, 0.0, 5.0, 5, 3)
    assert t.dtype == np.float32 and t.shape == (3, 5)
    np.testing.assert_array_equal(t, [[0, 1, 0, 0, 0],
                                      [0, 0, 0, 0, 0],
                                      [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(m, [[0, 1, 0, 0, 0],   # FP 3.2-3.4 covers < half of frame 3
                                      [0, 0, 0, 1, 0],   # FP 2.6-4.0: frame 2 0.4 s (unknown), frame 3 full
                                      [1, 1, 0, 0, 0]])  # TP wins over the FP 0-2 s


def test_tp_box_ending_on_a_frame_edge_does_not_leak(index):
    # TP 1.0-2.0 with 0.5 s frames: frames 2 and 3 only ([1.0,1.5), [1.5,2.0))
    t, m = frame_targets(index, 1, 0.0, 3.0, 6, 3)
    np.testing.assert_array_equal(t[0], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(m[0], [0, 0, 1, 1, 0, 0])


def test_crop_cuts_boxes(index):
    # window [1.5, 3.5), 4 frames of 0.5 s: [1.5,2) [2,2.5) [2.5,3) [3,3.5)
    t, m = frame_targets(index, 1, 1.5, 2.0, 4, 3)
    np.testing.assert_array_equal(t[0], [1, 0, 0, 0])       # TP 1-2 cut at the crop start
    np.testing.assert_array_equal(m[0], [1, 0, 0, 0])       # FP 3.2-3.4 covers 0.2 of 0.5: unknown
    np.testing.assert_array_equal(m[1], [0, 0, 1, 1])       # FP 2.6-4.0 covers 0.4 of [2.5,3): labeled 0
    np.testing.assert_array_equal(t[1], [0, 0, 0, 0])
    np.testing.assert_array_equal(m[2], [1, 0, 0, 0])       # FP 0-2 cut by the crop; TP 0.5-1.2 outside
    np.testing.assert_array_equal(t[2], [0, 0, 0, 0])
    # a window entirely outside the boxes is all unknown
    t, m = frame_targets(index, 1, 50.0, 5.0, 10, 3)
    assert not t.any() and not m.any()


def test_empty_recording_is_all_unknown(index):
    t, m = frame_targets(index, 0, 0.0, 60.0, 12, 3)
    assert not t.any() and not m.any()
    t, m = clip_targets(index, 0, 3)
    assert not t.any() and not m.any()


def test_class_out_of_range(index):
    with pytest.raises(ValueError, match="class_index"):
        frame_targets(index, 1, 0.0, 5.0, 5, 2)


def test_clip_targets_fp_is_not_absence(index):
    t, m = clip_targets(index, 1, 3)
    np.testing.assert_array_equal(t, [1, 0, 1])
    np.testing.assert_array_equal(m, [1, 0, 1])   # class 1 has only FP boxes: unknown, not negative
    t, m = clip_targets(index, 2, 3)
    assert not t.any() and not m.any()


def _tm(target_rows, mask_rows):
    return (torch.tensor([target_rows], dtype=torch.float32), torch.tensor([mask_rows], dtype=torch.float32))


def test_pool_downsample_keeps_positives():
    # one class, 8 fine cells -> 2 output cells of 4
    t, m = _tm([[0, 0, 1, 0, 0, 0, 0, 0]],
               [[0, 0, 1, 0, 1, 1, 0, 0]])
    out_t, out_m = pool_frame_labels(t, m, 2)
    assert out_t.shape == (1, 1, 2)
    assert out_t.tolist() == [[[1.0, 0.0]]]
    assert out_m.tolist() == [[[1.0, 1.0]]]   # cell 0: a positive; cell 1: half labeled (negative)


def test_pool_downsample_mostly_unknown_stays_unknown():
    t, m = _tm([[0, 0, 0, 0, 0, 0]],
               [[1, 0, 0, 1, 1, 0]])
    out_t, out_m = pool_frame_labels(t, m, 2)
    assert out_m.tolist() == [[[0.0, 1.0]]] and not out_t.any()


def test_pool_ignores_unmasked_targets():
    t, m = _tm([[1, 1, 0, 0]], [[0, 0, 1, 1]])
    out_t, out_m = pool_frame_labels(t, m, 2)
    assert out_t.tolist() == [[[0.0, 0.0]]] and out_m.tolist() == [[[0.0, 1.0]]]


def test_pool_upsample_nearest():
    t, m = _tm([[1, 0, 0]], [[1, 1, 0]])
    out_t, out_m = pool_frame_labels(t, m, 6)
    assert out_t.tolist() == [[[1, 1, 0, 0, 0, 0]]]
    assert out_m.tolist() == [[[1, 1, 1, 1, 0, 0]]]


def test_pool_uneven_sizes_and_batch():
    torch.manual_seed(0)
    t = (torch.rand(4, 3, 37) > 0.9).float()
    m = torch.maximum(t, (torch.rand(4, 3, 37) > 0.5).float())
    for n_out in (1, 5, 11, 37, 50):
        out_t, out_m = pool_frame_labels(t, m, n_out)
        assert out_t.shape == out_m.shape == (4, 3, n_out)
        # every (item, class) with a positive keeps one after pooling
        assert torch.equal(out_t.amax(-1) > 0, t.amax(-1) > 0)
        assert torch.all(out_t <= out_m)
    out_t, out_m = pool_frame_labels(t[0], m[0], 5)   # (C, T) accepted too
    assert out_t.shape == (3, 5)


def test_pool_identity():
    t = torch.tensor([[[1.0, 0.0, 0.7]]])
    m = torch.tensor([[[1.0, 1.0, 0.0]]])
    out_t, out_m = pool_frame_labels(t, m, 3)
    assert out_t.tolist() == [[[1.0, 0.0, 0.0]]] and torch.equal(out_m, m)


def test_unlabelled_negatives_pick_only_unlabelled_classes():
    torch.manual_seed(0)
    batch, n_classes, frames = 16, 6, 5
    targets = torch.zeros(batch, n_classes, frames)
    mask = torch.zeros(batch, n_classes, frames)
    targets[:, 1, 2] = 1.0          # a TP cell of class 1 in every crop
    mask[:, 1, 2] = 1.0
    mask[:, 4, :3] = 1.0            # FP cells of class 4
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    new_t, new_m = add_unlabelled_negatives(targets, mask, weights, per_item=2)
    labelled = torch.tensor([False, True, False, False, True, False])
    assert torch.equal(new_m[:, labelled], mask[:, labelled]) and torch.equal(new_t[:, labelled], targets[:, labelled])
    picked = (new_m[:, ~labelled] > 0).all(-1)                          # whole-crop negatives
    assert torch.equal(picked.sum(1), torch.full((batch,), 2))           # exactly per_item per crop
    assert torch.equal((new_m[:, ~labelled] > 0).any(-1), picked)        # never a partial crop
    assert torch.allclose(new_m[:, ~labelled][picked], weights[~labelled].view(1, -1, 1).expand(batch, -1, frames)[picked])
    assert (new_t[:, ~labelled] == 0).all()
    assert picked.any(0).all()                                           # every unlabelled class gets drawn


def test_unlabelled_negatives_never_exceed_the_free_classes():
    mask = torch.ones(2, 3, 4)
    mask[0, 2] = 0.0                                                    # one free class in item 0, none in 1
    new_t, new_m = add_unlabelled_negatives(torch.zeros(2, 3, 4), mask, torch.full((3,), 0.5), per_item=5)
    assert torch.equal(new_m[1], mask[1])
    assert torch.allclose(new_m[0, 2], torch.full((4,), 0.5))


def test_negative_weights_follow_the_prior():
    from rfcx_lightning.stages.bootstrap import negative_class_weights

    prior = np.array([0.9, 0.01, 0.5])
    assert np.allclose(negative_class_weights(0.2, True, prior, 3), 0.2 * (1 - prior))
    assert np.allclose(negative_class_weights(0.2, False, prior, 3), 0.2)
    assert np.allclose(negative_class_weights(0.2, True, None, 3), 0.2)
    with pytest.raises(ValueError, match="negatives.weight"):
        negative_class_weights(2.0, True, prior, 3)
