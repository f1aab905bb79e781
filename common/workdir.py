"""The loop's work folder: its run record, and what of it the loop may delete.

``pipelines/ldpo-loop.sh`` keeps its bookkeeping here, in Python, where a path holding a tab,
a newline, a quote or a backslash is a string like any other. The loop calls it as
``ldpo _workdir COMMAND …`` (plumbing: not a user command, not listed by ``ldpo --help``):

* ``record OUT KEY=VALUE…``: write the run record ``OUT`` (JSON, atomically). ``KEY`` is
  ``section.name`` (``settings.k=4``) or a top-level name (``format=ldpo-run-1``); every value
  is a string, as records have always held them.
* ``diff OLD NEW``: exit 0 when the two records hold the same values (whatever their layout);
  else exit 1 and print ``KIND<TAB>name: old -> new, …`` on one line, where ``KIND`` is
  ``inputs`` (an input or its checksum differs), ``settings``, or ``tree`` (only the category
  tree's settings differ). Exit 2 with one line when a record is not valid.
* ``forget WORK FROM WHY``: delete what the loop wrote for iterations >= ``FROM`` (their
  folders, the final results, the report, the plot, the history's rows >= ``FROM``), or with
  ``FROM`` = ``tree`` the category tree and the report only. Files the loop did not write are
  never deleted: a folder holding one is refused (exit 2, one line naming the file, and nothing
  is deleted). ``WHY`` (``--fresh``) is named in that line.

:func:`read_record` is shared with ``report``, so both say the same of a broken record.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import re
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import Any

from ldpo.common.errors import InputError

SECTIONS = ("settings", "commands", "inputs")

# -- the run record ------------------------------------------------------------------------------


def read_record(path: str | os.PathLike) -> dict | None:
    """The run record at ``path`` (``None`` when there is none), its shape checked: a JSON object
    whose ``settings``, ``commands`` and ``inputs`` are objects of scalars (an input may also be
    ``{"path", "sha256"}``). Anything else is an :class:`InputError` naming the file."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: not readable ({err.strerror or err})") from None
    if not raw.strip():
        raise InputError(f"{path}: not valid JSON (empty file)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid JSON (nested too deep)") from None
    problem = record_problem(data)
    if problem:
        raise InputError(f"{path}: not a run record ({problem})")
    return data


def record_problem(data: Any) -> str:
    """What makes ``data`` no run record, or ``""``."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for section in SECTIONS:
        value = data.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"`{section}` is not an object"
        for key, item in value.items():
            if section == "inputs" and isinstance(item, dict):
                if not all(isinstance(item.get(k, ""), str) for k in ("path", "sha256")):
                    return f"`inputs.{key}`: `path` and `sha256` are not strings"
            elif isinstance(item, (dict, list)) and section != "settings":
                return f"`{section}.{key}` is not a string"
    return ""


def flatten(record: dict) -> dict[str, Any]:
    """One ``name: value`` per setting, command and input (names are unique across sections),
    and the record's top-level values (``format``)."""
    flat = {key: value for key, value in record.items() if key not in SECTIONS}
    for section in SECTIONS:
        flat.update(record.get(section) or {})
    return flat


INPUT_KEYS = re.compile(r"^(images|truth|reports|manifest|init|init_labels|[a-z_0-9]+_sha256)$")


def difference(old: dict, new: dict) -> tuple[str, str]:
    """``(kind, "name: old -> new, …")`` of two records; ``("", "")`` when they hold the same values."""
    a, b = flatten(old), flatten(new)
    keys = [k for k in b if a.get(k, _MISSING) != b[k]] + [k for k in a if k not in b]
    if not keys:
        return "", ""
    shown = ", ".join(f"{k}: {_show(a.get(k, _MISSING))} -> {_show(b.get(k, _MISSING))}" for k in keys)
    if any(INPUT_KEYS.match(str(k)) for k in keys):
        kind = "inputs"
    elif all(str(k).startswith("tree_") for k in keys):
        kind = "tree"
    else:
        kind = "settings"
    return kind, shown


_MISSING = object()


def _show(value: Any) -> str:
    return "(none)" if value is _MISSING else json.dumps(value, ensure_ascii=False)


def record_text(pairs: list[str]) -> str:
    """The record's JSON from ``KEY=VALUE`` arguments, in the order given."""
    record: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"record: {pair!r} is not KEY=VALUE")
        section, dot, name = key.partition(".")
        if dot:
            record.setdefault(section, {})[name] = value
        else:
            record[key] = value
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a path that is not UTF-8: escaped, so the file stays UTF-8 JSON
        text = json.dumps(record, indent=2) + "\n"
    return text


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- what the loop wrote -------------------------------------------------------------------------
# A folder's layout: name (or glob) -> None for a file the loop (or a stage it called) writes
# there, whatever it turned out to be (a Zarr store is a folder), or a nested layout for a folder
# whose own entries are checked. Temporaries of atomic writes (".NAME.tmp-1a2b3c4d.EXT", and
# ".NAME.old-1a2b3c4d" left by an interrupted replace) are the loop's anywhere in its folders.

