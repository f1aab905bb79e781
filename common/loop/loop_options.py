"""The options of ``pipelines/ldpo-loop.sh``, declared like every stage's (:func:`ldpo.common.cli.opt`
in a dataclass), each with an environment default ``LDPO_NAME`` (``--max-iter`` ← ``LDPO_MAX_ITER``).

Defaults are stated once. An option the user did not set (on the command line or in its
``LDPO_*`` variable) is not passed to the stages, whose own defaults then apply; only where the
loop's default differs from a stage's is it declared here (``passed=True``: ``--k``,
``--method``, and ``--layer``, which the loop chooses from ``--encode``). ``stage=(NAME, OPTION)``
names the stage option an option is passed to: the run record keeps what the user set, else
that stage's declared default (``""`` where the stage decides from its inputs), and the loop's
own settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..cli import CommonOptions, Tool, flag_of, opt
from ..errors import InputError

PROG = "ldpo-loop"
ENCODINGS = ["none", "fv", "vlad", "avg", "max", "patches"]
#: converge --patience of the loop: stop at the 2nd consecutive iteration whose labels agree with the previous ones
PATIENCE = 2

DESCRIPTION = """\
One LDPO run (Algorithm 1 of Wang et al. 2017): featurize -> [encode] -> cluster -> converge, then
finetune on those labels, featurize, cluster, converge, ... until converge's verdict says stop (or
--max-iter), then the final model's class probabilities -> hierarchy [-> keywords] -> report.

Every option has an environment default (LDPO_NAME: --max-iter <- LDPO_MAX_ITER), so a SLURM
script or a Makefile can set them once. Options left unset are not passed: the stages decide
them. Every stage can be swapped without editing the loop: set FEATURIZE_CMD, FINETUNE_CMD,
ENCODE_CMD, CLUSTER_CMD, CONVERGE_CMD, HIERARCHY_CMD, KEYWORDS_CMD or REPORT_CMD to a command that
takes the same arguments and writes the same files (default "ldpo NAME"; LDPO_BIN sets "ldpo").
Extra arguments for one stage (word-split): FEATURIZE_ARGS, FINETUNE_ARGS, ENCODE_ARGS,
CLUSTER_ARGS, e.g. CLUSTER_ARGS="--lam 1e-5" for RIM with hundreds of categories.

The first run writes WORK/run.json (settings, stage commands, input checksums). A rerun with the
same record resumes (a step whose output exists is skipped; a finished run changes no file);
with other settings or inputs it exits 2 naming what differs, unless --restart-from iter-N
(recompute from iteration N on) or --fresh (start over) is given; a change of the --tree-*
settings alone remakes only the tree and the report. Iterations without a valid run.json are
refused the same way. --fresh and --restart-from delete only what the loop wrote: a folder they
would delete that holds anything else is refused, and nothing is deleted. One loop at a time
works in WORK (a lock, released when the loop ends or dies).

