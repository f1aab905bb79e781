"""``export-folders``: one folder of images per category, for annotation tools that read folders.

For every category of LABELS, ``OUT/<folder>/<id>.png`` holds its images from the
images store (lossless PNG, full size), or with ``--symlink SRC`` a symbolic link to
the source file ``SRC/<id>`` (the id itself, or the id plus an image suffix, e.g.
``.png``/``.jpg``/``.dcm``): for images whose ids are their file names.

Folder names: a category's name from a ``name`` column of LABELS (``relabel`` writes
one) or from ``--names review.csv``, made safe for file systems (ASCII letters,
digits, ``._-``); ``category-<label>`` otherwise; two categories whose names collide
get ``-<label>`` appended. ``OUT/categories.csv`` lists ``label,folder,name,count``.
OUT is written under a temporary name and renamed when complete; an existing OUT is
replaced only when it is an earlier export (it holds ``categories.csv``).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ldpo.common.cli import CommonOptions, Tool, opt, positional, progress
from ldpo.common.errors import InputError
from ldpo.common.labels import align, read_labels
from ldpo.common.stores import atomic_path, open_store
from ldpo.common.thumbs import safe_name, write_png

log = logging.getLogger("ldpo")

SUFFIXES = ("", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")


@dataclass(kw_only=True)
class Options(CommonOptions):
    labels: str = positional("labels CSV (id,label[,name]), e.g. WORK/final/labels.csv or relabel's output",
                             role="input")
    images: str = positional("images store (.h5/.zarr) holding the labels' ids", role="input")
    out: str = opt("output folder: one sub-folder per category, and categories.csv")
    names: Optional[str] = opt("review CSV (label,name,…) whose names label the folders", None, role="input")
    symlink: Optional[str] = opt("link to source files SRC/<id>[.png|.jpg|.dcm|…] instead of writing PNGs", None,
                                 role="input")
    allow_missing: bool = opt("skip label ids that are not in the images store (default: an error)", False)
    batch_size: int = opt("images read per batch", 256, min=1, aliases=["--batch"])


class ExportFoldersTool(Tool):
    name = "export-folders"
    description = ("Write one folder of PNGs (or symlinks to source files) per category, named by the reviewers' "
                   "names when given, for annotation tools that read class folders.")
    example = ("export-folders runs/a/final/labels.csv images.h5 --out export/ --names review.csv\n"
               "export-folders reviewed.csv images.h5 --out export/ --symlink /data/pngs")
    Options = Options

    def main(self, opts: Options) -> int:
        out = Path(opts.out)
        check_out(out)
        labels = read_labels(opts.labels)
        names = category_names(labels, opts.names)
        folders = folder_names(labels.classes, names)
        with open_store(opts.images, expect="images") as store:
            store_ids = store.ids
            row = align(labels, store_ids, opts.images, allow_missing=True, allow_unknown=opts.allow_missing)
            in_store = set(store_ids)
            missing = [i for i in labels.ids if i not in in_store] if opts.allow_missing else []
            if missing:
                log.warning("%d label id(s) not in %s, skipped (e.g. %r)", len(missing), opts.images, missing[0])
            rows = np.flatnonzero(row >= 0)
            sources = find_sources(opts.symlink, [store_ids[r] for r in rows]) if opts.symlink else None
            counts = {c: 0 for c in labels.classes}
            with atomic_path(out) as tmp:
                tmp.mkdir()
                for c in labels.classes:
                    (tmp / folders[c]).mkdir()
                for lo in progress(range(0, len(rows), opts.batch_size), desc="export", unit="batch"):
                    chunk = rows[lo:lo + opts.batch_size]
                    block = None if sources else store.take("images", chunk)
                    for j, r in enumerate(chunk.tolist()):
                        ident, c = store_ids[r], int(row[r])
                        base = safe_name(ident, f"row{r}", limit=200)
                        if sources:
                            src = sources[ident]
                            os.symlink(src, tmp / folders[c] / (base + suffix_of(src)))
                        else:
                            write_png(block[j], tmp / folders[c] / f"{base}.png")
                        counts[c] += 1
                with open(tmp / "categories.csv", "w", newline="", encoding="utf-8") as fh:
                    writer = csv.writer(fh, lineterminator="\n")
                    writer.writerow(["label", "folder", "name", "count"])
                    for c in labels.classes:
                        writer.writerow([c, folders[c], names.get(c, ""), counts[c]])
        log.info("wrote %d images into %d folders under %s", sum(counts.values()), len(folders), out)
        return 0


def check_out(out: Path) -> None:
    from ldpo.common.stores import check_replaceable_folder

    check_replaceable_folder(out, lambda name: (out / "categories.csv").is_file(), "an earlier export")


def category_names(labels, review_path: str | None) -> dict[int, str]:
    """label → name: from --names, else from the labels' own `name` column (one name per label)."""
    if review_path:
        from ldpo.common.review import read_review

        review = read_review(review_path)
        return {c: n for c, n in review.names.items() if n}
    names: dict[int, str] = {}
    for c, n in zip(labels.labels.tolist(), labels.extra.get("name", [])):
        n = " ".join(n.split())
        if n and names.setdefault(c, n) != n:
            raise InputError(f"{labels.source}: label {c} has two names, {names[c]!r} and {n!r}")
    return names


def folder_names(classes: list[int], names: dict[int, str]) -> dict[int, str]:
    width = len(str(max(classes)))
    wanted = {c: safe_name(names.get(c, ""), f"category-{c:0{width}d}") for c in classes}
    taken = [w.lower() for w in wanted.values()]
    return {c: w if taken.count(w.lower()) == 1 else f"{w}-{c}" for c, w in wanted.items()}


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix


def find_sources(root: str, ids: list[str]) -> dict[str, Path]:
    """id → absolute source file under ``root`` (the id, or the id plus a known image suffix)."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{root}: --symlink needs a folder of source files")
    found: dict[str, Path] = {}
    for ident in ids:
        for suffix in SUFFIXES:
            candidate = base / f"{ident}{suffix}"
            if candidate.is_file():
                found[ident] = candidate.resolve()
                break
        else:
            raise InputError(f"{root}: no source file for id {ident!r} (looked for {ident}, {ident}.png, …)")
    return found


TOOL = ExportFoldersTool
main = ExportFoldersTool.console
