"""Reading a torch file as tensors only: ``torch.load(..., weights_only=True)`` with a bad file
turned into one input error in ldpo's words.

Its own module because both :mod:`~ldpo.common.nets.weights` (weights files) and
:mod:`~ldpo.common.nets.checkpoint` (finetune's checkpoint) read torch files, and the checkpoint
is itself one layout a weights file may have: with the reader here neither imports the other
for it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import InputError


def load_file(path: str, what: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with bad files turned into input errors.

    torch's own warnings (a pickle protocol it did not write) are silenced and its advice
    to retry with ``weights_only=False`` is never repeated: ldpo loads tensors only."""
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
