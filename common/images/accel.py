"""Speed settings shared by ``featurize``, ``finetune`` and ``assign``: mixed precision and
the CUDA layout and kernel choices that go with it.

``--amp`` is the one switch for speed over bit-reproducibility. With it: bfloat16
autocast (on CUDA and CPU; bfloat16 has float32's range, so no loss scaling), and on
CUDA channels-last weights and inputs and cuDNN autotuning (``cudnn.benchmark``: the
fastest kernel per shape, which may differ between runs). Without it every result is
float32 and the same inputs, seed and device give the same outputs.
"""

from __future__ import annotations

import contextlib


def tune(model, device: str, amp: bool) -> bool:
    """Set ``model`` up for ``device``; returns whether inputs should be channels-last."""
    import torch

    fast = amp and device.startswith("cuda")
    if fast:
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return fast


def autocast(device: str, amp: bool):
    """bfloat16 autocast on ``device`` when ``amp``, else a no-op context."""
    import torch

    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