Exit status: 0 done; 2 anything that stopped the run (a usage error, a refused work folder, a
failed stage, whatever status it returned)."""

EXAMPLE = """\
pipelines/ldpo-loop.sh --images toy/images.h5 --work runs/t25 --truth toy/truth.csv --k 25 --max-iter 6 --epochs 3
LDPO_DEVICE=cuda pipelines/ldpo-loop.sh --images keys/images.zarr --work runs/pacs --init-labels topics.csv \\
    --reports keys/reports.csv --manifest keys/manifest.csv"""


@dataclass(kw_only=True)
class LoopOptions(CommonOptions):
    images: str = opt("images store (.h5/.zarr) (required)", "", role="input")
    work: str = opt("work folder: run.json, iter-NN/, final/, history.csv, report/ (required)", "")
    truth: str = opt("ground-truth labels CSV, for reporting only", "", role="input")
    reports: str = opt("extract-keyimages' OUT/reports.csv (scrubbed report text), with --manifest", "", role="input")
    manifest: str = opt("manifest CSV from extract-keyimages, with --reports", "", role="input")
    vocabulary: str = opt("findings vocabulary for keywords and the reports tree (one term per line, synonyms "
                          "after |; default: ldpo's list)", "", role="input")
    mentions: Optional[str] = opt("which finding mentions keywords and the reports tree count (stage default: "
                                  "affirmed; all = negated and uncertain ones too)", None, choices=["affirmed", "all"],
                                  says="affirmed or all", stage=("keywords", "mentions"))
    arch: Optional[str] = opt("CNN architecture, or timm:NAME (stage default: resnet18 from random init, alexnet "
                              "from weights)", None, stage=("featurize", "arch"))
    layer: Optional[str] = opt("feature layer clustered (default: multiscale = every stage pooled and "
                               "concatenated; with --encode: local = the architecture's last conv layer)", None,
                               passed=True)
    encode: str = opt("encode a conv layer's local features (patches: encode's own patch features from the "
                      "images and the model)", "none", choices=ENCODINGS, says="one of " + ", ".join(ENCODINGS[:-1])
                      + ", " + ENCODINGS[-1])
    method: str = opt("clustering (scan: neighbour-consistent heads started from k-means)", "scan",
                      choices=["scan", "kmeans", "rim"], passed=True)
    k: str = opt("clusters (rim: the over-segmentation); auto = chosen at iteration 0 from the data (cluster --k "
                 "auto: the communities of the nearest-neighbour graph), then kept", "auto", passed=True)
    metric: Optional[str] = opt("convergence measure (stage default: converge's)", None, choices=["nmi", "purity"],
                                stage=("converge", "metric"))
    threshold: Optional[float] = opt("stop when metric(labels_t, labels_t-1) reaches this (stage default: "
                                     "converge's)", None, min=0, max=1, stage=("converge", "threshold"))
    patience: int = opt("stop when the metric has reached --threshold at this many consecutive iterations (converge "
                        "--patience)", PATIENCE, min=1, says="not a whole number")
    max_iter: int = opt("at most this many fine-tuning iterations", 6, min=0, says="not a whole number")
    keep: str = opt("which clustering final/ keeps: consensus = the consensus of every iteration's clustering, "
                    "numbered as the last model's classes; last = the one the last model was trained on; heldout = "
                    "the latest whose held-out agreement is within one standard error of the best; auto = consensus "
                    "when K is chosen from the data (--k auto), last when K is given (docs/loop.md)",
                    "auto", choices=["auto", "last", "heldout", "consensus"])
    no_early_stop: bool = opt("run all --max-iter iterations (DeepMCAT)", False)
    init: str = opt("random | weights:PATH | checkpoint:PATH", "random")
    init_labels: str = opt("start from these labels (e.g. topic-label's) instead of clustering iteration 0", "",
                           role="input")
    epochs: Optional[int] = opt("fine-tuning epochs per iteration (stage default)", None, min=1,
                                stage=("finetune", "epochs"))
    lr: Optional[float] = opt("fine-tuning learning rate (stage default)", None, above=0, stage=("finetune", "lr"))
    balanced: bool = opt("class-balanced sampling in finetune", False)
    neighbour_weight: float = opt("finetune's neighbour-consistency weight: each image should agree with one of "
                                  "its nearest neighbours in the features its labels were clustered from "
                                  "(finetune --neighbours; 0 = off)", 0.0, min=0)
    split: Optional[str] = opt("finetune's train/val/test split, e.g. 70/10/20, or none (stage default)", None,
                               stage=("finetune", "split"))
    input_size: Optional[int] = opt("CNN input side in pixels (stage default: the store's side up to 224 from "
                                    "random init, else 224)", None, min=1, max=4096,
                                    stage=("featurize", "input_size"))
    normalize: Optional[str] = opt("input normalization (stage default: zscore from random init, else imagenet, "
                                   "timm for timm:*)", None, choices=["imagenet", "zscore", "timm"],
                                   says="imagenet, zscore or timm", stage=("featurize", "normalize"))
    input_filter: Optional[str] = opt("fixed filter before the CNN, kept in its checkpoints (stage default: none)",
                                      None, choices=["none", "sobel", "gray-sobel"],
                                      stage=("featurize", "input_filter"))
    tree_affinity: Optional[str] = opt("the category tree's affinity (hierarchy --affinity; centroids passes the "
                                       "final model's features, reports needs --reports and --manifest)", None,
                                       choices=["lift", "confusion", "centroids", "reports"],
                                       says="one of lift, confusion, centroids, reports",
                                       stage=("hierarchy", "affinity"))
    tree_preference: Optional[float] = opt("hierarchy --preference: affinity propagation's preference quantile "
                                           "(0.5 = the paper's median; higher = smaller groups per level)", None,
                                           min=0, max=1, says="a quantile between 0 and 1",
                                           stage=("hierarchy", "preference"))
    batch_size: Optional[int] = opt("images per batch in featurize and finetune (stage default)", None, min=1,
                                    stage=("featurize", "batch_size"))
    amp: bool = opt("speed over bit-reproducibility in finetune and featurize: bfloat16, channels-last, cuDNN "
                    "autotuning", False)
    restart_from: Optional[str] = opt("keep iterations < N, recompute the rest with these settings (iter-N)", None,
                                      metavar="iter-N")
    fresh: bool = opt("delete this work folder's results and start over", False)


#: options that are not settings of the run (they change nothing that is computed)
NOT_SETTINGS = {"verbose", "quiet", "no_progress", "device", "workers", "work", "restart_from", "fresh"}


@dataclass
class Parsed:
    """The loop's options, and the names of those the user set (on the command line or in ``LDPO_*``)."""

    opts: LoopOptions
    given: set[str]
    raw: dict[str, str]  # the text the user gave for each option set
    #: ``(stage, option) -> default``: the default a stage declares (ldpo.stages.stage_default); None: unknown
    defaults: Callable[[str, str], Any] | None = None

    def passed(self, name: str) -> bool:
        """True when the loop passes this option to the stages: the user set it, or the loop declares its default."""
        return name in self.given or bool(_field(name).metadata.get("passed"))

    def text(self, name: str) -> str:
        """The setting as the run record keeps it: the user's text, else the loop's default, else the default of
        the stage it is passed to, as that stage declares it ("" where the stage decides from its inputs)."""
        value = getattr(self.opts, name)
        if isinstance(value, bool):
            return "1" if value else "0"
        if name in self.raw:
            return self.raw[name]
        stage = _field(name).metadata.get("stage")
        if stage and not self.passed(name):
            value = self.defaults(*stage) if self.defaults else None
        return "" if value is None else str(value)


