from __future__ import annotations

import numpy as np

from edgedx import metrics


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.random(200) + y * 0.3, 2)  # rounding makes ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert abs(metrics.roc_auc(y, s) - pairwise) < 1e-12


def test_auc_needs_both_classes():
    assert metrics.roc_auc(np.ones(3, bool), np.array([0.1, 0.2, 0.3])) is None


def test_summary_binary_at_threshold():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    r = metrics.summarize(labels, probs, positive_index=1, threshold=0.5)
    assert r["confusion"] == [[1, 1], [1, 1]]
    assert r["sensitivity"] == 0.5 and r["specificity"] == 0.5 and r["accuracy"] == 0.5
    r2 = metrics.summarize(labels, probs, positive_index=1, threshold=0.05)
    assert r2["sensitivity"] == 1.0 and r2["specificity"] == 0.0


def test_threshold_keeps_sensitivity_with_confidence():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(800, bool), np.zeros(400, bool)]
    s = np.r_[rng.beta(5, 2, 800), rng.beta(2, 5, 400)]
    t = metrics.threshold_for_sensitivity(y, s, 0.95)
    sens = (s[y] >= t).mean()
    assert metrics.wilson_lower(int((s[y] >= t).sum()), 800) >= 0.95
    assert sens > 0.95 and sens < 0.985  # the highest such threshold, not a trivial one
