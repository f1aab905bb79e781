"""The model registry shared by ``featurize`` and ``finetune``.

Architectures are torchvision's (``alexnet``, ``googlenet``, ``vgg16_bn``, ``resnet18``,
``resnet50``) plus ``alexnet_bn``: torchvision's AlexNet with a BatchNorm after each
convolution (DeepCluster's AlexNet had BatchNorm; without it AlexNet does not learn
from random init here). Named layers are read with a forward hook on the module that
produces them; the hook stops the forward pass there, so later layers cost nothing.

``timm:NAME`` is any model of timm (``timm:resnet50``, ``timm:convnext_tiny``,
``timm:vit_small_patch14_dinov2``, ``timm:densenet121``), built with
``timm.create_model(NAME, pretrained=False)``: the weights only ever come from a local
file (``--init weights:PATH``); the hub is set offline and an attempt to reach it is an
input error. Its layers: ``pooled`` (global, the default: ``forward_features`` then
``forward_head(pre_logits=True)``, what the classifier sees), ``last`` (local: the last
feature map as ``[N,H·W,C]``, or a ViT's patch tokens without the class/register tokens;
``--layer local``) and ``probs``. From weights, the input size and the mean/std
(``--normalize timm``) are those of timm's pretrained config for NAME; fixed-size models
(ViTs) are built for the input size asked, their position embedding resampled by timm.

Gray images and 3-channel backbones, one rule: ldpo replicates a gray image to 3
channels before normalizing (:mod:`ldpo.common.images.imagedata`) and never changes the first
layer. By linearity this is the same as summing the first conv's weights over its input
channels into a 1-channel conv (the usual "convert to 1 channel" of timm's
``in_chans=1``) when the channels are normalized alike (``zscore``, or equal mean/std);
with per-channel mean/std the difference is a per-channel affine map that folds into
that conv's weights and bias (exact away from its zero-padded border).
tests/test_timm.py checks the identity.

This module is the public front: ``build`` (below) makes a model from ``--init``, and
the rest is re-exported from where it lives: the architecture records
(:mod:`ldpo.common.nets.archs`: adding an architecture is one :class:`Arch` record), weights
files (:mod:`ldpo.common.nets.weights`: every common layout, nothing downloaded), head
surgery (:mod:`ldpo.common.nets.heads`), reading a layer (:mod:`ldpo.common.nets.extractor`) and
the checkpoint (:mod:`ldpo.common.nets.checkpoint`).

``--init`` is one of:

* ``random``: the architecture's own initialisation, seeded. The backbone is built from the
  seed alone and a new head from a seed derived from it, so the backbone is identical
  whatever the number of classes (``featurize`` and ``finetune`` on the same seed agree);
* ``weights:PATH``: a local weights file in any of the layouts above (nothing is
  downloaded at run time);
* ``checkpoint:PATH``: a ``finetune`` checkpoint (arch, classes, input size and
  normalization come with it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .archs import (  # noqa: F401 - the public front re-exports what stages and tests use
    DEFAULT_INPUT_SIZE, IMAGENET_CLASSES, INPUT_FILTERS, MAX_INPUT_SIZE, NORMALIZATIONS, RECIPES, REGISTRY, TIMM,
    TIMM_LAYERS, TIMM_MIN_INPUT, Arch, DownloadRefused, Layer, Recipe, RecordField, add_batchnorm, arch_record,
    check_arch, check_input_size, check_layer, default_input_size, import_timm, is_timm, layers, min_input,
    recipe_for, register_arch, resolve_layer, timm_cfg, timm_name, unregister_arch)
from .checkpoint import CHECKPOINT_FORMAT, Checkpoint  # noqa: F401
from ..errors import InputError
from .extractor import Extractor, pooled_stage  # noqa: F401
from .heads import (  # noqa: F401
    HEADS, MLP_HIDDEN, head_in_features, head_inputs, head_kind, head_linear, head_module, head_name,
    head_parameters, head_seed, num_outputs, set_head, set_head_to_centroids)
from ..images.imagedata import IMAGENET_MEAN, IMAGENET_STD
from ..files.stores import file_checksum
from .tensorfile import load_file  # noqa: F401
from .weights import (  # noqa: F401
    PREFIXES, WRAPPERS, Init, load_state, load_weights, parse_init, read_weights, strip_prefixes,
    timm_filter)

log = logging.getLogger("ldpo")

#: The per-field tables of before the records, as live read-only views of the registry
#: (``LAYERS["resnet18"]`` is ``REGISTRY["resnet18"].layers``).
ARCHS = REGISTRY.keys()
LAYERS = RecordField("layers")
DEFAULT_LAYER = RecordField("default_layer")
DEFAULT_LOCAL_LAYER = RecordField("local_layer")
HEAD = RecordField("head")
MIN_INPUT = RecordField("min_input")


def load_checkpoint(path: str) -> Checkpoint:
    """A ``finetune`` checkpoint (:meth:`Checkpoint.load`)."""
    return Checkpoint.load(path)


# -- building -------------------------------------------------------------------------
@dataclass
class Built:
    """A model and what came with it."""

    model: nn.Module
    arch: str
    init: Init
    classes: list[int]
    input_size: int
    normalize: str
    transform_input: bool = False
    input_filter: str = "none"
    origin: str = "random"  # the recipe's key: random | weights (a checkpoint's is its weights' origin)
    checksum: str | None = None  # of the weights/checkpoint file
    trained_options: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN  # per-channel input statistics (imagenet and timm normalization)
    std: tuple[float, ...] = IMAGENET_STD
    head: str = "linear"  # linear | mlp
    target: str = "single"  # a checkpoint's target kind: single (softmax) | multi (one sigmoid per class)
    thresholds: list[float] | None = None  # multi: the per-class decision thresholds


def resolve_arch(arch: str | None, init: Init, ckpt: Checkpoint | None) -> str:
    if ckpt is not None:
        if arch is not None and arch != ckpt.arch:
            raise InputError(f"{init.path}: a {ckpt.arch} checkpoint, but --arch {arch} was asked")
        return ckpt.arch
    chosen = check_arch(arch or RECIPES[init.kind].arch)
    if arch is None:
        log.info("arch: %s (the default for --init %s)", chosen, init.kind)
    return chosen


def build(init: Init, arch: str | None = None, num_classes: int | None = None, seed: int = 0,
          input_size: int | None = None, normalize: str | None = None, new_head: bool = False,
          input_filter: str | None = None, store_side: int | None = None, head: str | None = None) -> Built:
    """Build a model for ``init``; a new ``num_classes`` head replaces one of another size
    (or any head with ``new_head``: pseudo-labels of a new clustering mean new classes);
    ``head`` (linear | mlp) is the kind of a new head, and replaces a head of the other kind
    (``None``: the checkpoint's kind, else linear).

    ``input_size``/``normalize``/``input_filter`` left ``None`` come from the checkpoint,
    else from the recipe of ``init`` (:func:`recipe_for`; ``store_side``, the images' side
    in px, sets the input size from random init) and no filter.
    """
    ckpt = Checkpoint.load(init.path) if init.kind == "checkpoint" else None
    arch = resolve_arch(arch, init, ckpt)
    record = arch_record(arch)
    origin = str(ckpt.origin) if ckpt is not None else init.kind
    recipe = record.recipe_for(origin)
    recorded_size = ckpt.input_size if ckpt is not None else None
    size = int(input_size or recorded_size or default_input_size(recipe, arch, store_side))
    check_input_size(arch, size, "--input-size" if input_size or not recorded_size else f"{init.path}: input_size")
    norm = normalize or (ckpt.normalize if ckpt is not None else None) or recipe.normalize
    mean, std = norm_stats(arch, norm, ckpt)
    transform_input = bool(ckpt.transform_input) if ckpt else (
        record.transform_input_with_weights and init.kind == "weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = record.construct(size, transform_input)
    classes = list(range(num_outputs(model, arch)))
    if init.kind == "weights":
        model = load_weights(model, arch, init.path)
    elif record.finish is not None:
        model = record.finish(model)
    target, thresholds = "single", None
    if ckpt is not None:
        model, classes, target, thresholds = _load_checkpoint_state(model, ckpt, init.path, seed)
    kind = head or head_kind(model, arch)
    if num_classes is not None and (new_head or num_classes != num_outputs(model, arch)
                                    or kind != head_kind(model, arch)):
        set_head(model, arch, num_classes, seed, kind)
        classes = list(range(num_classes))
        target, thresholds = "single", None  # a new head: the checkpoint's target kind went with the old one
    filt = input_filter or (ckpt.input_filter if ckpt is not None else None) or "none"
    if filt not in INPUT_FILTERS:
        raise InputError(f"--input-filter {filt}: use one of {', '.join(INPUT_FILTERS)}")
    attach_input_filter(model, filt, arch)
    return Built(model, arch, init, classes, size, norm, transform_input, filt, origin,
                 file_checksum(init.path) if init.path else None,
                 dict(ckpt.options) if ckpt is not None else {}, mean, std, head_kind(model, arch),
                 target, thresholds)


def _load_checkpoint_state(model: nn.Module, ckpt: Checkpoint, path: str,
                           seed: int) -> tuple[nn.Module, list[int], str, list[float] | None]:
    """The checkpoint's head and weights into ``model``: (model, classes, target, thresholds)."""
    set_head(model, ckpt.arch, ckpt.num_classes, seed, str(ckpt.head))
    state = timm_filter(model, ckpt.arch, ckpt.state_dict, path) if arch_record(ckpt.arch).is_timm \
        else ckpt.state_dict
    load_state(model, state, path, ckpt.arch)
    return model, list(ckpt.classes), str(ckpt.target), ckpt.thresholds


def norm_stats(arch: str, norm: str, ckpt: Checkpoint | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std of a normalization: ImageNet's, or (``timm``) the checkpoint's
    recorded ones, else timm's pretrained config's for the model (zscore ignores them)."""
    if norm not in NORMALIZATIONS:
        raise InputError(f"--normalize {norm}: use one of {', '.join(NORMALIZATIONS)}")
    if norm != "timm":
        return IMAGENET_MEAN, IMAGENET_STD
    if ckpt is not None and ckpt.mean is not None and ckpt.std is not None:
        return tuple(map(float, ckpt.mean)), tuple(map(float, ckpt.std))
    if not arch_record(arch).is_timm:
        raise InputError(f"--normalize timm: only for timm:NAME architectures (not {arch})")
    cfg = timm_cfg(arch)
    return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))


# -- input filters --------------------------------------------------------------------
def sobel(x: torch.Tensor, keep_gray: bool = False) -> torch.Tensor:
    """``[B,3,H,W]`` → 3 channels: Sobel x, Sobel y and the gradient magnitude of the channel
    mean (``keep_gray``: the channel mean, Sobel x, Sobel y)."""
    gray = x.mean(dim=1, keepdim=True)
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    weight = torch.stack([k, k.T]).unsqueeze(1)  # [2,1,3,3]
    g = torch.nn.functional.conv2d(torch.nn.functional.pad(gray, (1, 1, 1, 1), mode="replicate"), weight)
    third = gray if keep_gray else g.pow(2).sum(dim=1, keepdim=True).sqrt()
    return torch.cat([third, g], dim=1) if keep_gray else torch.cat([g, third], dim=1)


def attach_input_filter(model: nn.Module, name: str, arch: str = "") -> None:
    """Run the fixed input filter ``name`` before the model's first layer (a forward pre-hook:
    no parameters, nothing in the state_dict; every caller of ``model(x)`` gets it). On a timm
    model the hook sits on its first conv, so ``forward_features`` gets it too."""
    if name == "none":
        return
    keep_gray = name == "gray-sobel"
    timm = bool(arch) and arch_record(arch).is_timm
    first = model.get_submodule(model.pretrained_cfg["first_conv"]) if timm else model
    first.register_forward_pre_hook(lambda module, args: (sobel(args[0], keep_gray), *args[1:]))


def start(spec: str, arch: str | None, seed: int, device: str) -> tuple[Init, str]:
    """What every command that runs a model does first: the device (``auto`` resolved), the seed, deterministic
    kernels on the CPU, the parsed ``--init``/``--model`` spec and a checked ``--arch``."""
    from ..cli import resolve_device

    device = resolve_device(device)
    torch.manual_seed(seed)
    if device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    init = parse_init(spec)
    if arch is not None:
        check_arch(arch)
    return init, device
