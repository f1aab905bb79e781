"""Agreement metrics on examples small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ldpo.common.numerics import metrics

# 3 clusters against 2 classes:   class 0   class 1
#                      cluster 0     2         1
#                      cluster 1     0         3
#                      cluster 2     2         0
PRED = np.array([0, 0, 0, 1, 1, 1, 2, 2])
TRUTH = np.array([0, 0, 1, 1, 1, 1, 0, 0])


def test_contingency_counts_pairs():
    assert metrics.contingency(PRED, TRUTH).tolist() == [[2, 1], [0, 3], [2, 0]]


def test_purity_both_ways():
    assert metrics.purity(PRED, TRUTH) == pytest.approx(7 / 8)  # majorities 2 + 3 + 2
    assert metrics.inverse_purity(PRED, TRUTH) == pytest.approx(5 / 8)  # class 0: 2 in one cluster, class 1: 3
    assert metrics.purity(TRUTH, PRED) == pytest.approx(5 / 8)


def test_hungarian_with_more_clusters_than_classes():
    # one-to-one: cluster 1 -> class 1 (3) and cluster 0 or 2 -> class 0 (2); the third cluster counts wrong
    assert metrics.hungarian_accuracy(PRED, TRUTH) == pytest.approx(5 / 8)
    # fewer clusters than classes: everything in one cluster matches one class only
    assert metrics.hungarian_accuracy(np.zeros(6, int), np.array([0, 0, 0, 1, 1, 2])) == pytest.approx(3 / 6)


def test_nmi_by_hand():
    mi = (2 / 8) * math.log(4 / 3) + (1 / 8) * math.log(2 / 3) + (3 / 8) * math.log(2) + (2 / 8) * math.log(2)
    h_pred = -2 * (3 / 8) * math.log(3 / 8) - (2 / 8) * math.log(2 / 8)
    h_truth = math.log(2)
    assert metrics.nmi(PRED, TRUTH) == pytest.approx(mi / ((h_pred + h_truth) / 2))
    assert metrics.nmi(TRUTH, PRED) == pytest.approx(metrics.nmi(PRED, TRUTH))


def test_ari_by_hand():
    # pairs within cells: C(2,2)+C(1,2)+C(3,2)+C(2,2) = 5; rows 3,3,2 -> 7; columns 4,4 -> 12; C(8,2) = 28
    expected_index = 7 * 12 / 28
    assert metrics.ari(PRED, TRUTH) == pytest.approx((5 - expected_index) / ((7 + 12) / 2 - expected_index))


def test_relabeled_partition_scores_one_everywhere():
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([5, 5, 9, 9, 1, 1, 1])
    assert metrics.all_metrics(pred, truth) == pytest.approx(
        {"purity": 1, "inverse_purity": 1, "nmi": 1, "ari": 1, "hungarian": 1})


def test_independent_labelings_score_low():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000)
    m = metrics.all_metrics(a, b)
    assert m["nmi"] < 0.02 and abs(m["ari"]) < 0.01 and m["purity"] < 0.2


def test_lengths_must_match():
    with pytest.raises(ValueError):
        metrics.purity(np.zeros(3, int), np.zeros(4, int))
