"""The loop's history (``WORK/history.csv``): one schema that ``converge`` writes and the loop's
summary, ``report`` and the loop's bookkeeping read.

One row per iteration, always the columns of :data:`COLUMNS` (empty where not applicable):
``iteration``, ``k`` (clusters found), agreement with the previous iteration's labels
(:data:`PREV_COLUMNS`), with the ground truth (:data:`TRUTH_COLUMNS`), finetune's ``top1``,
converge's verdict ``converged`` (0/1), a ``timestamp`` and ``heldout``: the chance-corrected agreement of
this row's labels with the predictions, on held-out images, of the next iteration's model (trained on them;
filled in by the next iteration's converge, :mod:`ldpo.common.loop.keep`). :data:`TITLES` names each column
for people (the report's table header).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..errors import InputError
from .tables import read_text, write_csv

PREV_COLUMNS = ["purity_prev", "inverse_purity_prev", "nmi_prev", "ari_prev"]
TRUTH_COLUMNS = ["purity_truth", "nmi_truth", "ari_truth", "hungarian_truth"]
COLUMNS = ["iteration", "k", *PREV_COLUMNS, *TRUTH_COLUMNS, "top1", "converged", "timestamp", "heldout", "heldout_se"]
#: the columns that hold a number when not empty
NUMBER_COLUMNS = ["k", *PREV_COLUMNS, *TRUTH_COLUMNS, "top1", "converged", "heldout", "heldout_se"]

#: the columns shown to people, in this order, with their titles
TITLES = {"iteration": "iteration", "k": "K", "top1": "top-1 (finetune)",
          "nmi_prev": "NMI vs previous", "purity_prev": "purity vs previous",
          "inverse_purity_prev": "inverse purity vs previous", "ari_prev": "ARI vs previous",
          "purity_truth": "purity vs truth", "nmi_truth": "NMI vs truth",
          "ari_truth": "ARI vs truth", "hungarian_truth": "accuracy vs truth (Hungarian)",
          "converged": "converged", "heldout": "held-out agreement (kappa) of these labels",
          "heldout_se": "its standard error"}

#: the loop's summary table: (column, header line 1, header line 2)
SUMMARY = [("iteration", "iter", ""), ("k", "K", ""), ("top1", "top1", ""), ("nmi_prev", "nmi_prev", ""),
           ("purity_prev", "purity", "(prev)"), ("nmi_truth", "nmi_truth", ""), ("purity_truth", "purity", "(truth)")]


FIELDS_TAIL = "fields.csv"  # converge --fields' side file of the history: history.csv -> history.fields.csv


def fields_path(history: str | os.PathLike) -> Path:
    """Where converge --fields writes the agreement with the header fields beside ``history``."""
    from .tables import side_file

    return side_file(history, FIELDS_TAIL)


def read_history(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of an existing history CSV, each with every column of :data:`COLUMNS` (none when the
    file does not exist or is empty); an :class:`InputError` naming the file when it is no history."""
    p = Path(path)
    if not p.exists():
        return []
    text = read_text(p, "history")
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "iteration" not in reader.fieldnames:
        raise InputError(f"{path}: not a converge history (no 'iteration' column)")
    rows, seen = [], set()
    for line_no, raw in enumerate(reader, start=2):
        try:
            iteration = int(raw["iteration"])
        except (TypeError, ValueError):
            raise InputError(f"{path}: line {line_no}: iteration {raw['iteration']!r} is not an integer") from None
        if iteration in seen:
            raise InputError(f"{path}: line {line_no}: a second row of iteration {iteration} (which one counts?)")
        seen.add(iteration)
        for column in NUMBER_COLUMNS:
            value = (raw.get(column) or "").strip()
            try:
                value and float(value)
            except ValueError:
                raise InputError(f"{path}: line {line_no}: {column} {value!r} is not a number") from None
        rows.append({c: raw.get(c) or "" for c in COLUMNS})
    return rows


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    write_csv(path, COLUMNS, ([r.get(c, "") for c in COLUMNS] for r in rows))


def has_row(path: str | os.PathLike, iteration: int) -> bool:
    """True when the history at ``path`` has a row of ``iteration`` (False for no history or an unreadable one)."""
    try:
        return any(int(r["iteration"]) == iteration for r in read_history(path))
    except InputError:
        return False


def not_written_by_converge(path: str | os.PathLike, fields: bool = False) -> str:
    """Why the regular file at ``path`` is not a history (``fields``: a field-agreement side file)
    that converge writes, or ``""`` when it is one, is empty, or is no regular file (a link is
    removed or replaced, never what it points to). Its header must start with ``iteration`` and
    name only the columns converge writes (``iteration,field,…`` for the side file)."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return ""
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            header = next(csv.reader([fh.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return f"unreadable as CSV ({type(err).__name__})"
    header = [h.strip() for h in header]
    if not header:
        return ""
    if fields:
        return "" if header[:2] == ["iteration", "field"] else "its header is not converge's iteration,field,…"
    if header[0] != "iteration" or not set(header) <= set(COLUMNS):
        return "its header is not converge's iteration,k,…"
    return ""


def keep_before(path: str | os.PathLike, keep_below: int) -> None:
    """Keep the rows of iterations < ``keep_below``, the file's own columns and text as they are
    (no rows kept: the file goes, with converge --fields' side file)."""
    path = Path(path)
    if keep_below <= 0:
        for p in (path, fields_path(path)):
            if p.is_file() or p.is_symlink():
                p.unlink()
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
    tmp = path.with_name(f".{path.name}.tmp-{os.urandom(4).hex()}")
    try:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def summary(rows: list[dict[str, str]], final_row: int | None = None) -> str:
    """The loop's per-iteration table; the row whose clustering ``final/labels.csv`` is gets a ``*``."""
    width = (5, 5, 6, 9, 7, 10, 8)
    lines = [" ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, ((_, h, _), w) in enumerate(zip(SUMMARY, width))),
             " ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, ((_, _, h), w) in enumerate(zip(SUMMARY, width)))]
    for r in rows:
        cells = []
        for i, ((col, _, _), w) in enumerate(zip(SUMMARY, width)):
            value = r.get(col, "")
            if value in ("", None):
                value = "-"
            elif col not in ("iteration", "k"):
                value = f"{float(value):.3f}"
            elif col == "iteration" and final_row is not None and int(value) == final_row:
                value += "*"
            cells.append(f"{value:<{w}}" if i == 0 else f"{value:>{w}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)
