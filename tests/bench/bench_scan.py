"""``cluster --method scan`` against k-means on the same feature store.

    python tests/bench/bench_scan.py FEATURES TRUTH [--k K] [--seeds 0,1,2] [-- CLUSTER ARGS…]
    python tests/bench/bench_scan.py --knn-rows 20000,100000,216000 [--dim 256]

The first form clusters FEATURES (a feature store) with ``cluster --method kmeans`` and
``cluster --method scan`` (k = the truth's class count unless ``--k``), once per seed, and
prints purity and NMI of each against TRUTH (labels CSV). Its last line is

    scan: kmeans=P1 scan=P2

(median purities over the seeds), so a script can compare them. The second form times the
nearest-neighbour mining alone, exact (faiss ``IndexFlatIP``) against the inverted-file
index used beyond ``EXACT_KNN_MAX_ROWS``, on random unit vectors.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def cluster(features: str, out: Path, k: int, method: str, seed: int, extra: list[str]) -> float:
    start = time.perf_counter()
    cmd = [str(BIN / "ldpo"), "cluster", features, "--out", str(out), "--k", str(k), "--method", method,
           "--seed", str(seed), "--quiet", "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_scan: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def compare(opts) -> int:
    from ldpo.common.files.labels import align, read_labels
    from ldpo.common.numerics.metrics import nmi, purity

    truth = read_labels(opts.truth)
    k = opts.k or len(set(truth.labels.tolist()))
    scores: dict[str, list[float]] = {"kmeans": [], "scan": []}
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        for seed in [int(s) for s in opts.seeds.split(",")]:
            for method in scores:
                out = Path(tmp) / f"{method}-{seed}.csv"
                seconds = cluster(opts.features, out, k, method, seed, opts.cluster_args if method == "scan" else [])
                pred = align(read_labels(out), truth.ids, opts.truth, allow_unknown=True)
                known = pred >= 0
                p, n = purity(pred[known], truth.labels[known]), nmi(pred[known], truth.labels[known])
                scores[method].append(p)
                print(f"seed {seed} {method:6s} k={k}: purity {p:.3f} NMI {n:.3f} ({seconds:.1f} s)", flush=True)
    km, sc = (float(np.median(scores[m])) for m in ("kmeans", "scan"))
    print(f"scan: kmeans={km:.3f} scan={sc:.3f}")
    return 0


def knn_times(opts) -> int:
    from ldpo.common.numerics.features import nearest_neighbours

    for n in [int(v) for v in opts.knn_rows.split(",")]:
        x = np.random.default_rng(0).standard_normal((n, opts.dim)).astype(np.float32)
        for name, limit in (("exact", n), ("inverted-file", 0)):
            start = time.perf_counter()
            nearest_neighbours(x, 20, exact_max_rows=limit)
            print(f"{n} x {opts.dim}, 20 neighbours, {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", nargs="?")
    p.add_argument("truth", nargs="?")
    p.add_argument("--k", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--knn-rows", default="")
    p.add_argument("--dim", type=int, default=256)
    opts = p.parse_args(argv)
    opts.cluster_args = extra
    if opts.knn_rows:
        return knn_times(opts)
    if not (opts.features and opts.truth):
        p.error("FEATURES and TRUTH are needed (or --knn-rows)")
    return compare(opts)


if __name__ == "__main__":
    sys.exit(main())
