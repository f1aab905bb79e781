"""``finetune``: train a CNN on (pseudo-)labels; write a checkpoint and its metrics.

The paper's recipe: SGD, momentum 0.9, weight decay 5e-4; base LR 0.001 with the new
head at ×10 when starting from pretrained weights or a checkpoint. From ``--init
random`` the default is a BatchNorm network (resnet18) at LR 0.01 with no head boost
(measured: AlexNet without BatchNorm did not learn from random init). A fresh seeded
70/10/20 split per call (``--split none``: train on everything, DeepCluster style).

Outputs (rank 0 writes, atomically):

* ``CHECKPOINT``: a :class:`ldpo.common.checkpoint.Checkpoint` (its one owner: the keys,
  the format tag, reading and writing);
* ``CHECKPOINT``'s metrics beside it, named from it (``model.pt`` → ``model.metrics.json``,
  so two checkpoints in one folder keep their own): ``epochs`` (per epoch ``train_loss``,
  ``train_top1``, ``val_top1``, ``val_top5``, ``seconds``) and ``final`` (``train_loss``,
  ``train_top1``, ``val_top1``, ``val_top5``, ``test_top1``, ``test_top5``; ``null`` where
  the split has no such part). ``train_*`` are running figures over the last epoch's
  augmented batches;
* ``--multi-label`` (target kind ``multi``; the default is ``single``): the labels CSV may
  give an id several labels (``0;2``) or none (an empty cell: a true negative, an image
  of none of the classes; see :mod:`ldpo.common.labels`). One sigmoid per class
  (one-vs-all), binary cross-entropy with class-balanced positive weights (negatives /
  positives of the class in the training split), and per class the decision threshold
  that maximizes its F1 on the validation split (0.5 without one). The checkpoint adds
  ``target`` (``single`` | ``multi``) and ``thresholds``; ``featurize --layer probs`` then
  writes sigmoids and ``assign`` label sets. Metrics: per epoch ``train_exact``,
  ``val_macro_ap``, ``val_exact``; ``final`` ``val_*``/``test_*`` ``macro_ap``,
  ``macro_auc``, ``macro_f1``, ``micro_f1``, ``exact`` at the chosen thresholds, and
  ``val``/``test`` with every figure per class (AP, AUC, F1, threshold). ``--balanced``
  draws each label combination about equally often; use ``--crop-scale 1`` (or close to it):
  a random crop can cut a labelled part out (a warning says so below 0.8);
* ``--vectors VECTORS`` (target kind ``words``, image → words, Shin et al. §5): LABELS is a
  words-target CSV (``id,term_a,term_b``, one row per bi-gram: an image is trained once per
  bi-gram; :mod:`ldpo.common.words`). The head has 2·DIM sigmoids (512 for 256-d vectors)
  regressing the bi-gram's two word vectors, each dimension min-max scaled into [0, 1] over
  the vectors file, with sigmoid cross-entropy (summed over the units, averaged over the
  batch, as Caffe's); the split is by image. The checkpoint adds
  ``target`` ``words`` and ``words``: ``vectors_checksum`` (SHA-256 of VECTORS), ``dim``,
  ``scaling`` (``kind``, per-dimension ``lo``/``hi``) and ``terms`` (the target file's
  terms: what ``describe`` may say). Metrics: per epoch ``train_hit`` (both halves'
  nearest term right), ``val_recall5``; ``final`` ``test_recall5`` (per image, the share of
  its terms among the 5 words ``describe`` gives);
* ``CHECKPOINT.partial`` after every epoch (model, optimizer, scheduler and RNG
  state), removed at the end; ``--resume`` continues from it.

Under ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel (gloo on CPU, nccl
on CUDA); ``--batch-size`` is per process. ``LDPO_STOP_AFTER_EPOCH=E`` interrupts the
run after epoch E's partial checkpoint (for testing ``--resume``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ldpo.common.cli import CommonOptions, Tool, opt, positional, progress, resolve_device
from ldpo.common.errors import InputError
from ldpo.common.input_options import InputOptions

log = logging.getLogger("ldpo")

PARTIAL_FORMAT = "ldpo-finetune-partial-1"
#: options that do not change the result (left out of the resume signature)
NOT_IN_SIGNATURE = {"verbose", "quiet", "no_progress", "resume", "workers", "device", "out"}


@dataclass(kw_only=True)
class Options(CommonOptions, InputOptions):
    images: str = positional("images store (.h5/.zarr)", role="input")
    labels: str = positional("labels CSV (id,label) naming images of the store", role="input")
    out: str = opt("output checkpoint (.pt); its metrics are written next to it, named from it "
                   "(model.pt → model.metrics.json)", role="output")
    arch: Optional[str] = opt("architecture: alexnet, alexnet_bn, googlenet, vgg16_bn, resnet18, resnet50, or "
                              "timm:NAME, any timm model (default: the checkpoint's; resnet18 for --init random, "
                              "alexnet for --init weights:)", None)
    init: str = opt("random | weights:PATH (state_dict, .safetensors, or a checkpoint wrapping one) | "
                    "checkpoint:PATH (finetune)", "random")
    epochs: int = opt("training epochs", 3, min=1)
    batch_size: int = opt("images per batch (per process under torchrun)", 64, min=1)
    lr: Optional[float] = opt("base learning rate (default: 0.01 from random init or a checkpoint that started "
                              "from it, else 0.001)", None, above=0)
    head_lr_mult: Optional[float] = opt("learning-rate multiplier of the head (default: 1 from random init or a "
                                        "checkpoint that started from it, else 10)", None, above=0)
    momentum: float = opt("SGD momentum", 0.9, min=0, below=1)
    weight_decay: float = opt("SGD weight decay", 5e-4, min=0)
    schedule: str = opt("learning-rate schedule over the epochs", "constant", choices=["constant", "cosine"])
    split: str = opt("train/val/test percentages, or none (train on everything)", "70/10/20")
    balanced: bool = opt("sample classes uniformly (each drawn ~N/K times per epoch)", False)
    flip: bool = opt("random horizontal flips (off: radiology images have laterality)", False)
    crop_scale: float = opt("smallest area fraction of the random resized crop (1 = no crop)", 0.35, above=0, max=1)
    jitter: float = opt("intensity augmentation strength: random gamma in [e^-j, e^j], contrast x[1-j, 1+j] "
                        "and brightness ±j/2 per image (0 = none)", 0.0, min=0, max=1)
    head_init: str = opt("a new head starts random, or as the nearest-centroid classifier of the labels "
                         "in the network's own features before training (DeepCluster-v2)", "random",
                         choices=["random", "centroids"])
    amp: bool = opt("speed over bit-reproducibility: bfloat16 autocast, and on CUDA channels-last and cuDNN "
                     "autotuning (off by default)", False)
    resume: bool = opt("continue from OUT.partial (or report done if OUT exists with the same options)", False)
    allow_missing: bool = opt("skip store images that have no label (default: an error)", False)
    new_head: bool = opt("replace the head even when the class count is unchanged (the loop does this: "
                         "a new clustering's cluster numbers mean new classes)", False)
    head: Optional[str] = opt("classifier head: linear, or mlp (Linear, ReLU, Linear with 512 hidden units) "
                              "(default: the checkpoint's, else linear)", None, choices=["linear", "mlp"])
    min_confidence: float = opt("train only on images whose labels CSV `confidence` (cluster --method scan "
                                "writes one) is at least this; the rest are left out like unlabelled images "
                                "(0 = every image)", 0.0, min=0, max=1)
    multi_label: bool = opt("several labels per image (label cells like 0;2, an empty cell = none of the "
                            "classes): one sigmoid per class, binary cross-entropy with class-balanced "
                            "positive weights, per-class thresholds chosen on the validation split", False)
    vectors: Optional[str] = opt("image → words (target kind words): LABELS is a words-target CSV (id,term_a,"
                                 "term_b, one row per bi-gram; word-vectors --targets writes it) and this the "
                                 "word vectors file; the head regresses each bi-gram's two scaled vectors with "
                                 "2·DIM sigmoids and sigmoid cross-entropy", None, role="input")
    freeze_backbone: bool = opt("train the head only: the backbone's weights and BatchNorm statistics stay as "
                                "loaded (frozen-feature discovery: noisy early labels cannot spoil a strong "
                                "pretrained backbone)", False)


class FinetuneTool(Tool):
    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        return super().outputs(opts) + [("--out (metrics)", str(metrics_path(opts.out))),
                                        ("--out (resume state)", str(partial_path(opts.out)))]

    name = "finetune"
    description = ("Fine-tune (or train from scratch) a CNN on labels; write a checkpoint and, named from it, its "
                   "metrics (OUT.pt → OUT.metrics.json).")
    example = ("finetune images.h5 labels.csv --out model.pt --init random --input-size 64 --epochs 3\n"
               "finetune images.h5 topics.csv --out model.pt --init weights:alexnet-owt-7be5be79.pth\n"
               "finetune ml/images.h5 ml/truth.csv --out model.pt --init random --multi-label --crop-scale 1\n"
               "finetune keys/images.h5 words.csv --vectors vectors.txt --out words.pt --init checkpoint:topics.pt\n"
               "finetune images.h5 labels.csv --out model.pt --arch timm:convnext_tiny --init weights:convnext.safetensors "
               "--freeze-backbone\n"
               "torchrun --nproc_per_node 4 -m ldpo.stages.finetune images.h5 labels.csv --out model.pt")
    Options = Options

    def main(self, opts: Options) -> int:
        import torch

        from ldpo.common import models

        check_options(opts)
        check_writable(opts.out)
        init = models.parse_init(opts.init)
        if opts.arch is not None:
            models.check_arch(opts.arch)
        data = load_data(opts)
        rank, world, device = start_distributed(resolve_device(opts.device))
        try:
            if rank:
                log.setLevel(logging.WARNING)
            torch.manual_seed(opts.seed)
            torch.use_deterministic_algorithms(True, warn_only=True)
            built = models.build(init, opts.arch, len(data.classes), opts.seed, opts.input_size, opts.normalize,
                                 new_head=opts.new_head, input_filter=opts.input_filter, store_side=data.side,
                                 head=opts.head)
            settings = resolve_settings(opts, built, world)
            if data.words is not None:  # the vectors by content: another file under the same name trains anew
                settings.update(vectors=str(Path(opts.vectors).resolve()), vectors_checksum=data.words.vectors.checksum)
            if opts.resume and finished(opts.out, settings, rank):
                log.info("%s: already done with these options (--resume)", opts.out)
                return 0
            Trainer(opts, built, data, settings, rank, world, device).run()
        finally:
            stop_distributed(world)
        return 0


def check_options(opts: Options) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(opts, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(opts, name)}: must be at least 1")
    if not 0 < opts.crop_scale <= 1:
        raise InputError(f"--crop-scale {opts.crop_scale}: must be in (0, 1]")
    parse_split(opts.split)
    if opts.head == "mlp" and opts.head_init == "centroids":
        raise InputError("--head-init centroids: needs a linear head (not --head mlp)")
    if opts.multi_label and opts.head_init == "centroids":
        raise InputError("--head-init centroids: needs one label per image (not --multi-label)")
    if opts.multi_label and opts.min_confidence:
        raise InputError("--min-confidence: needs one label per image (not --multi-label)")
    if opts.vectors is not None:
        for flag, given in (("--multi-label", opts.multi_label), ("--head-init centroids", opts.head_init == "centroids"),
                            ("--min-confidence", bool(opts.min_confidence)), ("--balanced", opts.balanced)):
            if given:
                raise InputError(f"{flag}: needs class labels (not --vectors, a words target)")


def check_writable(out: str) -> None:
    """An --out folder that cannot be written is found before training, not after the first
    epoch: create and remove a temporary file in it (in its nearest existing parent when the
    folder is still to be made)."""
    folder = Path(out).absolute().parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise InputError(f"{out}: cannot create its folder {folder} ({existing} is not a folder)")
    try:
        handle, name = tempfile.mkstemp(prefix=".ldpo-write-test-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise InputError(f"{out}: cannot write in {existing} ({err.strerror or type(err).__name__}): give a "
                         "writable --out") from None


def parse_split(text: str) -> tuple[float, float, float] | None:
    """``70/10/20`` → fractions; ``none`` → None (train on everything)."""
    if text.lower() == "none":
        return None
    try:
        parts = [float(p) for p in text.split("/")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or abs(sum(parts) - 100) > 1e-6:
        raise InputError(f"--split {text}: use train/val/test percentages summing to 100 (e.g. 70/10/20), or none")
    return parts[0] / 100, parts[1] / 100, parts[2] / 100


class Diverged(InputError):
    """Non-finite loss or weights: exit 2, nothing written."""


# -- data -----------------------------------------------------------------------------
@dataclass
class Data:
    classes: list[int]  # original label values; index = class number
    side: int  # the store's image side in px (sets the default input size from random init)
    train: tuple[np.ndarray, np.ndarray]  # store rows, class numbers
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    chunk: int = 1  # rows per chunk of the store's images
    row_bytes: int = 1  # bytes per image
    target: str = "single"  # the target kind: single (one label, softmax) | multi (label sets, sigmoids)
    # multi: float32 [store rows, K], 1 where the row has the class; words: float32 [bi-grams, 2·dim], the
    # scaled targets (a part's targets number its bi-grams)
    truth: np.ndarray | None = None
    words: Any = None  # words: what the Words target needs besides (WordsData)



def load_data(opts: Options) -> Data:
    """Labels joined to the store by id, renumbered 0..K-1 and split (seeded)."""
    from ldpo.common.labels import align, contiguous, read_labels
    from ldpo.common.stores import open_store

    from ldpo.common.imagedata import chunk_rows

    with open_store(opts.images, expect="images") as store:
        store_ids, shape = store.ids, store.shape("images")
    side, chunk, row_bytes = max(shape[1:3]), chunk_rows(opts.images), int(np.prod(shape[1:]))
    if opts.multi_label:
        return load_multi(opts, store_ids, side, chunk, row_bytes)
    if opts.vectors is not None:
        return load_words(opts, store_ids, side, chunk, row_bytes)
    labels = read_labels(opts.labels)
    per_row = align(labels, store_ids, opts.images, allow_missing=opts.allow_missing)
    if opts.min_confidence:
        per_row = drop_unconfident(labels, per_row, store_ids, opts.min_confidence, opts.labels)
    rows = np.flatnonzero(per_row >= 0)
    if len(rows) == 0:
        raise InputError(f"{opts.labels}: no image of {opts.images} has a label")
    targets, classes = contiguous(per_row[rows])
    if len(classes) < 2:
        raise InputError(f"{opts.labels}: only one class ({classes[0]}); finetune needs at least two")
    skipped = len(store_ids) - len(rows)
    log.info("finetune: %d labelled images in %d classes%s", len(rows), len(classes),
             f" ({skipped} without a label skipped)" if skipped else "")
    return Data(classes, side, *split(opts, rows, targets), chunk, row_bytes)


def drop_unconfident(labels, per_row: np.ndarray, store_ids: list[str], threshold: float, path: str) -> np.ndarray:
    """``per_row`` with -1 (no label) where the labels' ``confidence`` is below ``threshold``."""
    values = labels.extra.get("confidence")
    if values is None:
        raise InputError(f"{path}: no confidence column for --min-confidence (cluster --method scan writes one)")
    try:
        confidence = {i: float(v) for i, v in zip(labels.ids, values)}
    except ValueError as err:
        raise InputError(f"{path}: a confidence that is not a number ({err})") from None
    out = per_row.copy()
    low = np.array([confidence.get(i, 1.0) < threshold for i in store_ids])
    out[low & (out >= 0)] = -1
    log.info("finetune: %d of %d labelled images below confidence %g left out", int((low & (per_row >= 0)).sum()),
             int((per_row >= 0).sum()), threshold)
    return out


