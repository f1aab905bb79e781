"""``export-folders``: one folder of images per category, for annotation tools that read folders.

For every category of LABELS, ``OUT/<folder>/<file>.png`` holds its images from the
images store (lossless PNG, full size), or with ``--symlink SRC`` a symbolic link to
the source file ``SRC/<id>`` (the id itself, or the id plus an image suffix, e.g.
``.png``/``.jpg``/``.dcm``): for images whose ids are their file names. An id that is
an absolute path, holds ``..``, or resolves outside SRC is refused.

Folder names: a category's name from a ``name`` column of LABELS (``relabel`` writes
one) or from ``--names review.csv``, made safe for file systems (ASCII letters,
digits, ``._-``); ``category-<label>`` otherwise; categories whose names collide (case
ignored, or with ``categories.csv``/``files.csv``) get ``-<label>`` appended, then
``-2``, ``-3``… until unique. File names: the id made safe the same way; ids whose
safe names collide in one folder (``a/b`` and ``a b``; ``A`` and ``a``) each get
``-<first 8 hex digits of the SHA-256 of the id>`` appended, so every image has its own
file and the names do not depend on the order of the rows. ``OUT/categories.csv`` lists
``label,folder,name,count``, ``OUT/files.csv`` lists ``id,label,file`` (file relative
to OUT) for every image.

``OUT/.ldpo-export.json`` records the files and folders the export wrote. A new OUT is
written under a temporary name and renamed when complete. An existing OUT must be
empty or an earlier export (it holds that record): a rerun replaces and removes only
the files it recorded, removes a folder it made only when nothing else is left in it,
and refuses (changing nothing) when one of its new files would replace a file it did
not write. Everything else in OUT (a note, an annotation tool's files) stays.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from ..common.cli import CommonOptions, Tool, opt, positional, progress
from ..common.errors import InputError
from ..common.files.labels import align, read_labels
from ..common.files.stores import open_store, temporary_name
from ..common.files.tables import write_csv
from ..common.images.thumbs import safe_name, write_png

log = logging.getLogger("ldpo")

SUFFIXES = ("", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
#: what an export writes at its top level besides the category folders
RECORD = ".ldpo-export.json"
RECORD_FORMAT = "ldpo-export-1"
TABLES = ("categories.csv", "files.csv")
#: one component of a folder or file name an export writes (what safe_name and its suffixes give)
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
#: a source file's suffix kept on its link (anything else: no suffix)
_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,8}){1,2}")


@dataclass(kw_only=True)
class Options(CommonOptions):
    labels: str = positional("labels CSV (id,label[,name]), e.g. WORK/final/labels.csv or relabel's output",
                             role="input")
    images: str = positional("images store (.h5/.zarr) holding the labels' ids", role="input")
    out: str = opt("output folder: one sub-folder per category, and categories.csv", role="output-folder")
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
        earlier = read_record(out)
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
            files = file_names([(store_ids[r], folders[int(row[r])], suffix_of(sources[store_ids[r]]) if sources
                                 else ".png") for r in rows.tolist()])
            plan = Record(files=set(files.values()) | set(TABLES), folders=set(folders.values()))
            if earlier is not None:
                check_update(out, earlier, plan)
            counts = {c: 0 for c in labels.classes}
            tmp = temporary_name(os.path.realpath(out))  # beside the folder itself: renames stay on its disk
            try:
                make_folder(tmp.parent, out)
                tmp.mkdir()
                for c in labels.classes:
                    (tmp / folders[c]).mkdir()
                for lo in progress(range(0, len(rows), opts.batch_size), desc="export", unit="batch"):
                    chunk = rows[lo:lo + opts.batch_size]
                    block = None if sources else store.take("images", chunk)
                    for j, r in enumerate(chunk.tolist()):
                        ident, c = store_ids[r], int(row[r])
                        if sources:
                            os.symlink(sources[ident], tmp / files[ident])
                        else:
                            write_png(block[j], tmp / files[ident])
                        counts[c] += 1
                write_csv(tmp / "categories.csv", ["label", "folder", "name", "count"],
                          ([c, folders[c], names.get(c, ""), counts[c]] for c in labels.classes))
                write_csv(tmp / "files.csv", ["id", "label", "file"],
                          ([store_ids[r], int(row[r]), files[store_ids[r]]] for r in rows.tolist()))
                if earlier is None:
                    plan.write(tmp / RECORD)
                    place_new(tmp, out)
                else:
                    update(tmp, out, earlier, plan)
            except OSError as err:
                where = str(getattr(err, "filename", "") or "")
                if where.startswith((str(tmp), str(out))):
                    raise InputError(f"{out}: cannot write the export ({err.strerror or err})") from None
                raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        log.info("wrote %d images into %d folders under %s", sum(counts.values()), len(folders), out)
        return 0


# -- what an export owns -------------------------------------------------------------------


@dataclass
class Record:
    """The files (``folder/name``, ``categories.csv``, ``files.csv``) and folders an export wrote."""

    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def write(self, path: Path) -> None:
        """Write the record as ``path`` atomically (a rename in its folder)."""
        data = {"format": RECORD_FORMAT, "tool": "ldpo export-folders",
                "folders": sorted(self.folders), "files": sorted(self.files)}
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def read_record(out: Path) -> Record | None:
    """``None`` for a new OUT; an empty record for an empty folder; an earlier export's record;
    anything else (a file, a folder of other things, a damaged record) is refused."""
    from ..common.files.folders import check_folder_path

    if not check_folder_path(out):  # the one rule of output folders: no link, no file
        return None
    entries = sorted(p.name for p in out.iterdir())
    if RECORD not in entries:
        if not entries:
            return Record()
        older = " (an export by an older ldpo, which did not record its files?)" if "categories.csv" in entries else ""
        raise InputError(f"{out}: folder is not empty and is not an earlier export (no {RECORD}; it holds "
                         f"{entries[0]!r}){older}: give a new or empty folder")
    path = out / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: cannot read this export's record ({err})") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise InputError(f"{path}: not an export record (format {RECORD_FORMAT!r})")
    folders, files = data.get("folders"), data.get("files")
    if not (isinstance(folders, list) and isinstance(files, list)
            and all(isinstance(x, str) for x in folders + files)):
        raise InputError(f"{path}: damaged export record (`folders` and `files` must be lists of names)")
    for name in folders:
        if not _PART.fullmatch(name) or name in TABLES:
            raise InputError(f"{path}: damaged export record (folder {name!r} is not a folder name it writes): "
                             "refusing to touch anything")
    for name in files:
        parts = name.split("/")
        ok = (name in TABLES if len(parts) == 1 else
              len(parts) == 2 and parts[0] in folders and all(_PART.fullmatch(p) for p in parts))
        if not ok:
            raise InputError(f"{path}: damaged export record (file {name!r} is not a file it writes): "
                             "refusing to touch anything")
    return Record(set(files), set(folders))


def check_update(out: Path, earlier: Record, plan: Record) -> None:
    """Before anything changes: refuse a rerun whose files would replace what it did not write."""
    for name in sorted(plan.folders | earlier.folders):
        path = out / name
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            raise InputError(f"{path}: not a folder this export made (a file or a link): move it away or give "
                             "another --out")
    for name in sorted(plan.files):
        path = out / name
        if os.path.lexists(path) and (name not in earlier.files or (path.is_dir() and not path.is_symlink())):
            raise InputError(f"{path}: not written by an earlier export (not in {out / RECORD}): move it away or "
                             "give another --out")


def make_folder(folder: Path, out: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create its folder {folder} ({err.strerror or err})") from None


def place_new(tmp: Path, out: Path) -> None:
    """A complete new export becomes OUT in one rename."""
    try:
        os.rename(tmp, out)
    except OSError as err:
        raise InputError(f"{out}: cannot create it ({err.strerror or err})") from None


def update(tmp: Path, out: Path, earlier: Record, plan: Record) -> None:
    """Move the new export's files into OUT, then remove the earlier files it no longer has.

    The record lists the earlier and the new files together while files move, so an
    interrupted update is finished, never misread, by the next run."""
    Record(earlier.files | plan.files, earlier.folders | plan.folders).write(out / RECORD)
    for name in sorted(plan.folders):
        (out / name).mkdir(exist_ok=True)
    for name in sorted(plan.files):
        move(tmp / name, out / name)
    for name in sorted(earlier.files - plan.files):
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    kept = set()
    for name in sorted(earlier.folders - plan.folders):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError:
                kept.add(name)
                log.info("kept %s: it holds files the export did not write", path)
    Record(plan.files, plan.folders | kept).write(out / RECORD)


def move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        shutil.move(src, dst)


# -- names -------------------------------------------------------------------------------------


def category_names(labels, review_path: str | None) -> dict[int, str]:
    """label → name: from --names, else from the labels' own `name` column (one name per label)."""
    if review_path:
        from ..common.files.review import read_review

        review = read_review(review_path)
        return {c: n for c, n in review.names.items() if n}
    names: dict[int, str] = {}
    for c, n in zip(labels.labels.tolist(), labels.extra.get("name", [])):
        n = " ".join(n.split())
        if n and names.setdefault(c, n) != n:
            raise InputError(f"{labels.source}: label {c} has two names, {names[c]!r} and {n!r}")
    return names


