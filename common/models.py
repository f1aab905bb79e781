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
channels before normalizing (:mod:`ldpo.common.imagedata`) and never changes the first
layer. By linearity this is the same as summing the first conv's weights over its input
channels into a 1-channel conv (the usual "convert to 1 channel" of timm's
``in_chans=1``) when the channels are normalized alike (``zscore``, or equal mean/std);
with per-channel mean/std the difference is a per-channel affine map that folds into
that conv's weights and bias (exact away from its zero-padded border).
tests/test_timm.py checks the identity.

Weights files (``--init weights:PATH``) load in every common layout: a plain state_dict
(torchvision's downloads, timm's ``.pth``), ``.safetensors``, a dict wrapping it under
``state_dict``/``model``/``teacher``/``module``/``model_ema``/``state_dict_ema``, keys
prefixed ``module.`` (DDP), ``backbone.``/``encoder.``/``model.`` (self-supervised
trainers; the other keys, e.g. a projection head, are dropped and logged) or
``_orig_mod.`` (``torch.compile``), and ldpo's own checkpoints. What does not fit exits 2
with the count of missing and unexpected keys and the first few of each; a classifier
head of another size is dropped (logged), never an error.

``--init`` is one of:

* ``random``: torchvision's own initialisation, seeded. The backbone is built from the
  seed alone and a new head from a seed derived from it, so the backbone is identical
  whatever the number of classes (``featurize`` and ``finetune`` on the same seed agree);
* ``weights:PATH``: a local weights file in any of the layouts above (nothing is
  downloaded at run time);
* ``checkpoint:PATH``: a ``finetune`` checkpoint (arch, classes, input size and
  normalization come with it).

Every file is loaded with ``torch.load(..., weights_only=True)``: a checkpoint cannot
run code.

Minimum input sizes (px, square): alexnet/alexnet_bn 63, googlenet 15, vgg16_bn 32,
resnet18/resnet50 16 (at 64 px ResNet's ``layer4`` is 2×2, AlexNet's ``conv5`` 3×3).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldpo.common.errors import InputError
from ldpo.common.imagedata import IMAGENET_MEAN, IMAGENET_STD
from ldpo.common.stores import file_checksum

log = logging.getLogger("ldpo")

CHECKPOINT_FORMAT = "ldpo-checkpoint-1"


@dataclass(frozen=True)
class Layer:
    module: str  # dotted path of the module whose output is the layer; "" = the model's output
    kind: str  # "local" [N,S,C] | "global" [N,D] | "probs" [N,K] | "multiscale" [N,D] (stages pooled, concatenated)


_ALEXNET_FC = {"fc6": Layer("classifier.2", "global"), "fc7": Layer("classifier.5", "global")}
_RESNET = {"layer4": Layer("layer4", "local"), "avgpool": Layer("avgpool", "global")}
_PROBS = {"probs": Layer("", "probs")}


def _stages(*modules: str) -> dict[str, Layer]:
    """``multiscale``: every stage's output, globally average-pooled and L2-normalized, concatenated."""
    return {"multiscale": Layer(",".join(modules), "multiscale")}


_RESNET_STAGES = _stages("layer1", "layer2", "layer3", "layer4")

#: arch -> layer name -> where it is taken. conv layers are taken after their ReLU.
LAYERS: dict[str, dict[str, Layer]] = {
    "alexnet": {"conv5": Layer("features.11", "local"), **_ALEXNET_FC, **_PROBS,
                **_stages("features.1", "features.4", "features.7", "features.9", "features.11")},
    "alexnet_bn": {"conv5": Layer("features.16", "local"), **_ALEXNET_FC, **_PROBS,
                   **_stages("features.2", "features.6", "features.10", "features.13", "features.16")},
    "googlenet": {"inc5b": Layer("inception5b", "local"), "pool5": Layer("avgpool", "global"), **_PROBS,
                  **_stages("conv3", "inception3b", "inception4e", "inception5b")},
    "vgg16_bn": {"conv5": Layer("features.42", "local"), "fc7": Layer("classifier.4", "global"), **_PROBS,
                 **_stages("features.5", "features.12", "features.22", "features.32", "features.42")},
    "resnet18": {**_RESNET, **_PROBS, **_RESNET_STAGES},
    "resnet50": {**_RESNET, **_PROBS, **_RESNET_STAGES},
}
ARCHS = tuple(LAYERS)
DEFAULT_LAYER = {"alexnet": "fc7", "alexnet_bn": "fc7", "googlenet": "pool5", "vgg16_bn": "fc7",
                 "resnet18": "avgpool", "resnet50": "avgpool"}
