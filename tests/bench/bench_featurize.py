"""Benchmark ``featurize``: throughput against a bare ``model(x)`` loop, and peak RSS vs N.

    python tests/bench/bench_featurize.py [--speed-n 1024] [--rss-n 2000 20000] [--rss-px 64]

1. Images/s of ``featurize`` (AlexNet fc7, 224 px, batch 64, random init; the rate it
   logs for its extraction loop, store reading, preprocessing, first-batch warm-up and
   writing included) next to a bare ``model(x)`` loop on one random batch (after a
   warm-up call; run before and after featurize, averaged), and their ratio (target ≥ 0.9).
2. Peak RSS (``ru_maxrss`` of a fresh process) of ``featurize`` at two store sizes
   (target: ≤ 1.2× apart). Done at ``--rss-px`` (default 64 px: AlexNet's minimum is 63)
   so that 20,000 images finish in a couple of minutes on a CPU; memory flatness in N
   does not depend on the image size.

Every measurement runs in its own subprocess with the same thread count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BARE = r"""
import sys, time, resource, torch
from ldpo.common import models
n, size, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
net = models.build(models.Init("random"), "alexnet", None, seed=0, input_size=size).model.eval()
x = torch.randn(batch, 3, size, size)
with torch.inference_mode():
    net(x)  # warm-up
    start = time.perf_counter()
    for _ in range(n // batch):
        net(x)
    seconds = time.perf_counter() - start
print(f"RATE {(n // batch) * batch / seconds:.2f}")
"""

TOOL = r"""
import sys, resource
from ldpo.stages.featurize import FeaturizeTool
code = FeaturizeTool().run(sys.argv[1:])
print(f"RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
sys.exit(code)
"""


def make_store(path: Path, n: int, size: int) -> None:
    from ldpo.common.stores import create_store

    rng = np.random.default_rng(0)
    with create_store(path, n=n, arrays={"images": ((size, size), "uint8")},
                      ids=[f"img{i:06d}" for i in range(n)], attrs={"stage": "bench"}) as store:
        for lo in range(0, n, 1000):
            hi = min(lo + 1000, n)
            store.write("images", lo, rng.integers(0, 256, (hi - lo, size, size), dtype=np.uint8))


def python(code: str, *args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def featurize(store: Path, out: Path, size: int, batch: int, env: dict) -> tuple[float, float]:
    """(images/s of the extraction loop, peak RSS in MiB)."""
    text = python(TOOL, str(store), "--out", str(out), "--arch", "alexnet", "--layer", "fc7", "--input-size",
                  str(size), "--batch-size", str(batch), "--no-progress", env=env)
    rate = float(re.search(r"\(([\d.]+) img/s\)", text).group(1))
    rss = int(re.search(r"RSS_KB (\d+)", text).group(1)) / 1024
    return rate, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-n", type=int, default=1024, help="images for the throughput part")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="input px of the throughput part")
    parser.add_argument("--rss-n", type=int, nargs=2, default=[2000, 20000], help="two store sizes")
    parser.add_argument("--rss-px", type=int, default=64, help="image and input px of the RSS part")
    parser.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "2"))
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": args.threads}
    with tempfile.TemporaryDirectory(prefix="bench-featurize-") as tmp:
        tmp = Path(tmp)
        make_store(tmp / "speed.h5", args.speed_n, args.size)
        bare_args = (str(args.speed_n), str(args.size), str(args.batch))
        before = float(re.search(r"RATE ([\d.]+)", python(BARE, *bare_args, env=env)).group(1))
        rate, _ = featurize(tmp / "speed.h5", tmp / "speed-out.h5", args.size, args.batch, env)
        after = float(re.search(r"RATE ([\d.]+)", python(BARE, *bare_args, env=env)).group(1))
        bare = (before + after) / 2  # the machine's load drifts: bracket featurize
        print(f"alexnet fc7, {args.size} px, batch {args.batch}, {args.speed_n} images, {args.threads} threads:")
        print(f"  bare model(x) loop : {bare:8.1f} img/s (before {before:.1f}, after {after:.1f})")
        print(f"  featurize          : {rate:8.1f} img/s")
        print(f"  ratio              : {rate / bare:8.2f}   (target >= 0.9)")
        rss = []
        for n in args.rss_n:
            make_store(tmp / f"rss{n}.h5", n, args.rss_px)
            r, mib = featurize(tmp / f"rss{n}.h5", tmp / f"rss{n}-out.h5", args.rss_px, args.batch, env)
            rss.append(mib)
            print(f"peak RSS, N={n:>6} at {args.rss_px} px: {mib:8.1f} MiB ({r:.0f} img/s)")
            (tmp / f"rss{n}.h5").unlink()
            (tmp / f"rss{n}-out.h5").unlink()
        print(f"  RSS ratio          : {rss[1] / rss[0]:8.2f}   (target <= 1.2)")


if __name__ == "__main__":
    main()