def folder_names(classes: list[int], names: dict[int, str]) -> dict[int, str]:
    """label → folder name, unique whatever the case (and never a table's name): a name that
    collides gets ``-<label>``, then ``-2``, ``-3``… until it is unique."""
    width = len(str(max(classes)))
    wanted = {c: safe_name(names.get(c, ""), f"category-{c:0{width}d}") for c in classes}
    count = Counter(w.lower() for w in wanted.values())
    taken = {t.lower() for t in TABLES}
    chosen: dict[int, str] = {}
    for c in classes:
        if count[wanted[c].lower()] == 1 and wanted[c].lower() not in taken:
            chosen[c] = wanted[c]
            taken.add(wanted[c].lower())
    for c in classes:
        if c in chosen:
            continue
        candidate, n = f"{wanted[c]}-{c}", 2
        while candidate.lower() in taken:
            candidate, n = f"{wanted[c]}-{c}-{n}", n + 1
        chosen[c] = candidate
        taken.add(candidate.lower())
    return {c: chosen[c] for c in classes}


def file_names(entries: list[tuple[str, str, str]]) -> dict[str, str]:
    """``(id, folder, suffix)`` → ``{id: "folder/name"}``: one file per id, unique in its folder
    whatever the case. An id's safe name when no other id of its folder has it, else the safe
    name plus ``-`` and the id's SHA-256 (8 hex digits; more, then a counter, if even that is taken)."""
    wanted = {ident: (folder, safe_name(ident, "image", limit=200), suffix) for ident, folder, suffix in entries}
    count = Counter((folder, (base + suffix).lower()) for folder, base, suffix in wanted.values())
    taken: set[tuple[str, str]] = set()
    chosen: dict[str, str] = {}
    for ident, (folder, base, suffix) in wanted.items():
        if count[folder, (base + suffix).lower()] == 1:
            chosen[ident] = base + suffix
            taken.add((folder, (base + suffix).lower()))
    for ident in sorted(i for i in wanted if i not in chosen):
        folder, base, suffix = wanted[ident]
        digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()
        for width in (8, 16, 32):  # longer only against ids made to collide (base ≤ 200: names stay < 255)
            name = f"{base}-{digest[:width]}{suffix}"
            if (folder, name.lower()) not in taken:
                break
        else:
            n = 2
            while (folder, f"{base}-{digest[:16]}-{n}{suffix}".lower()) in taken:
                n += 1
            name = f"{base}-{digest[:16]}-{n}{suffix}"
        chosen[ident] = name
        taken.add((folder, name.lower()))
    return {ident: f"{wanted[ident][0]}/{chosen[ident]}" for ident, _, _ in entries}


