"""``cluster``: feature store → pseudo-labels, by k-means, over-segmented k-means + RIM, or SCAN.

``--method scan`` (the loop's default): neighbour-consistent heads on the fixed features,
each started from k-means; see ``scan.py`` for the recipe and why. It writes a
``confidence`` column (each row's probability of its cluster) beside the labels.

Preprocessing follows DeepCluster: optional PCA (``--pca D``, optional ``--whiten``),
then row L2 normalization (on unless ``--no-l2``).

``--method kmeans``: faiss k-means (GPU when present). Clusters left empty after the
final assignment are reported and the labels renumbered 0..K'-1.

Memory: a store of more rows than ``--train-rows`` (default max(256·k, as many rows as fit
in 128 MiB)) is clustered the way faiss recipes do for large N: PCA and k-means learn from
a seeded sample of that many rows, then every row is read block by block and given its
nearest centroid. Memory then stays O(sample x D) instead of O(N x D), so it does not grow
with the archive (256 rows per cluster is faiss's own cap on what k-means needs). ``--method
scan`` does the same: its heads learn from the sample, then give every row its cluster.
Stores up to that size are clustered whole, as before. RIM and ``--balance sinkhorn`` always
hold every row.

``--method rim`` (Regularized Information Maximization, Gomes et al. 2010, as used by
Wang et al. 2017): k-means with ``--k`` clusters (over-segmentation; capped at N/4 for
small N) initializes a multilogit regression p(c|f) = softmax(W f + b). RIM maximizes

    I(c; f) - penalty = H(mean_i p(c|f_i)) - mean_i H(p(c|f_i)) - lam * v * sum_k |w_k|^2

with v = mean_i |f_i - mean(f)|^2, the features' total variance. The mutual information
is a mean over the N rows and the penalty does not grow with N, so ``--lam`` means the
same at any N; the factor v makes it invariant to the features' scale (logits W f stay
the same when f is multiplied by a and W divided by a). The bias b is not penalized.
The penalty grows with the number of live clusters while the information gain of one
more cluster shrinks, so the lambda that fits depends on how many groups the data
hold: the default suits a few to tens of groups, and hundreds of expected categories need a
lambda about a hundred times smaller (docs/measurements.md, "RIM's lambda"). W starts from the k-means centroids at the temperature
that minimizes the objective; L-BFGS optimizes it, full batch, with the logits computed
in chunks so memory stays O(chunk x k). Labels are argmax p(c|f); clusters no row
chooses are pruned and the rest renumbered 0..K'-1, K' printed.

Why this front module is about 630 lines: it holds the command and the four methods' one path from
features to labels (k-means, RIM, agglomerative, Louvain K); SCAN's heads and the automatic K are
in their own modules beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...common.cli import CommonOptions, Tool, opt, positional, progress, resolve_device
from ...common.errors import InputError
from ...common.numerics.features import PCA, NearestCentroid, kmeans, l2_normalize
from ...common.files.labels import write_labels
from ...common.files.plots import pyplot, save_png
from ...common.files.stores import atomic_path, open_store

from . import scan as scan_heads
from .scan import ScanSettings

log = logging.getLogger("ldpo")

#: what to run first when a store holds something other than global features
NEEDS = {"local": "run `encode` first (it turns local descriptors into one vector per image)",
         "images": "run `featurize` first (it turns images into features)"}
RIM_MIN_POINTS_PER_CLUSTER = 4  # over-segmentation cap: k <= N / 4
#: k-means learns from at most max(TRAIN_ROWS_PER_CLUSTER x k, TRAIN_BYTES of float32 rows) by default
TRAIN_ROWS_PER_CLUSTER = 256
TRAIN_BYTES = 128 << 20


@dataclass(kw_only=True)
class Options(CommonOptions):
    features: str = positional("feature store (.h5/.hdf5/.zarr) holding features [N,D]", role="input")
    out: str = opt("output labels CSV (id,label; '-' = stdout)", role="output")
    method: str = opt("algorithm: k-means, over-segmented k-means + RIM, or SCAN's neighbour-consistent heads "
                      "(writes a confidence column)", "kmeans", choices=["kmeans", "rim", "scan"])
    k: str = opt("clusters (kmeans, scan), or the over-segmentation RIM starts from (the paper: 1000); auto = "
                 "as many as the communities of the rows' nearest-neighbour graph (kmeans, scan; see auto_k.py), "
                 "the choice and why in SUMMARY.k.json and on stderr", "100")
    pca: int = opt("reduce to this many dimensions with PCA first (0 = no PCA)", 0, min=0)
    whiten: bool = opt("whiten after PCA", False)
    no_l2: bool = opt("skip the row L2 normalization", False)
    niter: int = opt("k-means iterations", 20, min=1)
    nredo: int = opt("k-means starts; the one with the lowest loss wins (measured: 3 beats 1 on 50 close "
                     "blobs, 5 gains nothing more)", 3, min=1)
    init: str = opt("k-means seeding", "kmeans++", choices=["kmeans++", "random"])
    balance: str = opt("reassign k-means clusters to equal sizes with Sinkhorn-Knopp (SeLa): none | sinkhorn",
                       "none", choices=["none", "sinkhorn"])
    balance_temp: float = opt("Sinkhorn temperature, relative to the mean squared distance to the nearest "
                              "centroid (smaller: assignments follow the distances more)", 0.1, above=0)
    lam: float = opt("RIM weight penalty: larger merges more clusters (about 1e-5 for hundreds)", 1e-3, min=0)
    rim_iter: int = opt("RIM L-BFGS iterations at most", 200, min=1)
    neighbours: int = opt("scan: nearest neighbours mined per row (cosine, faiss)", 20, min=1)
    heads: int = opt("scan: clustering heads trained at once; the one with the lowest loss is kept", 5, min=1)
    scan_steps: int = opt("scan: training steps (mini-batches of 256 rows and a neighbour each)", 1000, min=1)
    entropy_weight: float = opt("scan: weight of the entropy of the mean prediction (larger: more even clusters; "
                                "SCAN's 5 splits large categories of imbalanced data)", 2.0, min=0)
    scan_init: str = opt("scan: how each head starts: random, or its own k-means solution (nearest centroid)",
                         "kmeans", choices=["random", "kmeans"])
    size_prior: str = opt("scan: the cluster sizes the balance term aims at: auto (with --k auto the sizes of the "
                          "graph's communities, else equal sizes), equal, or a labels CSV whose class sizes to follow "
                          "(the loop passes the previous iteration's labels under --k auto)", "auto")
    self_label: float = opt("scan: then train the kept head on rows at least this confident (0 = off; SCAN: 0.99)",
                            0.0, min=0, max=1)
    batch_size: int = opt("rows read per batch", 8192, min=1, aliases=["--batch"])
    train_rows: int = opt("k-means (or scan's heads) and PCA learn from a seeded sample of this many rows when the "
                          "store has more, then every row is assigned block by block, so memory does not grow with "
                          "N (0 = max(256 x k, as many rows as fit in 128 MiB); RIM and --balance sinkhorn use "
                          "every row)", 0, min=0)
    summary: str = opt("write cluster sizes to SUMMARY.csv (cluster,size) and a size plot to SUMMARY.png "
                       "(a .csv/.png suffix on SUMMARY is dropped first)", "")


class ClusterTool(Tool):
    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        paths = [*summary_paths(opts.summary), k_choice_path(opts.summary)] if opts.summary else []
        extra = [("--summary", str(p)) for p in paths]
        return super().outputs(opts) + extra

    name = "cluster"
    description = ("Cluster a feature store into pseudo-labels (id,label CSV): faiss k-means, over-segmented "
                   "k-means refined by RIM (which chooses the cluster count K' itself), or SCAN's neighbour-consistent "
                   "heads (adds a confidence column). Logs K' and the loss on stderr.")
    example = ("cluster feats.h5 --out labels.csv --k 25\n"
               "cluster feats.h5 --out labels.csv --k 25 --method scan --neighbours 20 --heads 5\n"
               "cluster feats.h5 --out labels.csv --method rim --k 1000 --lam 1e-3 --pca 256 --summary sizes")
    Options = Options

    def main(self, opts: Options) -> int:
        if opts.whiten and not opts.pca:
            raise InputError("--whiten needs --pca D")
        settings = settings_from(opts)
        if settings.k == AUTO:
            if settings.method == "rim":
                raise InputError("--k auto: RIM chooses K itself; give it the over-segmentation it starts from")
            settings, found = choose_k(opts.features, settings, resolve_device(opts.device))
            if opts.size_prior == "auto":
                settings = with_prior(settings, found.sizes, "the communities' sizes")
            if opts.summary:
                write_k_choice(opts.summary, settings.k, found.why())
        if opts.size_prior not in ("auto", "equal"):
            settings = with_prior(settings, label_sizes(opts.size_prior), f"the class sizes of {opts.size_prior}")
        if opts.train_rows and not samples(settings):
            raise InputError(f"--train-rows {opts.train_rows}: only k-means and scan learn from a sample "
                             "(RIM and --balance sinkhorn use every row)")
        ids, labels, confidence = cluster_store(opts.features, settings, resolve_device(opts.device))
        extra = None if confidence is None else {"confidence": [f"{c:.4f}" for c in confidence.tolist()]}
        write_labels(opts.out, ids, labels, extra)
        if opts.summary:
            write_summary(opts.summary, labels)
        return 0


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What a clustering needs, as plain values (``cluster_store(path, Settings(k=10))`` from Python);
    the defaults are the command's."""
    method: str = "kmeans"
    k: int = 100
    pca: int = 0
    whiten: bool = False
    l2: bool = True
    niter: int = 20
    nredo: int = 3
    init: str = "kmeans++"
    balance: str = "none"
    balance_temp: float = 0.1
    lam: float = 1e-3
    rim_iter: int = 200
    scan: ScanSettings = field(default_factory=ScanSettings)
    batch_size: int = 8192
    train_rows: int = 0
    seed: int = 0


