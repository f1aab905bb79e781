"""The consensus of the loop's clusterings (``ldpo-loop.sh --keep consensus``).

Every iteration of the loop clusters the images anew, and from a network that learned little in its epochs
each clustering is a noisy draw: on long-tailed sets the NMI against the truth moves by 0.05-0.2 from one
iteration to the next while the average stays flat. Evidence accumulation (Fred & Jain 2005, "Combining
multiple clusterings using evidence accumulation") keeps what the draws agree on: two images belong
together in proportion to the share of clusterings that put them in one cluster (their co-association),
and an average-linkage tree over that share, cut at K groups, is the consensus. Average linkage, not
k-means over the one-hot labels, because the latter pulls toward equal sizes, which a long tail is not
(docs/discovery.md, "The consensus of the iterations").

**Scale.** Images that every clustering labelled alike are one *atom* (the distinct rows of the label
matrix): their co-association is 1, and average linkage merges them first whatever else it does, so the
tree is built over atoms weighted by their size. At most ``max_atoms`` atoms (the largest) are linked;
the rest, the images whose labels moved the most, join the consensus group they share the most
clusterings with on average. Memory is ``max_atoms``² floats (32 MB at 2,000). Not scipy's or
scikit-learn's average linkage: neither takes point weights, so they would link every image (N² memory,
80 GB at 100,000 images) instead of the weighted atoms, and their order of merging tied pairs is not
documented (the co-association takes only T + 1 values, so ties are common).

**Numbering.** The groups take the class numbers of a reference labelling (the labels the final model
was trained on) by the best one-to-one matching of their overlaps (Hungarian), so the final model's
classes, the tree's leaves and the consensus's groups are one set of numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def atoms(labelings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, inverse, counts)``: the distinct label tuples over the clusterings (atoms, ``[A, T]``), each
    image's atom, and the atoms' sizes."""
    matrix = np.stack([np.asarray(labels, dtype=np.int64) for labels in labelings], axis=1)
    rows, inverse, counts = np.unique(matrix, axis=0, return_inverse=True, return_counts=True)
    return rows, inverse.reshape(-1), counts


def average_linkage(distance: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Group the points of ``distance`` (square, symmetric) into ``k`` groups by average linkage over
    points of weight ``sizes``; returns each point's group, numbered by first appearance. Ties go to the
    first pair in row order, so the result is deterministic."""
    n = len(sizes)
    d = np.array(distance, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    weight = np.asarray(sizes, dtype=np.float64).copy()
    owner = np.arange(n)
    for _ in range(max(n - k, 0)):
        flat = int(np.argmin(d))
        i, j = divmod(flat, n)
        i, j = min(i, j), max(i, j)
        merged = (weight[i] * d[i] + weight[j] * d[j]) / (weight[i] + weight[j])
        d[i], d[:, i] = merged, merged
        d[i, i] = np.inf
        d[j], d[:, j] = np.inf, np.inf
        weight[i] += weight[j]
        owner[owner == j] = i
    _, groups = np.unique(owner, return_inverse=True)
    return groups


def co_association(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of clusterings in which each atom of ``a`` (``[A, T]``) and each of ``b`` (``[B, T]``) agree."""
    return (a[:, None, :] == b[None, :, :]).mean(axis=2)


def join_rest(rows: np.ndarray, counts: np.ndarray, core: np.ndarray, core_groups: np.ndarray,
              k: int) -> np.ndarray:
    """Every atom's group: the core atoms keep theirs, each other atom joins the group whose images it shares
    the most clusterings with on average (counted per clustering from the core's label tables)."""
    groups = np.full(len(rows), -1, dtype=np.int64)
    groups[core] = core_groups
    rest = np.setdiff1d(np.arange(len(rows)), core)
    if not len(rest):
        return groups
    members = np.bincount(core_groups, weights=counts[core], minlength=k)
    score = np.zeros((len(rest), k))
    for t in range(rows.shape[1]):
        classes = int(rows[:, t].max()) + 1
        table = np.zeros((k, classes))
        np.add.at(table, (core_groups, rows[core, t]), counts[core])
        score += table[:, rows[rest, t]].T
    groups[rest] = np.argmax(score / np.maximum(members, 1), axis=1)
    return groups


def number_like(groups: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``groups`` renumbered with ``reference``'s class numbers: the one-to-one matching of largest overlap
    (Hungarian); groups left over (more groups than reference classes) take new numbers after them."""
    from scipy.optimize import linear_sum_assignment

    classes = np.unique(reference)
    found = np.unique(groups)
    overlap = np.zeros((len(found), len(classes)))
    np.add.at(overlap, (np.searchsorted(found, groups), np.searchsorted(classes, reference)), 1)
    rows, cols = linear_sum_assignment(-overlap)
    names = dict(zip(found[rows].tolist(), classes[cols].tolist()))
    spare = int(classes.max()) + 1
    for g in found.tolist():
        if g not in names:
            names[g], spare = spare, spare + 1
    return np.array([names[g] for g in groups.tolist()], dtype=np.int64)


def consensus(labelings: Sequence[np.ndarray], reference: np.ndarray, max_atoms: int = 2000
              ) -> tuple[np.ndarray, str]:
    """``(labels, why)``: the consensus of ``labelings`` (each an ``[N]`` array, images in one order) with as
    many groups as ``reference`` has classes, numbered like it (see the module's text)."""
    k = len(np.unique(reference))
    rows, inverse, counts = atoms(labelings)
    order = np.lexsort((np.arange(len(counts)), -counts))  # largest first, ties in row order
    core = np.sort(order[:max_atoms])
    core_groups = average_linkage(1 - co_association(rows[core], rows[core]), counts[core], k)
    groups = join_rest(rows, counts, core, core_groups, int(core_groups.max()) + 1)[inverse]
    labels = number_like(groups, np.asarray(reference))
    moved = float((labels != reference).mean())
    joined = int(counts.sum() - counts[core].sum())
    why = (f"the consensus of {len(labelings)} clusterings (co-association, average linkage over {len(rows)} "
           f"distinct label tuples{f', the {joined} images of the smallest joined afterwards' if joined else ''}) "
           f"in {len(np.unique(labels))} groups; {moved:.1%} of the images differ from the labels the final model "
           "was trained on")
    return labels, why
