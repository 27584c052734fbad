"""Post-processing functions on synthetic cases with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.metrics import lwlrap
from rfcx_lightning.postprocessing import (aggregate_clip, calibrate, ensemble, estimate_k, estimate_prior,
                                        fit_topk_factors, odds_scale_to_prior, rank_normalize, smooth_framewise,
                                        topk_share, training_balance)


def _clips_with_prior(rng, n, prior):
    """Presence drawn from ``prior`` (at least one species per clip) and calibrated-looking probabilities."""
    present = rng.random((n, len(prior))) < prior
    present[~present.any(1), 0] = True
    probs = np.where(present, rng.uniform(0.5, 1.0, present.shape), rng.uniform(0.0, 0.3, present.shape))
    return present, probs


def test_odds_scaling_moves_the_mean_to_the_prior_and_keeps_the_signature():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.2, 0.6, (500, 4))
    prior = np.array([0.9, 0.05, 0.3, 0.5])
    out = odds_scale_to_prior(probs, prior, reference=probs.mean(0))
    assert out.dtype == np.float32 and out.shape == probs.shape
    # the mean score maps onto the prior exactly (odds of the mean; the mean of odds is close)
    np.testing.assert_allclose(odds_scale_to_prior(probs.mean(0, keepdims=True), prior, probs.mean(0))[0], prior, atol=1e-5)
    assert np.all(np.argsort(out[:, 0]) == np.argsort(probs[:, 0]))     # monotone per class
    with pytest.raises(ValueError, match="classes"):
        odds_scale_to_prior(probs, prior[:3])


def test_estimated_prior_recovers_the_true_prior_of_a_shifted_model():
    """Posteriors computed exactly for a training balance b, data drawn at prior q: EM finds q."""
    rng = np.random.default_rng(1)
    q = np.array([0.8, 0.2, 0.05])
    b = np.array([0.5, 0.5, 0.5])
    present = rng.random((20000, 3)) < q
    # a likelihood ratio from a noisy score, turned into the posterior a model trained at balance b gives
    score = rng.normal(np.where(present, 1.5, -1.5), 1.0)
    lr = np.exp(3.0 * score)                       # N(1.5,1) vs N(-1.5,1): LR = exp(3 x)
    posterior = lr * b / (lr * b + (1 - b))
    est = estimate_prior(posterior, b)
    np.testing.assert_allclose(est, present.mean(0), atol=0.02)
    with pytest.raises(ValueError, match="train_balance"):
        estimate_prior(posterior, b[:2])


def test_training_balance_counts_tp_share_per_class():
    boxes = pd.DataFrame({"class_index": [0, 0, 0, 1], "is_tp": [True, False, False, True]})
    np.testing.assert_allclose(training_balance(boxes, 3), [1 / 3, 1.0, 0.5])
    with pytest.raises(ValueError, match="class_index"):
        training_balance(boxes.rename(columns={"class_index": "c"}), 3)


def test_estimate_k_is_the_rounded_sum():
    probs = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.1, 0.1, 0.0], [1, 1, 1, 1]])
    assert estimate_k(probs).tolist() == [2, 1, 4]


@pytest.mark.parametrize("kind", ["linear", "power"])
def test_topk_matching_recovers_distorted_factors(kind):
    """Calibrated clips whose top-k share equals the prior, distorted per class: the fit undoes it."""
    rng = np.random.default_rng(2)
    prior = np.array([0.9, 0.5, 0.3, 0.2, 0.1, 0.05])
    present, probs = _clips_with_prior(rng, 400, prior)
    k = present.sum(1)
    truth_share = present.mean(0)
    true = np.array([3.0, 0.2, 1.0, 8.0, 0.05, 1.5])
    distorted = probs * (true / true.max()) if kind == "linear" else probs ** (1 / true)   # stays in [0, 1]
    before = np.abs(topk_share(distorted, k) - truth_share).sum()
    fit = fit_topk_factors(distorted, truth_share, kind=kind, k=k)
    assert before > 0.3
    assert fit.error_before == pytest.approx(before)
    assert fit.error < 0.02
    recovered = topk_share(fit.apply(distorted), k)
    np.testing.assert_allclose(recovered, truth_share, atol=0.01)
    # the clips' top-k sets are the true species sets again, and the ranking quality is restored
    order = np.argsort(-fit.apply(distorted), 1)
    hits = np.mean([set(order[i, :k[i]]) == set(np.flatnonzero(present[i])) for i in range(len(k))])
    assert hits > 0.97
    assert lwlrap(fit.apply(distorted), present) > lwlrap(distorted, present) + 0.1
    assert fit.apply(distorted).max() <= 1.0


def test_topk_leaves_matching_classes_alone():
    rng = np.random.default_rng(3)
    prior = np.array([0.7, 0.4, 0.2])
    present, probs = _clips_with_prior(rng, 300, prior)
    fit = fit_topk_factors(probs, present.mean(0), k=present.sum(1))
    np.testing.assert_allclose(fit.factors, 1.0)
    assert fit.error == pytest.approx(0.0, abs=1e-9)


def test_smoothing_is_a_centered_moving_average_that_keeps_the_shape():
    x = np.zeros((1, 2, 9), np.float32)
    x[0, 0, 4] = 1.0
    out = smooth_framewise(x, 3)
    assert out.shape == x.shape
    np.testing.assert_allclose(out[0, 0], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(smooth_framewise(np.ones((1, 1, 5)), 4), 1.0)   # edges average what exists
    assert np.array_equal(smooth_framewise(x, 1), x)
    # a one-frame spike loses to a sustained call after smoothing, not before
    spike, call = np.zeros(60), np.zeros(60)
    spike[10], call[30:45] = 0.9, 0.6
    frames = np.stack([spike, call])[None]
    assert aggregate_clip(frames, "max")[0].argmax() == 0
    assert aggregate_clip(smooth_framewise(frames, 5), "max")[0].argmax() == 1


def test_clip_aggregations():
    x = np.array([[[0.1, 0.9, 0.5, 0.3]]], np.float32)
    assert aggregate_clip(x, "max")[0, 0] == pytest.approx(0.9)
    assert aggregate_clip(x, "mean")[0, 0] == pytest.approx(0.45)
    assert aggregate_clip(x, "topn_mean", top_n=2)[0, 0] == pytest.approx(0.7)
    assert aggregate_clip(x, "topn_mean", top_n=10)[0, 0] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="postprocess.aggregate"):
        aggregate_clip(x, "median")


def test_folds_combine_framewise_before_the_max_unless_told_otherwise():
    import dataclasses

    from omegaconf import OmegaConf

    from rfcx_lightning.config import load_config
    from rfcx_lightning.postprocessing.chain import Option, fold_clip_scores

    block = OmegaConf.to_container(load_config([]).postprocess, resolve=True)
    default = Option.from_config(block)                              # the base.yaml defaults: frames, max
    assert (default.fold_level, default.aggregate, default.fold_ensemble) == ("frames", "max", "mean")
    # two folds that each put one spurious peak on a different frame, and agree on a moderate call
    a = np.array([[[0.9, 0.5, 0.1]]], np.float32)
    b = np.array([[[0.1, 0.5, 0.9]]], np.float32)
    clips = [f.max(-1) for f in (a, b)]
    frames = fold_clip_scores([a, b], clips, default, frames_per_second=1.0)
    assert frames[0, 0] == pytest.approx(0.5)                       # max over time of the fold mean
    per_fold = fold_clip_scores([a, b], clips, dataclasses.replace(default, fold_level="clips"), frames_per_second=1.0)
    assert per_fold[0, 0] == pytest.approx(0.9)                     # mean of each fold's own max
    head = fold_clip_scores([a, b], [np.array([[0.2]]), np.array([[0.4]])],
                            dataclasses.replace(default, aggregate="clip"), 1.0)
    assert head[0, 0] == pytest.approx(0.3)                         # the head's clip output: combined as clips
    with pytest.raises(ValueError, match="fold_level"):
        Option.from_config({**block, "fold_level": "recordings"})
    with pytest.raises(ValueError, match=r"postprocess\.smooth_secnds"):         # a misspelt key is named
        Option.from_config({**block, "smooth_secnds": 1.0})


def test_ensembles():
    a = np.array([[0.9, 0.1], [0.2, 0.4], [0.5, 0.3]], np.float32)
    b = np.array([[0.09, 0.01], [0.02, 0.04], [0.05, 0.5]], np.float32)   # another model, far less confident
    np.testing.assert_allclose(ensemble([a, b], "mean"), (a + b) / 2, rtol=1e-6)
    np.testing.assert_allclose(ensemble([a, b], "geometric_mean"), np.sqrt(a * b), rtol=1e-5)
    ranks = ensemble([a, b], "rank_mean")
    np.testing.assert_allclose(rank_normalize(a)[:, 0], [1.0, 1 / 3, 2 / 3])
    # rank mean gives both models the same say: class 1's order is the mean of their ranks
    np.testing.assert_allclose(ranks[:, 1], (rank_normalize(a)[:, 1] + rank_normalize(b)[:, 1]) / 2)
    framewise = np.random.default_rng(0).random((3, 2, 5))
    assert ensemble([framewise, framewise], "rank_mean").shape == framewise.shape
    with pytest.raises(ValueError, match="same shape"):
        ensemble([a, b[:2]])
    with pytest.raises(ValueError, match="rank_mean"):
        ensemble([a], "median")


def test_calibrate_methods_and_errors():
    rng = np.random.default_rng(4)
    prior = np.array([0.9, 0.3, 0.05])
    present = rng.random((300, 3)) < prior
    # a model that detects well but believes every class is equally common
    probs = np.clip(0.25 * present + rng.uniform(0, 0.7, present.shape), 0, 1)
    raw = calibrate(probs, "raw", None)
    assert raw.factors == {}
    scores = {m: lwlrap(calibrate(probs, m, prior).scores, present) for m in ("raw", "odds", "topk_linear")}
    assert scores["odds"] >= scores["raw"]
    topk = calibrate(probs, "topk_power", prior)
    assert set(topk.factors) == {"odds", "topk_power"} and topk.info["topk_error_after"] <= topk.info["topk_error_before"]
    with pytest.raises(ValueError, match="needs a prior"):
        calibrate(probs, "odds", None)
    with pytest.raises(ValueError, match="postprocess.method"):
        calibrate(probs, "platt", prior)
