"""The ``finetune`` checkpoint: one dataclass, one format constant, one reader and one writer.

On disk a checkpoint is a ``torch.save`` dict of tensors and plain types (it loads with
``weights_only=True``: a checkpoint cannot run code), the keys of :meth:`Checkpoint.to_dict`.
Files written before a key existed still load: :meth:`Checkpoint.from_dict` fills what is
missing with what ldpo assumed then (``origin`` weights, ``head`` linear, ``target``
single, ``classes`` 0..K-1), and keeps keys it does not know (written back unchanged).

Importing this module imports no torch (:meth:`Checkpoint.load`/:meth:`Checkpoint.save` do).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError

CHECKPOINT_FORMAT = "ldpo-checkpoint-1"
#: what a file must hold to be a checkpoint at all
REQUIRED = ("arch", "num_classes", "state_dict")


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
        """A checkpoint from its dict (any version ldpo wrote); ``source`` names it in errors."""
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise InputError(f"{source}: not a finetune checkpoint (no {', '.join(missing)})")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["num_classes"] = int(data["num_classes"])
        except (TypeError, ValueError):
            raise InputError(f"{source}: num_classes {data['num_classes']!r} is not a number") from None
        values["arch"] = str(data["arch"])
        values["classes"] = [int(c) for c in data.get("classes", range(values["num_classes"]))]
        if data.get("thresholds") is not None:
            values["thresholds"] = [float(t) for t in data["thresholds"]]
        values.setdefault("format", None)  # an old file without one stays without one
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

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
        from .weights import load_file

        ckpt = cls.from_dict(load_file(str(path), "finetune checkpoint"), str(path))
        try:
            check_arch(ckpt.arch)
        except InputError as err:
            raise InputError(f"{path}: unknown architecture {ckpt.arch!r} ({err})") from None
        return ckpt

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary name, then renamed)."""
        import torch

        from .stores import atomic_path

        with atomic_path(Path(path)) as tmp:
            torch.save(self.to_dict(), tmp)