def split(opts: Options, rows: np.ndarray, targets: np.ndarray):
    """``(train, val, test)`` parts of (store rows, targets): a seeded permutation cut at --split."""
    fractions = parse_split(opts.split)
    if fractions is None:
        empty = (rows[:0], targets[:0])
        return (rows, targets), empty, empty
    perm = np.random.default_rng(opts.seed).permutation(len(rows))
    n_train = max(1, round(fractions[0] * len(rows)))
    n_val = min(len(rows) - n_train, round(fractions[1] * len(rows)))
    parts = np.split(perm, [n_train, n_train + n_val])
    log.info("split %s: %d train, %d val, %d test", opts.split, len(parts[0]), len(parts[1]), len(parts[2]))
    return tuple((rows[p], targets[p]) for p in parts)


def load_multi(opts: Options, store_ids: list[str], side: int, chunk: int, row_bytes: int) -> Data:
    """--multi-label: label sets joined to the store by id; ``truth`` holds them per store row,
    and a part's targets are the number of each row's label combination (for --balanced)."""
    from ldpo.common.labels import align_multi, read_multilabels

    labels = read_multilabels(opts.labels)
    classes = labels.classes
    if not classes:
        raise InputError(f"{opts.labels}: no image has a label (every label cell is empty)")
    rows, y = align_multi(labels, store_ids, classes, opts.images, allow_missing=opts.allow_missing)
    truth = np.zeros((len(store_ids), len(classes)), dtype=np.float32)
    truth[rows] = y
    _, combos = np.unique(y, axis=0, return_inverse=True)
    negatives = int((y.sum(axis=1) == 0).sum())
    log.info("finetune --multi-label: %d images, %d classes, %d with several labels, %d with none (true "
             "negatives)", len(rows), len(classes), int((y.sum(axis=1) > 1).sum()), negatives)
    if opts.crop_scale < 0.8:
        log.warning("--crop-scale %g with --multi-label: a random crop can cut a labelled part out of the image "
                    "(its target still says present); --crop-scale 1 keeps the whole image", opts.crop_scale)
    parts = split(opts, rows, combos.reshape(-1).astype(np.int64))
    return Data(classes, side, *parts, chunk, row_bytes, target="multi", truth=truth)


