"""Benchmark several labels per image end to end on the toy multi-label set, 3 seeds.

    python tests/bench/bench_multilabel.py
    python tests/bench/bench_multilabel.py --n 500 --size 64 --epochs 8 --batch-size 16 --seeds 0 1 2 --device cpu

Per seed, through ``ldpo.stages.run`` as the command line does:

1. ``toy-data multilabel --n N --size S --seed s``: images showing one, two or none of four
   body-part phantoms, and their multi-label truth;
2. ``finetune --multi-label --init random`` on its 70/10/20 split (``--seed s``): one
   sigmoid per class, thresholds from the validation split; the held-out (test) figures
   come from its metrics JSON: macro AP and exact-match accuracy (the whole label set right);
3. for contrast, a **single-label** run on the same images and split: each image keeps one
   label (a part drawn at random, seeded, for two-part images; a fifth class ``none`` for
   the true negatives), the ordinary ``finetune`` (softmax) with the same options; its
   exact match on the same test images (``featurize --layer probs``, the top class as the
   predicted set: {part}, or {} for ``none``). Two-part images cap it at about 0.6.

Prints one line per seed, the medians, and last exactly
``multilabel: macro_ap=A exact=E single_label_exact=S`` (medians over the seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def run(*argv) -> None:
    from ldpo.stages import run as ldpo

    code = ldpo([str(a) for a in argv])
    if code != 0:
        sys.exit(f"ldpo {' '.join(map(str, argv))}: exit {code}")


def single_labels(sets: list[tuple[int, ...]], none: int, seed: int) -> list[int]:
    """One label per image: its part, a random one of its two parts, or ``none``."""
    rng = np.random.default_rng([seed, 1])
    return [none if not s else int(s[rng.integers(len(s))]) for s in sets]


def one_seed(args, seed: int, folder: Path) -> dict[str, float]:
    from ldpo.common.files.labels import read_multilabels, write_labels
    from ldpo.common.files.stores import open_store
    from ldpo.stages.finetune import split

    data = folder / f"seed{seed}"
    run("toy-data", "multilabel", "--out", data, "--n", args.n, "--size", args.size, "--seed", seed, "-q")
    common = ["--init", "random", "--epochs", args.epochs, "--batch-size", args.batch_size, "--crop-scale", "1",
              "--split", args.split, "--seed", seed, "--device", args.device, "--no-progress", "-q"]
    if args.input_size:
        common += ["--input-size", args.input_size]
    start = time.perf_counter()
    run("finetune", data / "images.h5", data / "truth.csv", "--multi-label", "--out", data / "multi.pt", *common)
    multi_s = time.perf_counter() - start
    final = json.loads((data / "multi.metrics.json").read_text())["final"]

    truth = read_multilabels(data / "truth.csv")
    none = 4
    write_labels(data / "single.csv", truth.ids, single_labels(truth.sets, none, seed))
    start = time.perf_counter()
    run("finetune", data / "images.h5", data / "single.csv", "--out", data / "single.pt", *common)
    run("featurize", data / "images.h5", "--out", data / "single-probs.h5", "--init",
        f"checkpoint:{data / 'single.pt'}", "--layer", "probs", "--device", args.device, "-q")
    single_s = time.perf_counter() - start
    with open_store(data / "single-probs.h5") as store:
        probs, ids, classes = store.read("features"), store.ids, store.attrs["classes"]
    assert ids == truth.ids
    # the single-label run's held-out images: finetune's own split of the same rows and seed
    rows = np.arange(len(ids))
    _, _, (test_rows, _) = split(SimpleNamespace(split=args.split, seed=seed), rows, rows)
    top = np.asarray(classes)[probs[test_rows].argmax(axis=1)]
    predicted = [() if c == none else (int(c),) for c in top]
    single_exact = float(np.mean([p == truth.sets[r] for p, r in zip(predicted, test_rows)]))
    return {"macro_ap": final["test_macro_ap"], "exact": final["test_exact"], "macro_auc": final["test_macro_auc"],
            "micro_f1": final["test_micro_f1"], "single_label_exact": single_exact,
            "multi_s": multi_s, "single_s": single_s, "n_test": final["n_test"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="images per seed")
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--input-size", type=int, default=0, help="network input side (default: the image side)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--split", default="70/10/20")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-multilabel-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            r = one_seed(args, seed, folder)
            results.append(r)
            print(f"seed {seed}: macro_ap={r['macro_ap']:.3f} exact={r['exact']:.3f} macro_auc={r['macro_auc']:.3f} "
                  f"micro_f1={r['micro_f1']:.3f} single_label_exact={r['single_label_exact']:.3f} "
                  f"(n_test {r['n_test']}; multi {r['multi_s']:.0f} s, single {r['single_s']:.0f} s)", flush=True)
    med = {k: float(np.median([r[k] for r in results])) for k in ("macro_ap", "exact", "single_label_exact")}
    print(f"settings: n={args.n} size={args.size} epochs={args.epochs} batch={args.batch_size} split={args.split} "
          f"seeds={' '.join(map(str, args.seeds))} device={args.device}; medians over the seeds")
    print(f"multilabel: macro_ap={med['macro_ap']:.3f} exact={med['exact']:.3f} "
          f"single_label_exact={med['single_label_exact']:.3f}")


if __name__ == "__main__":
    main()
