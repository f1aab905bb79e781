"""``hierarchy``: the category tree from the converged model's class confusion (Wang et al. 2017, Sec. 3.5),
or from its features, or from the images' reports.

PROBS is a feature store ``features`` [N,K] of softmax scores (``featurize --layer
probs``), its attribute ``classes`` giving the label value of each column (absent:
columns are labels 0..K-1, with a warning). LABELS (id,label) are the labels the
model was trained on, joined by id.

Level 0 holds the classes that have images. With P(b|a) the mean, over images of
group a, of their summed scores for the classes of group b (Eq. 6–7: scores of merged
classes add up), the affinity of two groups is A = ½(C(a,b) + C(b,a)) where C is P
itself (``--affinity confusion``, the paper's) or, by default (``--affinity lift``),
P(b|a) / P(b) with P(b) the mean score of group b over all images: how much more often
than by chance the model mistakes a for b. The lift keeps a few large categories that
soak up probability everywhere (a model that learned little) from pulling every
category into one group at once.

``--affinity centroids`` uses the model's features instead of its softmax: ``--features
STORE`` (``features`` [N,D], joined by id; the loop passes the final model's, the last
iteration's ``features.h5``, or ``encoded.h5`` with ``--encode``). Each image's vector is
L2-normalized (as ``cluster`` sees it), a group's centroid is the mean over its images
minus the mean over all images, and A is the cosine of two centroids. Centering matters:
the features are non-negative (ReLU), so uncentered centroids all point the same way
(cosines 0.85–0.97 on the toy PACS). The centroids do not depend on the classifier head,
so they still mean something when the head's softmax has collapsed onto one class (seen
on the toy PACS). Measured on the toy sets (README, "The category tree": three demo-size
Texture-25 runs, one 25-class run, three toy PACS runs), none of these three
affinities' first merges follows the truth's families better than chance, and centroids
do not beat lift, so the default stays ``lift``.

``--affinity reports`` reads what the images' reports say instead (``--reports`` and
``--manifest``, as ``keywords`` takes them; every labelled image must have its report):
a group's words are counted over the distinct reports of its images (cleaned as
``keywords`` cleans them), weighted by their inverse document frequency over all those
reports (TF-IDF), and A is the cosine of two groups' word vectors; with ``--mentions
affirmed`` (the default) the words of negated and uncertain finding mentions are left out
first (:mod:`ldpo.common.nlp.mentions`, terms from ``--vocabulary``). On an archive with
reports this is the affinity that follows the body region (README, "The category tree").

Each level merges the groups of the level below by scikit-learn's affinity
propagation on A (precomputed). The preference starts at the paper's, the median of
the off-diagonal affinities, or at the ``--preference`` quantile: a higher one makes
smaller groups, so that each level joins only the groups most alike (with ``reports``
on the toy PACS, 0.9 joins exactly the CT and MR categories of each region). When that
merges nothing (all groups stay apart) or everything (one group of more than two),
the other quantiles are tried (lower first: 0.25, 0.1, 0, below the minimum, then
0.75, 0.9), and when none gives between 2 and G-1 groups, average-linkage
agglomerative clustering on the affinity cuts the G groups into ⌈G/2⌉. So every level merges something and the tree of K > 2
categories always has a level between the leaves and the root. Two groups left join
at the root. ``--max-levels`` caps the rounds; the remaining groups are then merged
into the root in one forced step, which is logged and recorded in tree.json.

PROBS must be a probs store: without the attribute ``classes`` (as ``featurize
--layer probs`` writes it) it is refused.

Writes into ``--out`` DIR:

* ``tree.json``: the root node; every node has ``id`` ("L<level>-<index>"), ``level``,
  ``index``, ``size`` (images), ``classes`` (member label values) and ``children``;
  the root also has ``levels`` (group count per level), ``merged_by`` (how each level
  above 0 was made), ``affinity``, ``preference``, ``features`` (with ``centroids``),
  ``reports`` and ``manifest`` (with ``reports``) and ``forced_final_merge``;
* ``levels.csv``: ``id,level0,level1,…`` (level0 = the image's label, level j = its
  group index at level j; the last level is the root, 0);
* ``tree.png``: a dendrogram of the levels.

Prints ``levels: 25, 7, 2, 1`` (group count per level) on stdout.

Why one module of this size (about 530 lines): the four affinities, affinity propagation over them
and the tree's files are one command whose parts share the levels they build.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.cli import CommonOptions, Tool, opt, positional, progress
from ..common.errors import InputError
from ..common.files.folders import check_output_folder, output_folder
from ..common.files.labels import align, read_labels
from ..common.nlp.mentions import MENTION_MODES, MENTIONS_HELP, VOCABULARY_HELP, keep_mentions
from ..common.files.plots import pyplot, save_png
from ..common.files.stores import atomic_path, open_store
from ..common.files.tables import write_csv

log = logging.getLogger("ldpo")

#: the files written in the --out folder
OUTPUT_NAMES = ("tree.json", "levels.csv", "tree.png")


@dataclass(kw_only=True)
class Options(CommonOptions):
    probs: str = positional("store of softmax scores: features [N,K], attribute `classes` (featurize --layer probs)",
                            role="input")
    labels: str = positional("labels CSV (id,label) the model was trained on", role="input")
    out: str = opt("output folder for tree.json, levels.csv, tree.png", role="output-folder")
    damping: float = opt("affinity propagation damping", 0.7, min=0.5, below=1)
    preference: float = opt("affinity propagation's preference, as a quantile of the off-diagonal affinities "
                            "(0.5 = the median, the paper's; higher = smaller groups per level, more levels)", 0.5,
                            min=0, max=1)
    affinity: str = opt("lift: confusion relative to each group's overall score (default); confusion: the "
                        "paper's raw confusion; centroids: cosine of the groups' mean features (needs --features); "
                        "reports: cosine of the groups' report words (needs --reports and --manifest)",
                        "lift", choices=["lift", "confusion", "centroids", "reports"])
    features: str = opt("feature store (features [N,D], the same ids as PROBS) for --affinity centroids, e.g. the "
                        "last iteration's iter-NN/features.h5", "", role="input")
    reports: str = opt("extract-keyimages' OUT/reports.csv (scrubbed), for --affinity reports; other reports "
                       "(CSV report_id,text or a folder of .txt) are scrubbed by pattern on reading", "",
                       role="input")
    manifest: str = opt("key-image manifest CSV (id,report_id,…) joining images to --reports", "", role="input")
    mentions: str = opt(MENTIONS_HELP + " (--affinity reports)", "affirmed", choices=list(MENTION_MODES))
    vocabulary: str = opt(VOCABULARY_HELP + " (--affinity reports)", "", role="input")
    max_levels: int = opt("affinity-propagation rounds at most before the final merge is forced", 20, min=1)
    signals: str = opt("feature store (same ids) in which to score every level without labels: the modularity of the "
                       "level's groups in the 10-nearest-neighbour graph of these features (the loop passes iteration "
                       "0's, which no labels trained); in tree.json (level_signals) and printed", "", role="input")
    batch_size: int = opt("rows read per batch", 8192, min=1, aliases=["--batch"])


class HierarchyTool(Tool):
    name = "hierarchy"
    description = ("Build the category tree: affinity propagation on the class confusion of the final model "
                   "(by default relative to each class's overall score: --affinity lift; or the cosine of the "
                   "categories' mean features: --affinity centroids --features STORE; or of their report "
                   "words: --affinity reports --reports R --manifest M), merged level by level "
                   "up to one root; every level merges something, so K > 2 categories get at least one level "
                   "between the categories and the root. Writes tree.json, levels.csv, tree.png; prints the "
                   "group count per level.")
    example = ("hierarchy probs.h5 labels_final.csv --out tree/ --seed 0\n"
               "hierarchy final/probs.h5 final/labels.csv --out final/tree --affinity centroids "
               "--features iter-05/features.h5\n"
               "hierarchy final/probs.h5 final/labels.csv --out final/tree --affinity reports "
               "--reports reports.csv --manifest keyimages/manifest.csv")
    Options = Options

    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        """The output folder and every file written in it (checked before anything is computed)."""
        return super().outputs(opts) + [("--out", str(Path(opts.out) / name)) for name in OUTPUT_NAMES]

    def main(self, opts: Options) -> int:
        check_output_folder(opts.out, self.name)  # before any work (and again when writing)
        if opts.affinity == "centroids" and not opts.features:
            raise InputError("--affinity centroids needs --features STORE (the final model's feature store, e.g. "
                             "the last iteration's features.h5)")
        if opts.features and opts.affinity != "centroids":
            raise InputError(f"--features {opts.features}: only --affinity centroids uses it "
                             f"(--affinity is {opts.affinity})")
        if opts.affinity == "reports" and not (opts.reports and opts.manifest):
            raise InputError("--affinity reports needs --reports (the reports) and --manifest (the manifest that "
                             "joins images to them)")
        for flag, value in (("--reports", opts.reports), ("--manifest", opts.manifest),
                            ("--vocabulary", opts.vocabulary)):
            if value and opts.affinity != "reports":
                raise InputError(f"{flag} {value}: only --affinity reports uses it (--affinity is {opts.affinity})")
        ids, row_class, classes, sums, counts = read_scores(opts.probs, opts.labels, opts.batch_size)
        present = np.flatnonzero(counts > 0)
        if len(present) < len(classes):
            log.warning("%d of %d classes have no images in %s; left out of the tree", len(classes) - len(present),
                        len(classes), opts.labels)
        if opts.affinity == "centroids":
            feature_sums = read_feature_sums(opts.features, ids, row_class, len(classes), opts.batch_size,
                                             opts.probs)
            affinity_of = lambda members: centroid_affinity(feature_sums, counts, members)  # noqa: E731
        elif opts.affinity == "reports":
            words, incidence = read_report_words(opts.reports, opts.manifest, opts.labels, ids, row_class,
                                                 len(classes), opts.mentions, opts.vocabulary or None)
            affinity_of = lambda members: report_affinity(words, incidence, members)  # noqa: E731
        else:
            affinity_of = lambda members: affinity(sums, counts, members, opts.affinity)  # noqa: E731
        groups, forced, how = build_levels(affinity_of, len(classes), present, opts.damping, opts.max_levels,
                                           opts.seed, opts.preference)
        sizes = [len(level) for level in groups]
        tree = tree_json(groups, classes, counts, forced)
        tree.update(merged_by=how, affinity=opts.affinity, preference=opts.preference)
        if opts.features:
            tree.update(features=opts.features)
        if opts.reports:
            tree.update(reports=opts.reports, manifest=opts.manifest)
        if opts.signals:
            tree["level_signals"] = level_signals(opts.signals, ids, row_class, classes, groups, opts.seed,
                                                  opts.batch_size)
        with output_folder(opts.out, self.name, OUTPUT_NAMES) as folder:
            out = folder.path
            with atomic_path(out / "tree.json") as tmp:
                tmp.write_text(json.dumps(tree, indent=1) + "\n", encoding="utf-8")
            write_levels(out / "levels.csv", ids, row_class, classes, groups)
            draw_tree(out / "tree.png", groups, classes, counts)
        print("levels: " + ", ".join(str(s) for s in sizes))
        for item in tree.get("level_signals", []):
            print(f"level {item['level']}: {item['groups']} groups, modularity {item['modularity']:.3f}")
        return 0


def level_signals(path: str, ids: list[str], row_class: np.ndarray, classes: list[int], levels, seed: int,
                  batch: int) -> list[dict]:
    """Per level: its group count and the modularity of its groups in the nearest-neighbour graph of the features at
    ``path`` (``cluster --k auto``'s graph; higher: the level's groups follow the features' own communities)."""
    from ..common.numerics.graph import NEIGHBOURS, neighbour_graph, partition_modularity

    with open_store(path) as store:
        row_of = {ident: i for i, ident in enumerate(store.ids)}
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise InputError(f"{path}: {len(missing)} id(s) are not in it, e.g. {missing[0]!r}")
        x = np.concatenate([block for _, _, block in store.batches("features", batch)])
    x = x[[row_of[i] for i in ids]]
    graph = neighbour_graph(x, min(NEIGHBOURS, len(x) - 1), "cpu", seed)
    out = []
    for j, column in enumerate(leaf_columns(levels)):
        group_of = np.empty(len(classes), dtype=np.int64)
        for g, members in enumerate(column):
            group_of[members] = g
        labels = group_of[row_class]
        out.append({"level": j, "groups": len(column), "modularity": partition_modularity(graph, labels)})
    return out


def read_scores(probs_path: str, labels_path: str, batch: int):
    """ids, each row's class column, the class values, per-class score sums [K,K] and counts [K]."""
    with open_store(probs_path) as store:
        if store.kind != "features":
            raise InputError(f"{probs_path}: holds {store.kind}, not softmax scores: run `featurize --layer probs`")
        n, k = store.shape("features")
        classes = class_values(store.attrs, k, probs_path)
        ids = store.ids
        labels = align(read_labels(labels_path), ids, probs_path)
        column = {value: j for j, value in enumerate(classes)}
        unknown = sorted(set(np.unique(labels).tolist()) - set(column))
        if unknown:
            raise InputError(f"{labels_path}: label {unknown[0]} is not one of the {k} classes of {probs_path}")
        row_class = np.array([column[v] for v in labels.tolist()], dtype=np.int64)
        sums = np.zeros((k, k), dtype=np.float64)
        for lo, hi, block in progress(store.batches("features", batch), desc="scores", total=-(-n // batch)):
            if not np.isfinite(block).all() or (block < 0).any():
                raise InputError(f"{probs_path}: rows {lo}..{hi} hold negative or non-finite scores: "
                                 "softmax probabilities are needed (featurize --layer probs)")
            np.add.at(sums, row_class[lo:hi], block.astype(np.float64))
    counts = np.bincount(row_class, minlength=k).astype(np.float64)
    return ids, row_class, classes, sums, counts


def read_feature_sums(path: str, ids: list[str], row_class: np.ndarray, k: int, batch: int,
                      probs_path: str) -> np.ndarray:
    """Per-class sums [K,D] of the L2-normalized feature vectors of ``path``, joined to ``ids`` by id."""
    with open_store(path) as store:
        if store.kind != "features":
            what = "local features [N,S,C]" if store.kind == "local" else store.kind
            raise InputError(f"{path}: holds {what}, not one feature vector per image: give a global feature store "
                             "(featurize's default layer, or encode's output)")
        n, d = store.shape("features")
        feature_ids = store.ids
        column = {ident: c for ident, c in zip(ids, row_class.tolist())}
        rows = np.array([column.get(ident, -1) for ident in feature_ids], dtype=np.int64)
        if (rows < 0).any():
            first = feature_ids[int(np.flatnonzero(rows < 0)[0])]
            raise InputError(f"{path}: {int((rows < 0).sum())} ids are not in {probs_path} (first: {first}): "
                             "the features must be of the same images")
        if n < len(ids):
            have = set(feature_ids)
            first = next(ident for ident in ids if ident not in have)
            raise InputError(f"{path}: {len(ids) - n} images of {probs_path} have no feature vector (first: {first})")
        sums = np.zeros((k, d), dtype=np.float64)
        for lo, hi, block in progress(store.batches("features", batch), desc="features", total=-(-n // batch)):
            block = block.astype(np.float64)
            if not np.isfinite(block).all():
                raise InputError(f"{path}: rows {lo}..{hi} hold non-finite features")
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            np.add.at(sums, rows[lo:hi], block / np.maximum(norms, 1e-12))
    return sums


def read_report_words(reports_path: str, manifest_path: str, labels_path: str, ids: list[str],
                      row_class: np.ndarray, k: int, mentions: str = "affirmed", vocabulary: str | None = None):
    """The cleaned word counts of every report of a labelled image (sparse [R, V]), and which
    reports each class's images come from (0/1, sparse [K, R]). With ``mentions="affirmed"``
    the words of negated and uncertain finding mentions are not counted (:mod:`ldpo.common.nlp.mentions`)."""
    from scipy import sparse

    from ..common.nlp.text import Cleaner, read_manifest, read_reports

    manifest = read_manifest(manifest_path)
    reports = read_reports(reports_path)
    row = manifest.index()
    absent = [i for i in ids if i not in row]
    if absent:
        raise InputError(f"{labels_path}: {len(absent)} id(s) not in the manifest {manifest_path}, e.g. {absent[0]!r}")
    report_of = [manifest.rows[row[i]]["report_id"] for i in ids]
    orphans = [i for i, r in zip(ids, report_of) if r not in reports]
    if orphans:
        raise InputError(f"{manifest_path}: {len(orphans)} labelled id(s) refer to no report in {reports_path}, "
                         f"e.g. {orphans[0]!r}")
    used = list(dict.fromkeys(report_of))  # each report once, in first-use order
    reports = keep_mentions({r: reports[r] for r in used}, mentions, vocabulary, reports_path)
    column = {r: j for j, r in enumerate(used)}
    cleaner, vocab = Cleaner(), {}
    cells: dict[tuple[int, int], int] = {}
    for j, rid in enumerate(used):
        for word in cleaner.words(reports[rid]):
            key = (j, vocab.setdefault(word, len(vocab)))
            cells[key] = cells.get(key, 0) + 1
    if not vocab:
        raise InputError(f"{reports_path}: the labelled images' reports hold no usable words")
    rr, cc = zip(*cells) if cells else ((), ())
    words = sparse.csr_matrix((list(cells.values()), (rr, cc)), shape=(len(used), len(vocab)), dtype=np.float64)
    incidence = sparse.csr_matrix((np.ones(len(ids)), (row_class, [column[r] for r in report_of])),
                                  shape=(k, len(used)), dtype=np.float64)
    incidence.data[:] = 1.0  # duplicates were summed: several images of one class and report count once
    return words, incidence


def class_values(attrs: dict, k: int, path: str) -> list[int]:
    raw = attrs.get("classes")
    if raw is None:
        raise InputError(f"{path}: not a probs store (no `classes` attribute): make it with "
                         "`featurize --layer probs --init checkpoint:MODEL.pt`")
    if attrs.get("target") == "words":  # written by an older featurize --layer probs of a finetune --vectors model
        raise InputError(f"{path}: holds word-vector outputs (target words), not class probabilities")
    if not isinstance(raw, (list, tuple)) or len(raw) != k:
        raise InputError(f"{path}: attribute `classes` must list {k} label values, one per column")
    try:
        values = [int(v) for v in raw]
    except (TypeError, ValueError):
        raise InputError(f"{path}: attribute `classes` holds a non-integer label value") from None
    if len(set(values)) != k:
        raise InputError(f"{path}: attribute `classes` repeats a label value")
    return values


def affinity(sums: np.ndarray, counts: np.ndarray, members: np.ndarray, kind: str = "lift") -> np.ndarray:
    """A = ½(C + Cᵀ) for groups given by the 0/1 matrix ``members`` [G, K] (Eq. 6–7).

    C(a,b) = P(b|a), the mean summed score of group b over group a's images
    (``confusion``), or P(b|a) / P(b), P(b) its mean over all images (``lift``).
    """
    group_sums = members @ sums @ members.T  # [a, b]: scores of group a's images summed over group b
    p = group_sums / (members @ counts)[:, None]
    if kind == "lift":
        prior = group_sums.sum(axis=0) / counts.sum()
        p = p / np.maximum(prior, 1e-12)[None, :]
    return 0.5 * (p + p.T)


def centroid_affinity(feature_sums: np.ndarray, counts: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Cosine of the groups' centroids, each taken relative to the centroid of all images.

    ``feature_sums`` [K,D] sums the L2-normalized features of each class's images.
    """
    overall = feature_sums.sum(axis=0) / counts.sum()
    centroids = (members @ feature_sums) / (members @ counts)[:, None] - overall[None, :]
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = centroids / np.maximum(norms, 1e-12)
    return unit @ unit.T


def report_affinity(words, incidence, members: np.ndarray) -> np.ndarray:
    """Cosine of the groups' TF-IDF word vectors: a group's term counts summed over the distinct
    reports of its images, weighted by the words' smoothed inverse document frequency over all
    the reports."""
    from scipy import sparse

    n_reports = words.shape[0]
    df = np.asarray((words > 0).sum(axis=0)).ravel()
    idf = np.log((1.0 + n_reports) / (1.0 + df)) + 1.0
    group_reports = (sparse.csr_matrix(members) @ incidence) > 0
    tfidf = (group_reports.astype(np.float64) @ words) @ sparse.diags(idf)
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    unit = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ tfidf
    a = np.asarray((unit @ unit.T).todense())
    np.fill_diagonal(a, 1.0)
    return a


def propagate(a: np.ndarray, damping: float, seed: int, preference: float | None = None) -> np.ndarray | None:
    """Affinity-propagation labels 0..G'-1, or None when it did not converge."""
    from sklearn.cluster import AffinityPropagation
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="All samples have mutually equal similarities")
        ap = AffinityPropagation(affinity="precomputed", damping=damping, max_iter=1000, convergence_iter=30,
                                 preference=preference, random_state=seed).fit(a)
    labels = np.asarray(ap.labels_)
    if len(ap.cluster_centers_indices_) == 0 or (labels < 0).any():
        return None
    return np.unique(labels, return_inverse=True)[1]


#: preference quantiles of the off-diagonal affinities, tried in order ("below" = under the minimum)
PREFERENCES = (0.5, 0.25, 0.1, 0.0, "below", 0.75, 0.9)


def preference_ladder(first: float = 0.5) -> tuple:
    """``first``, then the default ladder without it."""
    return (first,) + tuple(q for q in PREFERENCES if q != first)


def merge_level(a: np.ndarray, damping: float, seed: int, first: float = 0.5) -> tuple[np.ndarray, str]:
    """Group labels for one level that merge something but not everything (for G > 2), and how.

    Affinity propagation's preference starts at the ``first`` quantile of the off-diagonal
    affinities (the paper's median: 0.5)."""
    g = len(a)
    off = a[~np.eye(g, dtype=bool)]
    lo, hi = float(off.min()), float(off.max())
    for q in preference_ladder(first):
        pref = lo - (hi - lo) - 1e-9 if q == "below" else float(np.quantile(off, q))
        assign = propagate(a, damping, seed, pref)
        if assign is not None and 1 < assign.max() + 1 < g:
            what = "the median" if q == 0.5 else "below the minimum" if q == "below" else f"the {q} quantile"
            return assign, f"affinity propagation, preference {what} of the affinities"
    from sklearn.cluster import AgglomerativeClustering

    distance = np.maximum(hi - a, 0.0)
    np.fill_diagonal(distance, 0.0)
    target = -(-g // 2)
    assign = AgglomerativeClustering(n_clusters=target, metric="precomputed", linkage="average").fit(distance).labels_
    return np.unique(assign, return_inverse=True)[1], f"average-linkage agglomerative into {target} groups " \
        "(affinity propagation merged nothing or everything)"


def build_levels(affinity_of, k: int, present: np.ndarray, damping: float, max_levels: int,
                 seed: int, preference: float = 0.5) -> tuple[list[list[list[int]]], bool, list[str]]:
    """Levels of groups; a group lists the indices of its children in the level below.

    ``affinity_of(members)`` gives the [G,G] affinity of the groups that the 0/1 matrix
    ``members`` [G,K] makes of the K class columns. Level 0 lists the class columns
    themselves (one per group). Returns the levels, whether the last merge was forced,
    and how each level above 0 was made.
    """
    levels: list[list[list[int]]] = [[[int(c)] for c in present]]
    leaves: list[list[int]] = [[int(c)] for c in present]  # class columns under each group of the top level
    forced = False
    how: list[str] = []
    while len(leaves) > 1:
        members = np.zeros((len(leaves), k))
        for g, cols in enumerate(leaves):
            members[g, cols] = 1.0
        if len(leaves) == 2:  # nothing to choose: the last two groups meet at the root
            assign, why = np.zeros(2, dtype=np.int64), "the last two groups join at the root"
        elif len(levels) <= max_levels:
            assign, why = merge_level(affinity_of(members), damping, seed, preference)
        else:
            log.warning("forcing the final merge of %d groups into the root: the level cap --max-levels was "
                        "reached", len(leaves))
            assign, why, forced = np.zeros(len(leaves), dtype=np.int64), "forced (--max-levels reached)", True
        children = [sorted(np.flatnonzero(assign == g).tolist()) for g in range(assign.max() + 1)]
        children.sort(key=min)
        levels.append(children)
        how.append(why)
        leaves = [sorted(c for child in group for c in leaves[child]) for group in children]
        log.info("level %d: %d groups (%s)", len(levels) - 1, len(children), why)
    return levels, forced, how


def leaf_columns(levels: list[list[list[int]]]) -> list[list[list[int]]]:
    """For every level and group, the class columns under it."""
    out = [[group[:] for group in levels[0]]]
    for level in levels[1:]:
        out.append([sorted(c for child in group for c in out[-1][child]) for group in level])
    return out


def tree_json(levels, classes: list[int], counts: np.ndarray, forced: bool) -> dict:
    cols = leaf_columns(levels)

    def node(level: int, index: int) -> dict:
        members = cols[level][index]
        children = [] if level == 0 else [node(level - 1, c) for c in levels[level][index]]
        return {"id": f"L{level}-{index}", "level": level, "index": index,
                "size": int(sum(counts[c] for c in members)), "classes": [classes[c] for c in members],
                "children": children}

    root = node(len(levels) - 1, 0)
    return {**root, "levels": [len(level) for level in levels], "forced_final_merge": forced}


def write_levels(path: Path, ids: list[str], row_class: np.ndarray, classes: list[int], levels) -> None:
    """``id,level0,…``: each image's label, then its group index at every level."""
    cols = leaf_columns(levels)
    group_of = []  # per level: class column -> group index
    for level in cols:
        lookup = np.full(len(classes), -1, dtype=np.int64)
        for g, members in enumerate(level):
            lookup[members] = g
        group_of.append(lookup)
    header = ["id"] + [f"level{j}" for j in range(len(levels))]
    write_csv(path, header, ([ident, classes[col], *(int(g[col]) for g in group_of[1:])]
                             for ident, col in zip(ids, row_class.tolist())))


def draw_tree(path: Path, levels, classes: list[int], counts: np.ndarray) -> None:
    """A dendrogram: leaves along x in tree order, one horizontal bar per merge at its level."""
    plt = pyplot()

    order: list[int] = []

    def visit(level: int, index: int) -> None:
        if level == 0:
            order.append(index)
        for child in ([] if level == 0 else levels[level][index]):
            visit(level - 1, child)

    visit(len(levels) - 1, 0)
    x = [dict() for _ in levels]
    x[0] = {leaf: pos for pos, leaf in enumerate(order)}
    n_leaves = len(order)
    fig, ax = plt.subplots(figsize=(min(40, max(6, 0.25 * n_leaves)), 1.2 + 1.1 * len(levels)))
    for level in range(1, len(levels)):
        for g, children in enumerate(levels[level]):
            xs = [x[level - 1][c] for c in children]
            x[level][g] = float(np.mean(xs))
            for cx in xs:
                ax.plot([cx, cx], [level - 1, level], color="tab:blue", lw=1)
            ax.plot([min(xs), max(xs)], [level, level], color="tab:blue", lw=1.5)
    size = 7 if n_leaves <= 60 else 4
    ax.set_xticks(range(n_leaves), [f"{classes[levels[0][leaf][0]]}" for leaf in order], rotation=90, fontsize=size)
    ax.set_yticks(range(len(levels)), [f"level {j} ({len(levels[j])})" for j in range(len(levels))])
    ax.set_xlim(-0.5, n_leaves - 0.5)
    ax.set_ylim(-0.3, len(levels) - 0.7)
    ax.set_title(f"category tree: {int(counts.sum())} images, {n_leaves} classes")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    save_png(fig, path)


TOOL = HierarchyTool
main = HierarchyTool.console
