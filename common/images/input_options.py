"""The network-input options that ``featurize`` and ``finetune`` share (one declaration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..cli import opt


@dataclass(kw_only=True)
class InputOptions:
    input_size: Optional[int] = opt("square input size in px (default: the checkpoint's; from random init the "
                                    "store's image side up to 224; from weights 224)", None, min=1, max=4096)
    normalize: Optional[str] = opt("imagenet | zscore | timm (default: the checkpoint's; zscore from random init, "
                                   "imagenet from weights, timm = the mean/std of timm's config for timm weights)",
                                   None, choices=["imagenet", "zscore", "timm"])
    input_filter: Optional[str] = opt("fixed filter before the first layer: none | sobel | gray-sobel "
                                      "(default: the checkpoint's, else none)", None,
                                      choices=["none", "sobel", "gray-sobel"])
