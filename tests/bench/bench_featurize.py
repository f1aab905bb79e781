"""Benchmark ``featurize``: throughput against a bare ``model(x)`` loop, and peak RSS vs N.

    python tests/bench/bench_featurize.py [--speed-n 512] [--rounds 3] [--rss-n 2000 20000] [--rss-px 64]

1. Images/s of ``featurize``'s extraction loop (``featurize.extract``: reader threads, store
   reading, preprocessing, the layer hook, writing the store; AlexNet fc7, 224 px, batch
   64, random init) next to a bare ``model(x)`` loop on one random batch, and their ratio
   (target ≥ 0.9). The two alternate for ``--rounds`` rounds in one process, so both see
   the same machine load; medians are printed.
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
from statistics import median

import numpy as np

SPEED = r"""
import sys, time, torch
from ldpo.common.nets import models
from ldpo.common.files.stores import create_store, open_store
from ldpo.stages import featurize
store, out, size, batch, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
opts = featurize.FeaturizeTool().parse([store, "--out", out, "--arch", "alexnet", "--layer", "fc7", "--input-size",
                                        str(size), "--batch-size", str(batch), "--no-progress", "-q"])
built = models.build(models.Init("random"), "alexnet", None, seed=0, input_size=size)
extractor = models.Extractor(built.model, "alexnet", "fc7").eval()
shape = extractor.output_shape(size)
with open_store(store) as images:
    n, ids = len(images), images.ids
net = models.build(models.Init("random"), "alexnet", None, seed=0, input_size=size).model.eval()
x = torch.randn(batch, 3, size, size)
bare, feat = [], []
with torch.inference_mode():
    net(x)  # warm-up
for _ in range(rounds):  # interleaved, so both see the same machine load
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(n // batch):
            net(x)
        bare.append((n // batch) * batch / (time.perf_counter() - start))
    with create_store(out, n=n, arrays={"features": (shape, "float32")}, ids=ids) as dest:
        start = time.perf_counter()
        featurize.extract(opts, extractor, built, dest, "features", 0, n, "cpu")  # the stage's own loop
        feat.append(n / (time.perf_counter() - start))
print("BARE", " ".join(f"{r:.2f}" for r in bare))
print("FEAT", " ".join(f"{r:.2f}" for r in feat))
"""

TOOL = r"""
import sys, resource
from ldpo.stages.featurize import FeaturizeTool
code = FeaturizeTool().run(sys.argv[1:])
print(f"RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
sys.exit(code)
"""


def make_store(path: Path, n: int, size: int) -> None:
    from ldpo.common.files.stores import create_store

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
    parser.add_argument("--speed-n", type=int, default=512, help="images for the throughput part")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of bare loop and featurize")
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
        text = python(SPEED, str(tmp / "speed.h5"), str(tmp / "speed-out.h5"), str(args.size), str(args.batch),
                      str(args.rounds), env=env)
        bare = [float(v) for v in re.search(r"BARE (.*)", text).group(1).split()]
        feat = [float(v) for v in re.search(r"FEAT (.*)", text).group(1).split()]
        ratios = [f / b for f, b in zip(feat, bare)]
        print(f"alexnet fc7, {args.size} px, batch {args.batch}, {args.speed_n} images x {args.rounds} rounds, "
              f"{args.threads} threads:")
        print(f"  bare model(x) loop : {median(bare):8.1f} img/s (rounds: {', '.join(f'{r:.1f}' for r in bare)})")
        print(f"  featurize loop     : {median(feat):8.1f} img/s (rounds: {', '.join(f'{r:.1f}' for r in feat)})")
        print(f"  ratio (median)     : {median(ratios):8.2f}   (target >= 0.9; rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")
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
