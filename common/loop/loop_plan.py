"""The stage command lines of ``pipelines/ldpo-loop.sh``, one function per step of the loop: what
each stage gets is decided here, from the loop's options (:mod:`ldpo.common.loop.loop_options`) and
the work folder's layout (:class:`ldpo.common.loop.workdir.Layout`), and unit-tested without a loop.

A stage gets an option only when the user set it (or the loop declares its own default, ``passed``);
``NAME_CMD`` swaps a stage's command and ``NAME_ARGS`` adds words to it (word-split).
"""

from __future__ import annotations

import os

from .loop_options import Parsed, layer
from .workdir import Layout, final_labels_iteration, stage_command


def given(parsed: Parsed, *names: str) -> list[str]:
    """``--name value`` (or ``--flag``) of each option the loop passes on."""
    words: list[str] = []
    for name in names:
        if not parsed.passed(name):
            continue
        value = getattr(parsed.opts, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, parsed.text(name)]
    return words


def extra(stage: str) -> list[str]:
    return os.environ.get(f"{stage.upper()}_ARGS", "").split()


def common(parsed: Parsed) -> list[str]:
    """The flags every stage shares, as the user set them."""
    return given(parsed, "seed", "device", "workers", "verbose", "quiet", "no_progress")


def words(parsed: Parsed) -> list[str]:
    """How the report readers (keywords, the reports tree) find findings: the vocabulary and which mentions count."""
    return [*(["--vocabulary", parsed.opts.vocabulary] if parsed.opts.vocabulary else []),
            *given(parsed, "mentions")]


def model_spec(parsed: Parsed, layout: Layout, t: int) -> str:
    """The model of iteration ``t``: ``--init`` at iteration 0, then finetune's checkpoint of iteration ``t``."""
    return parsed.opts.init if t == 0 else "checkpoint:" + layout.iteration(t, "model.pt")


def clustered_store(opts, layout: Layout, t: int) -> str:
    """The store iteration ``t`` clustered: its encoding, else its features."""
    return layout.iteration(t, "encoded.h5" if opts.encode != "none" else "features.h5")


def first_clustered(opts) -> int:
    """The first iteration that featurized and clustered: 0, or 1 where iteration 0's labels were given
    (``--init-labels``: iteration 0 wrote no store)."""
    return 1 if opts.init_labels else 0


def neighbours(parsed: Parsed, layout: Layout, t: int) -> list[str]:
    """finetune's neighbour consistency (``--neighbour-weight``): its neighbours are mined in the store the
    labels it trains on were clustered from (none where iteration 0's labels were given)."""
    opts = parsed.opts
    if not opts.neighbour_weight or (t == 1 and opts.init_labels):
        return []
    return ["--neighbours", clustered_store(opts, layout, t - 1), "--neighbour-weight", str(opts.neighbour_weight)]


def cluster_k(parsed: Parsed, layout: Layout, t: int) -> str:
    """``--k`` of iteration ``t``'s clustering: the user's; with ``auto``, iteration 0 chooses (cluster --k auto) and
    later iterations keep the count of iteration 0's labels (re-estimating it on features fine-tuned to those
    labels would only find them again)."""
    k = parsed.opts.k
    if k != "auto" or t == 0:
        return k
    from ..files.labels import read_labels

    first = layout.iteration(0, "labels.csv")
    return str(len(set(read_labels(first).labels.tolist()))) if os.path.isfile(first) else k


def size_prior(parsed: Parsed, layout: Layout, t: int) -> list[str]:
    """Under ``--k auto`` scan's balance term follows the data's sizes: iteration 0's graph communities (cluster's
    own default), then the previous iteration's labels, never equal sizes that would split a large category."""
    if parsed.opts.k != "auto" or t == 0 or parsed.opts.method != "scan":
        return []
    return ["--size-prior", layout.iteration(t - 1, "labels.csv")]


def loop_settings(parsed: Parsed, layout: Layout) -> dict:
    """What the loop itself needs to know."""
    opts = parsed.opts
    return {"work": opts.work, "lock": layout.lock, "max_iter": opts.max_iter,
            "early_stop": 0 if opts.no_early_stop else 1, "init_labels": opts.init_labels,
            "quiet": 1 if opts.quiet else 0}