@dataclass
class WordsData:
    """--vectors: the vectors, their scaling, the bi-grams' term numbers, the candidate terms."""

    vectors: Any  # ldpo.common.words.Vectors
    scaling: Any  # ldpo.common.words.Scaling
    terms: list[str]  # every term of the words-target file: the words describe may give
    term_a: np.ndarray  # per bi-gram, its terms' numbers in ``terms``
    term_b: np.ndarray
    image_terms: dict[int, list[str]]  # store row -> its terms (the truth of recall@5)


def load_words(opts: Options, store_ids: list[str], side: int, chunk: int, row_bytes: int) -> Data:
    """--vectors: bi-grams joined to the store by id. The split is by image (an image's
    bi-grams stay in one part); a part's targets number its bi-grams (rows repeat: an image
    with several bi-grams is trained once per bi-gram)."""
    from ldpo.common import words

    vectors = words.read_vectors(opts.vectors)
    target = words.read_words_target(opts.labels, vectors)
    at = {ident: row for row, ident in enumerate(store_ids)}
    unknown = [i for i in dict.fromkeys(target.ids) if i not in at]
    if unknown and not opts.allow_missing:
        raise InputError(f"{opts.labels}: {len(unknown)} ids are not images of {opts.images} (first: "
                         f"{unknown[0]!r}); --allow-missing skips them")
    keep = [k for k, i in enumerate(target.ids) if i in at]
    if not keep:
        raise InputError(f"{opts.labels}: no image of {opts.images} has a bi-gram")
    target = words.WordsTarget([target.ids[k] for k in keep], [target.term_a[k] for k in keep],
                               [target.term_b[k] for k in keep], target.path)
    scaling = words.Scaling.fit(vectors.matrix)
    table = words.target_matrix(target, vectors, scaling)
    terms = target.terms()
    number = {t: k for k, t in enumerate(terms)}
    rows_of = np.array([at[i] for i in target.ids], dtype=np.int64)
    image_terms: dict[int, list[str]] = {}
    for row, a, b in zip(rows_of.tolist(), target.term_a, target.term_b):
        image_terms.setdefault(row, [])
        image_terms[row] += [t for t in (a, b) if t not in image_terms[row]]
    images = np.array(sorted(image_terms), dtype=np.int64)
    parts = []
    for rows, _ in split(opts, images, np.zeros(len(images), np.int64)):
        mine = np.flatnonzero(np.isin(rows_of, rows))
        parts.append((rows_of[mine], mine.astype(np.int64)))
    log.info("finetune --vectors: %d bi-grams of %d images, %d terms, %d-d vectors (%s)", len(table), len(images),
             len(terms), vectors.dim, vectors.checksum[:12])
    info = WordsData(vectors, scaling, terms, np.array([number[t] for t in target.term_a]),
                     np.array([number[t] for t in target.term_b]), image_terms)
    return Data(list(range(2 * vectors.dim)), side, *parts, chunk, row_bytes, target="words", truth=table,
                words=info)


