"""Which iteration's labels the loop keeps (``ldpo-loop.sh --keep``).

**The default, ``auto``**: ``consensus`` where the run chose K from the data (``--k auto``, the loop's
default), ``last`` where the user gave K (:func:`resolved`). The measurements behind it are in
docs/discovery.md ("Which labels to keep"): where K is chosen from the data the iterations' clusterings
are noisy draws around the categories, and on long-tailed sets their consensus beat the last draw in most
runs (median NMI +0.03 to +0.09), with no NMI lost on balanced sets (purity −0.027 on one of four); where
K is given and every iteration improves on the last, the consensus can give a group to the few images no
clustering agrees on and cost purity with nothing gained.

**``consensus``**: the consensus of every iteration's clustering (:mod:`ldpo.common.loop.consensus`),
with as many groups as the last model's classes and their numbers; the final model is the last one.

**``last``**: the labels the last model was trained on (iteration T - 1's clustering when the
loop ran T fine-tuning iterations), so the final model's classes, the tree's leaves and the keywords'
categories are one set. **``heldout``**, opt-in: the latest labels whose held-out agreement (below) is
within one standard error of the best, so that an iteration whose labels a network could not predict for
unseen images does not replace better earlier ones. It is not the default because the agreement is
confounded with how well each short fine-tuning went: a network that learned little in its epochs scores
its labels low whatever their quality, so the rule can go back to early labels that are clearly worse
(docs/measurements.md, "The loop's keep rule"). Every run records the agreement in its history either
way, so the rule can be applied afterwards.

**The label-free signal, held-out agreement.** Iteration t fine-tunes a network on the labels of
iteration t - 1, on finetune's training split only (70 % by default), then predicts the images it never
trained on (the validation and test splits, 30 %). Labels that follow what images look like can be learned
and predicted for unseen images; labels that cut through look-alike images cannot (Lange et al. 2004,
"Stability-based validation of clustering solutions": a classifier trained on one half of a clustering
predicts the other half). The agreement is chance-corrected, Cohen's kappa with the labels' own class
shares as the chance marginals, so a few large categories do not score by their size alone and label sets
of different K compare:

    kappa = (top1 - sum_c p_c^2) / (1 - sum_c p_c^2)

Why not silhouette, cluster stability or neighbour agreement in the iteration's own features: those features
come from a network fine-tuned on the previous labels, so they are built to separate exactly those labels,
and a loop that converges on its own mistakes scores ever better there (consecutive iterations can agree
more and more while purity falls). Held-out images are the one thing no clustering
and no fine-tuning of that iteration saw. What it cannot see: a split of one true category into two that a
network still tells apart (textures split by scale), so it guards against drift, not against over-segmentation.

**The ``heldout`` rule.** Row s of the history holds ``heldout`` = kappa of labels_s, measured by iteration s + 1's model.
The loop keeps labels_s* (``final/labels.csv``) and the model trained on them, iteration s* + 1's
(``final/model.pt``): the latest s whose kappa is within one standard error of the best kappa, so a later
iteration is kept unless an earlier one was measurably better. Without held-out figures (``--split none``)
the last labels are kept, the rule before.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def heldout_agreement(metrics: dict, labels: np.ndarray) -> tuple[float, float] | None:
    """``(kappa, standard error)`` of finetune's held-out top-1 (validation and test splits pooled) on the
    labels it was trained on, or None when the metrics hold no held-out figure."""
    final = metrics.get("final") if isinstance(metrics, dict) else None
    if not isinstance(final, dict):
        return None
    hits = count = 0.0
    for part in ("val", "test"):
        top1, n = final.get(f"{part}_top1"), final.get(f"n_{part}")
        if isinstance(top1, (int, float)) and isinstance(n, int) and n > 0 and math.isfinite(top1):
            hits, count = hits + top1 * n, count + n
    if not count:
        return None
    shares = np.bincount(np.asarray(labels)) / len(labels)
    chance = float((shares ** 2).sum())
    if chance >= 1:
        return None
    accuracy = hits / count
    se = math.sqrt(max(accuracy * (1 - accuracy), 1 / count) / count) / (1 - chance)
    return (accuracy - chance) / (1 - chance), se


def read_metrics(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def kept_iteration(scores: dict[int, tuple[float, float]], last_labels: int) -> tuple[int, str]:
    """``(s, why)``: the iteration whose labels to keep among ``0..last_labels`` given each scored iteration's
    ``(kappa, se)``; the latest within one standard error of the best, or ``last_labels`` when none is scored."""
    scored = {s: v for s, v in scores.items() if s <= last_labels}
    if not scored:
        return last_labels, "no held-out agreement measured (finetune --split none?): the last labels"
    best = max(scored, key=lambda s: (scored[s][0], s))
    kappa, se = scored[best]
    near = [s for s, (k, _) in scored.items() if k >= kappa - se]
    if last_labels not in scored:  # the last labels have no model yet that measured them
        near = [s for s in near if s >= best]
    kept = max(near)
    table = ", ".join(f"{s}: {k:.3f}" for s, (k, _) in sorted(scored.items()))
    why = (f"held-out agreement (kappa) per iteration's labels {table}; best {kappa:.3f} ± {se:.3f} at iteration "
           f"{best}; kept iteration {kept}'s, the latest within one standard error of the best")
    return kept, why


RULES = ("auto", "last", "heldout", "consensus")


def resolved(rule: str, k: str) -> str:
    """The rule ``--keep rule`` applies in a run whose ``--k`` is ``k``: ``auto`` is ``consensus`` when K is
    chosen from the data (``auto``), else ``last``; the other rules are themselves."""
    if rule != "auto":
        return rule
    return "consensus" if k == "auto" else "last"


def kept_by_rule(rule: str, rows: list[dict], last: int) -> tuple[int, str]:
    """``(s, why)`` by ``--keep`` ``rule`` (resolved: not ``auto``): ``last`` keeps the labels the last model was trained on (iteration 0's
    when no fine-tuning ran), ``heldout`` those of :func:`kept_from_history`. ``consensus`` keeps the last model
    too, and its labels number the consensus of every iteration's clustering that ``final/labels.csv`` then
    holds (:mod:`ldpo.common.loop.consensus`)."""
    if rule == "heldout":
        return kept_from_history(rows, last)
    if last <= 0:
        return 0, "no fine-tuning iteration ran: iteration 0's labels"
    scores = scores_from_history(rows)
    table = ", ".join(f"{s}: {k:.3f}" for s, (k, _) in sorted(scores.items()) if s < last)
    said = ("the consensus of every iteration's clustering, numbered as the classes of the last model (--keep "
            "consensus, the default where K is chosen from the data)" if rule == "consensus" else
            "the labels the last model was trained on (--keep last, the default where K is given)")
    return last - 1, said + (f"; held-out agreement (kappa) per iteration's labels {table}" if table else "")


def scores_from_history(rows: list[dict]) -> dict[int, tuple[float, float]]:
    """``{iteration: (kappa, se)}`` of the history rows that have a held-out agreement."""
    out = {}
    for r in rows:
        try:
            out[int(r["iteration"])] = (float(r["heldout"]), float(r["heldout_se"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def kept_from_history(rows: list[dict], last: int) -> tuple[int, str]:
    """``(s, why)`` when ``last`` is the last iteration run: iteration 0 when no fine-tuning ran, else the
    labels of :func:`kept_iteration` among ``0..last - 1`` (those a model was trained on)."""
    if last <= 0:
        return 0, "no fine-tuning iteration ran: iteration 0's labels"
    return kept_iteration(scores_from_history(rows), last - 1)
