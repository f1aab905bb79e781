"""``finetune``'s options, and the files it writes beside the checkpoint (metrics, resume state).

Their own module, below the rest of the package: the front (``__init__``), ``data.py`` and
``trainer.py`` all read the options, and none of them needs to import another for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...common.cli import READER_WORKERS, CommonOptions, opt, positional
from ...common.images.input_options import InputOptions

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


def partial_path(out: str) -> Path:
    return Path(f"{out}.partial")


def metrics_path(out: str) -> Path:
    """The checkpoint's metrics, named from it: ``model.pt`` → ``model.metrics.json``."""
    path = Path(out)
    return path.with_name(f"{path.stem}.metrics.json")
