"""Benchmark for ``cluster``: prints figures, asserts nothing (not collected by pytest).

1. faiss k-means (what ``cluster`` uses) against scikit-learn KMeans on N x D, k
   clusters (default 20000 x 4096, k = 100): wall time and loss. scikit-learn runs
   twice: with its defaults (k-means++ init, up to 300 iterations) and with the same
   20 iterations as faiss. The default blobs overlap (``--noise 1.5``), like real
   features; on well-separated blobs (``--noise 0.6``) k-means++ lands on them and
   scikit-learn stops after 3 iterations.
2. RIM wall time on N x d (default 20000 x 256) from an over-segmentation of k = 1000,
   for a few values of lambda: K' found, MI, time.

Run: ``.venv/bin/python tests/bench/bench_cluster.py [--n 20000] [--dim 4096] [--rim-dim 256]``.
The data are Gaussian blobs (``--blobs`` centres) so the clusterings have something to find.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def blobs(n: int, d: int, centres: int, seed: int = 0, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm centres plus Gaussian noise of total std ``noise`` (centres lie about 1.4 apart)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    y = rng.integers(0, centres, n)
    x = c[y]
    x += rng.standard_normal((n, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
    return x, y


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_kmeans(n: int, d: int, k: int, centres: int, seed: int, noise: float) -> None:
    from sklearn.cluster import KMeans

    from ldpo.common.numerics.features import kmeans
    from ldpo.common.numerics.metrics import nmi

    x, y = blobs(n, d, centres, seed, noise)
    print(f"k-means on {n} x {d}, k={k} ({centres} planted blobs, noise {noise}), {os.cpu_count()} CPU cores")
    (_, assign, loss), t_faiss = timed(lambda: kmeans(x, k, niter=20, seed=seed))
    print(f"  faiss   niter=20            {t_faiss:7.2f} s  loss {loss:10.2f}  NMI vs blobs {nmi(assign, y):.3f}")
    runs = {"sklearn default (k-means++, <=300 it)": KMeans(k, n_init=1, random_state=seed),
            "sklearn max_iter=20": KMeans(k, n_init=1, max_iter=20, random_state=seed)}
    for name, model in runs.items():
        fitted, t = timed(lambda model=model: model.fit(x))
        print(f"  {name:<27} {t:7.2f} s  loss {fitted.inertia_:10.2f}  NMI vs blobs {nmi(fitted.labels_, y):.3f}"
              f"  iterations {fitted.n_iter_}  -> faiss {t / t_faiss:5.1f}x faster")


def bench_rim(n: int, d: int, k: int, centres: int, lams: list[float], seed: int) -> None:
    from ldpo.common.numerics.features import l2_normalize
    from ldpo.common.numerics.metrics import nmi
    from ldpo.stages.cluster import rim

    x, y = blobs(n, d, centres, seed)
    x = l2_normalize(x)
    print(f"RIM on {n} x {d} (L2-normalized, {centres} planted blobs) from k={k}, CPU")
    for lam in lams:
        (labels, loss, mi), t = timed(lambda lam=lam: rim(x, k, lam, 20, 200, seed, "cpu"))
        print(f"  lam={lam:<8g} {t:7.1f} s  K'={labels.max() + 1:<5d} MI {mi:.3f} nats  loss {loss:.4f}"
              f"  NMI vs blobs {nmi(labels, y):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=4096, help="k-means dimension")
    ap.add_argument("--k", type=int, default=100, help="k-means clusters")
    ap.add_argument("--rim-dim", type=int, default=256)
    ap.add_argument("--rim-k", type=int, default=1000)
    ap.add_argument("--blobs", type=int, default=100)
    ap.add_argument("--noise", type=float, default=1.5, help="blob noise (total std) for k-means; 0.6 = well separated")
    ap.add_argument("--lam", type=float, nargs="+", default=[1e-3, 1e-5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=["kmeans", "rim"], default=None)
    args = ap.parse_args()
    if args.skip != "kmeans":
        bench_kmeans(args.n, args.dim, args.k, args.blobs, args.seed, args.noise)
    if args.skip != "rim":
        bench_rim(args.n, args.rim_dim, args.rim_k, args.blobs, args.lam, args.seed)


if __name__ == "__main__":
    main()
