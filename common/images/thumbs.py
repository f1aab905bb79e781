"""Images from a store as small PNG files, for pages and folders that people look at.

``report`` writes thumbnails beside its page; ``export-folders`` writes full-size PNGs
for annotation tools. Both go through :func:`write_png` (Pillow, lossless, the same
bytes for the same pixels).
"""

from __future__ import annotations

import os
import re
import unicodedata

import numpy as np


def as_uint8(image: np.ndarray) -> np.ndarray:
    """A store row (uint8 ``[H,W]`` or ``[H,W,3]``) as a contiguous uint8 array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image has dtype {image.dtype}, expected uint8")
    return np.ascontiguousarray(image)


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk (never enlarged) so that its longer side is at most ``side`` px."""
    from PIL import Image

    image = as_uint8(image)
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def write_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``image`` as PNG (gray or RGB) to ``path`` (the caller makes the write atomic)."""
    from PIL import Image

    Image.fromarray(as_uint8(image)).save(path, format="PNG", optimize=False)


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(text: str, fallback: str, limit: int = 80) -> str:
    """A file or folder name from free text: ASCII letters, digits, ``._-`` and single spaces
    turned into ``-``; no leading dot; ``fallback`` when nothing is left."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("-", text.strip())
    text = re.sub(r"[\s-]+", "-", text).strip("-.")
    text = text[:limit].rstrip("-.")
    return text if text and text not in (".", "..") else fallback
