"""The ``finetune`` checkpoint: one dataclass, one format constant, one reader and one writer.

On disk a checkpoint is a ``torch.save`` dict of tensors and plain types (it loads with
``weights_only=True``: a checkpoint cannot run code), the keys of :meth:`Checkpoint.to_dict`.
Files written before a key existed still load: :meth:`Checkpoint.from_dict` fills what is
missing with what ldpo assumed then (``origin`` weights, ``head`` linear, ``target``
single, ``classes`` 0..K-1), and keeps keys it does not know (written back unchanged).

Importing this module imports no torch (:meth:`Checkpoint.load`/:meth:`Checkpoint.save` do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InputError

CHECKPOINT_FORMAT = "ldpo-checkpoint-1"
#: what a file must hold to be a checkpoint at all
REQUIRED = ("arch", "num_classes", "state_dict")
#: what the head's outputs mean: softmax over classes, one sigmoid per class, or 2 x DIM word-vector sigmoids
TARGETS = ("single", "multi", "words")
#: the targets whose outputs are class probabilities (assign, featurize --layer probs)
CLASS_TARGETS = ("single", "multi")


@dataclass
class Checkpoint:
    """A trained model and what is needed to run it again exactly as it was trained."""

    arch: str
    num_classes: int
    state_dict: dict[str, Any]  # name -> tensor
    classes: list[int] = field(default_factory=list)  # the original label values, index = output unit
    target: str = "single"  # single (softmax) | multi (one sigmoid per class) | words (2 x DIM sigmoids)
    thresholds: list[float] | None = None  # multi: the per-class decision thresholds
    words: dict[str, Any] | None = None  # words: the vectors' checksum and dim, the scaling, the terms trained on,
    # their log prior (share of the training images) and the prior weight chosen on the validation split
    options: dict[str, Any] = field(default_factory=dict)  # finetune's resolved options
    metrics: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    normalize: str | None = None
    transform_input: bool = False
    input_filter: str | None = None
    origin: str = "weights"  # the recipe's key: random | weights (files without it came from weights)
    head: str = "linear"  # linear | mlp
    mean: list[float] | None = None  # per-channel input statistics (imagenet and timm normalization)
    std: list[float] | None = None
    init: str | None = None  # the --init it was trained from
    format: str | None = CHECKPOINT_FORMAT  # None: a file written before the tag
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer writer, kept as they were

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = list(range(int(self.num_classes)))

    # -- dict form ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> "Checkpoint":
        """A checkpoint from its dict (any version ldpo wrote), its record checked
        (:func:`check_record`) before anything is built from it; ``source`` names it in errors."""
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise InputError(f"{source}: not a finetune checkpoint (no {', '.join(missing)})")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["num_classes"] = _whole(data["num_classes"], source, "num_classes")
        values["arch"] = str(data["arch"])
        check_head_size(values["arch"], data["state_dict"], values["num_classes"], source)  # before K-sized lists
        values["classes"] = _classes(data.get("classes"), values["num_classes"], source)
        if data.get("thresholds") is not None:
            values["thresholds"] = _thresholds(data["thresholds"], source)
        if data.get("input_size") is not None:
            values["input_size"] = _whole(data["input_size"], source, "input_size")
        values.setdefault("format", None)  # an old file without one stays without one
        values.setdefault("target", "single")
        ckpt = cls(**values, extra={k: v for k, v in data.items() if k not in known})
        check_record(ckpt, source)
        return ckpt

    def to_dict(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes, keys in the order finetune has always written them."""
        head = {"format": self.format, "target": self.target}
        if self.thresholds is not None:
            head["thresholds"] = self.thresholds
        if self.words is not None:
            head["words"] = self.words
        body = {"arch": self.arch, "num_classes": self.num_classes, "classes": self.classes,
                "state_dict": self.state_dict, "options": self.options, "metrics": self.metrics,
                "input_size": self.input_size, "normalize": self.normalize,
                "transform_input": self.transform_input, "input_filter": self.input_filter,
                "origin": self.origin, "head": self.head, "mean": self.mean, "std": self.std, "init": self.init}
        if self.format is None:
            del head["format"]
        return {**head, **body, **self.extra}

    @staticmethod
    def is_checkpoint(data: dict[str, Any]) -> bool:
        """Whether a loaded dict is an ldpo checkpoint (by its format tag)."""
        return data.get("format") == CHECKPOINT_FORMAT

    # -- files ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        """Read ``path`` (``weights_only``); a file that is not a checkpoint is an input error."""
        from .archs import check_arch
        from .tensorfile import load_file

        ckpt = cls.from_dict(load_file(str(path), "finetune checkpoint"), str(path))
        try:
            check_arch(ckpt.arch)
        except InputError as err:
            raise InputError(f"{path}: unknown architecture {ckpt.arch!r} ({err})") from None
        return ckpt

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary name, then renamed)."""
        import torch

        from ..files.stores import atomic_path

        with atomic_path(Path(path)) as tmp:
            torch.save(self.to_dict(), tmp)


# -- checking the record ----------------------------------------------------------------
def _whole(value: Any, source: str, key: str) -> int:
    """A whole number of at least 1 (``3``, ``3.0``, ``"3"``), else one line naming the key and the value."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{source}: {key} {value!r} is not a number (a damaged or hand-edited checkpoint)") from None
    if not (math.isfinite(number) and number == int(number) and number >= 1):
        raise InputError(f"{source}: {key} {value!r} must be a whole number of at least 1 (a damaged or "
                         "hand-edited checkpoint)")
    return int(number)