def env_name(f: dataclasses.Field) -> str:
    return "LDPO_" + f.name.upper()


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(LoopOptions) if f.name == name)


class LoopHelp(Tool):
    """Only for ``--help``: the loop's options formatted as every stage's are."""

    name = PROG
    description = DESCRIPTION
    example = EXAMPLE
    Options = LoopOptions

    def parser(self):
        parser = super().parser()
        for action in parser._actions:
            f = next((f for f in dataclasses.fields(LoopOptions) if f.name == action.dest), None)
            if f is not None and action.help:
                action.help += f" [{env_name(f)}]"
        return parser


def help_text() -> str:
    return LoopHelp().parser().format_help()


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Parsed:
    """The loop's options from ``LDPO_*`` (first) and ``argv``; an :class:`InputError` (one line) on a bad one."""
    environ = os.environ if environ is None else environ
    fields = {flag_of(f): f for f in dataclasses.fields(LoopOptions)}
    for f in dataclasses.fields(LoopOptions):
        for flag in f.metadata.get("args", ()):
            fields[flag] = f
    values: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for f in dataclasses.fields(LoopOptions):
        text = environ.get(env_name(f), "")
        if text != "":
            _set(f, flag_of(f), text, values, raw, from_env=True)
    i = 0
    while i < len(argv):
        word = argv[i]
        f = fields.get(word)
        if f is None:
            raise InputError(f"unknown option {word} (see --help)")
        if _is_flag(f):
            values[f.name] = True
        else:
            if i + 1 >= len(argv) or argv[i + 1] == "" or argv[i + 1].startswith("--"):
                raise InputError(f"{word} needs a value (see --help)")
            i += 1
            _set(f, word, argv[i], values, raw)
        i += 1
    opts = LoopOptions(**values)
    check(opts, raw)
    return Parsed(opts, set(values), raw)


