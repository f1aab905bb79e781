"""The consensus of the loop's clusterings (ldpo.common.loop.consensus, ``ldpo-loop.sh --keep consensus``)."""

from __future__ import annotations

import numpy as np
import pytest

from ldpo.common.loop.consensus import average_linkage, consensus, number_like
from ldpo.common.numerics.metrics import nmi


def long_tail(seed: int = 0) -> np.ndarray:
    """10 classes, sizes falling from 120 to 3 (R = 40), shuffled."""
    sizes = np.round(120 * (1 / 40) ** (np.arange(10) / 9)).astype(int)
    truth = np.repeat(np.arange(10), sizes)
    return np.random.default_rng(seed).permutation(truth)


def noisy_copy(truth: np.ndarray, rng: np.random.Generator, moved: float, split_head: bool) -> np.ndarray:
    """A clustering as the loop's iterations make them: a share of the images in a wrong cluster, and
    sometimes the largest class cut in two."""
    labels = truth.copy()
    wrong = rng.random(len(truth)) < moved
    labels[wrong] = rng.integers(0, truth.max() + 1, int(wrong.sum()))
    if split_head:
        head = np.flatnonzero(labels == 0)
        labels[head[rng.random(len(head)) < 0.5]] = truth.max() + 1
    return rng.permutation(labels.max() + 1)[labels]  # cluster numbers mean nothing from one to the next


def test_the_consensus_of_noisy_clusterings_beats_each_of_them_on_a_long_tail():
    """Six noisy clusterings of a long-tailed set (15-25 % of the images misplaced each time, the head cut in
    two in half of them): the consensus, with the reference's K, is closer to the truth than every one of
    them, and keeps the tail's classes (no group of the truth's smallest class is lost)."""
    truth = long_tail()
    rng = np.random.default_rng(1)
    labelings = [noisy_copy(truth, rng, moved, split) for moved, split in
                 ((0.25, True), (0.15, False), (0.2, True), (0.25, False), (0.15, True), (0.2, False))]
    reference = labelings[-2]
    found, why = consensus(labelings, reference)
    assert len(np.unique(found)) == len(np.unique(reference))
    scores = [nmi(truth, labels) for labels in labelings]
    assert nmi(truth, found) > max(scores) + 0.05, (nmi(truth, found), scores)
    smallest = truth == 9
    assert np.bincount(found[smallest]).max() >= 2  # its 3 images stay together
    assert "6 clusterings" in why and "differ from the labels the final model was trained on" in why


def test_identical_clusterings_give_their_own_labels_with_the_references_numbers():
    truth = long_tail()
    relabelled = (truth + 3) % 10  # the same partition under other numbers
    found, why = consensus([relabelled, relabelled, relabelled], truth)
    assert found.tolist() == truth.tolist()
    assert "0.0% of the images differ" in why


def test_a_bounded_number_of_atoms_still_places_every_image():
    """With fewer atoms linked than there are (max_atoms), the rest join the group they agree with most:
    every image gets a group, the result stays close to the unbounded one."""
    truth = long_tail(2)
    rng = np.random.default_rng(3)
    labelings = [noisy_copy(truth, rng, 0.2, i % 2 == 0) for i in range(5)]
    full, _ = consensus(labelings, labelings[-1])
    bounded, why = consensus(labelings, labelings[-1], max_atoms=40)
    assert bounded.shape == truth.shape and len(np.unique(bounded)) == len(np.unique(labelings[-1]))
    assert "joined afterwards" in why
    assert nmi(truth, bounded) > nmi(truth, labelings[-1])
    assert nmi(full, bounded) > 0.8


def test_the_consensus_is_deterministic_and_weighted_by_atom_size():
    truth = long_tail(4)
    rng = np.random.default_rng(5)
    labelings = [noisy_copy(truth, rng, 0.2, True) for _ in range(4)]
    assert consensus(labelings, labelings[-1])[0].tolist() == consensus(labelings, labelings[-1])[0].tolist()
    # three points: a heavy pair close together, a light one far; weights decide what the average sees
    distance = np.array([[0, 0.1, 0.9], [0.1, 0, 0.5], [0.9, 0.5, 0]])
    assert average_linkage(distance, np.array([1, 1, 1]), 2).tolist() == [0, 0, 1]
    assert average_linkage(distance, np.array([1, 1, 1]), 5).tolist() == [0, 1, 2]


@pytest.mark.parametrize("groups, reference, expected", [
    ([5, 5, 7, 7, 9], [2, 2, 0, 0, 4], [2, 2, 0, 0, 4]),
    ([1, 1, 2, 2, 3], [0, 0, 0, 1, 1], [0, 0, 1, 1, 2]),  # a group more than the reference: a new number after
])
def test_groups_take_the_reference_numbers_by_their_overlap(groups, reference, expected):
    assert number_like(np.array(groups), np.array(reference)).tolist() == expected


def bench_leaves():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_leaves", "tests/bench/bench_leaves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_leaves_bounds_and_label_free_merges():
    """The figures behind docs/discovery.md's "Where the long tail's NMI is lost": the truth-guided merge undoes
    splits and cannot undo mixtures, the tiny-tail bound gives the tail away, the lifetime cut finds the count the
    clusterings agree on, and the modularity merge joins the halves of a graph's communities."""
    from scipy import sparse

    leaves = bench_leaves()
    truth = np.repeat(np.arange(4), [40, 30, 20, 10])
    split = np.where((truth == 0) & (np.arange(100) % 2 == 0), 4, truth)  # class 0 cut in two
    assert leaves.best_merge(split, truth) == (pytest.approx(1.0), 4)
    mixed = np.where(np.arange(100) % 10 == 0, (truth + 1) % 4, truth)  # a tenth of each class elsewhere
    score, _ = leaves.best_merge(mixed, truth)
    assert nmi(mixed, truth) <= score < 1.0
    tail = np.repeat(np.arange(4), [50, 40, 4, 2])
    assert leaves.tiny_tail(tail) < 1.0 and leaves.tiny_tail(truth) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    labelings = [np.where(rng.random(100) < 0.05, rng.integers(0, 4, 100), truth) for _ in range(6)]
    assert leaves.lifetime_k(labelings) == 4
    assert nmi(leaves.consensus_cut(labelings, 4), truth) > 0.9
    # two cliques of 10 nodes joined by one edge, given as four groups (each clique cut in two)
    block = np.ones((10, 10)) - np.eye(10)
    adjacency = sparse.lil_matrix(sparse.block_diag([block, block]))
    adjacency[0, 10] = adjacency[10, 0] = 1
    quarters = np.repeat(np.arange(4), 5)
    assert np.array_equal(leaves.modularity_merge(adjacency.tocsr(), quarters), np.repeat([0, 1], 10))
