"""The nearest-neighbour graph of feature rows, and how well a partition follows it: shared by ``cluster --k
auto`` (its communities choose K) and ``hierarchy --signals`` (each tree level's modularity)."""

from __future__ import annotations

import numpy as np

from .features import l2_normalize, nearest_neighbours

#: neighbours per row of the graph (see stages/cluster/auto_k.py for how it was chosen)
NEIGHBOURS = 10


def neighbour_graph(x: np.ndarray, neighbours: int, device: str = "cpu", seed: int = 0):
    """The ``neighbours``-nearest-neighbour graph of rows ``x`` (centred, L2-normalized, cosine), as a networkx
    graph whose edge weight is 2 where each row is among the other's neighbours, else 1."""
    import networkx as nx

    centred = l2_normalize(x - x.mean(axis=0, dtype=np.float64).astype(np.float32))
    nb = nearest_neighbours(centred, neighbours, device, seed=seed)
    edges: dict[tuple[int, int], int] = {}
    for i, row in enumerate(nb.tolist()):
        for j in row:
            key = (i, j) if i < j else (j, i)
            edges[key] = edges.get(key, 0) + 1
    graph = nx.Graph()
    graph.add_nodes_from(range(len(x)))
    graph.add_weighted_edges_from((i, j, w) for (i, j), w in edges.items())
    return graph


def partition_modularity(graph, labels: np.ndarray, resolution: float = 1.0) -> float:
    """Modularity of the partition ``labels`` (one per graph node) of ``graph``."""
    import networkx as nx

    groups = [set(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)]
    return float(nx.community.modularity(graph, groups, weight="weight", resolution=resolution))
