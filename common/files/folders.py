"""One rule for every output folder (``--out DIR`` of hierarchy, keywords, report, extract-keyimages,
toy-data, topic-label's ``--model-dir``; export-folders keeps the same rule with its own, richer record).

An output folder is one of:

* nothing yet (it is created), or an empty folder;
* a folder that an earlier run of the *same* command wrote: it holds :data:`RECORD`
  (``.ldpo-output.json``), which lists every entry that command wrote there, and nothing
  else (a temporary a killed write left of a listed entry aside).

Anything else is refused with one line naming the folder and the first entry that is not
the command's, and nothing is written or deleted: a file at OUT, a link at OUT (ldpo never
writes into a folder through a link), a folder of someone's files, even one whose files
have the names the command writes (``truth.csv``, ``levels.csv``), and the output of
another command. A rerun then replaces or removes only what its record lists.

Commands that write file by file use :func:`output_folder` (the record lists what is about
to be written before the first file is, and exactly what is there once the command is
done); commands that replace the folder as a whole call :func:`check_output_folder` and
write the record into their temporary folder with :func:`write_record`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError
from .stores import _OWNED, _key

#: the record of what a command wrote into its output folder
RECORD = ".ldpo-output.json"
RECORD_FORMAT = "ldpo-output-1"


def _temporary_of(name: str, listed: Iterable[str]) -> bool:
    """``name`` is a temporary (``.STEM.tmp-1a2b3c4d.SUFFIX``) of one of ``listed``."""
    for entry in [*listed, RECORD]:
        stem, suffix = os.path.splitext(entry)
        if re.fullmatch(re.escape(f".{stem}.tmp-") + "[0-9a-f]{8}" + re.escape(suffix), name):
            return True
    return False


def read_record(out: Path, command: str) -> frozenset[str] | None:
    """The entries ``command`` recorded in ``out`` (None: no record there); a damaged record, or
    another command's, is refused."""
    path = out / RECORD
    if not os.path.lexists(path):
        return None
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError("not a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read this folder's record of its outputs ({err}): refusing to touch "
                         "anything; give a new folder") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not (isinstance(data, dict) and data.get("format") == RECORD_FORMAT and isinstance(entries, list)
            and all(isinstance(e, str) and e and "/" not in e and e not in (".", "..") for e in entries)):
        raise InputError(f"{path}: not a record of ldpo outputs (format {RECORD_FORMAT!r}): refusing to touch "
                         "anything; give a new folder")
    if data.get("command") != command:
        raise InputError(f"{out}: holds the output of {data.get('command')!r}, not of {command}: give another folder")
    return frozenset(entries)


def check_folder_path(out: Path) -> bool:
    """The rule's first half, for every output folder: not a link, not a file; True when it exists."""
    if out.is_symlink():
        raise InputError(f"{out}: is a link: give the folder itself (ldpo never writes into a folder through a "
                         "link)")
    if not os.path.lexists(out):
        return False
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder: give a new or empty folder")
    return True


def check_output_folder(out: str | os.PathLike, command: str) -> frozenset[str]:
    """Apply the rule (see the module) to ``out`` before anything is written; return what an
    earlier run of ``command`` recorded there (empty for a new or empty folder).

    A folder that passes may also be replaced as a whole by a folder written under
    :func:`ldpo.common.files.stores.atomic_path` (once, while it holds nothing new since this check)."""
    out = Path(out)
    if not check_folder_path(out):
        return frozenset()
    try:
        names = sorted(os.listdir(out))
    except OSError as err:
        raise InputError(f"{out}: cannot list it ({err.strerror or err})") from None
    recorded = read_record(out, command) if names else frozenset()
    if recorded is None:
        raise InputError(f"{out}: folder is not empty and is not an earlier {command} output (no {RECORD}; it "
                         f"holds {names[0]!r}): give a new or empty folder (nothing was written)")
    foreign = [n for n in names if n != RECORD and n not in recorded and not _temporary_of(n, recorded)]
    if foreign:
        raise InputError(f"{out / foreign[0]}: not written by an earlier {command} (not in {out / RECORD}): "
                         "move it away or give a new folder (nothing was written)")
    _OWNED[_key(out)] = frozenset(names)
    return recorded


def write_record(out: str | os.PathLike, command: str, entries: Iterable[str]) -> None:
    """Write ``out``'s record (atomically: a rename in the folder)."""
    out = Path(out)
    text = json.dumps({"format": RECORD_FORMAT, "command": command, "entries": sorted(set(entries))}, indent=1)
    tmp = out / f".{Path(RECORD).stem}.tmp-{uuid.uuid4().hex[:8]}.json"
    try:
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out / RECORD)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{out}: cannot write ({err.strerror or err})") from None


class Folder:
    """An output folder being written (:func:`output_folder`)."""

    def __init__(self, path: Path, command: str, claimed: set[str]):
        self.path, self.command, self.claimed = path, command, claimed

    def claim(self, *names: str) -> None:
        """Record ``names`` before they are written (those :func:`output_folder` was given already are)."""
        if not set(names) <= self.claimed:
            self.claimed |= set(names)
            write_record(self.path, self.command, self.claimed)

    def settle(self) -> None:
        """Record exactly the claimed entries that are there (none, no record: the folder is as it was)."""
        there = [n for n in self.claimed if os.path.lexists(self.path / n)]
        if there:
            write_record(self.path, self.command, there)
        else:
            (self.path / RECORD).unlink(missing_ok=True)


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, command: str, names: Iterable[str] = ()) -> Iterator[Folder]:
    """Check ``out`` (:func:`check_output_folder`), create it, and record ``names`` (with what an
    earlier run recorded) before the block writes them; when the block ends, however it ends,
    the record lists exactly those of them that are there."""
    out = Path(out)
    earlier = check_output_folder(out, command)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create it ({err.strerror or err})") from None
    folder = Folder(out, command, set(earlier))
    folder.claim(*names)
    try:
        yield folder
    finally:
        folder.settle()