# -- settings and resume --------------------------------------------------------------
def resolve_settings(opts: Options, built, world: int) -> dict[str, Any]:
    """The options with every default resolved: the checkpoint's ``options`` and the resume signature."""
    from ldpo.common import models

    settings = {k: v for k, v in asdict(opts).items() if k not in NOT_IN_SIGNATURE}
    lr_given, mult_given = opts.lr is not None, opts.head_lr_mult is not None
    settings.update(arch=built.arch, input_size=built.input_size, normalize=built.normalize, world=world,
                    input_filter=built.input_filter,
                    lr=opts.lr if lr_given else models.RECIPES[built.origin].lr,
                    head_lr_mult=opts.head_lr_mult if mult_given else models.RECIPES[built.origin].head_lr_mult,
                    images=str(Path(opts.images).resolve()), labels=str(Path(opts.labels).resolve()),
                    init_checksum=built.checksum)
    log.info("finetune: %s from --init %s, lr %g%s, head ×%g%s, %d epochs at %d px", built.arch, built.init,
             settings["lr"], "" if lr_given else " (default for this init)", settings["head_lr_mult"],
             "" if mult_given else " (default)", opts.epochs, built.input_size)
    return settings


def partial_path(out: str) -> Path:
    return Path(f"{out}.partial")