def iteration(parsed: Parsed, layout: Layout, t: int) -> dict:
    """Iteration ``t``'s folder, outputs and command lines: ``finetune`` (from iteration 1 on, on the previous
    iteration's labels), ``featurize``, ``encode`` and ``cluster``; an empty command is a step not taken."""
    opts = parsed.opts
    spec = model_spec(parsed, layout, t)
    prev_labels = layout.iteration(t - 1, "labels.csv") if t > 0 else ""
    out = {"name": layout.iteration_name(t), "dir": layout.iteration(t), "model": layout.iteration(t, "model.pt"),
           "features": layout.iteration(t, "features.h5"), "encoded": layout.iteration(t, "encoded.h5"),
           "labels": layout.iteration(t, "labels.csv"), "converge_txt": layout.iteration(t, "converge.txt")}
    finetune: list[str] = []
    if t > 0:
        before = model_spec(parsed, layout, t - 1)
        finetune = [*stage_command("finetune"), opts.images, prev_labels, "--out", out["model"], "--init", before,
                    *given(parsed, "arch", "epochs", "split", "input_size", "normalize", "batch_size"), "--resume",
                    *given(parsed, "lr"), *extra("finetune"), *given(parsed, "balanced", "amp")]
        # a checkpoint keeps its input filter; its head is replaced (new clusters are new classes)
        finetune += ["--new-head"] if before.startswith("checkpoint:") else given(parsed, "input_filter")
        finetune += neighbours(parsed, layout, t) + common(parsed)
    inputs = [] if spec.startswith("checkpoint:") else given(parsed, "input_size", "normalize", "input_filter")
    featurize = [*stage_command("featurize"), opts.images, "--out", out["features"], "--init", spec,
                 "--layer", layer(opts), *inputs, *given(parsed, "batch_size", "arch", "amp"), *extra("featurize"),
                 *common(parsed)]
    encode: list[str] = []
    clustered = out["features"]
    if opts.encode == "patches":  # encode makes its own patch features from the images and this model
        featurize = []
        encode = [*stage_command("encode"), opts.images, "--out", out["encoded"], "--method", "patches",
                  "--model", spec, *(["--labels", prev_labels] if t > 0 else []), *inputs,
                  *(["--layer", opts.layer] if opts.layer else []), *given(parsed, "arch"), *extra("encode"),
                  *common(parsed)]
    elif opts.encode != "none":
        encode = [*stage_command("encode"), out["features"], "--out", out["encoded"], "--method", opts.encode,
                  *extra("encode"), *common(parsed)]
    if encode:
        clustered = out["encoded"]
    cluster = [*stage_command("cluster"), clustered, "--out", out["labels"], *given(parsed, "method"),
               "--k", cluster_k(parsed, layout, t), *size_prior(parsed, layout, t),
               "--summary", layout.iteration(t, "clusters"), *extra("cluster"), *common(parsed)]
    if t == 0 and opts.init_labels:  # the given labels stand for iteration 0's clustering
        featurize, encode, cluster = [], [], []
    return {**out, "finetune": finetune, "featurize": featurize, "encode": encode, "cluster": cluster}


def converge(parsed: Parsed, layout: Layout, t: int) -> list[str]:
    """converge for iteration ``t`` (its output goes to ``iter-NN/converge.txt``)."""
    opts = parsed.opts
    words = [*stage_command("converge"), layout.iteration(t, "labels.csv")]
    if t > 0:
        words += ["--prev", layout.iteration(t - 1, "labels.csv")]
    if opts.truth:
        words += ["--truth", opts.truth]
    if os.path.isfile(layout.iteration(t, "model.metrics.json")):
        words += ["--metrics-json", layout.iteration(t, "model.metrics.json")]
    if opts.manifest:  # agreement with the manifest's header fields (evaluation only) -> history.fields.csv
        words += ["--fields", opts.manifest]
    return words + ["--history", layout.history, "--iteration", str(t), *given(parsed, "metric", "threshold"),
                    "--patience", str(opts.patience), "--plot", layout.history_plot, "--quiet"]


def final(parsed: Parsed, layout: Layout, last: int) -> dict:
    """After the loop: the final model's class probabilities, the category tree, keywords, report; an empty
    command is a step not taken."""
    opts = parsed.opts
    out = {"probs_h5": layout.final("probs.h5"), "tree_json": layout.final("tree/tree.json"),
           "levels_txt": layout.final("levels.txt"), "keywords_html": layout.final("keywords/index.html"),
           "report_html": layout.report("index.html")}
    probs: list[str] = []
    hierarchy: list[str] = []
    if last > 0:
        trained = final_labels_iteration(last, layout) + 1  # the model trained on the kept labels
        model = "checkpoint:" + layout.iteration(trained, "model.pt")
        probs = [*stage_command("featurize"), opts.images, "--out", out["probs_h5"], "--init", model,
                 "--layer", "probs", *given(parsed, "batch_size", "amp"), *common(parsed)]
        tree = given(parsed, "tree_affinity", "tree_preference")
        tree = ["--affinity" if w == "--tree-affinity" else "--preference" if w == "--tree-preference" else w
                for w in tree]
        if opts.tree_affinity == "centroids":  # the final model's features, as the last clustering saw them
            tree += ["--features", clustered_store(opts, layout, trained)]
        elif opts.tree_affinity == "reports":
            tree += ["--reports", opts.reports, "--manifest", opts.manifest, *words(parsed)]
        hierarchy = [*stage_command("hierarchy"), out["probs_h5"], layout.final("labels.csv"), "--out",
                     layout.final("tree"), *tree, "--signals", clustered_store(opts, layout, first_clustered(opts)),
                     *common(parsed)]
    keywords: list[str] = []
    if opts.reports:
        keywords = [*stage_command("keywords"), layout.final("labels.csv"), "--manifest", opts.manifest,
                    "--reports", opts.reports, "--images", opts.images, "--out", layout.final("keywords"),
                    *words(parsed), *common(parsed)]
    report = [*stage_command("report"), opts.work, "--out", layout.report(), *common(parsed)]
    return {**out, "probs": probs, "hierarchy": hierarchy, "keywords": keywords, "report": report}
