"""Benchmark ``encode --method fv``: peak RSS and wall time against N (memory must be flat in N).

Writes synthetic Conv5-shaped local stores (float16 [N, S, C], ReLU-like random data)
chunk by chunk into a temporary folder, then runs ``encode`` on each in its own
subprocess, which reports its own ``ru_maxrss``. Prints one line per N and the ratios.

    python tests/bench/bench_encode.py                       # N = 2000, 20000; S=169, C=256, K=64
    python tests/bench/bench_encode.py --n 500 5000 --c 64   # smaller

The fit sample (``--fit-sample``) is the same for every N, so the fit cost is a
constant and the rest (streaming) should grow linearly with N.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from ldpo.stages import run
t = time.perf_counter()
code = run(sys.argv[1:])
wall = time.perf_counter() - t
print(json.dumps({"code": code, "wall_s": wall,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_local(path: Path, n: int, s: int, c: int, seed: int, rows: int = 250) -> None:
    from ldpo.common.files.stores import create_store

    rng = np.random.default_rng(seed)
    ids = [f"img{i:06d}" for i in range(n)]
    with create_store(path, n=n, arrays={"local": ((s, c), "float16")}, ids=ids,
                      attrs={"stage": "bench", "layer": "conv5"}) as store:
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            block = rng.standard_normal((hi - lo, s, c), dtype=np.float32)
            store.write("local", lo, np.maximum(block, 0).astype(np.float16))


def run_encode(src: Path, out: Path, args) -> dict:
    argv = ["encode", str(src), "--out", str(out), "--method", "fv", "--components", str(args.k),
            "--fit-sample", str(args.fit_sample), "--dim", str(args.dim), "--batch-size", str(args.batch_size),
            "--no-progress", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"encode failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    fit = re.search(r"fitted fv encoder in ([\d.]+) s", proc.stderr)
    enc = re.search(r"encoded \d+ images in ([\d.]+) s", proc.stderr)
    check = re.search(r"source checksum in ([\d.]+) s", proc.stderr)
    result["fit_s"] = float(fit.group(1)) if fit else float("nan")
    result["checksum_s"] = float(check.group(1)) if check else float("nan")
    result["stream_s"] = float(enc.group(1)) if enc else float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--s", type=int, default=169)
    parser.add_argument("--c", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--fit-sample", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"fv: S={args.s} C={args.c} K={args.k} -> {2 * args.k * args.c} dims -> PCA {args.dim}; "
              f"fit sample {args.fit_sample}, batch {args.batch_size}")
        results = {}
        for n in args.n:
            src = Path(tmp) / f"local{n}.h5"
            t = time.perf_counter()
            write_local(src, n, args.s, args.c, seed=n)
            made = time.perf_counter() - t
            r = run_encode(src, Path(tmp) / f"fv{n}.h5", args)
            results[n] = r
            print(f"N={n:>6}: peak RSS {r['maxrss_mb']:7.0f} MB  wall {r['wall_s']:7.1f} s "
                  f"(fit {r['fit_s']:.1f} s, checksum {r['checksum_s']:.1f} s, stream {r['stream_s']:.1f} s = {1000 * r['stream_s'] / n:.1f} ms/image)"
                  f"  [store {src.stat().st_size / 2**30:.2f} GiB written in {made:.0f} s]", flush=True)
            src.unlink()
        if len(results) >= 2:
            lo, hi = min(results), max(results)
            a, b = results[lo], results[hi]
            print(f"RSS ratio N={hi}/N={lo}: {b['maxrss_mb'] / a['maxrss_mb']:.2f} (target <= 1.2)")
            print(f"stream time ratio: {b['stream_s'] / a['stream_s']:.1f} for {hi / lo:.0f}x the images; "
                  f"wall ratio {b['wall_s'] / a['wall_s']:.1f}")


if __name__ == "__main__":
    main()
