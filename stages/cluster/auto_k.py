"""``cluster --k auto``: how many categories, from the data alone.

The recipe of graph clustering where the number and sizes of groups are unknown and very uneven (PhenoGraph,
Levine et al. 2015, for rare cell populations; the community count of a k-nearest-neighbour graph): every row
is linked to its ``neighbours`` nearest rows (cosine, faiss, in the centred and L2-normalized features that
scan's heads see), and Louvain's modularity optimization (networkx, seeded) splits that graph into
communities. Modularity compares each community's internal links with what its rows' degrees give by chance,
so sizes are free: a community of 300 rows and one of 20 are found alike, where k-means' and SCAN's balance
terms would split the first or swallow the second. At the usual resolution (1) modularity merges small
communities into neighbours (its resolution limit, Fortunato & Barthélemy 2007): resolution 2 (Reichardt &
Bornholdt's gamma) keeps them. K is the number of communities of
at least :data:`MIN_COMMUNITY` rows (smaller ones are a few stray rows, not a category) and their sizes are
the size distribution the clustering's balance terms then aim at (``--size-prior auto``).

Why not the alternatives (see docs/discovery.md for the figures): the stability of k-means across seeds
favours K = 2; RIM's occupied clusters depend on its weight penalty, which has to be chosen per K range;
silhouette on these features falls with K on every set. Even so a class of two or three images is not
found on its own; the target is K within ±30 %, which the tail's smallest classes do not decide. Louvain also
cuts a large homogeneous category in two where the cut is thin (modularity rewards communities of similar
link totals), so the communities' sizes are an estimate of the size distribution, not the categories.

Memory: the graph is built on at most ``max_rows`` rows (a seeded sample beyond), so it does not grow with N.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...common.numerics.graph import NEIGHBOURS as GRAPH_NEIGHBOURS
from ...common.numerics.graph import neighbour_graph

log = logging.getLogger("ldpo")

#: communities smaller than this are stray rows, not a category
MIN_COMMUNITY = 3
#: K is estimated on at most this many rows (a seeded sample of a larger store)
MAX_ROWS = 20000
#: neighbours per row and Louvain's resolution: chosen together on five sets of three kinds (textures R = 50 and
#: 100, archive phantoms R = 50 and balanced, textures balanced; docs/discovery.md), the only pair of the grid
#: (5, 10, 15 neighbours x resolution 1, 1.5, 2, 3) that put every set within ±30 % of its true K but for
#: 15 x 2 and 10 x 1.5; 10 x 2 is the middle of them
NEIGHBOURS = GRAPH_NEIGHBOURS
RESOLUTION = 2.0


@dataclass(frozen=True)
class Estimate:
    k: int
    sizes: list[int]  # the communities' sizes, largest first (those counted)
    strays: int  # rows in communities too small to count
    modularity: float
    rows: int
    neighbours: int

    def why(self) -> str:
        return (f"K={self.k}: Louvain communities of the {self.neighbours}-nearest-neighbour graph of {self.rows} "
                f"rows (modularity {self.modularity:.3f} at resolution {RESOLUTION:g}), sizes {'/'.join(map(str, self.sizes))}"
                + (f", {self.strays} rows in communities under {MIN_COMMUNITY} left out" if self.strays else ""))


def estimate_k(x: np.ndarray, seed: int = 0, device: str = "cpu", neighbours: int = NEIGHBOURS,
               resolution: float = RESOLUTION, max_rows: int = MAX_ROWS) -> Estimate:
    """The number of categories in feature rows ``x`` (see the module doc)."""
    import networkx as nx

    x = np.asarray(x, dtype=np.float32)
    if len(x) > max_rows:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))]
    n = len(x)
    if n < 2 * MIN_COMMUNITY:
        return Estimate(1, [n], 0, 0.0, n, 0)
    count = min(neighbours, n - 1)
    graph = neighbour_graph(x, count, device, seed)
    communities = nx.community.louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
    modularity = nx.community.modularity(graph, communities, weight="weight", resolution=resolution)
    sizes = sorted((len(c) for c in communities), reverse=True)
    kept = [s for s in sizes if s >= MIN_COMMUNITY]
    estimate = Estimate(max(1, len(kept)), kept or [n], n - sum(kept), float(modularity), n, count)
    log.info("cluster --k auto: %s", estimate.why())
    return estimate
