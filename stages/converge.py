"""``converge``: compare this iteration's labels with the previous ones; the loop's stop signal.

Exit status, like ``diff``/``grep``: 0 = converged (the ``--metric`` between CURR and
PREV reaches ``--threshold``), 1 = not yet (also when there is no ``--prev``), 2 = any
error. Because a Python that dies before the command runs (a broken install, an import
error) also exits 1, the verdict is printed too: the last line of stdout is exactly
``converged=1`` (converged: stop) or ``converged=0`` (not yet: go on), the same value as
the history's ``converged`` column. A caller should trust only that line and abort when
it is missing. :meth:`ConvergeTool.main` returns 1 only after every output was written; an
exception anywhere exits 2 (the CLI base maps every exception to 2, and ``main``
turns a stray ``SystemExit`` into one), so a shell loop cannot spin forever on a
crash, provided it tells 1 from 2 (``case $? in 0) …;; 1) …;; *) exit 2;; esac``).

``--patience N`` (with ``--history``): converged only when the metric has reached the
threshold at N consecutive iterations, this one and the N - 1 before it in the history (each
row's own metric, recomputed from its columns; a missing or empty row breaks the run). The
paper's rule is N = 1, two consecutive labelings agree; the loop's default is 2.

Metrics vs PREV (the paper's convergence measures): purity of CURR w.r.t. PREV and the
inverse purity (PREV w.r.t. CURR), NMI, ARI. ``--metric purity`` uses the smaller of
the two purities, so neither splitting nor merging clusters passes unnoticed; the
default ``nmi`` with threshold 0.9 stops when nine tenths of the information in one
labeling is shared by the other. With ``--truth``: purity, NMI, ARI and Hungarian
accuracy of CURR against the truth (cluster and class counts may differ).

The history CSV gets one row per iteration (a re-run of the same iteration replaces its
row), always with the columns of :data:`ldpo.common.files.history.COLUMNS`, empty where not applicable.

A quality signal without labels (``--fields MANIFEST``): how far this iteration's
categories follow non-identifying DICOM header fields of ``extract-keyimages``' manifest
(``--field-columns``: modality, body_part, view, orientation, series_words; by default
those the manifest has and fills). For each field: NMI and purity of the categories
against the field's values, over the images whose value is not empty (``coverage`` = their
fraction). A good categorization partly follows modality and body region (Manojlović et
al. 2022, deep embedded clustering of 38K PACS images: NMI 0.645 against modality, 0.473
against anatomical region); near 0 means the categories ignore it. The fields are
**evaluation only**: nothing else reads them, and they change no verdict. With
``--history H`` they go to the side file ``H``'s stem + ``.fields.csv``
(:data:`FIELD_COLUMNS`: one row per iteration and field, a re-run iteration's rows
replaced), so the history's own columns never change; they are logged on stderr too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.numerics import metrics
from ..common.cli import CommonOptions, Tool, opt, positional
from ..common.errors import InputError
from ..common.loop.keep import heldout_agreement, read_metrics
from ..common.files.history import COLUMNS, PREV_COLUMNS, TRUTH_COLUMNS, fields_path, read_history, write_history
from ..common.files.labels import Labels, align, read_labels
from ..common.files.plots import pyplot, save_png
from ..common.files.tables import csv_rows, write_csv

log = logging.getLogger("ldpo")

HISTORY_COLUMNS = COLUMNS  # the history's schema is ldpo.common.files.history's
TOP1_KEYS = ("val_top1", "train_top1", "test_top1")  # the first present becomes `top1`
FIELD_COLUMNS = ["iteration", "field", "values", "coverage", "nmi", "purity"]
DEFAULT_FIELDS = "modality,body_part,view,orientation,series_words"


@dataclass(kw_only=True)
class Options(CommonOptions):
    curr: str = positional("labels CSV of this iteration (id,label)", role="input")
    prev: str = opt("labels CSV of the previous iteration (none: not converged, exit 1)", "", role="input")
    truth: str = opt("ground-truth labels CSV, for evaluation only (it may list more ids)", "", role="input")
    history: str = opt("history CSV to add this iteration's row to (a row of the same iteration is replaced)", "",
                       role="output")
    iteration: int = opt("iteration number for the history (-1 = one more than the history's last)", -1, min=-1)
    metric: str = opt("the convergence measure vs --prev", "nmi", choices=["nmi", "purity"])
    threshold: float = opt("converged when the metric reaches this", 0.9, min=0, max=1)
    patience: int = opt("converged when the metric has reached --threshold at this many consecutive iterations: "
                        "this one and, from --history, the ones before it (1 = this one alone)", 1, min=1)
    plot: str = opt("redraw the whole history as this PNG (needs --history)", "", role="output")
    metrics_json: str = opt("finetune's metrics (MODEL.metrics.json) whose `final` top-1 goes into the history's "
                            "top1 column", "",
                            role="input")
    fields: str = opt("manifest CSV (id + header field columns, from extract-keyimages): report how far the "
                      "categories follow each field (NMI, purity) in HISTORY.fields.csv; evaluation only, never an "
                      "input to anything", "", role="input")
    field_columns: str = opt("the --fields columns to measure, comma-separated (default: those of the list the "
                             "manifest has and fills)", DEFAULT_FIELDS)


class ConvergeTool(Tool):
    name = "converge"
    description = ("Compare two consecutive labelings (purity both ways, NMI, ARI; vs --truth as well). "
                   "Exit 0 = converged, 1 = not yet, 2 = error. Prints one line of key=value pairs, then the "
                   "verdict on its own line: converged=1 (stop) or converged=0 (go on).")
    example = ("converge labels_3.csv --prev labels_2.csv --truth truth.csv --history history.csv "
               "--iteration 3 --plot history.png\n"
               "converge l_3.csv --prev l_2.csv; case $? in 0) echo stop;; 1) echo go on;; *) exit 2;; esac\n"
               "converge labels_3.csv --prev labels_2.csv --history history.csv --fields keys/manifest.csv   "
               "# + history.fields.csv")
    Options = Options

    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        """The history's side file of field agreement is an output too (no input may be it)."""
        extra = [("--history", str(fields_path(opts.history)))] if opts.history and opts.fields else []
        return super().outputs(opts) + extra

    def main(self, opts: Options) -> int:
        try:
            converged = self.compare(opts)
        except SystemExit as exit_:  # a library calling sys.exit(1) must not read as "not converged"
            raise RuntimeError(f"unexpected exit (status {exit_.code}) while comparing") from exit_
        return 0 if converged is True else 1

    def compare(self, opts: Options) -> bool:
        """Compute, record and print; True when converged."""
        if opts.plot and not opts.history:
            raise InputError("--plot draws the history: give --history too")
        if opts.patience > 1 and not opts.history:
            raise InputError(f"--patience {opts.patience} counts earlier iterations: give --history too")
        curr = read_labels(opts.curr)
        row: dict[str, object] = {"k": len(np.unique(curr.labels))}
        if opts.prev:
            row.update(versus_prev(curr, read_labels(opts.prev)))
        if opts.truth:
            row.update(versus_truth(curr, read_labels(opts.truth)))
        if opts.metrics_json:
            row["top1"] = read_top1(opts.metrics_json)
        agreement = versus_fields(curr, opts.fields, opts.field_columns) if opts.fields else []
        score = convergence_score(row, opts.metric) if opts.prev else None
        history = read_history(opts.history) if opts.history else []
        row["iteration"] = opts.iteration if opts.iteration >= 0 else next_iteration(history)
        streak = agreeing_streak(history, int(row["iteration"]), opts.metric, opts.threshold) + 1
        converged = score is not None and score >= opts.threshold and streak >= opts.patience
        row["converged"] = int(converged)
        row["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        for item in agreement:
            log.info("iteration %s vs header field %s: NMI %s, purity %s (%d values, coverage %.0f%%)",
                     row["iteration"], item["field"], fmt(item["nmi"]), fmt(item["purity"]), item["values"],
                     100 * item["coverage"])
        field_rows: list[dict] = []
        if opts.history:
            existed = Path(opts.history).exists()
            history = merge_row(history, row)
            if opts.metrics_json and opts.prev:
                record_heldout(history, int(row["iteration"]) - 1, opts.metrics_json, opts.prev)
            if opts.fields:
                # a new history starts a new side file: rows of an earlier run must not mix in
                old = read_field_rows(fields_path(opts.history)) if existed else []
                field_rows = merge_field_rows(old, agreement, int(row["iteration"]), history)
                write_field_rows(fields_path(opts.history), field_rows)
            write_history(opts.history, history)
            if opts.plot:
                if not opts.fields and Path(opts.history).exists():
                    field_rows = read_field_rows(fields_path(opts.history), quiet=True)
                plot_history(history, opts.plot, opts.threshold, opts.metric, field_rows)
        print(" ".join(f"{c}={fmt(row.get(c, ''))}" for c in HISTORY_COLUMNS if c != "timestamp"
                       and row.get(c, "") != ""))
        print(f"converged={int(converged)}")  # the verdict, on its own line (see the module docstring)
        log.info("%s", "converged" if converged else
                 "no previous labels: not converged" if score is None else
                 f"not converged: {opts.metric} {score:.4f} < {opts.threshold}" if score < opts.threshold else
                 f"not converged: {opts.metric} {score:.4f} reached {opts.threshold} at {streak} consecutive "
                 f"iteration(s) of the --patience {opts.patience}")
        return converged


def versus_prev(curr: Labels, prev: Labels) -> dict[str, float]:
    """CURR against PREV, joined by id (both must list the same ids)."""
    prev_aligned = align(prev, curr.ids, curr.source)
    m = {
        "purity_prev": metrics.purity(curr.labels, prev_aligned),
        "inverse_purity_prev": metrics.inverse_purity(curr.labels, prev_aligned),
        "nmi_prev": metrics.nmi(curr.labels, prev_aligned),
        "ari_prev": metrics.ari(curr.labels, prev_aligned),
    }
    return check_finite(m)


def versus_truth(curr: Labels, truth: Labels) -> dict[str, float]:
    """CURR against the truth; the truth may name more ids, but must cover every id of CURR."""
    truth_aligned = align(truth, curr.ids, curr.source, allow_unknown=True)
    m = metrics.all_metrics(curr.labels, truth_aligned)
    return check_finite({"purity_truth": m["purity"], "nmi_truth": m["nmi"], "ari_truth": m["ari"],
                         "hungarian_truth": m["hungarian"]})


def read_fields(path: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A manifest's header (stripped) and its rows by id (``id`` required, ids unique)."""
    header: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for line_no, raw in csv_rows(path, "manifest CSV", ["id"]):
        if not header:
            header = list(raw)
        ident = raw["id"].strip()
        if not ident:
            raise InputError(f"{path}: line {line_no}: empty id")
        if ident in rows:
            raise InputError(f"{path}: line {line_no}: duplicate id {ident!r}")
        rows[ident] = raw
    if not rows:
        raise InputError(f"{path}: no rows in the manifest")
    return header, rows


def versus_fields(curr: Labels, path: str, columns: str) -> list[dict]:
    """NMI and purity of CURR against each header field of the manifest at ``path`` (empty values left out).

    Every id of CURR must be in the manifest (it may list more). Columns named explicitly must exist; of the
    default list, those missing or empty for every image of CURR are skipped."""
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    if not wanted:
        raise InputError("--field-columns: names no column")
    explicit = columns != DEFAULT_FIELDS
    header, rows = read_fields(path)
    missing = [i for i in curr.ids if i not in rows]
    if missing:
        raise InputError(f"{path}: {len(missing)} id(s) of {curr.source} are not in it, e.g. {missing[0]!r} "
                         "(the manifest of another images store?)")
    absent = [c for c in wanted if c not in header]
    if absent and explicit:
        raise InputError(f"{path}: no column {', '.join(absent)} (it has {', '.join(header)})")
    out = []
    for column in (c for c in wanted if c in header):
        values = np.array([rows[i][column].strip() for i in curr.ids], dtype=object)
        known = values != ""
        if not known.any():
            if explicit:
                log.warning("%s: column %s is empty for every image: no agreement to measure", path, column)
            continue
        labels, field = curr.labels[known], values[known].astype(str)
        out.append({"field": column, "values": int(len(np.unique(field))), "coverage": float(known.mean()),
                    **check_finite({"nmi": metrics.nmi(labels, field), "purity": metrics.purity(labels, field)})})
    if not out:
        log.warning("%s: none of the columns %s has a value: no header field to compare with", path,
                    ", ".join(wanted))
    return out


def read_field_rows(path: Path, quiet: bool = False) -> list[dict[str, str]]:
    """The rows of an existing field-agreement file (none when absent; ``quiet``: none when unreadable)."""
    if not path.exists():
        return []
    try:
        return [{c: raw.get(c, "") for c in FIELD_COLUMNS}
                for _, raw in csv_rows(path, "field agreement CSV", ["iteration", "field"])
                if raw["iteration"].strip().lstrip("-").isdigit()]
    except InputError:
        if quiet:
            return []
        raise


def merge_field_rows(old: list[dict], new: list[dict], iteration: int, history: list[dict]) -> list[dict]:
    """``old`` less this iteration's rows and those of iterations the history no longer has, plus ``new``."""
    keep = {int(r["iteration"]) for r in history} - {iteration}
    rows = [r for r in old if int(r["iteration"]) in keep]
    rows += [{"iteration": str(iteration), **{k: fmt(v) for k, v in item.items()}} for item in new]
    return sorted(rows, key=lambda r: int(r["iteration"]))  # stable: fields stay in their order


def write_field_rows(path: Path, rows: list[dict]) -> None:
    write_csv(path, FIELD_COLUMNS, ([r.get(c, "") for c in FIELD_COLUMNS] for r in rows))


def check_finite(values: dict[str, float]) -> dict[str, float]:
    for name, value in values.items():
        if not math.isfinite(value):
            raise RuntimeError(f"{name} came out {value}: cannot decide convergence")
    return values


def convergence_score(row: dict, metric: str) -> float:
    if metric == "purity":
        return min(row["purity_prev"], row["inverse_purity_prev"])
    return row["nmi_prev"]


def agreeing_streak(history: list[dict[str, str]], iteration: int, metric: str, threshold: float) -> int:
    """How many iterations right before ``iteration`` (``iteration`` - 1, - 2, ...) the history shows with
    the metric at or above ``threshold``; counting stops at the first missing, empty or lower one."""
    rows = {int(r["iteration"]): r for r in history}
    streak = 0
    while (row := rows.get(iteration - 1 - streak)) is not None:
        try:
            score = convergence_score({c: float(row[c]) for c in PREV_COLUMNS}, metric)
        except (KeyError, ValueError):
            break
        if not score >= threshold:  # also NaN
            break
        streak += 1
    return streak


def record_heldout(history: list[dict], iteration: int, metrics_json: str, prev: str) -> None:
    """The held-out agreement of the previous labels (``prev``, which the model of ``metrics_json`` was trained
    on) goes into their own row, ``iteration``, of the history (see :mod:`ldpo.common.loop.keep`)."""
    found = heldout_agreement(read_metrics(metrics_json), read_labels(prev).labels)
    for r in history:
        if int(r["iteration"]) == iteration and found is not None:
            r["heldout"], r["heldout_se"] = fmt(found[0]), fmt(found[1])
            log.info("iteration %d's labels: held-out agreement (kappa) %.3f ± %.3f", iteration, *found)


def read_top1(path: str) -> float:
    """``top1`` from finetune's metrics (``MODEL.metrics.json``): ``final.val_top1``, else
    ``train_top1``, else ``test_top1``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such metrics file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err})") from None
    final = data.get("final") if isinstance(data, dict) else None
    if not isinstance(final, dict):
        raise InputError(f"{path}: has no `final` metrics object")
    for key in TOP1_KEYS:
        value = final.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    raise InputError(f"{path}: `final` has none of {', '.join(TOP1_KEYS)} as a number")


# -- history -----------------------------------------------------------------------------

def next_iteration(history: list[dict]) -> int:
    return max((int(r["iteration"]) for r in history), default=-1) + 1


def merge_row(history: list[dict], row: dict) -> list[dict]:
    """The history with ``row`` added, or replacing the row of the same iteration; sorted by iteration."""
    new = {c: fmt(row.get(c, "")) for c in HISTORY_COLUMNS}
    kept = [r for r in history if int(r["iteration"]) != int(row["iteration"])]
    # heldout comes from the next iteration's converge: a re-run of this one keeps it
    for old in (r for r in history if int(r["iteration"]) == int(row["iteration"])):
        new["heldout"], new["heldout_se"] = old.get("heldout", ""), old.get("heldout_se", "")
    return sorted(kept + [new], key=lambda r: int(r["iteration"]))


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_history(rows: list[dict], path: str, threshold: float, metric: str, fields: list[dict] | None = None) -> None:
    """Metrics over iterations: vs the previous labels (left), vs the truth, top-1 and the header fields' NMI
    (dotted, right)."""
    plt = pyplot()

    its = np.array([int(r["iteration"]) for r in rows])

    def series(col: str) -> np.ndarray:
        return np.array([float(r[col]) if r.get(col, "") != "" else np.nan for r in rows])

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for col in PREV_COLUMNS:
        left.plot(its, series(col), marker="o", label=col.removesuffix("_prev"))
    left.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold ({metric})")
    done = its[series("converged") == 1]
    if len(done):
        left.axvline(done.min(), color="tab:green", ls=":", lw=1.5, label="converged")
    left.set(title="vs previous iteration", xlabel="iteration", ylim=(-0.05, 1.05))
    has_truth = False
    for col in [*TRUTH_COLUMNS, "top1"]:
        values = series(col)
        if np.isfinite(values).any():
            right.plot(its, values, marker="s", label=col.removesuffix("_truth"))
            has_truth |= col != "top1"
    names = list(dict.fromkeys(r["field"] for r in fields or []))
    for name in names:
        points = sorted((int(r["iteration"]), float(r["nmi"])) for r in fields if r["field"] == name and r["nmi"])
        if points:
            right.plot(*zip(*points), ls=":", marker=".", label=f"NMI {name}")
    what = " and ".join(w for w, shown in (("ground truth", has_truth), ("header fields (NMI)", names)) if shown)
    right.set(title=f"vs {what or 'ground truth'}", xlabel="iteration")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)


TOOL = ConvergeTool
main = ConvergeTool.console
