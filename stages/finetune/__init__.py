"""``finetune``: train a CNN on (pseudo-)labels; write a checkpoint and its metrics.

The paper's recipe: SGD, momentum 0.9, weight decay 5e-4; base LR 0.001 with the new
head at ×10 when starting from pretrained weights or a checkpoint. From ``--init
random`` the default is a BatchNorm network (resnet18) at LR 0.01 with no head boost
(measured: AlexNet without BatchNorm did not learn from random init). A fresh seeded
70/10/20 split per call (``--split none``: train on everything, DeepCluster style).

Outputs (rank 0 writes, atomically):

* ``CHECKPOINT``: a :class:`ldpo.common.nets.checkpoint.Checkpoint` (its one owner: the keys,
  the format tag, reading and writing);
* ``CHECKPOINT``'s metrics beside it, named from it (``model.pt`` → ``model.metrics.json``,
  so two checkpoints in one folder keep their own): ``epochs`` (per epoch ``train_loss``,
  ``train_top1``, ``val_top1``, ``val_top5``, ``seconds``) and ``final`` (``train_loss``,
  ``train_top1``, ``val_top1``, ``val_top5``, ``test_top1``, ``test_top5``; ``null`` where
  the split has no such part). ``train_*`` are running figures over the last epoch's
  augmented batches;
* ``--multi-label`` (target kind ``multi``; the default is ``single``): the labels CSV may
  give an id several labels (``0;2``) or none (an empty cell: a true negative, an image
  of none of the classes; see :mod:`ldpo.common.files.labels`). One sigmoid per class
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
  bi-gram; :mod:`ldpo.common.nlp.words`). The head has 2·DIM sigmoids (512 for 256-d vectors)
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

The package: this front module holds the options, their checks and the command (it imports
no torch, so ``finetune --help`` answers at once and a SLURM script's argument error costs
nothing: ``tests/test_checkpoint.py`` checks it); ``data.py`` joins the labels to the images
and splits them; ``targets.py`` holds the target kinds (one class each); ``trainer.py`` the
training loop, resume and the distributed helpers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...common.cli import READER_WORKERS, CommonOptions, Tool, opt, positional, resolve_device
from ...common.errors import InputError
from ...common.images.input_options import InputOptions

from .data import parse_split, split  # noqa: F401 - split: the public split rule (bench_multilabel)

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
    workers: int = opt(READER_WORKERS + ' (finetune: two --shuffle-window windows besides)', 0, min=0, max=1024)
    batch_size: int = opt("images per batch (per process under torchrun)", 64, min=1)
    lr: Optional[float] = opt("base learning rate (default: 0.01 from random init or a checkpoint that started "
                              "from it, else 0.001)", None, above=0)
    head_lr_mult: Optional[float] = opt("learning-rate multiplier of the head (default: 1 from random init or a "
                                        "checkpoint that started from it, else 10)", None, above=0)
    momentum: float = opt("SGD momentum", 0.9, min=0, below=1)
    weight_decay: float = opt("SGD weight decay", 5e-4, min=0)
    schedule: Optional[str] = opt("learning-rate schedule over the epochs (default: cosine with --vectors, whose "
                                  "regression swings from epoch to epoch at a constant rate; else constant)", None,
                                  choices=["constant", "cosine"])
    split: str = opt("train/val/test percentages, or none (train on everything)", "70/10/20")
    shuffle_window: int = opt("MiB of images read and shuffled together in training: each epoch deals the store's "
                              "chunks at random into windows of this size and shuffles each window's images "
                              "(a store that fits one window is shuffled whole); host memory holds about two "
                              "windows", 256, min=1, max=1 << 20)
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
    neighbours: Optional[str] = opt("neighbour consistency (SCAN's loss inside finetune): a feature store of the same "
                                    "images (e.g. the features LABELS were clustered from). Each image's "
                                    "--neighbour-k nearest images in it (cosine, faiss) are mined once; the loss adds "
                                    "--neighbour-weight x -log<p(image), q(neighbour)>, q a random neighbour's softmax "
                                    "from an unaugmented pass at the start of each epoch", None, role="input")
    neighbour_k: int = opt("neighbours mined per image (--neighbours)", 20, min=1)
    neighbour_weight: float = opt("weight of the neighbour-consistency term (--neighbours)", 1.0, min=0)
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
               "finetune images.h5 iter-00/labels.csv --out model.pt --neighbours iter-00/features.h5\n"
               "finetune keys/images.h5 words.csv --vectors vectors.txt --out words.pt --init checkpoint:topics.pt\n"
               "finetune images.h5 labels.csv --out model.pt --arch timm:convnext_tiny --init weights:convnext.safetensors "
               "--freeze-backbone\n"
               "torchrun --nproc_per_node 4 -m ldpo.stages.finetune images.h5 labels.csv --out model.pt")
    Options = Options

    def main(self, opts: Options) -> int:
        import torch

        from ...common.nets import models

        from .data import load_data
        from .trainer import Trainer, finished, resolve_settings, start_distributed, stop_distributed

        check_options(opts)
        if opts.schedule is None:
            opts.schedule = "cosine" if opts.vectors is not None else "constant"
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
    """What the declarations (bounds, roles) cannot say: options that exclude each other."""
    parse_split(opts.split)
    if opts.head == "mlp" and opts.head_init == "centroids":
        raise InputError("--head-init centroids: needs a linear head (not --head mlp)")
    if opts.multi_label and opts.head_init == "centroids":
        raise InputError("--head-init centroids: needs one label per image (not --multi-label)")
    if opts.multi_label and opts.min_confidence:
        raise InputError("--min-confidence: needs one label per image (not --multi-label)")
    if opts.neighbours is not None and (opts.multi_label or opts.vectors is not None):
        raise InputError("--neighbours: needs one label per image (not --multi-label or --vectors)")
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





def partial_path(out: str) -> Path:
    return Path(f"{out}.partial")


def metrics_path(out: str) -> Path:
    """The checkpoint's metrics, named from it: ``model.pt`` → ``model.metrics.json``."""
    path = Path(out)
    return path.with_name(f"{path.stem}.metrics.json")


TOOL = FinetuneTool
main = FinetuneTool.console

if __name__ == "__main__":
    main()
