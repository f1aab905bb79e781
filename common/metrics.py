"""Agreement between two labelings (clusters vs clusters, or clusters vs truth).

All functions take two integer arrays of the same length; the label sets may differ
in size (over-clustering is fine).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def contingency(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Counts ``[K_pred, K_truth]`` of items per (predicted, true) pair."""
    if len(pred) != len(truth) or len(pred) == 0:
        raise ValueError(f"labelings of {len(pred)} and {len(truth)} items cannot be compared")
    _, p = np.unique(np.asarray(pred), return_inverse=True)
    _, t = np.unique(np.asarray(truth), return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of items whose cluster's majority class is their class."""
    table = contingency(pred, truth)
    return float(table.max(axis=1).sum() / table.sum())


def inverse_purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Purity the other way round: fraction of items whose class's majority cluster is theirs."""
    return purity(truth, pred)


def nmi(pred: np.ndarray, truth: np.ndarray) -> float:
    """Normalized mutual information (arithmetic normalization), symmetric."""
    return float(normalized_mutual_info_score(truth, pred))


def ari(pred: np.ndarray, truth: np.ndarray) -> float:
    """Adjusted Rand index (0 for chance, 1 for identical partitions), symmetric."""
    return float(adjusted_rand_score(truth, pred))


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy under the best one-to-one match of clusters to classes (extras count wrong)."""
    table = contingency(pred, truth)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def all_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """purity both ways, NMI, ARI and Hungarian accuracy."""
    return {
        "purity": purity(pred, truth),
        "inverse_purity": inverse_purity(pred, truth),
        "nmi": nmi(pred, truth),
        "ari": ari(pred, truth),
        "hungarian": hungarian_accuracy(pred, truth),
    }
