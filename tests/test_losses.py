"""Masked losses: unknown cells are inert, weights weight, focal/LSEP behave, grids are aligned."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rfcx_lightning.losses import MaskedFrameLoss, build_loss, masked_bce, masked_focal, masked_lsep

LOSSES = [masked_bce, masked_focal, masked_lsep]


def _labels(shape=(3, 5, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    targets = (torch.rand(shape, generator=g) > 0.5).float()
    mask = (torch.rand(shape, generator=g) > 0.6).float()
    return logits, targets, mask


@pytest.mark.parametrize("fn", LOSSES)
def test_masked_cells_get_exactly_zero_gradient(fn):
    logits, targets, mask = _labels()
    targets = torch.where(mask > 0, targets, torch.full_like(targets, float("nan")))  # garbage where unknown
    logits.requires_grad_(True)
    loss = fn(logits, targets, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert (logits.grad[mask == 0] == 0).all()
    assert logits.grad[mask > 0].abs().sum() > 0


@pytest.mark.parametrize("fn", LOSSES)
def test_unlabeled_values_do_not_change_the_loss(fn):
    logits, targets, mask = _labels()
    other = torch.where(mask > 0, logits, torch.randn_like(logits) * 10)
    assert torch.allclose(fn(logits, targets, mask), fn(other, targets, mask))


@pytest.mark.parametrize("fn", LOSSES)
def test_no_labeled_cell_gives_connected_zero(fn):
    logits, targets, _ = _labels()
    logits.requires_grad_(True)
    loss = fn(logits, targets, torch.zeros_like(targets))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_bce_matches_torch_on_labeled_cells():
    logits, targets, mask = _labels()
    expected = F.binary_cross_entropy_with_logits(logits[mask > 0], targets[mask > 0])
    assert torch.allclose(masked_bce(logits, targets, mask), expected)


def test_fractional_mask_weights():
    logits = torch.tensor([[[2.0, -1.0]]])
    targets = torch.tensor([[[0.0, 1.0]]])
    mask = torch.tensor([[[0.25, 1.0]]])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")[0, 0]
    expected = (0.25 * bce[0] + bce[1]) / 1.25
    assert torch.allclose(masked_bce(logits, targets, mask), expected)
    # scaling every weight leaves the loss unchanged (it is a weighted mean)
    assert torch.allclose(masked_bce(logits, targets, mask * 0.5), expected)


def test_pos_weight_is_per_class():
    logits, targets, mask = _labels()
    pos_weight = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    bce = F.binary_cross_entropy_with_logits(
        logits.transpose(1, 2), targets.transpose(1, 2), reduction="none", pos_weight=pos_weight
    ).transpose(1, 2)
    expected = bce[mask > 0].mean()
    assert torch.allclose(masked_bce(logits, targets, mask, pos_weight=pos_weight), expected)


def test_focal_reduces_to_bce_at_gamma0():
    logits, targets, mask = _labels()
    assert torch.allclose(masked_focal(logits, targets, mask, gamma=0.0), masked_bce(logits, targets, mask))


def test_focal_downweights_easy_cells():
    targets = torch.ones(1, 1, 2)
    mask = torch.ones(1, 1, 2)
    easy, hard = torch.tensor([[[4.0, 4.0]]]), torch.tensor([[[-1.0, -1.0]]])
    ratio_focal = masked_focal(easy, targets, mask) / masked_focal(hard, targets, mask)
    ratio_bce = masked_bce(easy, targets, mask) / masked_bce(hard, targets, mask)
    assert ratio_focal < ratio_bce


def test_focal_alpha_balances():
    logits = torch.tensor([[[0.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0]]])
    mask = torch.ones(1, 1, 2)
    base = masked_focal(logits, targets, mask, gamma=0.0)
    assert torch.allclose(masked_focal(logits, targets, mask, gamma=0.0, alpha=0.5), base * 0.5)


def test_lsep_lower_for_correct_ranking():
    targets = torch.tensor([[1.0, 0.0, 0.0]]).unsqueeze(-1)  # (1, C=3, T=1)
    mask = torch.ones_like(targets)
    good = torch.tensor([[3.0, -1.0, -2.0]]).unsqueeze(-1)
    bad = torch.tensor([[-2.0, 1.0, 3.0]]).unsqueeze(-1)
    assert masked_lsep(good, targets, mask) < masked_lsep(bad, targets, mask)
    # exact value: log(1 + exp(-1 - 3) + exp(-2 - 3))
    expected = torch.log1p(torch.exp(torch.tensor(-4.0)) + torch.exp(torch.tensor(-5.0)))
    assert torch.allclose(masked_lsep(good, targets, mask), expected)


def test_lsep_ignores_frames_without_pairs():
    targets = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # frame 0 has a pair, frame 1 only positives
    mask = torch.ones_like(targets)
    logits = torch.tensor([[[0.5, 9.0], [0.0, -9.0]]])
    single = masked_lsep(logits[..., :1], targets[..., :1], mask[..., :1])
    assert torch.allclose(masked_lsep(logits, targets, mask), single)


def test_masked_frame_loss_same_grid_and_factory():
    logits, targets, mask = _labels()
    for kind, fn in (("bce", masked_bce), ("focal", masked_focal), ("lsep", masked_lsep)):
        assert torch.allclose(build_loss(kind)(logits, targets, mask), fn(logits, targets, mask))
    assert torch.allclose(build_loss("focal", gamma=0.0)(logits, targets, mask), masked_bce(logits, targets, mask))
    with pytest.raises(ValueError, match="lsep"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="bce"):
        MaskedFrameLoss("hinge")


def test_masked_frame_loss_pools_labels_to_model_grid():
    labels = pytest.importorskip("rfcx_lightning.data.labels")
    if not hasattr(labels, "pool_frame_labels"):
        pytest.skip("rfcx_lightning.data.labels.pool_frame_labels not available yet")
    g = torch.Generator().manual_seed(0)
    targets = torch.zeros(2, 4, 40)
    mask = torch.zeros(2, 4, 40)
    targets[0, 1, 10:20] = 1
    mask[0, 1, 10:20] = 1
    mask[1, 2, 0:40] = 1  # FP over the whole crop
    logits = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    loss = build_loss("bce")(logits, targets, mask)
    pooled_t, pooled_m = labels.pool_frame_labels(targets, mask, 5)
    assert torch.allclose(loss, masked_bce(logits, pooled_t, pooled_m))
    loss.backward()
    assert (logits.grad[pooled_m == 0] == 0).all()
    assert (logits.grad[1, 2] != 0).all()
