"""``--init`` and weights files: parsing, loading safely, unwrapping, fitting to a model.

Weights files (``--init weights:PATH``) load in every common layout: a plain state_dict
(torchvision's downloads, timm's ``.pth``), ``.safetensors``, a dict wrapping it under
``state_dict``/``model``/``teacher``/``module``/``model_ema``/``state_dict_ema``, keys
prefixed ``module.`` (DDP), ``backbone.``/``encoder.``/``model.`` (self-supervised
trainers; the other keys, e.g. a projection head, are dropped and logged) or
``_orig_mod.`` (``torch.compile``), and ldpo's own checkpoints. What does not fit exits 2
with the count of missing and unexpected keys and the first few of each; a classifier
head of another size is dropped (logged), never an error. Nothing is downloaded: a URL or
``imagenet`` as ``--init`` is an input error.

Every file is loaded with ``torch.load(..., weights_only=True)`` (:func:`~ldpo.common.nets.tensorfile.load_file`):
a file cannot run code.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archs import arch_record
from .checkpoint import Checkpoint
from ..errors import InputError
from .heads import head_linear, head_name
from .tensorfile import load_file

log = logging.getLogger("ldpo")

#: keys under which trainers wrap a state_dict, in the order they are tried (DINO's
#: ``teacher`` before anything else: its evaluation uses the teacher)
WRAPPERS = ("state_dict", "model", "teacher", "module", "model_ema", "state_dict_ema", "net", "network")
#: key prefixes that trainers add: DDP, self-supervised backbones, torch.compile
PREFIXES = ("module.", "backbone.", "encoder.", "model.", "_orig_mod.")


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


# -- files ----------------------------------------------------------------------------
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
    own_arch = str(data["arch"]) if Checkpoint.is_checkpoint(data) else None
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


# -- fitting a state_dict to a model --------------------------------------------------
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


def load_weights(model: nn.Module, arch: str, path: str) -> nn.Module:
    """A weights file (any layout of :func:`read_weights`) into a freshly constructed ``model``;
    returns the model finished as ``arch`` (its record's ``finish``), whose unfinished layout
    (e.g. plain AlexNet weights for ``alexnet_bn``) also fits."""
    record = arch_record(arch)
    state, own_arch = read_weights(path)
    if own_arch is not None and own_arch != arch:
        raise InputError(f"{path}: an ldpo checkpoint of {own_arch}, not {arch} "
                         f"(--init checkpoint:{path} takes its architecture)")
    state = strip_prefixes(model, state, path)  # (a finished arch: matched on its base's keys: the same prefixes)
    if record.ignore_keys:
        state = {k: v for k, v in state.items() if not k.startswith(record.ignore_keys)}
    if record.finish is not None and record.base_key in state:  # weights of the base layout, then finish
        load_state(model, state, path, record.base or arch)
        return record.finish(model)
    if record.finish is not None:
        model = record.finish(model)
    if record.is_timm:
        state = timm_filter(model, arch, state, path)
    state = _drop_other_head(model, arch, state, path)
    load_state(model, state, path, arch, head_optional=True)
    return model


def timm_filter(model: nn.Module, arch: str, state: dict[str, Any], path: str) -> dict[str, Any]:
    """timm's own converter for the model's family, where it has one (e.g. ViT: original DINOv2
    or CLIP key names, a position embedding resampled to this input size)."""
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, model)
    except Exception as err:  # noqa: BLE001 - any failure of the converter means the file does not fit
        raise InputError(f"{path}: does not fit {arch} (timm's converter: {str(err).splitlines()[0]})") from None


def _drop_other_head(model: nn.Module, arch: str, state: dict[str, Any], path: str) -> dict[str, Any]:
    """A weights file trained for another class count: keep its backbone, drop its head (logged)."""
    prefix = head_name(model, arch) + "."
    head = head_linear(model, arch)
    theirs = state.get(prefix + "weight")
    if theirs is None or (head is not None and tuple(theirs.shape) == tuple(head.weight.shape)):
        return state
    log.info("%s: its %d-class head is dropped (a new head is built)", path, theirs.shape[0])
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


def load_state(model: nn.Module, state: dict[str, Any], path: str, arch: str, head_optional: bool = False) -> None:
    """``model.load_state_dict(state)``, every key matched (the head's may be missing with
    ``head_optional``); what does not fit is an input error naming the file."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise InputError(f"{path}: does not fit {arch} ({detail})") from None
    prefix = head_name(model, arch) + "."
    missing = [k for k in missing if not (head_optional and k.startswith(prefix))]
    if missing or unexpected:
        raise InputError(f"{path}: does not fit {arch} ({len(missing)} keys missing, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")

