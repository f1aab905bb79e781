"""Where a long-tailed run's NMI is lost, from a finished ``bench_discovery.py --keep`` folder.

For every run folder (``SET-SETTING-sS`` with ``final/labels.csv``) beside its ``data-SET/truth.csv`` it prints
the final labels' NMI against the truth and:

* ``best_merge``: the best NMI any merging of the final groups reaches, merges chosen *with the truth*
  (greedy: the merge that raises NMI most, until none does), and its group count: an upper bound for every
  level of any category tree over these leaves;
* ``tiny_tail``: the NMI of the truth itself once every class under 5 images is given to the largest class
  (what a clustering that cannot find a class of a few images loses at most);
* the consensus of the run's clusterings (``iter-*/labels.csv``, the function the loop calls) cut at other
  group counts than the loop's: one or two fewer, one more, the true K, and the count after which the
  average-linkage merge distance jumps most (``lifetime``, Fred & Jain 2005);
* ``over20`` / ``over30``: k-means into 20 / 30 groups on the last iteration's features, then merged while the
  modularity (resolution 1) of their 10-nearest-neighbour graph rises: over-segment and merge without labels.

Then the medians per set. Usage (docs/discovery.md, "Where the long tail's NMI is lost"):

    python tests/bench/bench_discovery.py --sets archive-lt50,texture25-lt50 --seeds 0,1,2 --keep --out OUT
    python tests/bench/bench_leaves.py OUT
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

TINY = 5  # classes under this many images count as the tail a clustering cannot find


def compact(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1]


def best_merge(labels: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """The NMI of the truth-guided greedy merging of ``labels``' groups, and its group count."""
    from ldpo.common.numerics.metrics import nmi

    labels, best = compact(labels), nmi(labels, truth)
    while labels.max() > 0:
        found = None
        for a in range(labels.max() + 1):
            for b in range(a + 1, labels.max() + 1):
                merged = compact(np.where(labels == b, a, labels))
                score = nmi(merged, truth)
                if score > best + 1e-9:
                    best, found = score, merged
        if found is None:
            break
        labels = found
    return best, int(labels.max()) + 1


def tiny_tail(truth: np.ndarray) -> float:
    from ldpo.common.numerics.metrics import nmi

    classes = compact(truth)
    sizes = np.bincount(classes)
    return nmi(np.where(sizes[classes] < TINY, int(np.argmax(sizes)), classes), truth)