HEAD = {"alexnet": "classifier.6", "alexnet_bn": "classifier.6", "vgg16_bn": "classifier.6",
        "googlenet": "fc", "resnet18": "fc", "resnet50": "fc"}
MIN_INPUT = {"alexnet": 63, "alexnet_bn": 63, "googlenet": 15, "vgg16_bn": 32, "resnet18": 16, "resnet50": 16}

#: The recipe, by the origin of the weights (``random`` or ``weights``; a checkpoint keeps
#: the origin of the weights it was trained from). The one place the loop's defaults live:
#: featurize and finetune resolve every option left unset from here, so a shell loop
#: decides nothing. From random init a BatchNorm net learns (measured: AlexNet without BN
#: did not), on per-image z-scored input (measured on the toy sets: purity 0.27 -> 0.28
#: with imagenet normalization, 0.38 -> 0.57 with zscore) at LR 0.01 with no head boost in
#: every iteration; the input size is the store's image side when smaller than 224 (a 64 px
#: store upsampled to 224 costs 12x the compute for nothing). ImageNet weights get the
#: paper's AlexNet recipe: LR 0.001, the new head x10, imagenet normalization, 224 px.
@dataclass(frozen=True)
class Recipe:
    arch: str
    lr: float
    head_lr_mult: float
    normalize: str
    input_size: int | None  # None: the store's image side, capped at 224


RECIPES = {"random": Recipe("resnet18", 0.01, 1.0, "zscore", None),
           "weights": Recipe("alexnet", 0.001, 10.0, "imagenet", 224)}
#: the conv layer `encode` reads by default (the paper's Conv5 / Inception-5b): --layer local
DEFAULT_LOCAL_LAYER = {"alexnet": "conv5", "alexnet_bn": "conv5", "googlenet": "inc5b", "vgg16_bn": "conv5",
                       "resnet18": "layer4", "resnet50": "layer4"}
#: timm models: the layers every one of them has (read through forward_features/forward_head,
#: not a hook: ``module`` only names the step), and the smallest input (a stride-32 CNN's last
#: map is 1x1 there; a ViT/14 has a 2x2 token grid).
TIMM = "timm:"
TIMM_LAYERS = {"pooled": Layer("forward_head", "global"), "last": Layer("forward_features", "local"), **_PROBS,
               "multiscale": Layer("forward_intermediates", "multiscale")}
TIMM_MIN_INPUT = 32
NORMALIZATIONS = ("imagenet", "zscore", "timm")
#: classifier heads: linear, or a small MLP (Linear -> ReLU -> Linear) with MLP_HIDDEN units
HEADS = ("linear", "mlp")
MLP_HIDDEN = 512
#: fixed filters applied to the normalized input before the first layer (part of the model,
#: recorded in its checkpoint): DeepCluster's Sobel removes intensity, keeps edges.
INPUT_FILTERS = ("none", "sobel", "gray-sobel")
DEFAULT_INPUT_SIZE = 224
#: the largest input side (px): one 4096 px image is 200 MB as float32 before any activation,
#: a batch of 64 at 100000 px would be 7.7 TB; the images themselves are at most 8192 px
MAX_INPUT_SIZE = 4096
IMAGENET_CLASSES = 1000


# -- --init ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Init:
    kind: str  # random | weights | checkpoint
    path: str | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


_DOWNLOAD_WORDS = {"imagenet", "download", "pretrained", "default", "true"}


def parse_init(text: str) -> Init:
    """``random``, ``weights:PATH`` or ``checkpoint:PATH``; a URL or ``imagenet`` is refused."""
    kind, _, path = text.partition(":")
    if text.lower() in _DOWNLOAD_WORDS or (kind == "weights" and _looks_remote(path)):
        raise InputError(f"--init {text}: nothing is downloaded at run time; pass a local weights file "
                         "as --init weights:PATH (e.g. weights:alexnet-owt-7be5be79.pth, weights:model.safetensors)")
    if kind == "random" and not path:
        return Init("random")
    if kind in ("weights", "checkpoint") and path:
        if Path(path).is_dir():
            raise InputError(f"{path}: is a folder, not a {kind} file (--init {text}): give the file in it")
        if not Path(path).is_file():
            raise InputError(f"{path}: no such {kind} file (--init {text})")
        return Init(kind, path)
    raise InputError(f"--init {text}: use random, weights:PATH or checkpoint:PATH")


