"""Time of ``--mentions affirmed`` against report length (issue 30, item 14): one long report among ten.

For each size (characters), ten reports of which one is that long (toy-like sentences: negations, uncertainty,
scope ends) go through ``keep_mentions(..., "affirmed")`` (what topic-label, keywords and hierarchy call), and,
with ``--cli``, through ``topic-label --topics 2`` as a command. Before the fix NegEx saw each report whole, and
negspacy reads ``doc.ents`` once per clause (cProfile: 50 of 53 s of a 50 KB report in ``Doc.ents``), so time grew
with the square of the length (topic-label 7.7 / 13 / 62 s at 50 / 100 / 200 KB, over 280 s at 1 MB); now a long
report goes through it in pieces of whole sentences (:data:`ldpo.common.nlp.mentions.PIECE_CHARS`) and time should grow
linearly: the last column, seconds per 100 KB, should stay flat.

Run: ``OMP_NUM_THREADS=1 python tests/bench/bench_mentions_length.py [--sizes 50000,100000,200000,1000000] [--cli]``.
Prints figures, asserts nothing (not collected by pytest).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = ["There is no pleural effusion.", "A small nodule in the right upper lobe may represent atelectasis.",
             "Cannot exclude pneumonia.", "The heart is enlarged; no pneumothorax.",
             "Mild emphysema without consolidation.", "Possible fracture of the rib versus artifact.",
             "History of lymphoma.", "Mass in the liver but no ascites.", "No evidence of hemorrhage or infarct.",
             "IMPRESSION: cardiomegaly and pleural effusion."]


def report(size: int, rng: random.Random) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(SENTENCES))
    return " ".join(words)[:size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50000,100000,200000,1000000")
    parser.add_argument("--cli", action="store_true", help="also time topic-label as a command")
    args = parser.parse_args()
    from ldpo.common.nlp.mentions import keep_mentions

    rng = random.Random(0)
    keep_mentions({"warm": SENTENCES[0]}, "affirmed", None, "warm-up")
    print("size_chars  keep_mentions_s  s_per_100KB" + ("  topic_label_s" if args.cli else ""))
    for size in (int(s) for s in args.sizes.split(",")):
        texts = {f"r{i}": report(1200, rng) for i in range(9)}
        texts["long"] = report(size, rng)
        start = time.perf_counter()
        keep_mentions(texts, "affirmed", None, "bench")
        seconds = time.perf_counter() - start
        line = f"{size:>10}  {seconds:>15.2f}  {seconds / size * 1e5:>11.2f}"
        if args.cli:
            with tempfile.TemporaryDirectory(prefix="ldpo-mentions-") as tmp:
                folder = Path(tmp)
                with open(folder / "reports.csv", "w", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerows([["report_id", "text"], *texts.items()])
                with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerows([["id", "report_id"], *((f"i{k}", k) for k in texts)])
                start = time.perf_counter()
                subprocess.run([str(Path(sys.executable).parent / "topic-label"), str(folder / "reports.csv"),
                                "--manifest", str(folder / "manifest.csv"), "--out", str(folder / "labels.csv"),
                                "--topics", "2", "--min-df", "1", "--max-df", "1", "-q"], check=True, env=dict(os.environ), capture_output=True)
                line += f"  {time.perf_counter() - start:>13.2f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