def metrics_path(out: str) -> Path:
    """The checkpoint's metrics, named from it: ``model.pt`` → ``model.metrics.json``."""
    path = Path(out)
    return path.with_name(f"{path.stem}.metrics.json")


def finished(out: str, settings: dict[str, Any], rank: int = 0) -> bool:
    """True when ``out`` is a finished checkpoint made with the same options."""
    from ldpo.common.checkpoint import Checkpoint

    if not Path(out).is_file():
        return False
    ckpt = Checkpoint.load(out)
    if ckpt.options != settings:
        log.warning("%s exists but was made with other options: training again", out)
        return False
    if rank == 0:
        write_json(metrics_path(out), ckpt.metrics)
    return True


def write_json(path: Path, data: Any) -> None:
    from ldpo.common.stores import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def torch_save(path: Path, data: dict[str, Any]) -> None:
    import torch

    from ldpo.common.stores import atomic_path

    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# -- distributed ----------------------------------------------------------------------
def start_distributed(device: str) -> tuple[int, int, str]:
    """``(rank, world, device)``; a process group when launched by torchrun with WORLD_SIZE > 1."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return dist.get_rank(), world, device


def stop_distributed(world: int) -> None:
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], world: int, device: str) -> list[float]:
    import torch
    import torch.distributed as dist

    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -- target kinds ---------------------------------------------------------------------
# What the head predicts and how it is scored; the checkpoint records the kind (``target``)
# so that featurize and assign read the outputs right. A new kind (e.g. a regression
# target) is one more class here and one more entry of TARGETS.
class SingleLabel:
    """``single``: one label per image; softmax, cross-entropy, top-1/top-5 accuracy."""

    kind = "single"

    def __init__(self, data: Data, device: str):
        pass

    def loss(self, out, y, rows):
        import torch.nn.functional as F

        return F.cross_entropy(out, y)

    def hits(self, out, y, rows):
        """Training images predicted right (the running figure of an epoch)."""
        return (out.argmax(1) == y).sum()

    def epoch_figures(self, trainer: "Trainer", hits: float) -> dict[str, Any]:
        val = trainer.evaluate(trainer.data.val)
        return {"train_top1": hits, "val_top1": val[0], "val_top5": val[1]}

    def final(self, trainer: "Trainer", last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics: ``final`` and beside it, checkpoint entries)."""
        test = trainer.evaluate(trainer.data.test)
        if test[0] is not None:
            log.info("test top-1 %.3f top-5 %.3f", test[0], test[1])
        return {"final": {"train_loss": last.get("train_loss"), "train_top1": last.get("train_top1"),
                          "val_top1": last.get("val_top1"), "val_top5": last.get("val_top5"),
                          "test_top1": test[0], "test_top5": test[1]}}, {}


