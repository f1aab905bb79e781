"""Benchmark ``featurize`` on timm backbones against a bare ``model(x)`` in the same process.

    python tests/bench/bench_timm.py [--archs timm:resnet50,timm:vit_small_patch14_dinov2] [--n 256]
                                     [--size 224] [--batch 32] [--rounds 2]

For each architecture a weights file is made here from a randomly initialised timm model
(nothing is downloaded), then ``featurize``'s own extraction loop (``featurize.extract``:
reader threads, store reading, preprocessing with timm's mean/std, ``forward_features`` +
``forward_head(pre_logits=True)``, writing the store; ``--init weights:FILE``, default
``pooled`` layer) and a bare ``model(x)`` loop on one random batch alternate for
``--rounds`` rounds in one process (so both see the same machine load). It prints the
medians and their ratio (target >= 0.9). Gray images of ``--size`` px, as a PACS store.
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
import sys, time, torch, timm
from ldpo.common.nets import models
from ldpo.common.files.stores import create_store, open_store
from ldpo.stages import featurize
store, out, arch, weights, size, batch, rounds = sys.argv[1:8]
size, batch, rounds = int(size), int(batch), int(rounds)
opts = featurize.FeaturizeTool().parse([store, "--out", out, "--arch", arch, "--init", f"weights:{weights}",
                                        "--input-size", str(size), "--batch-size", str(batch), "--no-progress", "-q"])
built = models.build(models.parse_init(f"weights:{weights}"), arch, None, seed=0, input_size=size)
extractor = models.Extractor(built.model, arch, models.resolve_layer(arch, None)).eval()
shape = extractor.output_shape(size)
with open_store(store) as images:
    n, ids = len(images), images.ids
net = models.build(models.parse_init(f"weights:{weights}"), arch, None, seed=0, input_size=size).model.eval()
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
print("SHAPE", "x".join(map(str, shape)), "--normalize", built.normalize, "mean", built.mean, "std", built.std)
print("BARE", " ".join(f"{r:.2f}" for r in bare))
print("FEAT", " ".join(f"{r:.2f}" for r in feat))
"""

WEIGHTS = r"""
import os, sys, torch
os.environ["HF_HUB_OFFLINE"] = "1"
import timm
torch.manual_seed(0)
model = timm.create_model(sys.argv[1], pretrained=False)
torch.save(model.state_dict(), sys.argv[2])
"""


def make_store(path: Path, n: int, size: int) -> None:
    from ldpo.common.files.stores import write_store

    rng = np.random.default_rng(0)
    write_store(path, [f"img{i:05d}" for i in range(n)], {"stage": "bench"},
                images=rng.integers(0, 256, (n, size, size), dtype=np.uint8))


def python(code: str, *args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="timm:resnet50,timm:vit_small_patch14_dinov2")
    parser.add_argument("--n", type=int, default=256, help="images")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of bare loop and featurize")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224, help="image and input px")
    parser.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "2"))
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-timm-") as tmp:
        tmp = Path(tmp)
        make_store(tmp / "images.h5", args.n, args.size)
        for arch in args.archs.split(","):
            weights = tmp / "weights.pth"
            python(WEIGHTS, arch.removeprefix("timm:"), str(weights), env=env)
            text = python(SPEED, str(tmp / "images.h5"), str(tmp / "out.h5"), arch, str(weights), str(args.size),
                          str(args.batch), str(args.rounds), env=env)
            bare = [float(v) for v in re.search(r"BARE (.*)", text).group(1).split()]
            feat = [float(v) for v in re.search(r"FEAT (.*)", text).group(1).split()]
            ratios = [f / b for f, b in zip(feat, bare)]
            print(f"{arch} pooled {re.search(r'SHAPE (.*)', text).group(1)}; {args.size} px, batch {args.batch}, "
                  f"{args.n} images x {args.rounds} rounds, {args.threads} threads:")
            print(f"  bare model(x) loop : {median(bare):8.1f} img/s (rounds: {', '.join(f'{r:.1f}' for r in bare)})")
            print(f"  featurize loop     : {median(feat):8.1f} img/s (rounds: {', '.join(f'{r:.1f}' for r in feat)})")
            print(f"  ratio (median)     : {median(ratios):8.2f}   (target >= 0.9; rounds: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})", flush=True)


if __name__ == "__main__":
    main()
