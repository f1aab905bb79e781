"""Head surgery: find, replace, read and initialise a model's classifier head.

The head is the module its architecture's record names (:attr:`ldpo.common.nets.archs.Arch.head`;
a timm model names its own in ``pretrained_cfg["classifier"]``): a linear layer, or
(``mlp``) Linear → ReLU → Linear with :data:`MLP_HIDDEN` hidden units. A new head is drawn
from :func:`head_seed` of the model's seed, so the backbone is the same whatever the
number of classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .archs import arch_record
from ..errors import InputError

#: classifier heads: linear, or a small MLP (Linear -> ReLU -> Linear) with MLP_HIDDEN units
HEADS = ("linear", "mlp")
MLP_HIDDEN = 512


class Captured(Exception):
    """Raised by a forward hook to stop the network once the wanted activation is seen."""

    def __init__(self, value: torch.Tensor):
        super().__init__("layer captured")
        self.value = value


def head_seed(seed: int) -> int:
    """The seed a new head is drawn from: derived from, but not equal to, the backbone's."""
    return (seed * 7919 + 104_729) % (2**63)


def head_name(model: nn.Module, arch: str) -> str:
    """The dotted name of the classifier module (timm: its pretrained config's ``classifier``)."""
    record = arch_record(arch)
    if record.head is not None:
        return record.head
    name = model.pretrained_cfg.get("classifier")
    if not isinstance(name, str):
        raise InputError(f"--arch {arch}: has {name!r} as classifier; ldpo needs one classifier module")
    return name


def head_module(model: nn.Module, arch: str) -> nn.Module:
    return model.get_submodule(head_name(model, arch))


def head_linear(model: nn.Module, arch: str) -> nn.Linear | None:
    """The classifier's (last) linear layer; None for a model built without one (timm's num_classes=0)."""
    head = head_module(model, arch)
    if isinstance(head, nn.Sequential):
        head = head[-1]
    return head if isinstance(head, nn.Linear) else None


def num_outputs(model: nn.Module, arch: str) -> int:
    head = head_linear(model, arch)
    return 0 if head is None else head.out_features


def head_kind(model: nn.Module, arch: str) -> str:
    return "mlp" if isinstance(head_module(model, arch), nn.Sequential) else "linear"


def head_parameters(model: nn.Module, arch: str) -> list[nn.Parameter]:
    return list(head_module(model, arch).parameters())


def head_in_features(model: nn.Module, arch: str) -> int:
    """The width of what the head sees (timm: ``num_features``, or ``head_hidden_size`` where a
    pre-logits layer changes it)."""
    if arch_record(arch).is_timm:
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    head = head_module(model, arch)
    return (head[0] if isinstance(head, nn.Sequential) else head).in_features


def set_head(model: nn.Module, arch: str, num_classes: int, seed: int, kind: str = "linear") -> None:
    """Replace the classification head by a new ``num_classes``-way head: a linear layer, or
    (``mlp``) Linear → ReLU → Linear with :data:`MLP_HIDDEN` hidden units."""
    if kind not in HEADS:
        raise InputError(f"--head {kind}: use one of {', '.join(HEADS)}")
    width = head_in_features(model, arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed(seed))
        if arch_record(arch).is_timm:
            model.reset_classifier(num_classes)  # also rebuilds what timm keeps with its classifier
            if kind == "linear":
                return
        new = nn.Linear(width, num_classes) if kind == "linear" else nn.Sequential(
            nn.Linear(width, MLP_HIDDEN), nn.ReLU(inplace=True), nn.Linear(MLP_HIDDEN, num_classes))
    model.set_submodule(head_name(model, arch), new)


def head_inputs(model: nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """What the head sees for the batch ``x`` (the penultimate features), the head not run."""
    def stop(module: nn.Module, args: Any) -> None:
        raise Captured(args[0])

    hook = head_module(model, arch).register_forward_pre_hook(stop)
    try:
        model(x)
    except Captured as captured:
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