AUTO = 0  # Settings.k of --k auto


def parse_k(text: str) -> int:
    """``--k``: a whole number >= 1, or ``auto`` (:data:`AUTO`)."""
    if text.strip().lower() == "auto":
        return AUTO
    try:
        k = int(text)
    except ValueError:
        raise InputError(f"--k {text}: not a whole number or auto") from None
    if k < 1:
        raise InputError(f"--k {text}: must be at least 1, or auto")
    return k


def with_prior(s: Settings, sizes, what: str) -> Settings:
    """The settings with scan's balance term aiming at ``sizes`` (see ``scan.size_term``)."""
    from dataclasses import replace

    if s.method == "scan":
        shares = scan_heads.resample_sizes(sizes, s.k)
        log.info("scan: cluster sizes aim at %s (shares %.3f..%.3f)", what, shares[0], shares[-1])
    return replace(s, scan=replace(s.scan, prior=tuple(float(v) for v in sizes)))


def label_sizes(path: str) -> list[int]:
    """The class sizes of a labels CSV (``--size-prior FILE``)."""
    from ...common.files.labels import read_labels

    counts = np.bincount(read_labels(path).labels)
    return counts[counts > 0].tolist()


def choose_k(path: str, s: Settings, device: str):
    """``--k auto``: the settings with K from the data (:mod:`auto_k`, on a seeded sample of a large store) and the
    :class:`~.auto_k.Estimate` that chose it."""
    from dataclasses import replace

    from .auto_k import MAX_ROWS, estimate_k

    with open_store(path) as store:
        n, _ = check_store(store, path, 2)
        rows = min(n, MAX_ROWS)
        chosen = np.sort(np.random.default_rng(s.seed).choice(n, rows, replace=False)) if rows < n else np.arange(n)
        sample = read_sample(store, chosen, path, s.batch_size)
    found = estimate_k(apply_preprocess(sample, fit_pca(sample, s), s), s.seed, device)
    return replace(s, k=found.k), found


