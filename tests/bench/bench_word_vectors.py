"""Benchmark for ``word-vectors``: time to train on N report sentences (target: 100K in ≤ 2 min, 2-core CPU).

Reports come from the toy PACS report generator (``stages/toy_data/pacs/reports.py``'s
``write_report``, the clinical text without the identifier lines), written as a
``report_id,text`` CSV until they hold ``--sentences`` sentences (as ``ldpo.common.nlp.words``
cuts them). Then ``word-vectors`` runs in-process with its defaults (256-d skip-gram,
hierarchical softmax, window 10, sample 1e-3, 5 epochs) and ``--workers`` threads; the
wall time of the whole command (reading, tokenizing, training, writing) is printed, and
the training part as gensim logged it.

Run:
  .venv/bin/python tests/bench/bench_word_vectors.py                      # 100K sentences, 1 thread
  .venv/bin/python tests/bench/bench_word_vectors.py --sentences 10000 --workers 2
Prints figures, asserts nothing (not collected by pytest).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_reports(path: Path, sentences: int, seed: int) -> tuple[int, int]:
    """Write toy PACS reports until they hold ``sentences`` sentences; (reports, sentences)."""
    from ldpo.common.files.tables import write_csv
    from ldpo.common.nlp.words import sentences as split
    from ldpo.stages.toy_data.pacs.pixels import REGIONS
    from ldpo.stages.toy_data.pacs.reports import write_report
    from ldpo.stages.toy_data.pacs.studies import plan_study

    rng = np.random.default_rng(seed)
    rows, count = [], 0
    while count < sentences:
        region = REGIONS[len(rows) % len(REGIONS)]
        text = write_report(plan_study(len(rows), region, rng), rng, seed)
        rows.append((f"r{len(rows)}", text))
        count += len(split(text))
    write_csv(path, ["report_id", "text"], rows)
    return len(rows), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="gensim threads (1: reproducible)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from ldpo.stages import tool

    with tempfile.TemporaryDirectory(prefix="bench-word-vectors-") as tmp:
        reports = Path(tmp) / "reports.csv"
        n_reports, n_sentences = make_reports(reports, args.sentences, args.seed)
        print(f"reports: {n_reports}, sentences: {n_sentences}")
        start = time.perf_counter()
        rc = tool("word-vectors")().run([str(reports), "--out", str(Path(tmp) / "vectors.txt"), "--workers",
                                         str(args.workers), "--seed", str(args.seed), "--no-progress"])
        seconds = time.perf_counter() - start
    print(f"word-vectors: rc={rc} sentences={n_sentences} workers={args.workers} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