def _is_flag(f: dataclasses.Field) -> bool:
    return f.type in (bool, "bool")


def _set(f: dataclasses.Field, flag: str, text: str, values: dict, raw: dict, from_env: bool = False) -> None:
    meta = f.metadata
    if _is_flag(f):  # LDPO_BALANCED=1 sets it; any other value leaves it off
        if text == "1":
            values[f.name] = True
        return
    kind = _kind(f)
    says = meta.get("says")
    try:
        value = kind(text)
    except ValueError:
        raise InputError(f"{flag} {text}: {says or ('not a whole number' if kind is int else 'not a number')}") \
            from None
    choices = meta.get("choices")
    if choices and value not in choices:
        raise InputError(f"{flag} {text}: {says or 'one of ' + ', '.join(choices)}")
    values[f.name] = value
    raw[f.name] = text


def _kind(f: dataclasses.Field):
    hint = str(f.type)
    return int if "int" in hint else float if "float" in hint else str


def check(opts: LoopOptions, raw: dict[str, str]) -> None:
    """What the declarations say (bounds), and what goes together."""
    from ..cli import check_bounds

    check_bounds(opts, raw)
    if not opts.images:
        raise InputError("--images is required (see --help)")
    if not opts.work:
        raise InputError("--work is required (see --help)")
    if not os.path.exists(opts.images):
        raise InputError(f"{opts.images}: no such images store")
    for name, what in (("truth", "truth file"), ("init_labels", "labels file")):
        path = getattr(opts, name)
        if path and not os.path.isfile(path):
            raise InputError(f"{path}: no such {what}")
    if opts.k != "auto" and not (opts.k.isascii() and opts.k.isdigit() and int(opts.k) >= 1):
        raise InputError(f"--k {opts.k}: a whole number >= 1, or auto")
    if opts.k == "auto" and opts.method == "rim":
        raise InputError("--k auto: --method rim chooses K itself; give --k the over-segmentation it starts from")
    if opts.tree_affinity == "reports" and not opts.reports:
        raise InputError("--tree-affinity reports needs --reports and --manifest")
    if bool(opts.reports) != bool(opts.manifest):
        raise InputError("--reports and --manifest go together")
    if opts.restart_from is not None and not _iteration_name(opts.restart_from):
        raise InputError(f"--restart-from {opts.restart_from}: use iter-N, e.g. iter-2")
    if os.path.exists(opts.work) and not os.path.isdir(opts.work):
        raise InputError(f"{opts.work}: exists and is not a folder (give --work a folder)")


def _iteration_name(text: str) -> bool:
    number = text.removeprefix("iter-")
    return text.startswith("iter-") and number.isdigit() and number.isascii()


def restart_iteration(opts: LoopOptions) -> int | None:
    return None if opts.restart_from is None else int(opts.restart_from.removeprefix("iter-"))


def layer(opts: LoopOptions) -> str:
    """The layer the loop clusters: the user's, else ``local`` (the last conv layer) to encode, else ``multiscale``
    (shallow stages carry texture, deep ones layout: measured in docs)."""
    if opts.layer:
        return opts.layer
    return "local" if opts.encode != "none" else "multiscale"
