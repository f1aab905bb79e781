"""Peak host RSS of ``featurize`` and ``cluster`` as the archive grows (the target: 20K → 200K images, ≤ 1.5× apart).

    python tests/bench/bench_memory.py                          # N = 20000 and 200000: archive, featurize, cluster
    python tests/bench/bench_memory.py --cluster-args "--pca 256"
    python tests/bench/bench_memory.py --stages cluster --cluster-dim 4096   # cluster at AlexNet fc7's width

For each N it makes a synthetic archive (``toy-data archive``, ``--size`` px), then runs
``featurize`` (``--arch`` from random init at ``--input-size`` px, float32 global features)
and ``cluster`` (``--k`` clusters, plus ``--cluster-args``) on it, each stage in a fresh
Python process. The default network is timm's ``test_byobnet`` (256 features; about 1,000
images/s at 32 px on 2 CPU cores, so 200K images take minutes, where ResNet-18 takes a
quarter of an hour): featurize's memory is about its data path, not its network. Cluster
memory grows with N x D, so ``--cluster-dim D`` clusters a synthetic N x D feature store
(Gaussian blobs, made here, not measured) instead of featurize's output: 512 for
ResNet-18, 2048 for ResNet-50, 4096 for AlexNet fc7. ``--stages`` picks the stages run. A stage's peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of
that process, read after the stage returns (``--workers 0``: no child processes). Memory
flatness in N does not depend on the image size, so small images keep 200K images to a
few minutes on a CPU. It prints per stage and N the seconds, images/s and peak RSS, and
the ratio of the largest N to the smallest. Stores are deleted after each N.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE = r"""
import resource, sys
from ldpo.stages import run
code = run(sys.argv[1:])
print(f"RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def stage(argv: list[str], env: dict) -> tuple[float, float]:
    """Run ``ldpo ARGV`` in a fresh process: (seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STAGE, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_memory: `ldpo {shlex.join(argv)}` exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, int(re.search(r"RSS_KB (\d+)", done.stderr).group(1)) / 1024


def make_features(path: Path, n: int, dim: int, clusters: int, seed: int = 0) -> None:
    """A synthetic ``features`` store: N rows around ``clusters`` random centres, written block by block."""
    import numpy as np

    from ldpo.common.files.stores import create_store

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    with create_store(path, n=n, arrays={"features": ((dim,), "float32")}, ids=[f"r{i:07d}" for i in range(n)],
                      attrs={"stage": "bench_memory"}) as store:
        for lo in range(0, n, 8192):
            hi = min(lo + 8192, n)
            block = centres[rng.integers(clusters, size=hi - lo)]
            store.write("features", lo, block + rng.standard_normal(block.shape, dtype=np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[20000, 200000],
                        help="archive sizes (default 20000 200000)")
    parser.add_argument("--size", type=int, default=32, help="archive image px (default 32)")
    parser.add_argument("--arch", default="timm:test_byobnet",
                        help="featurize network, random init (default timm:test_byobnet)")
    parser.add_argument("--input-size", type=int, default=32, help="featurize input px (default 32)")
    parser.add_argument("--batch-size", type=int, default=256, help="featurize batch (default 256)")
    parser.add_argument("--k", type=int, default=100, help="cluster --k (default 100)")
    parser.add_argument("--cluster-args", default="", help="more cluster options, e.g. \"--pca 256\"")
    parser.add_argument("--cluster-dim", type=int, default=0,
                        help="cluster a synthetic N x D store instead of featurize's output (default 0: featurize's)")
    parser.add_argument("--stages", default="archive,featurize,cluster", help="stages to run (default: all three)")
    parser.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "2"), help="OMP_NUM_THREADS")
    parser.add_argument("--work", default=None, help="folder for the stores (default: a temporary one)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": args.threads}
    chosen = set(args.stages.split(","))
    if not chosen <= {"archive", "featurize", "cluster"} or ("cluster" in chosen and not args.cluster_dim
                                                             and "featurize" not in chosen):
        parser.error("--stages: a comma list of archive, featurize, cluster; cluster needs featurize or --cluster-dim")
    if "featurize" in chosen:
        chosen.add("archive")
    work = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.work))
    quiet = ["--no-progress", "-q", "--device", "cpu"]
    rows: dict[str, list[tuple[int, float, float]]] = {}
    print(f"{args.threads} threads; archive {args.size} px; featurize {args.arch} at {args.input_size} px, batch "
          f"{args.batch_size}; cluster {shlex.join(['--k', str(args.k), *shlex.split(args.cluster_args)])} on "
          f"{f'synthetic {args.cluster_dim}-d features' if args.cluster_dim else 'featurize output'}; "
          f"stages: {', '.join(s for s in ('archive', 'featurize', 'cluster') if s in chosen)}")
    try:
        for n in args.n:
            store, feats, labels = work / f"a{n}.zarr", work / f"f{n}.h5", work / f"l{n}.csv"
            synthetic = work / f"s{n}.h5"
            runs = {
                "archive": ["toy-data", "archive", "--n", str(n), "--size", str(args.size), "--out", str(store)],
                "featurize": ["featurize", str(store), "--out", str(feats), "--arch", args.arch, "--init", "random",
                              "--input-size", str(args.input_size), "--batch-size", str(args.batch_size)],
                "cluster": ["cluster", str(synthetic if args.cluster_dim else feats), "--out", str(labels),
                            "--k", str(args.k), *shlex.split(args.cluster_args)],
            }
            if args.cluster_dim and "cluster" in chosen:
                make_features(synthetic, n, args.cluster_dim, args.k)
            for name, argv in runs.items():
                if name not in chosen:
                    continue
                name = "toy-data archive" if name == "archive" else name
                seconds, mib = stage([*argv, *quiet], env)
                rows.setdefault(name, []).append((n, seconds, mib))
                print(f"{name:<17} N={n:>7}: {seconds:7.1f} s ({n / seconds:8.0f} images/s), peak RSS {mib:7.0f} MiB"
                      f"  [ldpo {shlex.join(argv)}]", flush=True)
            for path in (store, feats, labels, synthetic):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            for side in work.glob("*.truth.csv"):
                side.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(args.n) > 1:
        for name, found in rows.items():
            (n0, _, low), (n1, _, high) = min(found), max(found)
            print(f"peak RSS ratio {name:<17} N={n1} / N={n0}: {high / low:.2f}  (target for featurize and "
                  f"cluster: <= 1.5)")


if __name__ == "__main__":
    main()
