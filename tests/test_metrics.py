"""LWLRAP against a brute-force definition, hand cases, the Metric wrappers, masked AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfcx_lightning.metrics import LWLRAP, MaskedFrameAUROC, lwlrap, per_class_lwlrap, prior_baseline_lwlrap


def brute_force_lwlrap(scores: np.ndarray, truth: np.ndarray) -> float:
    """The definition, one true label at a time."""
    total, count = 0.0, 0
    for n in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            if truth[n, c]:
                at_or_above = scores[n] >= scores[n, c]
                total += (truth[n] & at_or_above).sum() / at_or_above.sum()
                count += 1
    return total / count


def test_hand_cases():
    assert lwlrap(np.array([[0.9, 0.8, 0.1]]), np.array([[0, 1, 1]])) == pytest.approx(7 / 12)
    assert lwlrap(np.array([[0.9, 0.8, 0.1]]), np.array([[1, 0, 0]])) == pytest.approx(1.0)
    assert lwlrap(np.array([[0.9, 0.8, 0.1]]), np.array([[0, 0, 1]])) == pytest.approx(1 / 3)
    # ties count against the label: both tied at the top -> each has precision 1/2
    assert lwlrap(np.array([[0.5, 0.5, 0.1]]), np.array([[1, 0, 0]])) == pytest.approx(1 / 2)
    # items are weighted by their number of labels (label-weighted, not item-weighted)
    scores = np.array([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]])
    truth = np.array([[0, 1, 1], [1, 0, 0]])
    assert lwlrap(scores, truth) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # an item without a true label contributes nothing
    assert lwlrap(np.vstack([scores, [[0.1, 0.2, 0.3]]]), np.vstack([truth, [[0, 0, 0]]])) == pytest.approx(
        lwlrap(scores, truth))


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(60, 24)).astype(np.float32)
    truth = rng.random((60, 24)) < 0.15
    assert lwlrap(scores, truth) == pytest.approx(brute_force_lwlrap(scores, truth), abs=1e-12)
    assert lwlrap(torch.from_numpy(scores), torch.from_numpy(truth)) == pytest.approx(
        brute_force_lwlrap(scores, truth), abs=1e-12)


def test_per_class_decomposition():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, size=(50, 6)).astype(float)
    truth = rng.random((50, 6)) < 0.3
    truth[:, 5] = False
    per_class, weights = per_class_lwlrap(scores, truth)
    assert per_class.shape == weights.shape == (6,)
    assert weights.sum() == pytest.approx(1.0)
    assert per_class[5] == 0 and weights[5] == 0
    assert (per_class * weights).sum() == pytest.approx(lwlrap(scores, truth))


def test_prior_baseline():
    prior = np.array([0.5, 0.3, 0.2])
    truth = np.array([[1, 0, 0], [0, 1, 1]])
    scores = np.tile(prior, (2, 1))
    assert prior_baseline_lwlrap(truth, prior) == pytest.approx(brute_force_lwlrap(scores, truth.astype(bool)))
    assert prior_baseline_lwlrap(truth, prior) == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)


def test_no_true_label_is_nan():
    assert np.isnan(lwlrap(np.zeros((2, 3)), np.zeros((2, 3))))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_equals_function_over_batches():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(100, 24)).astype(np.float32)
    truth = (rng.random((100, 24)) < 0.1).astype(np.int64)
    metric = LWLRAP()
    for lo in range(0, 100, 30):
        metric.update(torch.from_numpy(scores[lo:lo + 30]), torch.from_numpy(truth[lo:lo + 30]))
    assert metric.compute().item() == pytest.approx(lwlrap(scores, truth), abs=1e-6)
    metric.reset()
    assert np.isnan(metric.compute().item())


def test_masked_frame_auroc_uses_labeled_cells_only():
    targets = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    logits = torch.tensor([[[5.0, -5.0, 100.0, -100.0]]])  # the unlabeled cells would ruin the ranking
    metric = MaskedFrameAUROC()
    metric.update(logits, targets, mask)
    assert metric.compute().item() == pytest.approx(1.0)


def test_masked_frame_auroc_large_logits_do_not_tie():
    targets = torch.tensor([[[1.0, 0.0]]])
    mask = torch.ones_like(targets)
    metric = MaskedFrameAUROC()
    metric.update(torch.tensor([[[30.0, 25.0]]]), targets, mask)  # sigmoid saturates to 1.0 in float32
    assert metric.compute().item() == pytest.approx(1.0)


def test_masked_frame_auroc_matches_brute_force_over_batches():
    g = torch.Generator().manual_seed(0)
    metric = MaskedFrameAUROC()
    pos, neg = [], []
    for _ in range(3):
        logits = torch.randn(2, 4, 6, generator=g)
        targets = (torch.rand(2, 4, 6, generator=g) > 0.5).float()
        mask = (torch.rand(2, 4, 6, generator=g) > 0.5).float()
        metric.update(logits, targets, mask)
        pos.append(logits[(mask > 0) & (targets > 0)])
        neg.append(logits[(mask > 0) & (targets == 0)])
    pos, neg = torch.cat(pos), torch.cat(neg)
    expected = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_masked_frame_auroc_degenerate_is_half():
    metric = MaskedFrameAUROC()
    assert metric.compute().item() == 0.5
    metric.update(torch.randn(1, 2, 3), torch.ones(1, 2, 3), torch.ones(1, 2, 3))  # no negatives
    assert metric.compute().item() == 0.5


def test_masked_frame_auroc_pools_labels():
    labels = pytest.importorskip("rfcx_lightning.data.labels")
    if not hasattr(labels, "pool_frame_labels"):
        pytest.skip("rfcx_lightning.data.labels.pool_frame_labels not available yet")
    targets = torch.zeros(1, 2, 20)
    mask = torch.zeros(1, 2, 20)
    targets[0, 0, :10] = 1
    mask[0, 0, :10] = 1
    mask[0, 1, 10:] = 1
    logits = torch.tensor([[[3.0, -9.0], [-9.0, -3.0]]])  # (1, 2, 2): positive frame scores above FP frame
    metric = MaskedFrameAUROC()
    metric.update(logits, targets, mask)
    assert metric.compute().item() == pytest.approx(1.0)