class MultiLabel:
    """``multi``: a set of labels per image (maybe none); one sigmoid per class, binary
    cross-entropy with class-balanced positive weights, per-class thresholds from the
    validation split."""

    kind = "multi"

    def __init__(self, data: Data, device: str):
        import torch

        self.truth = torch.from_numpy(data.truth).to(device)
        train = data.truth[data.train[0]]
        pos = train.sum(axis=0)
        # negatives / positives per class: each class's positives weigh as much as its negatives
        self.pos_weight = torch.from_numpy((len(train) - pos) / np.maximum(pos, 1)).float().to(device)
        self.device = device

    def targets(self, rows):
        return self.truth[rows.to(self.device)]

    def loss(self, out, y, rows):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out, self.targets(rows), pos_weight=self.pos_weight)

    def hits(self, out, y, rows):
        """Training images whose whole label set is right at threshold 0.5 (exact match)."""
        return ((out > 0) == (self.targets(rows) > 0.5)).all(dim=1).sum()

    def epoch_figures(self, trainer: "Trainer", hits: float) -> dict[str, Any]:
        val = self.scores(trainer, trainer.data.val, 0.5)
        return {"train_exact": hits, "val_macro_ap": val and val["macro_ap"], "val_exact": val and val["exact_match"]}

    def scores(self, trainer: "Trainer", part, thresholds) -> dict[str, Any] | None:
        from ldpo.common.metrics import multilabel_metrics

        if len(part[0]) == 0:
            return None
        probs, truth = trainer.collect(part)
        return multilabel_metrics(truth, probs, thresholds, trainer.data.classes)

    def final(self, trainer: "Trainer", last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        from ldpo.common.metrics import best_thresholds, multilabel_metrics

        thresholds, val = np.full(len(trainer.data.classes), 0.5), None
        if len(trainer.data.val[0]):
            probs, truth = trainer.collect(trainer.data.val)
            thresholds = best_thresholds(truth, probs)
            val = multilabel_metrics(truth, probs, thresholds, trainer.data.classes)
        test = self.scores(trainer, trainer.data.test, thresholds)
        final: dict[str, Any] = {"train_loss": last.get("train_loss"), "train_exact": last.get("train_exact")}
        for name, m in (("val", val), ("test", test)):
            for key in ("macro_ap", "macro_auc", "macro_f1", "micro_f1"):
                final[f"{name}_{key}"] = m and m[key]
            final[f"{name}_exact"] = m and m["exact_match"]
        if test is not None:
            log.info("test: macro AP %.3f, macro F1 %.3f, micro F1 %.3f, exact match %.3f", test["macro_ap"] or 0,
                     test["macro_f1"], test["micro_f1"], test["exact_match"])
        log.info("thresholds per class (%s on the validation split): %s",
                 "F1-best" if len(trainer.data.val[0]) else "0.5: no", np.round(thresholds, 3).tolist())
        return ({"final": final, "thresholds": thresholds.tolist(), "val": val, "test": test},
                {"thresholds": [float(t) for t in thresholds]})


class Words:
    """``words``: image → words (Shin et al. §5). The head's 2·dim sigmoids regress a bi-gram's
    two word vectors, scaled per dimension into [0, 1] (:class:`ldpo.common.words.Scaling`),
    with sigmoid cross-entropy. Figures: ``train_hit`` (both halves' nearest term right,
    among the target file's terms), ``val_recall5``/``test_recall5`` (per image, the share
    of its terms among the 5 words :func:`ldpo.common.words.describe` gives)."""

    kind = "words"

    def __init__(self, data: Data, device: str):
        import torch

        info = data.words
        self.info, self.device = info, device
        self.table = torch.from_numpy(data.truth).to(device)
        self.dim = info.vectors.dim
        self.lo = torch.from_numpy(info.scaling.lo).to(device)
        self.span = torch.from_numpy(info.scaling.span()).to(device)
        terms = info.vectors.lookup(info.terms)
        centre = terms.mean(axis=0) if len(terms) > 1 else np.zeros(terms.shape[1], np.float32)
        unit = terms - centre  # centred, as describe compares (ldpo.common.words.nearest)
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        self.centre = torch.from_numpy(centre.astype(np.float32)).to(device)
        self.unit = torch.from_numpy(unit.astype(np.float32)).to(device)
        self.term_a = torch.from_numpy(info.term_a).to(device)
        self.term_b = torch.from_numpy(info.term_b).to(device)

    def loss(self, out, y, rows):
        """Sigmoid cross-entropy summed over the 2·dim units, averaged over the batch (Caffe's
        SigmoidCrossEntropyLoss, which Shin et al. used): a mean over the units too would shrink
        each unit's gradient 2·dim times."""
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out, self.table[y], reduction="sum") / len(y)

    def nearest_terms(self, out):
        """Each half's nearest target-file term (numbers), by centred cosine after unscaling."""
        import torch

        halves = []
        for k in (0, 1):
            v = self.lo + torch.sigmoid(out[:, k * self.dim:(k + 1) * self.dim].float()) * self.span - self.centre
            halves.append((v @ self.unit.T).argmax(dim=1))
        return halves

    def hits(self, out, y, rows):
        a, b = self.nearest_terms(out.detach())
        return ((a == self.term_a[y]) & (b == self.term_b[y])).sum()

    def recall(self, trainer: "Trainer", part) -> float | None:
        from ldpo.common import words

        images = np.unique(part[0])
        if len(images) == 0:
            return None
        outputs = words.predict(trainer.net, trainer.opts.images, images, trainer.preprocess(),
                                trainer.opts.batch_size, trainer.opts.workers, trainer.device, trainer.opts.amp,
                                bar=trainer.rank == 0 and not trainer.opts.no_progress)
        found = words.describe(outputs, self.info.vectors, self.info.scaling, self.info.terms, 5)
        return words.recall_at([[w for w, _ in f] for f in found], [self.info.image_terms[int(r)] for r in images], 5)

    def epoch_figures(self, trainer: "Trainer", hits: float) -> dict[str, Any]:
        return {"train_hit": hits, "val_recall5": self.recall(trainer, trainer.data.val)}

    def final(self, trainer: "Trainer", last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        test = self.recall(trainer, trainer.data.test)
        if test is not None:
            log.info("test recall@5 %.3f", test)
        info = self.info
        return ({"final": {"train_loss": last.get("train_loss"), "train_hit": last.get("train_hit"),
                           "val_recall5": last.get("val_recall5"), "test_recall5": test}},
                {"words": {"vectors_checksum": info.vectors.checksum, "dim": info.vectors.dim,
                           "scaling": info.scaling.state(), "terms": list(info.terms)}})


TARGETS = {"single": SingleLabel, "multi": MultiLabel, "words": Words}


# -- training -------------------------------------------------------------------------
class Trainer:
    def __init__(self, opts: Options, built, data: Data, settings: dict[str, Any], rank: int, world: int,
                 device: str):
        import torch

        from ldpo.common.models import head_parameters

        self.opts, self.built, self.data, self.settings = opts, built, data, settings
        self.rank, self.world, self.device = rank, world, device
        self.kind = device.split(":")[0]
        model = built.model.to(device)
        head = {id(p) for p in head_parameters(model, built.arch)}
        backbone = [p for p in model.parameters() if id(p) not in head]
        if opts.freeze_backbone:
            for p in backbone:
                p.requires_grad_(False)
        groups = [{"params": [] if opts.freeze_backbone else backbone, "lr": settings["lr"]},
                  {"params": [p for p in model.parameters() if id(p) in head],
                   "lr": settings["lr"] * settings["head_lr_mult"]}]
        self.optimizer = torch.optim.SGD(groups, lr=settings["lr"], momentum=opts.momentum,
                                         weight_decay=opts.weight_decay)
        if opts.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=opts.epochs)
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        from ldpo.common.accel import tune

        self.channels_last = tune(model, device, opts.amp)
        self.model = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(model, device_ids=[device] if self.kind == "cuda" else None)
        self.net = model  # unwrapped, for state_dicts
        self.target = TARGETS[data.target](data, device)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0

    # -- data ---------------------------------------------------------------------------
    def augment(self):
        from ldpo.common.imagedata import Augment

        b, o = self.built, self.opts
        return Augment(b.input_size, b.normalize, o.crop_scale, o.flip, o.jitter, b.mean, b.std, seed=o.seed,
                       channels_last=self.channels_last)

    def preprocess(self):
        from ldpo.common.imagedata import Preprocess

        b = self.built
        return Preprocess(b.input_size, b.normalize, b.mean, b.std, channels_last=self.channels_last)

    def epoch_plan(self, epoch: int):
        from ldpo.common import imagedata

        rows, targets = self.data.train
        return imagedata.epoch_items(rows, targets, seed=self.opts.seed, epoch=epoch, chunk=self.data.chunk,
                                     row_bytes=self.data.row_bytes, batch=self.opts.batch_size,
                                     balanced=self.opts.balanced, rank=self.rank, world=self.world)

    def batches(self, items, limit: int | None = None):
        """``(images uint8, rows, targets)`` on the device, ``--batch-size`` at a time."""
        from ldpo.common import imagedata

        blocks = imagedata.loader(self.opts.images, items, self.opts.workers, self.device)
        return imagedata.rebatch(imagedata.on_device(blocks, self.device), self.opts.batch_size, limit)

    def part_items(self, part: tuple[np.ndarray, np.ndarray], share: bool = True):
        """A split part's reads; with ``share`` this process's strided share (every image counted once)."""
        from ldpo.common import imagedata

        rows, targets = part
        if share:
            rows, targets = rows[self.rank::self.world], targets[self.rank::self.world]
        per_item = imagedata.read_rows(self.opts.images, self.opts.batch_size)
        return imagedata.subset_items(rows, targets, per_item, self.data.chunk)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        if self.opts.resume:
            self.load_partial()
        if self.opts.head_init == "centroids" and self.start_epoch == 0:
            self.head_from_centroids()
        stop_after = int(os.environ.get("LDPO_STOP_AFTER_EPOCH", "0") or 0)
        for epoch in range(self.start_epoch, self.opts.epochs):
            start = time.perf_counter()
            try:
                loss, top1 = self.train_epoch(epoch)
                self.check_weights(epoch)
            except Diverged:
                if self.rank == 0:  # its resume state leads back here: nothing of the run is kept
                    partial_path(self.opts.out).unlink(missing_ok=True)
                raise
            self.scheduler.step()
            figures = self.target.epoch_figures(self, top1)
            self.history.append({"epoch": epoch + 1, "train_loss": loss, **figures,
                                 "lr": self.optimizer.param_groups[0]["lr"],
                                 "seconds": round(time.perf_counter() - start, 2)})
            log.info("epoch %d/%d: train loss %.4f, %s", epoch + 1, self.opts.epochs, loss,
                     ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in figures.items() if v is not None))
            self.save_partial(epoch + 1)
            if stop_after and epoch + 1 == stop_after and epoch + 1 < self.opts.epochs:
                raise KeyboardInterrupt  # LDPO_STOP_AFTER_EPOCH: a simulated kill, for tests
        self.finish()

    def head_from_centroids(self) -> None:
        """--head-init centroids: the head starts as the nearest-centroid classifier of the
        training labels in the network's own (pre-training) features, so the first steps
        refine the clusters rather than fight a random head."""
        import torch

        from ldpo.common.accel import autocast
        from ldpo.common.models import head_inputs, set_head_to_centroids

        prep = self.preprocess()
        self.net.eval()
        feats, labels = [], []
        with torch.inference_mode(), progress(total=len(self.data.train[0]), desc="head from centroids",
                                              unit="img", disable=self.rank > 0) as bar:
            for x, _, y in self.batches(self.part_items(self.data.train, share=False)):
                with autocast(self.device, self.opts.amp):
                    feats.append(head_inputs(self.net, self.built.arch, prep(x)).float())
                labels.append(y)
                bar.update(len(y))
        scale = set_head_to_centroids(self.net, self.built.arch, torch.cat(feats), torch.cat(labels))
        log.info("head: nearest-centroid classifier of %d classes (scale %.3g)", len(self.data.classes), scale)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        import torch

        from ldpo.common.accel import autocast

        self.set_train_mode()
        plan, augment = self.epoch_plan(epoch), self.augment()
        # sums stay on the device: no host sync per batch (a GPU runs ahead of the Python loop)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        bar = progress(total=plan.images, desc=f"epoch {epoch + 1}", unit="img", disable=self.rank > 0)
        for x, rows, y in self.batches(plan.items, plan.batches):
            x = augment(x, rows, epoch)
            with autocast(self.device, self.opts.amp):
                out = self.model(x)
                loss = self.target.loss(out.float(), y, rows)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += self.target.hits(out, y, rows)
            count += len(y)
            bar.update(len(y))
        bar.close()
        loss_sum, correct, count = all_sum([loss_sum.item(), correct.item(), count], self.world, self.device)
        if not np.isfinite(loss_sum):  # a non-finite loss in any batch makes the sum non-finite
            raise Diverged(f"{self.opts.out}: training diverged (loss {loss_sum} in epoch {epoch + 1}); "
                           "nothing written: lower --lr")
        return loss_sum / max(count, 1), correct / max(count, 1)

    def set_train_mode(self) -> None:
        """Training mode; with --freeze-backbone only the head trains: the backbone stays in eval
        mode, so its BatchNorm statistics (and dropout) stay as loaded."""
        from ldpo.common.models import head_module

        self.model.train()
        if self.opts.freeze_backbone:
            self.net.eval()
            head_module(self.net, self.built.arch).train()

    def check_weights(self, epoch: int) -> None:
        """Non-finite weights (a diverged step the loss did not show yet) stop training, nothing saved."""
        import torch

        bad = sum(int((~torch.isfinite(p)).sum()) for p in self.net.parameters())
        if bad:
            total = sum(p.numel() for p in self.net.parameters())
            raise Diverged(f"{self.opts.out}: training diverged ({bad} of {total} weights not finite after "
                             f"epoch {epoch + 1}); nothing written: lower --lr")

    def evaluate(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[float | None, float | None]:
        """Top-1 and top-5 (top-min(5,K)) accuracy on a split part; (None, None) when it is empty."""
        import torch

        from ldpo.common.accel import autocast

        if len(part[0]) == 0:
            return None, None
        self.model.eval()
        k = min(5, len(self.data.classes))
        top1 = top5 = count = 0.0
        prep = self.preprocess()
        with torch.inference_mode():
            for x, _, y in self.batches(self.part_items(part)):
                with autocast(self.device, self.opts.amp):
                    best = self.net(prep(x)).topk(k, dim=1).indices
                top1 += (best[:, 0] == y).sum().item()
                top5 += (best == y[:, None]).any(dim=1).sum().item()
                count += len(y)
        top1, top5, count = all_sum([top1, top5, count], self.world, self.device)
        return top1 / count, top5 / count

    def collect(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """--multi-label: sigmoid probabilities [n,K] and truth [n,K] of a whole split part (every
        process scores all of it: average precision needs every image's score)."""
        import torch

        from ldpo.common.accel import autocast

        self.model.eval()
        prep, probs, truth = self.preprocess(), [], []
        with torch.inference_mode():
            for x, rows, _ in self.batches(self.part_items(part, share=False)):
                with autocast(self.device, self.opts.amp):
                    logits = self.net(prep(x))
                probs.append(torch.sigmoid(logits.float()).cpu().numpy())
                truth.append(self.data.truth[rows.numpy()])
        return np.concatenate(probs), np.concatenate(truth)

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def save_partial(self, epochs_done: int) -> None:
        import torch

        if self.rank:
            return
        torch_save(partial_path(self.opts.out), {
            "format": PARTIAL_FORMAT, "options": self.settings, "epochs_done": epochs_done,
            "state_dict": self.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if self.kind == "cuda" else [],
            "history": self.history})

    def load_partial(self) -> None:
        import torch

        from ldpo.common.models import load_file

        path = partial_path(self.opts.out)
        if not path.is_file():
            log.info("--resume: no %s, starting from the first epoch", path)
            return
        state = load_file(str(path), "partial finetune checkpoint")
        if state.get("format") != PARTIAL_FORMAT:
            raise InputError(f"{path}: not a partial finetune checkpoint")
        if state["options"] != self.settings:
            differ = sorted(k for k in set(state["options"]) | set(self.settings)
                            if state["options"].get(k) != self.settings.get(k))
            raise InputError(f"{path}: made with other options ({', '.join(differ)}); "
                             "rerun with the same options or delete it")
        self.net.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epochs_done"])
        log.info("--resume: continuing %s after epoch %d", path, self.start_epoch)

    def finish(self) -> None:
        last = self.history[-1] if self.history else {}
        scored, extra = self.target.final(self, last)
        metrics = {"epochs": self.history, "classes": len(self.data.classes), "target": self.target.kind, **scored}
        metrics["final"].update(n_train=len(self.data.train[0]), n_val=len(self.data.val[0]),
                                n_test=len(self.data.test[0]))
        if self.rank:
            return
        from ldpo.common.checkpoint import Checkpoint

        Checkpoint(arch=self.built.arch, num_classes=len(self.data.classes), classes=self.data.classes,
                   state_dict=self.state_dict(), target=self.target.kind, options=self.settings, metrics=metrics,
                   input_size=self.built.input_size, normalize=self.built.normalize,
                   transform_input=self.built.transform_input, input_filter=self.built.input_filter,
                   origin=self.built.origin, head=self.built.head, mean=list(self.built.mean),
                   std=list(self.built.std), init=str(self.built.init), **extra).save(self.opts.out)
        write_json(metrics_path(self.opts.out), metrics)
        partial_path(self.opts.out).unlink(missing_ok=True)
        log.info("wrote %s and %s", self.opts.out, metrics_path(self.opts.out))


TOOL = FinetuneTool
main = FinetuneTool.console

if __name__ == "__main__":
    main()