def _classes(value: Any, num_classes: int, source: str) -> list[int]:
    """The class list: ``num_classes`` distinct non-negative whole numbers (0..K-1 when the file has none)."""
    if value is None:
        return list(range(num_classes))
    try:
        count = len(value)
    except TypeError:
        raise InputError(f"{source}: classes {value!r} is not a list") from None
    if count != num_classes:
        raise InputError(f"{source}: num_classes is {num_classes} but it lists {count} classes "
                         "(a damaged or hand-edited checkpoint)")
    classes = []
    for c in value:
        try:
            number = float(c) if not isinstance(c, bool) else math.nan
            ok = math.isfinite(number) and number == int(number) and number >= 0
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise InputError(f"{source}: class {c!r} is not a non-negative whole number (classes are label values)")
        classes.append(int(number))
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise InputError(f"{source}: class {dup} is listed twice")
    return classes


def _thresholds(value: Any, source: str) -> list[float]:
    try:
        found = [float(t) for t in value]
    except (TypeError, ValueError):
        raise InputError(f"{source}: thresholds {value!r} are not a list of numbers") from None
    if not all(math.isfinite(t) and 0 <= t <= 1 for t in found):
        raise InputError(f"{source}: its thresholds must be numbers in [0, 1]")
    return found


def check_record(ckpt: Checkpoint, source: str) -> None:
    """The record as a whole: a format this ldpo reads, a known target and what it needs."""
    if ckpt.format is not None and ckpt.format != CHECKPOINT_FORMAT:
        newer = isinstance(ckpt.format, str) and ckpt.format.startswith("ldpo-checkpoint-")
        raise InputError(f"{source}: checkpoint format {ckpt.format!r}" + (
            f" is newer than this ldpo reads ({CHECKPOINT_FORMAT}): use a newer ldpo" if newer
            else f" is not one ldpo wrote (this ldpo reads {CHECKPOINT_FORMAT})"))
    if ckpt.target not in TARGETS:
        raise InputError(f"{source}: target {ckpt.target!r} is not one of {', '.join(TARGETS)}")
    if ckpt.target == "multi" and (ckpt.thresholds is None or len(ckpt.thresholds) != ckpt.num_classes):
        given = "none" if ckpt.thresholds is None else len(ckpt.thresholds)
        raise InputError(f"{source}: a multi-label checkpoint needs one threshold per class "
                         f"({ckpt.num_classes}), it has {given}")
    if ckpt.target == "words":
        dim = (ckpt.words or {}).get("dim") if isinstance(ckpt.words, dict) else None
        if not isinstance(dim, int) or ckpt.num_classes != 2 * dim:
            raise InputError(f"{source}: a words checkpoint needs its vectors' dim, and 2 x dim outputs "
                             f"(it has {ckpt.num_classes} outputs, dim {dim!r})")


def check_head_size(arch: str, state_dict: Any, num_classes: int, source: str) -> None:
    """``num_classes`` must be the size of the head the state_dict holds: checked on the tensors'
    shapes, before a model (and a head, or a class list, of that size) is built. An unknown
    architecture or an empty state_dict is left to :meth:`Checkpoint.load` to name."""
    from .archs import REGISTRY, is_timm

    if not isinstance(state_dict, dict) or not state_dict:
        return
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
    if arch in REGISTRY and REGISTRY[arch].head is not None:
        head = REGISTRY[arch].head
        weight = shapes.get(f"{head}.weight") or shapes.get(f"{head}.2.weight")  # linear, or the MLP's last layer
        outputs = weight[0] if weight else None
        if outputs != num_classes:
            raise InputError(f"{source}: num_classes is {num_classes} but its head ({head}) has "
                             f"{'no weights' if outputs is None else f'{outputs} outputs'}")
    elif is_timm(arch) and not any(len(shape) >= 1 and shape[0] == num_classes for shape in shapes.values()):
        raise InputError(f"{source}: num_classes is {num_classes} but no layer of its state_dict has "
                         "that many outputs")


def require_target(target: str, source: str, use: str) -> None:
    """Refuse a checkpoint whose outputs are not class probabilities where ``use`` needs them."""
    if target not in CLASS_TARGETS:
        raise InputError(f"{source}: a {target!r} checkpoint (its outputs are not classes: finetune --vectors "
                         f"trains word vectors); {use} needs a single- or multi-label one")