TEMPORARY = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}(\.[^.]+)?$")
ITERATION = re.compile(r"^iter-[0-9]+$")

ITERATION_LAYOUT: dict[str, Any] = {
    name: None for name in ("features.h5", "encoded.h5", "labels.csv", "clusters.csv", "clusters.png",
                            "converge.txt", "model.pt", "model.pt.partial", "metrics.json", "model.metrics.json")}
REPORT_LAYOUT: dict[str, Any] = {"index.html": None, "history.png": None, "tree.png": None, "thumbs": {"*.png": None}}
FINAL_LAYOUT: dict[str, Any] = {
    "labels.csv": None, "model.pt": None, "model.metrics.json": None, "probs.h5": None, "levels.txt": None,
    "tree": {"tree.json": None, "levels.csv": None, "tree.png": None},
    "keywords": {"index.html": None, "keywords.csv": None, "montage-*.png": None},
}


def _layout_entry(layout: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(owned, nested layout or None) of entry ``name`` in a folder of ``layout``."""
    if name in layout:
        return True, layout[name]
    for pattern, nested in layout.items():
        if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return True, nested
    if TEMPORARY.match(name):
        return True, None
    return False, None


def foreign_file(path: Path, layout: dict[str, Any] | None) -> Path | None:
    """The first entry under ``path`` that the loop did not write (per ``layout``), or None."""
    if layout is None:
        return None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(mode):
        return path  # a file (or a link) where the loop makes a folder
    for entry in sorted(os.listdir(path)):
        owned, nested = _layout_entry(layout, entry)
        if not owned:
            return path / entry
        found = foreign_file(path / entry, nested)
        if found is not None:
            return found
    return None


def remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def forget(work: Path, start: str, why: str) -> None:
    """Delete what the loop wrote for iterations >= ``start`` (or, ``start`` = ``tree``, the
    tree and the report); refuse, deleting nothing, a folder holding a file the loop did not write."""
    targets: list[tuple[Path, Any]] = []
    if start == "tree":
        targets += [(work / "final/tree", FINAL_LAYOUT["tree"]), (work / "final/levels.txt", None),
                    (work / "report", REPORT_LAYOUT)]
        keep_below = None
    else:
        n = int(start)
        keep_below = n
        for entry in sorted(os.listdir(work)):
            if ITERATION.match(entry) and os.path.isdir(work / entry):
                i = int(entry[len("iter-"):])
                if i >= n:
                    targets.append((work / entry, ITERATION_LAYOUT))
                else:  # kept, but converged again under this run's settings
                    targets.append((work / entry / "converge.txt", None))
        targets += [(work / "final", FINAL_LAYOUT), (work / "report", REPORT_LAYOUT), (work / "history.png", None),
                    (work / "history.csv.tmp", None), (work / ".run.json.tmp", None)]  # (older loops' temporaries)
        # temporaries an interrupted run left (of the report folder, of a run record)
        targets += [(work / entry, None) for entry in sorted(os.listdir(work)) if TEMPORARY.match(entry)]
    for path, layout in targets:
        found = foreign_file(path, layout)
        if found is not None:
            raise InputError(f"{found}: ldpo did not write this file, and {why} deletes {path}: move it out of "
                             "the work folder and rerun (nothing was deleted)")
    for path, _ in targets:
        remove(path)
    if keep_below is not None:
        trim_history(work / "history.csv", keep_below)


def trim_history(path: Path, keep_below: int) -> None:
    """Keep the rows of iterations < ``keep_below`` (none: the file goes)."""
    if keep_below <= 0:
        remove(path)
        remove(path.with_name(path.stem + ".fields.csv"))  # converge --fields' side file
        return
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0].strip().isdigit() and int(r[0]) < keep_below]
    if kept == rows:
        return
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(kept)
    write_atomically(path, buffer.getvalue())


# -- the command line ----------------------------------------------------------------------------

USAGE = "usage: ldpo _workdir record OUT KEY=VALUE… | diff OLD NEW | forget WORK FROM WHY"


def main(argv: list[str]) -> int:
    """``ldpo _workdir …`` (see the module's text); errors are one ``ldpo-loop: error:`` line, exit 2
    (a newline in a path is written ``\\n``)."""
    try:
        return _main(argv)
    except InputError as err:
        message = str(err)
    except OSError as err:
        message = f"{err.filename}: {err.strerror or err}" if getattr(err, "filename", None) else str(err)
    print("ldpo-loop: error: " + message.replace("\n", "\\n"), file=sys.stderr)
    return 2


def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "record":
        write_atomically(Path(argv[1]), record_text(argv[2:]))
        return 0
    if len(argv) == 3 and argv[0] == "diff":
        old, new = read_record(argv[1]), read_record(argv[2])
        kind, shown = difference(old or {}, new or {})
        if not kind:
            return 0
        print(f"{kind}\t{shown}")
        return 1
    if len(argv) == 4 and argv[0] == "forget":
        if argv[2] != "tree" and not argv[2].isdigit():
            raise InputError(f"forget: {argv[2]!r} is not an iteration number or 'tree'")
        forget(Path(argv[1]), argv[2], argv[3])
        return 0
    raise InputError(USAGE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