def suffix_of(path: Path) -> str:
    """The source file's image suffix for its link (``.nii.gz`` whole), or none when it is not a plain one."""
    name = path.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    return suffix if _SUFFIX.fullmatch(suffix) else ""


# -- --symlink -------------------------------------------------------------------------------


def find_sources(root: str, ids: list[str]) -> dict[str, Path]:
    """id → absolute source file under ``root`` (the id, or the id plus a known image suffix).

    An id that is an absolute path or holds ``..``, or whose file resolves (through links)
    outside ``root``, is refused: a store's ids must never point the export elsewhere."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{root}: --symlink needs a folder of source files")
    top = base.resolve()
    found: dict[str, Path] = {}
    for ident in ids:
        rel = PurePosixPath(ident)
        if not ident or rel.is_absolute() or ".." in rel.parts:
            raise InputError(f"{root}: id {ident!r} points outside {root} (an absolute path or ..): "
                             "refusing to link to it")
        for suffix in SUFFIXES:
            candidate = base / f"{ident}{suffix}"
            if candidate.is_file():
                target = candidate.resolve()
                if not target.is_relative_to(top):
                    raise InputError(f"{root}: id {ident!r} resolves to {target}, outside {root}: "
                                     "refusing to link to it")
                found[ident] = target
                break
        else:
            raise InputError(f"{root}: no source file for id {ident!r} (looked for {ident}, {ident}.png, …)")
    return found


TOOL = ExportFoldersTool
main = ExportFoldersTool.console
