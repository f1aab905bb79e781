"""One record per architecture: how to build it, its named layers, its head, its needs.

Like timm's ``PretrainedCfg``/``register_model``: an :class:`Arch` is a frozen record,
:func:`register_arch` adds it to :data:`REGISTRY`, and every other module (building,
weights loading, head surgery, layer reading, option checks) asks the record, never a
table of its own. Adding an architecture is one record::

    register_arch(Arch("tiny", construct=lambda size, transform_input: Tiny(),
                       layers={"conv": Layer("body", "local"), "pool": Layer("pool", "global"),
                               "probs": Layer("", "probs")},
                       default_layer="pool", local_layer="conv", head="fc", min_input=8))

``timm:NAME`` names any model of timm: its record is made on demand from timm's own
pretrained config (:func:`arch_record`), one record for the whole family.

Importing this module imports no torch (the records name their constructors, which
import torchvision or timm when called): a command's ``--help`` may read the registry.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger("ldpo")

TIMM = "timm:"
NORMALIZATIONS = ("imagenet", "zscore", "timm")
#: fixed filters applied to the normalized input before the first layer (part of the model,
#: recorded in its checkpoint): DeepCluster's Sobel removes intensity, keeps edges.
INPUT_FILTERS = ("none", "sobel", "gray-sobel")
DEFAULT_INPUT_SIZE = 224
#: the largest input side (px): one 4096 px image is 200 MB as float32 before any activation,
#: a batch of 64 at 100000 px would be 7.7 TB; the images themselves are at most 8192 px
MAX_INPUT_SIZE = 4096
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Layer:
    module: str  # dotted path of the module whose output is the layer; "" = the model's output
    kind: str  # "local" [N,S,C] | "global" [N,D] | "probs" [N,K] | "multiscale" [N,D] (stages pooled, concatenated)


#: The recipe, by the origin of the weights (``random`` or ``weights``; a checkpoint keeps
#: the origin of the weights it was trained from). The one place the loop's defaults live:
#: featurize and finetune resolve every option left unset from here, so a shell loop
#: decides nothing. From random init a BatchNorm net learns (AlexNet without BN did not), on
#: per-image z-scored input (which learned where imagenet normalization barely did; figures in
#: docs/measurements.md) at LR 0.01 with no head boost in every iteration; the input size is the store's image side when smaller than 224 (a 64 px
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


@dataclass(frozen=True)
class Arch:
    """Everything ldpo knows about one architecture.

    ``construct(input_px, transform_input)`` returns the model with its default head and
    its own random initialisation (the caller seeds torch). ``head`` is the dotted name of
    the classifier module (``None``: the model names it, timm's ``pretrained_cfg``).
    ``finish`` turns a constructed model into this architecture (``alexnet_bn``: add the
    BatchNorms); weights of the ``base`` layout (those holding ``base_key``) load before
    it. ``family`` ``timm`` reads layers through ``forward_features``/``forward_head`` and
    replaces heads with ``reset_classifier``; ``torchvision`` (any plain ``nn.Module``)
    reads layers with forward hooks.
    """

    name: str
    construct: Callable[[int, bool], "nn.Module"]
    layers: Mapping[str, Layer]
    default_layer: str  # the global layer featurize reads by default
    local_layer: str  # the conv layer `encode` reads by default (the paper's Conv5 / Inception-5b): --layer local
    head: str | None
    min_input: int  # px, square
    family: str = "torchvision"  # torchvision | timm
    finish: Callable[["nn.Module"], "nn.Module"] | None = None
    base: str | None = None  # the architecture whose weights fit before `finish` (alexnet_bn: alexnet)
    base_key: str | None = None  # a weights key that only that layout has
    transform_input_with_weights: bool = False  # torchvision's GoogLeNet weights expect its input transform
    ignore_keys: tuple[str, ...] = ()  # prefixes of weights keys the model does not have (GoogLeNet's aux heads)
    recipe: Callable[[Recipe, str], Recipe] | None = None  # adjusts the origin's recipe (timm weights)
    help: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in (self.default_layer, self.local_layer):
            if name not in self.layers:
                raise ValueError(f"architecture {self.name}: layer {name!r} is not one of {list(self.layers)}")

    @property
    def is_timm(self) -> bool:
        return self.family == "timm"

    def recipe_for(self, origin: str) -> Recipe:
        """The recipe of :data:`RECIPES` for ``origin``, as this architecture adjusts it."""
        recipe = RECIPES.get(origin, RECIPES["weights"])
        return self.recipe(recipe, origin) if self.recipe else recipe


#: name -> record; :func:`register_arch` adds to it
REGISTRY: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    """Add ``arch`` to :data:`REGISTRY` (a name taken, or in timm's namespace, is refused)."""
    if arch.name in REGISTRY or arch.name.startswith(TIMM):
        raise ValueError(f"architecture {arch.name!r}: already registered or reserved")
    REGISTRY[arch.name] = arch
    return arch


def unregister_arch(name: str) -> None:
    REGISTRY.pop(name, None)


class RecordField(Mapping[str, Any]):
    """A live read-only ``{arch: record.FIELD}`` view of :data:`REGISTRY` (the old per-field tables)."""

    def __init__(self, attr: str):
        self.attr = attr

    def __getitem__(self, name: str) -> Any:
        return getattr(REGISTRY[name], self.attr)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


# -- torchvision's architectures ------------------------------------------------------
def add_batchnorm(alexnet: "nn.Module") -> "nn.Module":
    """Turn torchvision's AlexNet into ``alexnet_bn``: a BatchNorm2d after every conv."""
    from torch import nn

    layers: list[nn.Module] = []
    for module in alexnet.features:
        layers.append(module)
        if isinstance(module, nn.Conv2d):
            layers.append(nn.BatchNorm2d(module.out_channels))
    alexnet.features = nn.Sequential(*layers)
    return alexnet


def torchvision(name: str) -> Callable[[int, bool], "nn.Module"]:
    """A constructor of torchvision's ``name`` (its default 1000-class head, its own random init)."""
    def construct(size: int, transform_input: bool) -> "nn.Module":
        from torchvision import models as tv

        return getattr(tv, name)()

    construct.__qualname__ = f"torchvision.{name}"
    return construct


def googlenet(size: int, transform_input: bool) -> "nn.Module":
    """torchvision's GoogLeNet without its auxiliary heads; ``transform_input`` for its ImageNet weights."""
    from torchvision import models as tv

    return tv.googlenet(aux_logits=False, init_weights=True, transform_input=transform_input)


def _stages(*modules: str) -> dict[str, Layer]:
    """``multiscale``: every stage's output, globally average-pooled and L2-normalized, concatenated."""
    return {"multiscale": Layer(",".join(modules), "multiscale")}


_ALEXNET_FC = {"fc6": Layer("classifier.2", "global"), "fc7": Layer("classifier.5", "global")}
_RESNET = {"layer4": Layer("layer4", "local"), "avgpool": Layer("avgpool", "global")}
_PROBS = {"probs": Layer("", "probs")}
_RESNET_STAGES = _stages("layer1", "layer2", "layer3", "layer4")

# conv layers are taken after their ReLU. Minimum inputs: at 64 px ResNet's layer4 is 2x2, AlexNet's conv5 3x3.
register_arch(Arch(
    "alexnet", torchvision("alexnet"),
    {"conv5": Layer("features.11", "local"), **_ALEXNET_FC, **_PROBS,
     **_stages("features.1", "features.4", "features.7", "features.9", "features.11")},
    default_layer="fc7", local_layer="conv5", head="classifier.6", min_input=63))
register_arch(Arch(
    "alexnet_bn", torchvision("alexnet"),
    {"conv5": Layer("features.16", "local"), **_ALEXNET_FC, **_PROBS,
     **_stages("features.2", "features.6", "features.10", "features.13", "features.16")},
    default_layer="fc7", local_layer="conv5", head="classifier.6", min_input=63,
    finish=add_batchnorm, base="alexnet", base_key="features.10.weight",
    help="torchvision's AlexNet with a BatchNorm after each conv (DeepCluster's); plain AlexNet weights fit"))
register_arch(Arch(
    "googlenet", googlenet,
    {"inc5b": Layer("inception5b", "local"), "pool5": Layer("avgpool", "global"), **_PROBS,
     **_stages("conv3", "inception3b", "inception4e", "inception5b")},
    default_layer="pool5", local_layer="inc5b", head="fc", min_input=15,
    transform_input_with_weights=True, ignore_keys=("aux1.", "aux2.")))
register_arch(Arch(
    "vgg16_bn", torchvision("vgg16_bn"),
    {"conv5": Layer("features.42", "local"), "fc7": Layer("classifier.4", "global"), **_PROBS,
     **_stages("features.5", "features.12", "features.22", "features.32", "features.42")},
    default_layer="fc7", local_layer="conv5", head="classifier.6", min_input=32))
for _name in ("resnet18", "resnet50"):
    register_arch(Arch(_name, torchvision(_name), {**_RESNET, **_PROBS, **_RESNET_STAGES},
                       default_layer="avgpool", local_layer="layer4", head="fc", min_input=16))


# -- timm: one record for the family --------------------------------------------------
#: timm models: the layers every one of them has (read through forward_features/forward_head,
#: not a hook: ``module`` only names the step), and the smallest input (a stride-32 CNN's last
#: map is 1x1 there; a ViT/14 has a 2x2 token grid).
TIMM_LAYERS = {"pooled": Layer("forward_head", "global"), "last": Layer("forward_features", "local"), **_PROBS,
               "multiscale": Layer("forward_intermediates", "multiscale")}
TIMM_MIN_INPUT = 32


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


def timm_cfg(arch: str) -> dict[str, Any]:
    """timm's pretrained config for the model (input size, mean/std, classifier, first conv)."""
    from ..images.imagedata import IMAGENET_MEAN, IMAGENET_STD

    cfg = import_timm().models.get_pretrained_cfg(timm_name(arch))
    if cfg is None:  # a model without a registered pretrained config
        return {"input_size": (3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE), "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD, "fixed_input_size": False}
    return cfg.to_dict()


def _is_download_error(err: BaseException) -> bool:
    module = type(err).__module__ or ""
    return module.startswith(("huggingface_hub", "urllib", "requests", "http", "httpx")) or \
        isinstance(err, (ConnectionError, TimeoutError))


def timm_constructor(arch: str) -> Callable[[int, bool], "nn.Module"]:
    def construct(size: int, transform_input: bool) -> "nn.Module":
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

    return construct


def _timm_recipe(arch: str) -> Callable[[Recipe, str], Recipe]:
    """timm weights keep the input size and mean/std of timm's pretrained config (``--normalize timm``)."""
    def adjust(recipe: Recipe, origin: str) -> Recipe:
        if origin != "weights":
            return recipe
        return replace(recipe, arch=arch, normalize="timm", input_size=int(timm_cfg(arch)["input_size"][-1]))

    return adjust


@functools.lru_cache(maxsize=None)
def timm_record(arch: str) -> Arch:
    """The record of ``timm:NAME`` (not checked against timm: :func:`check_arch` does that)."""
    return Arch(arch, timm_constructor(arch), TIMM_LAYERS, default_layer="pooled", local_layer="last",
                head=None, min_input=TIMM_MIN_INPUT, family="timm", recipe=_timm_recipe(arch))


# -- looking up -----------------------------------------------------------------------
def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def names_text() -> str:
    """The architectures, for an ``--arch`` help text (so a new record needs no help edit)."""
    return ", ".join(REGISTRY) + ", or timm:NAME, any timm model"


def layers_text() -> str:
    """The named layers, for a ``--layer`` help text: ``alexnet/alexnet_bn conv5|fc6|fc7, …, timm:*
    pooled|last`` (``probs`` and ``multiscale``, which every architecture has, left out)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for record in (*REGISTRY.values(), timm_record(TIMM + "*")):
        own = tuple(name for name in record.layers if name not in ("probs", "multiscale"))
        groups.setdefault(own, []).append(record.name)
    return ", ".join(f"{'/'.join(archs)} {'|'.join(own)}" for own, archs in groups.items())


def check_arch(arch: str) -> str:
    """``arch`` if it names a known architecture (a registered one, or ``timm:NAME``), else an input error."""
    if arch in REGISTRY:
        return arch
    if is_timm(arch):
        name = timm_name(arch)
        if name and import_timm().is_model(name):
            return arch
        raise InputError(f"--arch {arch}: timm has no model {name!r} (python -c \"import timm; "
                         f"print(timm.list_models('{name.split('_')[0]}*'))\" lists them)")
    raise InputError(f"--arch {arch}: unknown architecture (one of {', '.join(REGISTRY)}, or timm:NAME)")


def arch_record(arch: str) -> Arch:
    """The record of a registered architecture or of ``timm:NAME``; an input error for any other name."""
    if arch in REGISTRY:
        return REGISTRY[arch]
    if is_timm(arch):
        return timm_record(arch)
    raise InputError(f"--arch {arch}: unknown architecture (one of {', '.join(REGISTRY)})")


def layers(arch: str) -> Mapping[str, Layer]:
    """The named layers of ``arch`` (timm models: ``pooled``, ``last``, ``probs``, ``multiscale``)."""
    return arch_record(arch).layers


def min_input(arch: str) -> int:
    return arch_record(arch).min_input


def resolve_layer(arch: str, layer: str | None) -> str:
    """``None`` → the architecture's global layer; ``local`` → its last conv layer (for encode)."""
    if layer is None:
        return arch_record(arch).default_layer
    if layer == "local":
        return arch_record(arch).local_layer
    return layer


def check_layer(arch: str, layer: str) -> Layer:
    if layer not in layers(arch):
        raise InputError(f"--layer {layer}: {arch} has layers {', '.join(layers(arch))}")
    return layers(arch)[layer]


def check_input_size(arch: str, size: int, source: str = "--input-size") -> None:
    """The input side, asked for or recorded in a checkpoint (``source`` says which), within
    what ``arch`` needs and memory allows."""
    if size < min_input(arch):
        raise InputError(f"{source} {size}: {arch} needs at least {min_input(arch)} px")
    if size > MAX_INPUT_SIZE:
        raise InputError(f"{source} {size}: at most {MAX_INPUT_SIZE} px (one {size} px input image alone takes "
                         f"{3 * 4 * size * size / 2**30:.1f} GiB)")


def recipe_for(origin: str, arch: str) -> Recipe:
    """The recipe of :data:`RECIPES` for ``origin``; timm weights keep the input size and
    mean/std of timm's pretrained config (``--normalize timm``)."""
    return arch_record(arch).recipe_for(origin)


def default_input_size(recipe: Recipe, arch: str, store_side: int | None) -> int:
    if recipe.input_size is not None or not store_side:
        return recipe.input_size or DEFAULT_INPUT_SIZE
    return max(min_input(arch), min(int(store_side), DEFAULT_INPUT_SIZE))