def write_k_choice(path: str, k: int, why: str) -> None:
    """SUMMARY.k.json: the K that --k auto chose and why (the loop's history and report show it)."""
    import json

    with atomic_path(k_choice_path(path)) as tmp:
        tmp.write_text(json.dumps({"k": k, "why": why}) + "\n")


def settings_from(opts: Options) -> Settings:
    scan = ScanSettings(neighbours=opts.neighbours, heads=opts.heads, steps=opts.scan_steps,
                        entropy_weight=opts.entropy_weight, self_label=opts.self_label, init=opts.scan_init)
    return Settings(method=opts.method, k=parse_k(opts.k), pca=opts.pca, whiten=opts.whiten, l2=not opts.no_l2,
                    niter=opts.niter, nredo=opts.nredo, init=opts.init, balance=opts.balance,
                    balance_temp=opts.balance_temp, lam=opts.lam, rim_iter=opts.rim_iter, scan=scan,
                    batch_size=opts.batch_size, train_rows=opts.train_rows, seed=opts.seed)


def cluster_store(path: str, s: Settings, device: str = "cpu"
                  ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """ids, labels 0..K'-1 and (scan only, else None) each row's confidence for a feature store."""
    min_rows = s.k if s.method == "kmeans" else 1
    n, d = feature_shape(path, min_rows)
    rows = train_rows(s, n, d)
    if rows < n and s.method == "scan":
        return sampled_scan(path, s, rows, device)
    if rows < n:
        return (*sampled_kmeans(path, s, rows, device), None)
    if s.method == "scan":
        return cluster_scan(path, s, device)
    return (*cluster_whole(path, s, device, min_rows), None)


def cluster_whole(path: str, s: Settings, device: str, min_rows: int) -> tuple[list[str], np.ndarray]:
    """ids and labels 0..K'-1, clustering the whole feature matrix held in memory."""
    ids, x = read_features(path, s.batch_size, min_rows)
    x = preprocess(x, s)
    if s.method == "kmeans":
        centroids, assign, loss = kmeans(x, s.k, s.niter, s.seed, device, nredo=s.nredo, init=s.init)
        if s.balance == "sinkhorn":
            assign = sinkhorn_assign(x, centroids, s.balance_temp, device)
        labels = renumber(assign, s.k, "k-means")
        log.info("k-means: K'=%d clusters, loss %.6g (sum of squared distances)", labels.max() + 1, loss)
    else:
        labels, loss, mi = rim(x, s.k, s.lam, s.niter, s.rim_iter, s.seed, device, s.nredo)
        log.info("RIM: K'=%d clusters (from k=%d, lam=%g), loss %.6g, mutual information %.4f nats",
                 labels.max() + 1, min(s.k, rim_cap(len(x))), s.lam, loss, mi)
    return ids, labels


def cluster_scan(path: str, s: Settings, device: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, labels 0..K'-1 and each row's confidence, by SCAN heads (see ``scan.py``)."""
    ids, x = read_features(path, s.batch_size, max(s.k, 2),
                           "" if s.k >= 2 else "--method scan (each row's nearest neighbours)")
    if s.pca:
        x = apply_preprocess(x, fit_pca(x, s), s)
    assign, confidence, loss = scan_heads.scan(x, s.k, s.scan, s.seed, device)
    labels = renumber(assign, s.k, "scan")
    log.info("scan: K'=%d clusters, loss %.4f, median confidence %.3f", labels.max() + 1, loss,
             float(np.median(confidence)))
    return ids, labels, confidence


def sampled_scan(path: str, s: Settings, rows: int, device: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """scan for a store larger than ``rows``: PCA and the heads learn from a seeded sample of ``rows`` rows
    (neighbours mined inside it), then every row is read block by block and given the kept head's cluster."""
    with open_store(path) as store:
        n, sample, pca = learning_sample(store, path, s, rows, "scan")
        fitted = scan_heads.fit(apply_preprocess(sample, pca, s) if pca else sample, s.k, s.scan, s.seed, device)
        del sample
        assign, confidence = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
        batches = store.batches("features", s.batch_size)
        for lo, hi, block in progress(batches, desc="assigning", total=-(-n // s.batch_size)):
            check_finite(block, np.arange(lo, hi), store, path)
            assign[lo:hi], confidence[lo:hi] = fitted.assign(apply_preprocess(block, pca, s) if pca else block,
                                                             s.scan.chunk)
        ids = store.ids
    labels = renumber(assign, s.k, "scan")
    log.info("scan: K'=%d clusters, loss %.4f on the sample, median confidence %.3f", labels.max() + 1,
             fitted.loss, float(np.median(confidence)))
    return ids, labels, confidence


def samples(s: Settings) -> bool:
    """Whether this clustering may learn from a sample: k-means and scan, not RIM or Sinkhorn balancing."""
    return s.method in ("kmeans", "scan") and s.balance == "none"


def train_rows(s: Settings, n: int, d: int) -> int:
    """How many rows k-means learns from: ``n`` (all), or fewer for a large store (see the module doc)."""
    if not samples(s):
        return n
    cap = s.train_rows or max(TRAIN_ROWS_PER_CLUSTER * s.k, TRAIN_BYTES // (4 * max(d, 1)))
    return min(n, max(cap, s.k))


def check_store(store, path: str, min_rows: int, why: str = "") -> tuple[int, int]:
    """``(N, D)`` of a store that holds global features with at least ``min_rows`` rows (``why``: what
    needs them, else --k)."""
    kind = store.kind
    if kind in NEEDS:
        raise InputError(f"{path}: holds {kind}, not features: {NEEDS[kind]}")
    n, d = store.shape("features")
    if d == 0:
        raise InputError(f"{path}: its features have 0 dimensions")
    if n < max(min_rows, 1):
        if not n:
            raise InputError(f"{path}: no rows")
        raise InputError(f"{path}: {why} needs {min_rows} rows, the store has {n}" if why
                         else f"{path}: --k {min_rows} is more than the {n} rows")
    return n, d


def feature_shape(path: str, min_rows: int = 1) -> tuple[int, int]:
    with open_store(path) as store:
        return check_store(store, path, min_rows)


def check_finite(block: np.ndarray, rows: np.ndarray, store, path: str) -> None:
    """A NaN or infinite value is an input error naming the row and its id (``rows``: the block's store rows)."""
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        bad = int(rows[np.flatnonzero(~finite)[0]])
        raise InputError(f"{path}: row {bad} (id {store.ids[bad]!r}) has NaN or infinite features")


def read_features(path: str, batch: int, min_rows: int = 1, why: str = "") -> tuple[list[str], np.ndarray]:
    """ids and the whole ``features`` matrix as one float32 array, filled batch by batch."""
    with open_store(path) as store:
        n, d = check_store(store, path, min_rows, why)
        x = np.empty((n, d), dtype=np.float32)
        for lo, hi, block in progress(store.batches("features", batch), desc="reading", total=-(-n // batch)):
            check_finite(block, np.arange(lo, hi), store, path)
            x[lo:hi] = block
        ids = store.ids
    return ids, x


def preprocess(x: np.ndarray, s: Settings) -> np.ndarray:
    """PCA (optional, whitened optionally), then row L2 normalization (default on)."""
    return apply_preprocess(x, fit_pca(x, s), s)


def fit_pca(x: np.ndarray, s: Settings) -> PCA | None:
    if not s.pca:
        return None
    pca = PCA(s.pca, s.whiten, s.seed).fit(x)
    log.info("PCA to %d dimensions%s", pca.dim, " (whitened)" if s.whiten else "")
    return pca


def apply_preprocess(x: np.ndarray, pca: PCA | None, s: Settings) -> np.ndarray:
    """``pca`` (if any) applied batch by batch, then L2 normalization (in place on ``x`` without PCA)."""
    if pca is not None:
        y = np.empty((len(x), pca.dim), dtype=np.float32)
        for lo in range(0, len(x), s.batch_size):
            y[lo:lo + s.batch_size] = pca.transform(x[lo:lo + s.batch_size])
        x = y
    if s.l2:
        l2_normalize(x, inplace=True)
    return x


def sampled_kmeans(path: str, s: Settings, rows: int, device: str) -> tuple[list[str], np.ndarray]:
    """k-means for a store larger than ``rows``: PCA and k-means learn from a seeded sample of ``rows``
    rows, then every row is read block by block and given its nearest centroid. Returns the ids and
    labels 0..K'-1; logs the loss (sum of squared distances) over all rows."""
    with open_store(path) as store:
        n, sample, pca = learning_sample(store, path, s, rows, "k-means")
        centroids, _, _ = kmeans(apply_preprocess(sample, pca, s), s.k, s.niter, s.seed, device,
                                 nredo=s.nredo, init=s.init)
        del sample
        nearest = NearestCentroid(centroids, device)
        assign, loss = np.empty(n, dtype=np.int64), 0.0
        batches = store.batches("features", s.batch_size)
        for lo, hi, block in progress(batches, desc="assigning", total=-(-n // s.batch_size)):
            assign[lo:hi], dist = nearest(apply_preprocess(block, pca, s))
            loss += float(dist.sum(dtype=np.float64))
        ids = store.ids
    labels = renumber(assign, s.k, "k-means")
    log.info("k-means: K'=%d clusters, loss %.6g (sum of squared distances over all %d rows)", labels.max() + 1,
             loss, n)
    return ids, labels


def learning_sample(store, path: str, s: Settings, rows: int, what: str) -> tuple[int, np.ndarray, PCA | None]:
    """``(N, sample, PCA)``: the seeded sample of ``rows`` rows a large store's clustering learns from, and the
    PCA (if any) fitted on it."""
    n, _ = store.shape("features")
    chosen = np.sort(np.random.default_rng(s.seed).choice(n, rows, replace=False))
    sample = read_sample(store, chosen, path, s.batch_size)
    log.info("%s learns from %d of %d rows (a seeded sample), then assigns every row", what, rows, n)
    return n, sample, fit_pca(sample, s)


def read_sample(store, chosen: np.ndarray, path: str, batch: int) -> np.ndarray:
    """Rows ``chosen`` (sorted) of the features, gathered in one pass of sequential blocks (fast in
    both formats, unlike a point selection of many rows), checking every row is finite on the way."""
    n, d = store.shape("features")
    sample = np.empty((len(chosen), d), dtype=np.float32)
    for lo, hi, block in progress(store.batches("features", batch), desc="sampling", total=-(-n // batch)):
        check_finite(block, np.arange(lo, hi), store, path)
        first, last = np.searchsorted(chosen, [lo, hi])
        sample[first:last] = block[chosen[first:last] - lo]
    return sample


def renumber(assign: np.ndarray, k: int, what: str, expected: bool = False) -> np.ndarray:
    """Labels 0..K'-1 in the order of the original cluster numbers; report empty clusters
    (a warning, unless emptying them is the ``expected`` outcome, as in RIM)."""
    used, labels = np.unique(assign, return_inverse=True)
    if len(used) < k:
        report = log.info if expected else log.warning
        report("%s: %d of %d clusters ended empty; the rest renumbered 0..%d", what, k - len(used), k, len(used) - 1)
    return labels.astype(np.int64)


# -- balanced assignment -----------------------------------------------------------------

def sinkhorn_assign(x: np.ndarray, centroids: np.ndarray, temp: float, device: str, iters: int = 100,
                    chunk: int = 65536) -> np.ndarray:
    """Equal-size assignment (SeLa, Asano et al. 2020): argmax of the Sinkhorn-Knopp
    transport plan Q ∝ exp(-|x - c_k|² / (temp · mean nearest distance²)) with every
    row summing to 1/N and every cluster to 1/K, computed in the log domain."""
    import torch

    c = torch.from_numpy(centroids).to(device)
    rows = [torch.from_numpy(x[lo:lo + chunk]).to(device) for lo in range(0, len(x), chunk)]
    d2 = torch.cat([torch.cdist(r, c).pow(2) for r in rows])  # [N, K]
    scale = float(d2.min(dim=1).values.mean().clamp_min(1e-12)) * temp
    logq = -d2 / scale
    n, k = logq.shape
    log_r, log_c = -np.log(n), -np.log(k)
    u = torch.zeros(n, 1, dtype=logq.dtype, device=logq.device)
    v = torch.zeros(1, k, dtype=logq.dtype, device=logq.device)
    for _ in range(iters):
        u = log_r - torch.logsumexp(logq + v, dim=1, keepdim=True)
        v = log_c - torch.logsumexp(logq + u, dim=0, keepdim=True)
    assign = (logq + u + v).argmax(dim=1).cpu().numpy()
    sizes = np.bincount(assign, minlength=k)
    log.info("Sinkhorn balancing: cluster sizes %d..%d (N/K = %.1f)", sizes.min(), sizes.max(), n / k)
    return assign


# -- RIM ---------------------------------------------------------------------------------

def rim_cap(n: int) -> int:
    return max(1, n // RIM_MIN_POINTS_PER_CLUSTER)


def rim(x: np.ndarray, k: int, lam: float, niter: int, rim_iter: int, seed: int, device: str, nredo: int = 1
        ) -> tuple[np.ndarray, float, float]:
    """Labels 0..K'-1, the final loss and the mutual information (nats)."""
    import torch

    cap = rim_cap(len(x))
    if k > cap:
        log.warning("RIM: --k %d over-segments %d rows too finely; starting from k=%d (N/%d)", k, len(x), cap,
                    RIM_MIN_POINTS_PER_CLUSTER)
        k = cap
    centroids, assign, _ = kmeans(x, k, niter, seed, device, nredo=nredo)
    torch.manual_seed(seed)
    mean = x.mean(axis=0)
    problem = RimProblem(torch.from_numpy(x).to(device), torch.from_numpy(mean).to(device), lam)
    W, b = problem.initial(torch.from_numpy(centroids).to(device))
    loss, mi = problem.fit(W, b, rim_iter)
    with torch.no_grad():
        chosen = torch.cat([problem.logits(W, b, lo, hi).argmax(dim=1) for lo, hi in problem.chunks()])
    return renumber(chosen.cpu().numpy(), k, "RIM", expected=True), loss, mi


class RimProblem:
    """The RIM objective on centred features, evaluated in row chunks."""

    def __init__(self, x, mean, lam: float, chunk_elems: int = 1 << 24):
        self.x, self.mean, self.lam = x, mean, lam
        self.n = x.shape[0]
        self.chunk_elems = chunk_elems
        self.variance = float(sum(((x[lo:hi] - mean) ** 2).sum() for lo, hi in self._spans(x.shape[1]))) / self.n
        self.variance = max(self.variance, 1e-12)
        self.k = 0

    def _spans(self, width: int):
        step = max(1, self.chunk_elems // max(width, 1))
        return [(lo, min(lo + step, self.n)) for lo in range(0, self.n, step)]

    def chunks(self):
        return self._spans(max(self.k, self.x.shape[1]))

    def logits(self, W, b, lo: int, hi: int):
        return (self.x[lo:hi] - self.mean) @ W.T + b

    def penalty(self, W):
        return self.lam * self.variance * (W ** 2).sum()

    def terms(self, W, b):
        """(mean p, mean conditional entropy) without gradients."""
        import torch

        with torch.no_grad():
            p_sum = torch.zeros(self.k, dtype=W.dtype, device=W.device)
            h_sum = torch.zeros((), dtype=W.dtype, device=W.device)
            for lo, hi in self.chunks():
                logp = torch.log_softmax(self.logits(W, b, lo, hi), dim=1)
                p = logp.exp()
                p_sum += p.sum(dim=0)
                h_sum -= (p * logp).sum()
        return p_sum / self.n, h_sum / self.n

    def value(self, W, b) -> tuple[float, float]:
        """(loss = -MI + penalty, MI)."""
        import torch

        p_mean, h_cond = self.terms(W, b)
        mi = float(-(p_mean * torch.log(p_mean.clamp_min(1e-30))).sum() - h_cond)
        return -mi + float(self.penalty(W).detach()), mi

    def loss_and_grad(self, W, b) -> float:
        """Loss, with gradients accumulated in W.grad and b.grad, one chunk at a time.

        H(mean p) couples all rows; its gradient equals that of the linear surrogate
        g . sum_i p_i / N with g = dH/d(mean p) = -(log mean p + 1), fixed from a first pass.
        """
        import torch

        p_mean, h_cond = self.terms(W, b)
        log_p_mean = torch.log(p_mean.clamp_min(1e-30))
        mi = float(-(p_mean * log_p_mean).sum() - h_cond)
        g = -(log_p_mean + 1.0)
        for lo, hi in self.chunks():
            logp = torch.log_softmax(self.logits(W, b, lo, hi), dim=1)
            p = logp.exp()
            surrogate = -(p @ g).sum() / self.n - (p * logp).sum() / self.n  # -H(mean p) + H(c|f) parts
            surrogate.backward()
        penalty = self.penalty(W)
        penalty.backward()
        return -mi + float(penalty.detach())

    def initial(self, centroids):
        """W = s c_k, b = -s |c_k|^2 / 2 (the k-means assignment at temperature 1/s), best s of a grid."""
        c = centroids - self.mean
        self.k = c.shape[0]
        best = None
        for s in np.logspace(-1, 3, 17) / self.variance:
            loss, _ = self.value(s * c, -0.5 * s * (c ** 2).sum(dim=1))
            if best is None or loss < best[0]:
                best = (loss, s)
        s = best[1]
        log.debug("RIM: initial temperature 1/%.4g, loss %.6g", s, best[0])
        W = (s * c).clone().requires_grad_(True)
        b = (-0.5 * s * (c ** 2).sum(dim=1)).clone().requires_grad_(True)
        return W, b

    def fit(self, W, b, max_iter: int) -> tuple[float, float]:
        import torch

        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)
        bar = progress(total=max_iter, desc="RIM")

        def closure():
            opt.zero_grad()
            loss = self.loss_and_grad(W, b)
            bar.update(1)
            return torch.tensor(loss, dtype=W.dtype)

        opt.step(closure)
        bar.close()
        return self.value(W.detach(), b.detach())


# -- summary -----------------------------------------------------------------------------

def summary_paths(path: str) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix.lower() in (".csv", ".png"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".csv"), base.with_name(base.name + ".png")


def k_choice_path(path: str) -> Path:
    """SUMMARY.k.json, beside SUMMARY.csv: what ``--k auto`` chose and why."""
    csv_path, _ = summary_paths(path)
    return csv_path.with_name(csv_path.stem + ".k.json")


def write_summary(path: str, labels: np.ndarray) -> None:
    """``cluster,size`` CSV and a PNG: sizes sorted, and their histogram."""
    plt = pyplot()

    csv_path, png_path = summary_paths(path)
    sizes = np.bincount(labels)
    with atomic_path(csv_path) as tmp:
        tmp.write_text("cluster,size\n" + "".join(f"{c},{s}\n" for c, s in enumerate(sizes.tolist())))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.bar(np.arange(len(sizes)), np.sort(sizes)[::-1], width=1.0, color="tab:blue")
    left.set(xlabel="cluster (largest first)", ylabel="images", title=f"K'={len(sizes)} clusters")
    right.hist(sizes, bins=min(30, max(1, len(sizes))), color="tab:gray")
    right.set(xlabel="cluster size", ylabel="clusters",
              title=f"sizes: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}")
    fig.tight_layout()
    save_png(fig, png_path)
    log.info("wrote %s and %s", csv_path, png_path)


TOOL = ClusterTool
main = ClusterTool.console
