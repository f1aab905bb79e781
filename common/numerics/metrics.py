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


# -- multi-label (one sigmoid per class) ------------------------------------------------
def best_thresholds(truth: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per class, the decision threshold on ``probs`` [N,K] that maximizes the class's F1
    against ``truth`` [N,K] (0/1): the midpoint between the lowest probability kept and the
    highest one left out, from scikit-learn's precision-recall curve. A class with no
    positive (or no image) in ``truth`` keeps ``default``."""
    from sklearn.metrics import precision_recall_curve

    truth, probs = np.asarray(truth) > 0.5, np.asarray(probs, dtype=np.float64)
    out = np.full(probs.shape[1], float(default))
    for k in range(probs.shape[1]):
        if len(truth) == 0 or not truth[:, k].any():
            continue
        precision, recall, cuts = precision_recall_curve(truth[:, k], probs[:, k])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))  # ties: the lowest threshold of the best F1 (cuts ascend)
        below = probs[:, k][probs[:, k] < cuts[best]]
        out[k] = float((cuts[best] + below.max()) / 2) if len(below) else float(cuts[best]) / 2
    return out


def multilabel_metrics(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | float,
                       classes: list[int] | None = None) -> dict:
    """Per-class average precision and ROC AUC (``None`` where a class has only positives or
    only negatives in ``truth``), macro and micro F1 and exact-match (subset) accuracy at the
    per-class ``thresholds``, and Hamming accuracy; ``truth`` [N,K] 0/1, ``probs`` [N,K].
    Macro AP/AUC average the classes where they are defined. scikit-learn's metrics."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

    truth = (np.asarray(truth) > 0.5).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if truth.shape != probs.shape or truth.ndim != 2 or len(truth) == 0:
        raise ValueError(f"truth {truth.shape} and probabilities {probs.shape} cannot be compared")
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
    pred = (probs >= thresholds[None, :]).astype(np.int64)
    classes = list(range(probs.shape[1])) if classes is None else [int(c) for c in classes]
    per_class = {}
    for k, c in enumerate(classes):
        defined = 0 < truth[:, k].sum() < len(truth)
        per_class[str(c)] = {
            "ap": float(average_precision_score(truth[:, k], probs[:, k])) if truth[:, k].any() else None,
            "auc": float(roc_auc_score(truth[:, k], probs[:, k])) if defined else None,
            "f1": float(f1_score(truth[:, k], pred[:, k], zero_division=0)),
            "threshold": float(thresholds[k]), "positives": int(truth[:, k].sum())}

    def mean(key: str) -> float | None:
        values = [v[key] for v in per_class.values() if v[key] is not None]
        return float(np.mean(values)) if values else None

    return {"macro_ap": mean("ap"), "macro_auc": mean("auc"),
            "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)),
            "micro_f1": float(f1_score(truth, pred, average="micro", zero_division=0)),
            "exact_match": float(accuracy_score(truth, pred)),
            "hamming_accuracy": float((truth == pred).mean()),
            "negatives": int((truth.sum(axis=1) == 0).sum()), "n": int(len(truth)),
            "per_class": per_class}
