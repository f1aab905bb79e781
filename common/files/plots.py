"""Figures for the stages: matplotlib without a display, saved atomically as PNG."""

from __future__ import annotations

import os


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display on HPC nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, dpi: int = 80) -> None:
    """Write ``fig`` to ``path`` under a temporary name, rename it into place, close it."""
    from .stores import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
