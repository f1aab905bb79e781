"""The one inference loop of ``featurize``, ``assign`` and ``finetune``'s evaluation.

``infer(fn, path, items, prep, …)`` streams a store's rows through ``fn`` in evaluation
mode: whole-chunk uint8 reads in reader threads (``common/images/imagedata.py``), the
batch moved to the device, preprocessed there (``prep``: resize, normalize), ``fn``
applied under ``inference_mode`` (and bfloat16 autocast with ``amp``), and yields
``(rows, targets, output)`` per batch with a progress bar. What to do with the output
(write it, softmax it, score it) stays with the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..cli import progress


def infer(fn: Callable[[Any], Any], path: str, items: list, prep: Callable[[Any], Any], *, batch: int,
          workers: int = 0, device: str = "cpu", amp: bool = False, desc: str = "", show: bool = True
          ) -> Iterator[tuple[Any, Any, Any]]:
    """``(rows, targets, fn(prep(x)))`` for every batch of ``batch`` rows of ``items`` (in their order)."""
    import torch

    from . import imagedata
    from .accel import autocast

    total = sum(len(item) for item in items)
    with torch.inference_mode(), progress(total=total, desc=desc, unit="img", disable=not show) as bar:
        for x, rows, targets in imagedata.batches(path, items, batch, workers=workers, device=device):
            with autocast(device, amp):
                out = fn(prep(x))
            yield rows, targets, out
            bar.update(len(x))


def store_items(path: str, batch: int, lo: int = 0, hi: int | None = None) -> list:
    """Items covering rows ``[lo, hi)`` of an images store (all of it by default), in order."""
    from . import imagedata
    from ..files.stores import open_store

    if hi is None:
        with open_store(path, expect="images") as store:
            hi = len(store)
    return imagedata.range_items(lo, hi, imagedata.read_rows(path, batch))
