"""Feature-matrix helpers shared by ``cluster`` and ``encode``: PCA, L2, faiss k-means, nearest centroid."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("ldpo")


def l2_normalize(x: np.ndarray, eps: float = 1e-12, inplace: bool = False, batch: int = 65536) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero).

    ``inplace=True`` overwrites a float32 ``x`` block by block, so a large matrix is
    not copied.
    """
    if not inplace:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    if x.dtype != np.float32:
        raise ValueError(f"l2_normalize(inplace=True) needs float32, got {x.dtype}")
    for lo in range(0, len(x), batch):
        block = x[lo:lo + batch]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), eps)
    return x


class PCA:
    """Randomized PCA (scikit-learn) with optional whitening, applied chunk by chunk.

    faiss's ``PCAMatrix`` is not used: 141 s against 8 s for 20k x 4096 -> 256 here.
    """

    def __init__(self, dim: int, whiten: bool = False, seed: int = 0):
        self.dim, self.whiten, self.seed = dim, whiten, seed
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None  # [dim, D]
        self.scale: np.ndarray | None = None  # [dim]

    def fit(self, x: np.ndarray) -> "PCA":
        from sklearn.decomposition import PCA as SkPCA

        n, d = x.shape
        dim = min(self.dim, n, d)
        if dim < self.dim:
            log.info("PCA: %d dimensions asked, %d possible with %d x %d; using %d", self.dim, min(n, d), n, d, dim)
        pca = SkPCA(n_components=dim, svd_solver="randomized" if dim < min(n, d) else "full",
                    random_state=self.seed)
        pca.fit(np.asarray(x, dtype=np.float32))
        self.dim = dim
        self.mean = pca.mean_.astype(np.float32)
        self.components = pca.components_.astype(np.float32)
        var = pca.explained_variance_.astype(np.float32)
        self.scale = 1.0 / np.sqrt(np.maximum(var, 1e-12)) if self.whiten else np.ones(dim, np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T
        return (y * self.scale).astype(np.float32)

    def state(self) -> dict:
        return {"dim": self.dim, "whiten": self.whiten, "mean": self.mean,
                "components": self.components, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict) -> "PCA":
        pca = cls(int(state["dim"]), bool(state["whiten"]))
        pca.mean, pca.components, pca.scale = (np.asarray(state[k], np.float32) for k in ("mean", "components", "scale"))
        return pca


def use_gpu(device: str) -> bool:
    """Whether faiss should run on the GPU for ``device`` (``cpu``/``cuda``, already resolved)."""
    import faiss

    return device == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


#: k-means++ seeds from at most this many rows per cluster (a seeded sample), so seeding
#: costs O(sample x k x D) whatever N is.
KMEANS_PP_ROWS_PER_CLUSTER = 64
KMEANS_PP_MIN_ROWS = 5000


def kmeans_pp_seeds(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ initial centroids (scikit-learn's greedy variant) from a seeded row sample."""
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    n = len(x)
    size = min(n, max(KMEANS_PP_MIN_ROWS, KMEANS_PP_ROWS_PER_CLUSTER * k))
    sample = x if size == n else x[np.sort(rng.choice(n, size, replace=False))]
    centres, _ = kmeans_plusplus(sample, k, random_state=int(rng.integers(2**31 - 1)))
    return np.ascontiguousarray(centres, dtype=np.float32)


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, device: str = "cpu",
           spherical: bool = False, nredo: int = 1, init: str = "kmeans++") -> tuple[np.ndarray, np.ndarray, float]:
    """faiss k-means, best of ``nredo`` starts: ``(centroids [k, D], assignment [N], loss)``.

    Each start seeds its centroids by k-means++ on a sample (``init="kmeans++"``) or
    takes faiss's random rows (``init="random"``), runs ``niter`` Lloyd iterations, and
    the start with the lowest loss (sum of squared distances) wins. Start r uses seed
    ``seed * 1000 + r``: the same seed gives the same labels on a given device. faiss
    re-seeds empty clusters by splitting large ones; the loss is read from
    ``iteration_stats`` (the old ``obj`` attribute is gone).
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if k > n:
        raise ValueError(f"k-means: k={k} is more than the {n} points")
    best = None
    for r in range(max(1, nredo)):
        start_seed = seed * 1000 + r
        km = faiss.Kmeans(d, k, niter=niter, seed=start_seed, spherical=spherical, verbose=False,
                          gpu=use_gpu(device), min_points_per_centroid=1,
                          max_points_per_centroid=max(256, (n + k - 1) // k + 1))
        km.train(x, init_centroids=kmeans_pp_seeds(x, k, start_seed) if init == "kmeans++" else None)
        dist, assign = km.index.search(x, 1)
        loss = float(dist.sum())
        log.debug("k-means start %d/%d: loss %.6g", r + 1, nredo, loss)
        if best is None or loss < best[2]:
            best = (km.centroids.copy(), assign.ravel().astype(np.int64), loss)
    return best


class NearestCentroid:
    """Each row's nearest centroid (squared L2), for rows arriving block by block: a faiss
    ``IndexFlatL2`` over the centroids (on the GPU when ``device`` is cuda and faiss has one),
    the same search ``kmeans`` ends with."""

    def __init__(self, centroids: np.ndarray, device: str = "cpu"):
        import faiss

        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        index = faiss.IndexFlatL2(centroids.shape[1])
        if use_gpu(device):
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(centroids)
        self.index = index

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(cluster [B] int64, squared distance [B] float32)``."""
        dist, nearest = self.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
        return nearest[:, 0].astype(np.int64), dist[:, 0]


#: up to this many rows, ``nearest_neighbours`` searches exactly (faiss ``IndexFlatIP``); beyond,
#: an inverted-file index (``IndexIVFFlat``, sqrt-sized lists, 16 probed) keeps the search
#: sub-quadratic (see ``tests/bench/bench_scan.py --knn-rows`` for the times either side).
EXACT_KNN_MAX_ROWS = 100_000


def nearest_neighbours(x: np.ndarray, k: int, device: str = "cpu", exact_max_rows: int = EXACT_KNN_MAX_ROWS,
                       seed: int = 0, batch: int = 16384) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity, ``[N, k]`` int64, nearest first.

    ``x`` is L2-normalized here (a copy). Rows are searched ``batch`` at a time, so the
    distance matrix never exceeds ``batch x N``. A row's own index is removed from its list
    (duplicated rows may list each other instead).
    """
    import faiss

    x = l2_normalize(np.ascontiguousarray(x, dtype=np.float32))
    n, d = x.shape
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"nearest neighbours need at least 2 rows, got {n}")
    if n <= exact_max_rows:
        index = faiss.IndexFlatIP(d)
    else:
        lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * lists), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = 16
        log.info("nearest neighbours: inverted-file index, %d lists, %d probed (%d rows > %d)", lists,
                 index.nprobe, n, exact_max_rows)
    if use_gpu(device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    out = np.empty((n, k), dtype=np.int64)
    for lo in range(0, n, batch):
        _, found = index.search(x[lo:lo + batch], k + 1)
        for row, hits in enumerate(found, start=lo):
            hits = hits[(hits != row) & (hits >= 0)][:k]
            if len(hits) < k:  # an approximate search found too few: pad with the nearest found
                hits = np.concatenate([hits, np.full(k - len(hits), hits[0] if len(hits) else row)])
            out[row] = hits
    return out