def _looks_remote(path: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", path, re.I)) or path.lower() in _DOWNLOAD_WORDS


def load_file(path: str, what: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with bad files turned into input errors.

    torch's own warnings (a pickle protocol it did not write) are silenced and its advice
    to retry with ``weights_only=False`` is never repeated: ldpo loads tensors only."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and unpickler errors all mean "bad file"
        raise InputError(f"{path}: cannot load as {what}: {_load_problem(err)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a {what} (a {type(data).__name__}, not a dict)")
    return data


#: lines of torch's weights_only error that are advice, not the reason
_TORCH_ADVICE = ("weights only load failed", "please file an issue", "check the documentation", "in pytorch 2.6")


def _load_problem(err: BaseException) -> str:
    """What is wrong with a file torch.load refused, in ldpo's words: for a pickle that holds
    more than tensors, the object it would have built, never torch's advice."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    weights_only = bool(lines) and lines[0].lower().startswith("weights only load failed")
    reasons = [line for line in lines if not line.lower().startswith(_TORCH_ADVICE) and "weights_only" not in line]
    reason = reasons[0].removeprefix("WeightsUnpickler error:").strip().rstrip(".") if reasons else ""
    if weights_only and "global" in reason.lower():
        return f"it holds Python objects other than tensors, which ldpo never loads (they could run code): {reason}"
    if weights_only:
        return f"not a file of tensors that torch can read ({reason or 'unsupported pickle'})"
    return reason or type(err).__name__


def load_checkpoint(path: str) -> dict[str, Any]:
    ckpt = load_file(path, "finetune checkpoint")
    missing = [k for k in ("arch", "num_classes", "state_dict") if k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a finetune checkpoint (no {', '.join(missing)})")
    try:
        check_arch(str(ckpt["arch"]))
    except InputError as err:
        raise InputError(f"{path}: unknown architecture {ckpt['arch']!r} ({err})") from None
    return ckpt


# -- timm -----------------------------------------------------------------------------
class DownloadRefused(InputError):
    """Something tried to reach a model hub: nothing is downloaded at run time."""


def import_timm():
    """timm with the Hugging Face hub offline (set before huggingface_hub reads it)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise InputError(f"--arch timm:…: timm is not installed ({err}); pip install timm") from None
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported before the variable was set
        constants.HF_HUB_OFFLINE = True
    return timm


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM)


def timm_name(arch: str) -> str:
    return arch[len(TIMM):]


def check_arch(arch: str) -> str:
    """``arch`` if it names a known architecture (torchvision's, or ``timm:NAME``), else an input error."""
    if arch in ARCHS:
        return arch
    if is_timm(arch):
        name = timm_name(arch)
        if name and import_timm().is_model(name):
            return arch
        raise InputError(f"--arch {arch}: timm has no model {name!r} (python -c \"import timm; "
                         f"print(timm.list_models('{name.split('_')[0]}*'))\" lists them)")
    raise InputError(f"--arch {arch}: unknown architecture (one of {', '.join(ARCHS)}, or timm:NAME)")


def timm_cfg(arch: str) -> dict[str, Any]:
    """timm's pretrained config for the model (input size, mean/std, classifier, first conv)."""
    cfg = import_timm().models.get_pretrained_cfg(timm_name(arch))
    if cfg is None:  # a model without a registered pretrained config
        return {"input_size": (3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE), "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD, "fixed_input_size": False}
    return cfg.to_dict()


def _construct_timm(arch: str, size: int) -> nn.Module:
    """A timm model with its default head, never pretrained; fixed-size models (ViTs) for ``size`` px."""
    timm = import_timm()
    kwargs = {"img_size": size} if timm_cfg(arch).get("fixed_input_size") else {}
    try:
        return timm.create_model(timm_name(arch), pretrained=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - a hub or network error means a download was attempted
        if _is_download_error(err):
            raise DownloadRefused(f"--arch {arch}: timm tried to download ({type(err).__name__}); nothing is "
                                  "downloaded at run time: pass the weights as --init weights:PATH") from None
        raise InputError(f"--arch {arch}: timm cannot build it at {size} px ({str(err).splitlines()[0]})") from None


def _is_download_error(err: BaseException) -> bool:
    module = type(err).__module__ or ""
    return module.startswith(("huggingface_hub", "urllib", "requests", "http", "httpx")) or \
        isinstance(err, (ConnectionError, TimeoutError))


def _timm_filter(model: nn.Module, arch: str, state: dict[str, Any], path: str) -> dict[str, Any]:
    """timm's own converter for the model's family, where it has one (e.g. ViT: original DINOv2
    or CLIP key names, a position embedding resampled to this input size)."""
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, model)
    except Exception as err:  # noqa: BLE001 - any failure of the converter means the file does not fit
        raise InputError(f"{path}: does not fit {arch} (timm's converter: {str(err).splitlines()[0]})") from None


# -- building -------------------------------------------------------------------------
def add_batchnorm(alexnet: nn.Module) -> nn.Module:
    """Turn torchvision's AlexNet into ``alexnet_bn``: a BatchNorm2d after every conv."""
    layers: list[nn.Module] = []
    for module in alexnet.features:
        layers.append(module)
        if isinstance(module, nn.Conv2d):
            layers.append(nn.BatchNorm2d(module.out_channels))
    alexnet.features = nn.Sequential(*layers)
    return alexnet


def _construct(arch: str, transform_input: bool = False) -> nn.Module:
    """A torchvision model with its default 1000-class head and its own random init."""
    from torchvision import models as tv

    if arch in ("alexnet", "alexnet_bn"):
        return tv.alexnet()
    if arch == "googlenet":
        return tv.googlenet(aux_logits=False, init_weights=True, transform_input=transform_input)
    if arch in ("vgg16_bn", "resnet18", "resnet50"):
        return getattr(tv, arch)()
    raise InputError(f"--arch {arch}: unknown architecture (one of {', '.join(ARCHS)})")


def head_seed(seed: int) -> int:
    """The seed a new head is drawn from: derived from, but not equal to, the backbone's."""
    return (seed * 7919 + 104_729) % (2**63)


def head_name(model: nn.Module, arch: str) -> str:
    """The dotted name of the classifier module (timm: its pretrained config's ``classifier``)."""
    if not is_timm(arch):
        return HEAD[arch]
    name = model.pretrained_cfg.get("classifier")
    if not isinstance(name, str):
        raise InputError(f"--arch {arch}: has {name!r} as classifier; ldpo needs one classifier module")
    return name


def head_linear(model: nn.Module, arch: str) -> nn.Linear | None:
    """The classifier's (last) linear layer; None for a model built without one (timm's num_classes=0)."""
    head = model.get_submodule(head_name(model, arch))
    if isinstance(head, nn.Sequential):
        head = head[-1]
    return head if isinstance(head, nn.Linear) else None


def set_head(model: nn.Module, arch: str, num_classes: int, seed: int, kind: str = "linear") -> None:
    """Replace the classification head by a new ``num_classes``-way head: a linear layer, or
    (``mlp``) Linear → ReLU → Linear with :data:`MLP_HIDDEN` hidden units."""
    if kind not in HEADS:
        raise InputError(f"--head {kind}: use one of {', '.join(HEADS)}")
    width = head_in_features(model, arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed(seed))
        if is_timm(arch):
            model.reset_classifier(num_classes)  # also rebuilds what timm keeps with its classifier
            if kind == "linear":
                return
        new = nn.Linear(width, num_classes) if kind == "linear" else nn.Sequential(
            nn.Linear(width, MLP_HIDDEN), nn.ReLU(inplace=True), nn.Linear(MLP_HIDDEN, num_classes))
    model.set_submodule(head_name(model, arch), new)


def head_in_features(model: nn.Module, arch: str) -> int:
    """The width of what the head sees (timm: ``num_features``, or ``head_hidden_size`` where a
    pre-logits layer changes it)."""
    if is_timm(arch):
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    head = head_module(model, arch)
    return (head[0] if isinstance(head, nn.Sequential) else head).in_features


def head_kind(model: nn.Module, arch: str) -> str:
    return "mlp" if isinstance(head_module(model, arch), nn.Sequential) else "linear"


def head_module(model: nn.Module, arch: str) -> nn.Module:
    return model.get_submodule(head_name(model, arch))


def head_parameters(model: nn.Module, arch: str) -> list[nn.Parameter]:
    return list(head_module(model, arch).parameters())


def head_inputs(model: nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """What the head sees for the batch ``x`` (the penultimate features), the head not run."""
    def stop(module: nn.Module, args: Any) -> None:
        raise _Captured(args[0])

    hook = head_module(model, arch).register_forward_pre_hook(stop)
    try:
        model(x)
    except _Captured as captured:
        return captured.value.flatten(1)
    finally:
        hook.remove()
    raise RuntimeError(f"head {head_name(model, arch)} was not reached")


def set_head_to_centroids(model: nn.Module, arch: str, features: torch.Tensor, targets: torch.Tensor) -> float:
    """Make the head the nearest-centroid classifier of (features, targets): logit_c =
    s·(f·m_c − |m_c|²/2) = −s·|f − m_c|²/2 + const, with s = 1 / mean |f − m_y|² so that
    logit gaps are of order one. Returns s. Classes without rows keep their weights."""
    if head_kind(model, arch) != "linear":
        raise InputError("--head-init centroids: needs a linear head (not --head mlp)")
    head = head_linear(model, arch)
    k = head.out_features
    f = features.double()
    t = targets.long()
    counts = torch.bincount(t, minlength=k).double()
    sums = torch.zeros(k, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, t, f)
    means = sums / counts.clamp_min(1)[:, None]
    spread = float(((f - means[t]) ** 2).sum(dim=1).mean())
    s = 1.0 / max(spread, 1e-12)
    present = counts > 0
    with torch.no_grad():
        head.weight[present] = (s * means[present]).to(head.weight.dtype)
        head.bias[present] = (-0.5 * s * (means[present] ** 2).sum(dim=1)).to(head.bias.dtype)
    return s


def num_outputs(model: nn.Module, arch: str) -> int:
    head = head_linear(model, arch)
    return 0 if head is None else head.out_features


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


def resolve_arch(arch: str | None, init: Init, ckpt: dict[str, Any] | None) -> str:
    if ckpt is not None:
        if arch is not None and arch != ckpt["arch"]:
            raise InputError(f"{init.path}: a {ckpt['arch']} checkpoint, but --arch {arch} was asked")
        return ckpt["arch"]
    chosen = check_arch(arch or RECIPES[init.kind].arch)
    if arch is None:
        log.info("arch: %s (the default for --init %s)", chosen, init.kind)
    return chosen


def recipe_for(origin: str, arch: str) -> Recipe:
    """The recipe of :data:`RECIPES` for ``origin``; timm weights keep the input size and
    mean/std of timm's pretrained config (``--normalize timm``)."""
    recipe = RECIPES.get(origin, RECIPES["weights"])
    if is_timm(arch) and origin == "weights":
        return replace(recipe, arch=arch, normalize="timm", input_size=int(timm_cfg(arch)["input_size"][-1]))
    return recipe


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
    ckpt = load_checkpoint(init.path) if init.kind == "checkpoint" else None
    arch = resolve_arch(arch, init, ckpt)
    origin = str(ckpt.get("origin", "weights")) if ckpt is not None else init.kind
    recipe = recipe_for(origin, arch)
    size = int(input_size or (ckpt or {}).get("input_size") or default_input_size(recipe, arch, store_side))
    check_input_size(arch, size, "--input-size" if input_size or not (ckpt or {}).get("input_size")
                     else f"{init.path}: input_size")
    norm = normalize or (ckpt or {}).get("normalize") or recipe.normalize
    mean, std = norm_stats(arch, norm, ckpt)
    transform_input = bool(ckpt.get("transform_input", False)) if ckpt else (
        arch == "googlenet" and init.kind == "weights")  # torchvision's GoogLeNet weights expect it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _construct_timm(arch, size) if is_timm(arch) else _construct(arch, transform_input)
    classes = list(range(num_outputs(model, arch)))
    if init.kind == "weights":
        model = _load_weights(model, arch, init.path)
    elif arch == "alexnet_bn":
        model = add_batchnorm(model)
    if ckpt is not None:
        set_head(model, arch, int(ckpt["num_classes"]), seed, str(ckpt.get("head", "linear")))
        state = _timm_filter(model, arch, ckpt["state_dict"], init.path) if is_timm(arch) else ckpt["state_dict"]
        _load_state(model, state, init.path, arch)
        classes = [int(c) for c in ckpt.get("classes", range(int(ckpt["num_classes"])))]
    target = str((ckpt or {}).get("target", "single"))
    thresholds = [float(t) for t in ckpt["thresholds"]] if ckpt and "thresholds" in ckpt else None
    kind = head or head_kind(model, arch)
    if num_classes is not None and (new_head or num_classes != num_outputs(model, arch)
                                    or kind != head_kind(model, arch)):
        set_head(model, arch, num_classes, seed, kind)
        classes = list(range(num_classes))
        target, thresholds = "single", None  # a new head: the checkpoint's target kind went with the old one
    filt = input_filter or (ckpt or {}).get("input_filter") or "none"
    if filt not in INPUT_FILTERS:
        raise InputError(f"--input-filter {filt}: use one of {', '.join(INPUT_FILTERS)}")
    attach_input_filter(model, filt, arch)
    return Built(model, arch, init, classes, size, norm, transform_input, filt, origin,
                 file_checksum(init.path) if init.path else None,
                 dict((ckpt or {}).get("options", {})), mean, std, head_kind(model, arch),
                 target, thresholds)


def norm_stats(arch: str, norm: str, ckpt: dict[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std of a normalization: ImageNet's, or (``timm``) the checkpoint's
    recorded ones, else timm's pretrained config's for the model (zscore ignores them)."""
    if norm not in NORMALIZATIONS:
        raise InputError(f"--normalize {norm}: use one of {', '.join(NORMALIZATIONS)}")
    if norm != "timm":
        return IMAGENET_MEAN, IMAGENET_STD
    if ckpt is not None and "mean" in ckpt and "std" in ckpt:
        return tuple(map(float, ckpt["mean"])), tuple(map(float, ckpt["std"]))
    if not is_timm(arch):
        raise InputError(f"--normalize timm: only for timm:NAME architectures (not {arch})")
    cfg = timm_cfg(arch)
    return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))


# -- weights files --------------------------------------------------------------------
#: keys under which trainers wrap a state_dict, in the order they are tried (DINO's
#: ``teacher`` before anything else: its evaluation uses the teacher)
WRAPPERS = ("state_dict", "model", "teacher", "module", "model_ema", "state_dict_ema", "net", "network")
#: key prefixes that trainers add: DDP, self-supervised backbones, torch.compile
PREFIXES = ("module.", "backbone.", "encoder.", "model.", "_orig_mod.")


def read_weights(path: str) -> tuple[dict[str, Any], str | None]:
    """A weights file as a flat state_dict, and the architecture when it is an ldpo checkpoint:
    ``.safetensors``, or a torch file (weights_only) holding the state_dict itself or wrapping
    it (:data:`WRAPPERS`, nested)."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors

        try:
            return dict(load_safetensors(path, device="cpu")), None
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read as safetensors ({str(err).splitlines()[0]})") from None
    data = load_file(path, "weights file")
    own_arch = str(data["arch"]) if data.get("format") == CHECKPOINT_FORMAT else None
    while not _is_state_dict(data):
        key = next((k for k in WRAPPERS if isinstance(data.get(k), dict)), None)
        if key is None:
            keys = [k for k in data if not isinstance(data[k], torch.Tensor)][:5]
            raise InputError(f"{path}: no state_dict in it (non-tensor entries {keys}; looked under "
                             f"{', '.join(WRAPPERS)})")
        data = data[key]
    return data, own_arch


def _is_state_dict(data: dict[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def strip_prefixes(model: nn.Module, state: dict[str, Any], path: str) -> dict[str, Any]:
    """The state_dict whose keys fit the model best, among ``state`` and its parts under each
    of :data:`PREFIXES` (twice: ``module.backbone.``); keys outside the chosen part are dropped."""
    want = set(model.state_dict())
    candidates = [("", state)]
    for _ in range(2):
        candidates += [(prefix + p, {k[len(p):]: v for k, v in part.items() if k.startswith(p)})
                       for prefix, part in candidates for p in PREFIXES
                       if any(k.startswith(p) for k in part) and (prefix + p) not in dict(candidates)]
    prefix, best = max(candidates, key=lambda c: len(want & set(c[1])))  # ties: the first (least stripped)
    if prefix:
        log.info("%s: using the keys under %r (%d other keys dropped)", path, prefix, len(state) - len(best))
    return best


def _load_weights(model: nn.Module, arch: str, path: str) -> nn.Module:
    """A weights file (any layout of :func:`read_weights`); for ``alexnet_bn`` plain AlexNet weights also fit."""
    state, own_arch = read_weights(path)
    if own_arch is not None and own_arch != arch:
        raise InputError(f"{path}: an ldpo checkpoint of {own_arch}, not {arch} "
                         f"(--init checkpoint:{path} takes its architecture)")
    state = strip_prefixes(model, state, path)  # (alexnet_bn: matched on plain AlexNet's keys: the same prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}  # GoogLeNet's aux heads
    if arch == "alexnet_bn" and "features.10.weight" in state:  # plain AlexNet weights, then add BN
        _load_state(model, state, path, "alexnet")
        return add_batchnorm(model)
    if arch == "alexnet_bn":
        model = add_batchnorm(model)
    if is_timm(arch):
        state = _timm_filter(model, arch, state, path)
    state = _drop_other_head(model, arch, state, path)
    _load_state(model, state, path, arch, head_optional=True)
    return model


def _drop_other_head(model: nn.Module, arch: str, state: dict[str, Any], path: str) -> dict[str, Any]:
    """A weights file trained for another class count: keep its backbone, drop its head (logged)."""
    prefix = head_name(model, arch) + "."
    head = head_linear(model, arch)
    theirs = state.get(prefix + "weight")
    if theirs is None or (head is not None and tuple(theirs.shape) == tuple(head.weight.shape)):
        return state
    log.info("%s: its %d-class head is dropped (a new head is built)", path, theirs.shape[0])
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


def _load_state(model: nn.Module, state: dict[str, Any], path: str, arch: str, head_optional: bool = False) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise InputError(f"{path}: does not fit {arch} ({detail})") from None
    prefix = head_name(model, arch) + "."
    missing = [k for k in missing if not (head_optional and k.startswith(prefix))]
    if missing or unexpected:
        raise InputError(f"{path}: does not fit {arch} ({len(missing)} keys missing, e.g. {missing[:3]}; "
                         f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")


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
    first = model.get_submodule(model.pretrained_cfg["first_conv"]) if is_timm(arch) else model
    first.register_forward_pre_hook(lambda module, args: (sobel(args[0], keep_gray), *args[1:]))


def default_input_size(recipe: Recipe, arch: str, store_side: int | None) -> int:
    if recipe.input_size is not None or not store_side:
        return recipe.input_size or DEFAULT_INPUT_SIZE
    return max(min_input(arch), min(int(store_side), DEFAULT_INPUT_SIZE))


def layers(arch: str) -> dict[str, Layer]:
    """The named layers of ``arch`` (timm models: ``pooled``, ``last``, ``probs``)."""
    return TIMM_LAYERS if is_timm(arch) else LAYERS[arch]


def min_input(arch: str) -> int:
    return TIMM_MIN_INPUT if is_timm(arch) else MIN_INPUT[arch]


def resolve_layer(arch: str, layer: str | None) -> str:
    """``None`` → the architecture's global layer; ``local`` → its last conv layer (for encode)."""
    if layer is None:
        return "pooled" if is_timm(arch) else DEFAULT_LAYER[arch]
    if layer == "local":
        return "last" if is_timm(arch) else DEFAULT_LOCAL_LAYER[arch]
    return layer


def check_input_size(arch: str, size: int, source: str = "--input-size") -> None:
    """The input side, asked for or recorded in a checkpoint (``source`` says which), within
    what ``arch`` needs and memory allows."""
    if size < min_input(arch):
        raise InputError(f"{source} {size}: {arch} needs at least {min_input(arch)} px")
    if size > MAX_INPUT_SIZE:
        raise InputError(f"{source} {size}: at most {MAX_INPUT_SIZE} px (one {size} px input image alone takes "
                         f"{3 * 4 * size * size / 2**30:.1f} GiB)")


def check_layer(arch: str, layer: str) -> Layer:
    if layer not in layers(arch):
        raise InputError(f"--layer {layer}: {arch} has layers {', '.join(layers(arch))}")
    return layers(arch)[layer]


# -- reading a layer ------------------------------------------------------------------
class _Captured(Exception):
    def __init__(self, value: torch.Tensor):
        super().__init__("layer captured")
        self.value = value


def pooled_stage(output: torch.Tensor) -> torch.Tensor:
    """One stage of ``multiscale``: the map's global average (``[N,C,H,W]`` or tokens ``[N,T,C]``), L2-normalized."""
    pooled = output.float().mean(dim=(2, 3)) if output.ndim == 4 else output.float().mean(dim=1)
    return nn.functional.normalize(pooled, dim=1)


class Extractor(nn.Module):
    """``model`` cut at a named layer: ``[N,D]`` global, ``[N,S,C]`` local, softmax probs, or
    ``multiscale`` (every stage pooled and L2-normalized, concatenated: shallow stages carry
    texture, deep ones layout; from random init one deep layer throws the first away)."""

    def __init__(self, model: nn.Module, arch: str, layer: str, target: str = "single"):
        super().__init__()
        self.model = model
        self.target = target  # probs: softmax, or one sigmoid per class for a multi-label checkpoint
        self.layer = check_layer(arch, layer)
        self.timm = is_timm(arch)
        if self.layer.kind == "probs" and num_outputs(model, arch) == 0:
            raise InputError(f"--layer probs: this {arch} has no classifier (its weights come without one); "
                             "take probs from a finetune checkpoint")
        self._stages: list[torch.Tensor] = []
        self._hooks = [] if not self.layer.module or self.timm else self._hook_modules(self.layer.module.split(","))

    def _hook_modules(self, names: list[str]) -> list:
        if self.layer.kind != "multiscale":
            return [self.model.get_submodule(names[0]).register_forward_hook(self._stop)]
        hooks = [self.model.get_submodule(name).register_forward_hook(self._keep) for name in names[:-1]]
        return hooks + [self.model.get_submodule(names[-1]).register_forward_hook(self._keep_and_stop)]

    def detach_hook(self) -> nn.Module:
        """Remove the hooks: the model runs whole again (another layer can be taken)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return self.model

    @staticmethod
    def _stop(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        raise _Captured(output)  # the rest of the network is not needed

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._stages.append(pooled_stage(output))  # pooled at once: a later in-place ReLU cannot change it

    def _keep_and_stop(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._keep(module, inputs, output)
        stages, self._stages = self._stages, []
        raise _Captured(torch.cat(stages, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer.kind == "probs":
            logits = self.model(x).float()
            return torch.sigmoid(logits) if self.target == "multi" else torch.softmax(logits, dim=1)
        if self.timm:
            return self.timm_layer(x)
        self._stages = []
        try:
            self.model(x)
        except _Captured as captured:
            out = captured.value
        else:
            raise RuntimeError(f"layer {self.layer.module} was not reached")
        if self.layer.kind == "local":
            return out.flatten(2).transpose(1, 2)  # [N,C,H,W] -> [N,H*W,C]
        return out.flatten(1)  # global, or multiscale (already pooled and concatenated)

    def timm_layer(self, x: torch.Tensor) -> torch.Tensor:
        """``pooled``: the classifier's input; ``last``: the last feature map or the patch tokens, ``[N,S,C]``;
        ``multiscale``: every stage of ``forward_intermediates`` pooled, L2-normalized and concatenated."""
        if self.layer.kind == "multiscale":
            return self.timm_stages(x)
        features = self.model.forward_features(x)
        if self.layer.kind == "global":
            return self.model.forward_head(features, pre_logits=True).flatten(1)
        if features.ndim == 3:  # tokens [N,T,C]: drop the class (and register) tokens
            return features[:, getattr(self.model, "num_prefix_tokens", 0):]
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            return features.flatten(1, 2)
        return features.flatten(2).transpose(1, 2)

    def timm_stages(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.model, "forward_intermediates"):
            raise InputError(f"--layer multiscale: timm's {type(self.model).__name__} has no forward_intermediates")
        maps = self.model.forward_intermediates(x, intermediates_only=True)
        return torch.cat([pooled_stage(m) for m in maps], dim=1)

    def output_shape(self, input_size: int, device: str = "cpu") -> tuple[int, ...]:
        """The per-image output shape at ``input_size`` (one zero image through the net)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self(torch.zeros(1, 3, input_size, input_size, device=device))
        except RuntimeError as err:
            raise InputError(f"--input-size {input_size}: too small for this network ({str(err).splitlines()[0]})") from None
        finally:
            self.train(was_training)
        return tuple(out.shape[1:])
