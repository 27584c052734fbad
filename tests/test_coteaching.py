"""Co-teaching selection: TP/FP cells are never dropped, the configured share of pseudo cells is, each
network updates on its peer's choice, and the drop rate ramps from 0 to the configured rate."""

from __future__ import annotations

import pytest
import torch

from rfcx_lightning.pseudo.coteaching import (cell_losses, coteaching_losses, consistency_loss, drop_rate_at,
                                              small_loss_keep)


def batch(seed=0, shape=(4, 6, 10), pseudo_weight=0.5):
    """Random logits of two networks, soft pseudo targets everywhere, and some TP/FP cells weighted 1."""
    g = torch.Generator().manual_seed(seed)
    logits_a, logits_b = torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g) * 3
    targets = torch.rand(shape, generator=g)
    box = torch.rand(shape, generator=g) < 0.2
    targets[box] = (torch.rand(int(box.sum()), generator=g) < 0.5).float()
    weights = torch.full(shape, pseudo_weight)
    weights[box] = 1.0
    return logits_a, logits_b, targets, weights, box.float()


def test_drop_rate_ramps_linearly_from_zero_to_the_configured_rate():
    assert drop_rate_at(0, 0.3, 4) == 0.0
    assert drop_rate_at(2, 0.3, 4) == pytest.approx(0.15)
    assert drop_rate_at(4, 0.3, 4) == pytest.approx(0.3)
    assert drop_rate_at(9.5, 0.3, 4) == pytest.approx(0.3)
    assert drop_rate_at(0, 0.3, 0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="coteach.drop_rate"):
        drop_rate_at(1, 1.0, 4)


@pytest.mark.parametrize("drop", [0.0, 0.2, 0.5])
def test_selection_keeps_every_box_cell_and_drops_exactly_the_share_of_pseudo_cells(drop):
    logits_a, logits_b, targets, weights, box = batch()
    out = coteaching_losses(logits_a, logits_b, targets, weights, box, drop)
    pseudo = (weights > 0) & (box == 0)
    n_pseudo = int(pseudo.sum())
    assert out.n_pseudo == n_pseudo
    for keep in (out.keep_a, out.keep_b):
        assert keep[box > 0].all()                                   # TP/FP never dropped
        assert int((~keep & pseudo).sum()) == round(drop * n_pseudo)  # exactly the configured share
    assert out.n_dropped == round(drop * n_pseudo)


def test_box_cells_survive_even_with_the_largest_losses():
    logits_a, logits_b, targets, weights, box = batch(seed=1)
    # make every TP/FP cell maximally wrong for both networks: they must still be kept
    wrong = torch.where(targets > 0.5, -20.0, 20.0)
    logits_a = torch.where(box > 0, wrong, logits_a)
    logits_b = torch.where(box > 0, wrong, logits_b)
    out = coteaching_losses(logits_a, logits_b, targets, weights, box, 0.5)
    assert out.keep_a[box > 0].all() and out.keep_b[box > 0].all()


def test_each_network_updates_on_the_cells_its_peer_finds_small_loss():
    logits_a, logits_b, targets, weights, box = batch(seed=2)
    drop = 0.25
    out = coteaching_losses(logits_a, logits_b, targets, weights, box, drop)
    pseudo = (weights > 0) & (box == 0)
    loss_a, loss_b = cell_losses(logits_a, targets, weights), cell_losses(logits_b, targets, weights)
    # A's kept pseudo cells are B's smallest losses: every kept one is <= every dropped one (by B's loss)
    kept_by_b, dropped_by_b = loss_b[out.keep_a & pseudo], loss_b[~out.keep_a & pseudo]
    assert kept_by_b.max() <= dropped_by_b.min()
    assert torch.equal(out.keep_a, small_loss_keep(loss_b, pseudo, drop))
    assert torch.equal(out.keep_b, small_loss_keep(loss_a, pseudo, drop))
    assert not torch.equal(out.keep_a, out.keep_b)                    # different networks, different picks

    # and only those cells move A: a cell A's peer dropped gets no gradient in A
    la = logits_a.clone().requires_grad_(True)
    lb = logits_b.clone().requires_grad_(True)
    out = coteaching_losses(la, lb, targets, weights, box, drop)
    (out.loss_a + out.loss_b).backward()
    assert (la.grad[~out.keep_a] == 0).all() and (la.grad[out.keep_a] != 0).all()
    assert (lb.grad[~out.keep_b] == 0).all()
    # the loss is the weighted mean over those cells
    w = weights * out.keep_a
    assert out.loss_a.item() == pytest.approx(float((loss_a * w).sum() / w.sum()), rel=1e-5)


def test_unlabelled_cells_never_count_and_nan_targets_there_cannot_leak():
    logits_a, logits_b, targets, weights, box = batch(seed=3)
    weights[:, :, :3] = 0
    box[:, :, :3] = 0
    targets[:, :, :3] = float("nan")
    out = coteaching_losses(logits_a, logits_b, targets, weights, box, 0.3)
    assert torch.isfinite(out.loss_a) and torch.isfinite(out.loss_b)
    assert not out.keep_a[:, :, :3].any()
    assert out.n_pseudo == int(((weights > 0) & (box == 0)).sum())


def test_label_grid_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="model's grid"):
        cell_losses(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), torch.ones(1, 2, 6))


def test_consistency_is_zero_for_identical_outputs_and_does_not_move_the_teacher():
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = student.detach().clone().requires_grad_(True)
    assert consistency_loss(student, teacher).item() == 0.0
    consistency_loss(student + 1, teacher).backward()
    assert teacher.grad is None and student.grad is not None
