"""Held-out perplexity of LDA against K on gensim's bundled Lee corpus (300 news documents).

Prints, per K, gensim's ``log_perplexity`` bound turned into a perplexity (2^-bound; it
rises with K on held-out documents, so its minimum is always the smallest K) beside
topic-label's document-completion perplexity (θ from half of each held-out document,
the other half scored under θ·φ), and the K that topic-label's flattening rule picks.

    .venv/bin/python tests/bench/bench_topic_perplexity.py [--passes 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gensim.corpora import Dictionary
from gensim.test.utils import datapath

from ldpo.common.nlp.text import Cleaner
from ldpo.stages.topic_label import Options, choose_k, completion_perplexity, fit_lda, relative_decrease


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--grid", default="2,5,10,20,40")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid = [int(k) for k in args.grid.split(",")]

    with open(datapath("lee_background.cor"), encoding="utf-8") as fh:
        texts = [line for line in fh if line.strip()]
    cleaner = Cleaner()
    docs = [cleaner.words(t) for t in texts]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(docs))
    n_test = len(docs) // 5
    train = [docs[i] for i in order[n_test:]]
    test = [docs[i] for i in order[:n_test]]
    dictionary = Dictionary(train)
    dictionary.filter_extremes(no_below=2, no_above=0.5, keep_n=None)
    corpus = [dictionary.doc2bow(d) for d in train]
    test_bows = [dictionary.doc2bow(d) for d in test]
    test_ids = [[dictionary.token2id[w] for w in d if w in dictionary.token2id] for d in test]
    opts = Options(reports="", manifest="", out="", passes=args.passes, seed=args.seed)
    print(f"Lee corpus: {len(train)} training / {len(test)} held-out documents, {len(dictionary)} words, "
          f"{args.passes} passes")
    print(f"{'K':>4} {'gensim 2^-bound':>16} {'completion':>11} {'fit s':>6}")
    bound, completion = [], []
    for k in grid:
        start = time.perf_counter()
        model = fit_lda(corpus, dictionary, k, opts)
        bound.append(2 ** -model.log_perplexity(test_bows))
        completion.append(completion_perplexity(model, test_ids, np.random.default_rng([args.seed, k])))
        print(f"{k:>4} {bound[-1]:>16.1f} {completion[-1]:>11.1f} {time.perf_counter() - start:>6.1f}",
              flush=True)
    decrease = relative_decrease(completion)
    print("relative decrease of completion perplexity to the next K: "
          + ", ".join(f"{k}: {d:.1%}" for k, d in zip(grid, decrease[:-1])))
    print(f"chosen K (first decrease below 5%): {choose_k(grid, completion, 0.05)}; "
          f"argmin of gensim's bound: {grid[int(np.argmin(bound))]}")


if __name__ == "__main__":
    main()