def merge_heights(distance: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The merge distances of weighted average linkage, in merge order (the order of
    ``ldpo.common.loop.consensus.average_linkage``)."""
    n = len(sizes)
    d = np.array(distance, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    weight = np.asarray(sizes, dtype=np.float64).copy()
    heights = []
    for _ in range(n - 1):
        i, j = divmod(int(np.argmin(d)), n)
        i, j = min(i, j), max(i, j)
        heights.append(d[i, j])
        merged = (weight[i] * d[i] + weight[j] * d[j]) / (weight[i] + weight[j])
        d[i], d[:, i] = merged, merged
        d[i, i] = np.inf
        d[j], d[:, j] = np.inf, np.inf
        weight[i] += weight[j]
    return np.array(heights)


def consensus_cut(labelings: list[np.ndarray], k: int) -> np.ndarray:
    from ldpo.common.loop.consensus import atoms, average_linkage, co_association

    rows, inverse, counts = atoms(labelings)
    return average_linkage(1 - co_association(rows, rows), counts, k)[inverse]


def lifetime_k(labelings: list[np.ndarray]) -> int:
    """The group count (at least 2) whose average-linkage level lasts longest before the next merge."""
    from ldpo.common.loop.consensus import atoms, co_association

    rows, _, counts = atoms(labelings)
    heights = merge_heights(1 - co_association(rows, rows), counts)
    n = len(rows)
    lives = {k: heights[n - k] - heights[n - k - 1] for k in range(2, n)}
    return max(lives, key=lambda k: (lives[k], -k)) if lives else n


def modularity_merge(adjacency, labels: np.ndarray, resolution: float = 1.0) -> np.ndarray:
    """``labels``' groups merged two at a time while the graph's modularity rises (the largest gain first)."""
    from scipy import sparse

    labels = compact(labels)
    members = sparse.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
    edges = (members.T @ adjacency @ members).toarray()
    total = edges.sum()
    while len(edges) > 1:
        degree = edges.sum(axis=1)
        gain = edges / total - resolution * np.outer(degree, degree) / total ** 2
        np.fill_diagonal(gain, -np.inf)
        a, b = divmod(int(np.argmax(gain)), len(edges))
        if gain[a, b] <= 0:
            break
        a, b = min(a, b), max(a, b)
        edges[a] += edges[b]
        edges[:, a] += edges[:, b]
        edges = np.delete(np.delete(edges, b, axis=0), b, axis=1)
        labels[labels == b] = a
        labels[labels > b] -= 1
    return labels


def read_features(path: Path, ids: list[str]) -> np.ndarray:
    from ldpo.common.files.stores import open_store

    with open_store(str(path)) as store:
        row = {ident: i for i, ident in enumerate(store.ids)}
        x = np.concatenate([block for _, _, block in store.batches("features", 8192)])
    return x[[row[i] for i in ids]]


def over_segmented(x: np.ndarray, truth: np.ndarray, counts: tuple[int, ...], seed: int) -> dict[int, float]:
    """Per group count: the NMI of k-means into that many groups merged by :func:`modularity_merge` (one graph)."""
    import networkx as nx
    from sklearn.cluster import KMeans

    from ldpo.common.numerics.features import l2_normalize
    from ldpo.common.numerics.graph import NEIGHBOURS, neighbour_graph
    from ldpo.common.numerics.metrics import nmi

    centred = l2_normalize((x - x.mean(axis=0)).astype(np.float32))
    graph = neighbour_graph(x, NEIGHBOURS, "cpu", seed)
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=range(len(x)), weight="weight").tocsr()
    return {groups: nmi(modularity_merge(adjacency, KMeans(groups, n_init=4, random_state=seed).fit_predict(centred)),
                        truth) for groups in counts}


def one_run(work: Path, truth_path: Path) -> dict:
    from ldpo.common.files.labels import align, read_labels
    from ldpo.common.numerics.metrics import nmi

    t = read_labels(truth_path)
    final = align(read_labels(work / "final" / "labels.csv"), t.ids, str(truth_path))
    iterations = sorted(work.glob("iter-*/labels.csv"))
    labelings = [align(read_labels(p), t.ids, str(truth_path)) for p in iterations]
    k = len(np.unique(labelings[-2] if len(labelings) > 1 else labelings[-1]))
    merged, merged_k = best_merge(final, t.labels)
    out = {"final": nmi(final, t.labels), "best_merge": merged, "best_merge_k": merged_k,
           "tiny_tail": tiny_tail(t.labels)}
    for name, count in (("cut-2", k - 2), ("cut-1", k - 1), ("cut+1", k + 1), ("cut_true_k", len(np.unique(t.labels))),
                        ("cut_lifetime", lifetime_k(labelings))):
        out[name] = nmi(consensus_cut(labelings, max(count, 1)), t.labels)
    x = read_features(iterations[-1].parent / "features.h5", t.ids)
    for groups, score in over_segmented(x, t.labels, (20, 30), seed=0).items():
        out[f"over{groups}"] = score
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a bench_discovery.py --keep --out folder")
    args = parser.parse_args(argv)
    per_set: dict[str, list[dict]] = {}
    for work in sorted(args.out.glob("*-s[0-9]*")):
        if not (work / "final" / "labels.csv").exists():
            continue
        name = work.name.rsplit("-", 2)[0]
        result = one_run(work, args.out / f"data-{name}" / "truth.csv")
        per_set.setdefault(name, []).append(result)
        print(work.name + " " + " ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                                         for key, value in result.items()), flush=True)
    if not per_set:
        print(f"{args.out}: no finished run folders with final/labels.csv (run bench_discovery.py --keep)",
              file=sys.stderr)
        return 2
    print("\nmedians per set; up/down: runs above/below the final labels")
    for name, results in per_set.items():
        cells = []
        for key in results[0]:
            median = statistics.median(r[key] for r in results)
            updown = ""
            if key not in ("final", "best_merge_k", "tiny_tail"):
                up = sum(r[key] > r["final"] + 1e-9 for r in results)
                down = sum(r[key] < r["final"] - 1e-9 for r in results)
                updown = f" ({up}/{down})"
            cells.append(f"{key}={median:.3f}{updown}")
        print(f"{name}: " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
