"""The loop's work folder: its layout, its run record, what of it the loop may delete, and its
bookkeeping, exposed to ``pipelines/ldpo-loop.sh`` as plumbing (like git's) by ``ldpo _workdir COMMAND
… -- LOOP-ARGUMENTS`` (:mod:`ldpo.common.loop.command`).

The layout of ``WORK`` (:class:`Layout`)::

    run.json            the run record (:class:`RunRecord`)
    history.csv         converge's rows (schema: ldpo.common.files.history), history.png, history.fields.csv
    iter-NN/            features.h5, [encoded.h5], labels.csv, clusters.*, converge.txt; from
                        iteration 1 on model.pt (finetune on iter-(NN-1)/labels.csv), model.metrics.json
    final/              model.pt, labels.csv, [consensus.txt], probs.h5, levels.txt, tree/, keywords/
    report/             report's page

**The final model and labels.** ``final/labels.csv`` is a copy of the labels the loop keeps,
iteration s's clustering, and ``final/model.pt`` of the model trained on them, iteration s + 1's
``model.pt`` (with no fine-tuning iteration, iteration 0's labels and no model): the model's
classes, the tree's leaves and the keywords' categories are then one set. s comes from the run's
``--keep`` rule (:mod:`ldpo.common.loop.keep`; the default, ``auto``, is ``consensus`` when K is chosen from
the data and ``last`` when it is given): under ``last`` the last labels a model was trained on,
s = last - 1. Under ``--keep consensus`` ``final/labels.csv`` is instead the consensus of every
iteration's clustering, with s's class numbers and count (:mod:`ldpo.common.loop.consensus`; what it
did is in ``final/consensus.txt``). The summary marks the row of s with ``*`` and says why, and the
report says which it is (:func:`final_labels_iteration`).

The command line over all this is :mod:`ldpo.common.loop.command`.

Why one module of this size (about 640 lines): the work folder is one contract (its layout,
the run record that resumes or refuses a run, what the loop may delete, the lock and the loop's
decisions all read the same layout and record), and it has one owner; the command line over it
is already apart.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError

# -- the layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the loop's files are in ``work`` (paths as the user gave ``--work``)."""

    work: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    @property
    def record(self) -> str:
        return self.path("run.json")

    @property
    def history(self) -> str:
        return self.path("history.csv")

    @property
    def history_plot(self) -> str:
        return self.path("history.png")

    @property
    def lock(self) -> str:
        return self.path(".ldpo-loop.lock")

    @staticmethod
    def iteration_name(t: int) -> str:
        return f"iter-{t:02d}"

    def iteration(self, t: int, name: str = "") -> str:
        return self.path(self.iteration_name(t), name) if name else self.path(self.iteration_name(t))

    def final(self, name: str = "") -> str:
        return self.path("final", name) if name else self.path("final")

    def report(self, name: str = "") -> str:
        return self.path("report", name) if name else self.path("report")

    def iterations(self) -> list[int]:
        """The iteration folders there are, in order."""
        if not os.path.isdir(self.work):
            return []
        return sorted(int(e[len("iter-"):]) for e in os.listdir(self.work)
                      if ITERATION.match(e) and os.path.isdir(self.path(e)))


def final_labels_iteration(last: int, layout: "Layout | None" = None) -> int:
    """The iteration whose clustering ``final/labels.csv`` is, when ``last`` is the last iteration run: with
    ``layout``, the labels the loop keeps (:func:`kept_labels`); without, the last labels a model was trained
    on (``last - 1``), or iteration 0's when no fine-tuning ran."""
    return kept_labels(layout, last)[0] if layout is not None else max(last - 1, 0)


def kept_labels(layout: "Layout", last: int) -> tuple[int, str]:
    """``(s, why)``: the labels the loop keeps by the run's ``--keep`` rule (:mod:`ldpo.common.loop.keep`); the
    final model is iteration s + 1's, the one trained on them."""
    from ..files.history import read_history
    from .keep import kept_by_rule

    return kept_by_rule(keep_rule(read_record(layout.record)), read_history(layout.history), last)


def keep_rule(record: dict | None) -> str:
    """The ``--keep`` rule a run record's run applies (``last`` for records made before the option existed;
    ``auto`` resolved by the record's ``--k``: :func:`ldpo.common.loop.keep.resolved`)."""
    from .keep import resolved

    settings = (record or {}).get("settings") or {}
    return resolved(str(settings.get("keep") or ADDED_LATER["keep"]), str(settings.get("k") or ""))


def final_model(work: str | os.PathLike) -> Path | None:
    """The run's final model, ``final/model.pt`` (None when no fine-tuning iteration ran)."""
    path = Path(Layout(str(work)).final("model.pt"))
    return path if path.is_file() else None


# -- the run record ------------------------------------------------------------------------------

RUN_FORMAT = "ldpo-run-2"
SECTIONS = ("settings", "commands", "inputs")
#: settings of a run record that are not compared (they change nothing that is computed)
NOT_COMPARED = ("ldpo_version",)
#: the record's settings, in order; every value is a string ("" = left to the stages)
SETTINGS = ("images", "truth", "reports", "manifest", "init_labels", "init", "arch", "layer", "encode", "method",
            "k", "metric", "threshold", "max_iter", "no_early_stop", "epochs", "lr", "balanced", "amp", "split",
            "input_size", "normalize", "input_filter", "batch_size", "seed", "tree_affinity", "tree_preference",
            "vocabulary", "mentions", "neighbour_weight", "patience", "keep")
PATHS = ("images", "truth", "reports", "manifest", "init_labels", "vocabulary")
#: record entries added after ldpo-run-2 began, and what a record without them meant (compared as that value)
ADDED_LATER = {"vocabulary": "", "mentions": "affirmed", "vocabulary_sha256": "", "neighbour_weight": "0.0",
               "patience": "1", "keep": "last"}
STAGES = ("featurize", "finetune", "encode", "cluster", "converge", "hierarchy", "keywords", "report")
EXTRA_ARGS = (("F", "FEATURIZE_ARGS"), ("T", "FINETUNE_ARGS"), ("E", "ENCODE_ARGS"), ("C", "CLUSTER_ARGS"))
#: what loops before ldpo-run-2 recorded for options the user did not set that ldpo-run-2 records as the
#: stage's declared default (featurize and finetune: --input-filter from the checkpoint, else none)
RUN_1_DEFAULTS = {"input_filter": "none"}


@dataclass
class RunRecord:
    """``WORK/run.json``: the settings (strings), the stage commands, the inputs' SHA-256."""

    settings: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    format: str = RUN_FORMAT
    ldpo_version: str = __version__

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "settings": self.settings, "commands": self.commands, "inputs": self.inputs,
                "ldpo_version": self.ldpo_version}

    def text(self) -> str:
        data = self.as_dict()
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a path that is not UTF-8: escaped, so the file stays UTF-8 JSON
            text = json.dumps(data, indent=2) + "\n"
        return text

    def write(self, path: str | os.PathLike) -> None:
        write_atomically(Path(path), self.text())


def upgrade(record: dict) -> dict:
    """A record of an older format as this one writes it (settings it left to the stages as "")."""
    if record.get("format") != "ldpo-run-1":
        return record  # (a record of a newer format differs by its format: refused, not misread)
    settings = {k: ("" if RUN_1_DEFAULTS.get(k) == v else v) for k, v in (record.get("settings") or {}).items()}
    return {**record, "format": RUN_FORMAT, "settings": settings}


def build_record(parsed, environ: dict[str, str] | None = None) -> RunRecord:
    """The run record of these loop options (:class:`ldpo.common.loop.loop_options.Parsed`): settings as the user gave
    them (paths made absolute), the stage commands, and each input's SHA-256
    (:func:`ldpo.common.files.stores.file_checksum`)."""
    from .loop_options import layer
    from ..files.stores import file_checksum

    environ = os.environ if environ is None else environ
    opts = parsed.opts
    settings: dict[str, str] = {}
    for name in SETTINGS:
        if name in PATHS:
            settings[name] = absolute(getattr(opts, name))
        elif name == "init":
            kind, sep, path = opts.init.partition(":")
            settings[name] = f"{kind}:{absolute(path)}" if sep and kind in ("weights", "checkpoint") else opts.init
        elif name == "layer":
            settings[name] = layer(opts)
        else:
            settings[name] = parsed.text(name)
    settings["extra_args"] = " ".join(f"{tag}[{environ.get(var, '')}]" for tag, var in EXTRA_ARGS)
    commands = {f"{name}_cmd": " ".join(stage_command(name, environ)) for name in STAGES}
    commands["ldpo_bin"] = environ.get("LDPO_BIN") or "ldpo"
    inputs = {}
    for name in (*PATHS, "init"):
        path = init_file(opts.init) if name == "init" else getattr(opts, name)
        inputs[f"{name}_sha256"] = file_checksum(path) if path and os.path.exists(path) else ""
    return RunRecord(settings, commands, inputs)


def absolute(path: str) -> str:
    return os.path.realpath(path) if path else ""


def init_file(init: str) -> str:
    kind, sep, path = init.partition(":")
    return path if sep and kind in ("weights", "checkpoint") else ""


def stage_command(name: str, environ: dict[str, str] | None = None) -> list[str]:
    """A stage's command words: ``NAME_CMD`` (word-split, like the shell's), else ``LDPO_BIN NAME``."""
    environ = os.environ if environ is None else environ
    words = environ.get(f"{name.upper()}_CMD", "").split()
    return words or [*(environ.get("LDPO_BIN") or "ldpo").split(), name]


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
    and the record's top-level values (``format``; not ``ldpo_version``)."""
    flat = {key: value for key, value in record.items() if key not in SECTIONS and key not in NOT_COMPARED}
    for section in SECTIONS:
        flat.update(record.get(section) or {})
    return flat


INPUT_KEYS = re.compile(r"^(images|truth|reports|manifest|vocabulary|init|init_labels|[a-z_0-9]+_sha256)$")


def difference(old: dict, new: dict) -> tuple[str, str]:
    """``(kind, "name: old -> new, …")`` of two records; ``("", "")`` when they hold the same values.
    ``kind`` is ``inputs`` (an input or its checksum differs), ``tree`` (only the tree's settings) or ``settings``."""
    a, b = flatten(old), flatten(new)
    a.update({k: v for k, v in ADDED_LATER.items() if k not in a and k in b})
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
    name: None for name in ("features.h5", "encoded.h5", "labels.csv", "clusters.csv", "clusters.png", "clusters.k.json",
                            "converge.txt", "model.pt", "model.pt.partial", "metrics.json", "model.metrics.json")}
#: the record each stage keeps in its output folder (ldpo.common.files.folders.RECORD)
OUTPUT_RECORD = ".ldpo-output.json"
REPORT_LAYOUT: dict[str, Any] = {"index.html": None, "history.png": None, "tree.png": None, "thumbs": {"*.png": None},
                                 OUTPUT_RECORD: None}
FINAL_LAYOUT: dict[str, Any] = {
    "labels.csv": None, "model.pt": None, "model.metrics.json": None, "probs.h5": None, "levels.txt": None,
    "consensus.txt": None, "tree": {"tree.json": None, "levels.csv": None, "tree.png": None, OUTPUT_RECORD: None},
    "keywords": {"index.html": None, "keywords.csv": None, "montage-*.png": None, OUTPUT_RECORD: None},
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
    if keep_below is not None:  # the history is cut (or deleted): only converge's own
        from ..files.history import fields_path, not_written_by_converge

        history = work / "history.csv"
        checked = [(history, False)] + ([(fields_path(history), True)] if keep_below == 0 else [])
        for path, fields in checked:
            problem = not_written_by_converge(path, fields)
            if problem:
                raise InputError(f"{path}: ldpo did not write this file ({problem}), and {why} "
                                 f"{'deletes' if keep_below == 0 else 'rewrites'} it: move it out of the work "
                                 "folder and rerun (nothing was deleted)")
    for path, _ in targets:
        remove(path)
    if keep_below is not None:
        from ..files.history import keep_before

        keep_before(work / "history.csv", keep_below)


# -- the loop's decisions ------------------------------------------------------------------------


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"ldpo-loop: {message}", file=sys.stderr)


def begin(parsed, environ: dict[str, str] | None = None) -> None:
    """Compare this run's record with ``run.json``: resume (the same record, kept as it is), remake the tree
    (only its settings differ), ``--restart-from``/``--fresh`` (delete what they recompute), or refuse
    (an :class:`InputError`, nothing deleted). Then write the record."""
    from .loop_options import restart_iteration

    opts = parsed.opts
    layout = Layout(opts.work)
    work = Path(opts.work)
    record = build_record(parsed, environ)

    def say(message: str) -> None:
        log(message, opts.quiet)

    restart = opts.restart_from
    run_json = layout.record
    if os.path.isdir(run_json):
        raise InputError(f"{run_json}: a folder, not a run record")
    same = False
    if opts.fresh:
        say(f"--fresh: starting over in {opts.work}")
        forget(work, "0", "--fresh")
    elif os.path.lexists(run_json):
        try:
            old = read_record(run_json)
        except InputError as err:
            if not restart:
                raise InputError(f"{err}; the settings of this work folder are unknown: add --fresh (start over) or "
                                 "--restart-from iter-N (keep iterations < N)") from None
            say(f"{err}; --restart-from {restart} keeps the iterations before it as they are")
        else:
            kind, shown = difference(upgrade(old or {}), record.as_dict())
            same = not kind
            if kind == "tree":  # the iterations stand; the tree and the report that shows it are made again
                say(f"the tree's settings differ ({shown}): recomputing final/tree and the report")
                forget(work, "tree", "a change of the tree's settings")
            elif kind and not restart:
                raise InputError(f"{run_json}: this work folder was made with other settings or inputs ({shown}); "
                                 "rerun with the same ones, or add --restart-from iter-N or --fresh")
            if kind == "inputs" and restart != "iter-0":
                raise InputError(f"{run_json}: the inputs differ ({shown}): earlier iterations cannot be kept; "
                                 "use --fresh")
    elif (layout.iterations() or any(os.path.lexists(p) for p in (layout.final(), layout.report(), layout.history))) \
            and not restart:  # results of no known run: never taken as this run's
        what = "iterations" if layout.iterations() else "results (final/, report/ or history.csv)"
        raise InputError(f"{run_json}: missing, and {opts.work} holds {what} made with unknown settings; add "
                         "--fresh (start over) or --restart-from iter-N (keep iterations < N)")
    n = restart_iteration(opts)
    if n is not None:
        if n > 0 and not os.path.exists(layout.iteration(n - 1, "labels.csv")):
            raise InputError(f"--restart-from {restart}: {layout.iteration(n - 1)} has no labels.csv to start from")
        say(f"--restart-from {restart}: recomputing iterations >= {n}")
        forget(work, str(n), f"--restart-from {restart}")
    if not same:
        record.write(run_json)


def recorded_verdict(layout: Layout, t: int) -> str | None:
    """converge's verdict for iteration ``t`` as an earlier run recorded it, when it stands: in
    ``converge.txt``, newer than the labels it compared, and the iteration has its history row."""
    from ..files.history import has_row

    said = layout.iteration(t, "converge.txt")
    compared = [layout.iteration(t, "labels.csv")] + ([layout.iteration(t - 1, "labels.csv")] if t > 0 else [])
    try:
        when = os.stat(said).st_mtime_ns
        if not stat.S_ISREG(os.stat(said).st_mode) or any(when <= os.stat(p).st_mtime_ns for p in compared):
            return None
    except OSError:
        return None
    if not has_row(layout.history, t):
        return None
    return printed_verdict(said)


def printed_verdict(path: str) -> str | None:
    """The last ``converged=0|1`` line of what converge printed, or None."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = [line for line in lines if line in ("converged=0", "converged=1")]
    return found[-1].removeprefix("converged=") if found else None


def verdict(layout: Layout, t: int, status: int) -> str:
    """converge's verdict for iteration ``t`` after it ran with exit ``status``: what it printed, never the status
    alone (a Python that dies before converge runs also exits 1, which must not read as "go on")."""
    if status > 1:
        raise InputError(f"converge failed with exit status {status} at iteration {t}; stopping")
    said = layout.iteration(t, "converge.txt")
    found = printed_verdict(said)
    if found is None:
        raise InputError(f"{said}: converge printed no converged=0|1 verdict (exit status {status})")
    return found


def make_final(layout: Layout, last: int) -> None:
    """``final/labels.csv`` and ``final/model.pt`` (see the module's text), each copied once."""
    os.makedirs(layout.final(), exist_ok=True)
    labels = layout.final("labels.csv")
    if last == 0:  # no fine-tuning iteration ran: iteration 0's labels, no model
        shutil.copyfile(layout.iteration(0, "labels.csv"), labels)
        return
    kept = final_labels_iteration(last, layout)
    if not os.path.exists(labels):
        if keep_rule(read_record(layout.record)) == "consensus":
            write_consensus(layout, last, kept, labels)
        else:
            shutil.copyfile(layout.iteration(kept, "labels.csv"), labels)
    if not os.path.exists(layout.final("model.pt")):
        shutil.copyfile(layout.iteration(kept + 1, "model.pt"), layout.final("model.pt"))


def write_consensus(layout: Layout, last: int, kept: int, out: str) -> str:
    """``final/labels.csv`` under ``--keep consensus``: the consensus of iterations 0..``last``'s clusterings,
    numbered as iteration ``kept``'s labels (the last model's classes); its why is written beside it
    (``consensus.txt``) for the summary and the report, and returned."""
    from ..files.labels import align, read_labels, write_labels
    from ..files.stores import atomic_path
    from .consensus import consensus

    reference = read_labels(layout.iteration(kept, "labels.csv"))
    labelings = [align(read_labels(layout.iteration(t, "labels.csv")), reference.ids, reference.source)
                 for t in range(last + 1) if os.path.isfile(layout.iteration(t, "labels.csv"))]
    found, why = consensus(labelings, reference.labels)
    with atomic_path(layout.final("consensus.txt")) as tmp:
        tmp.write_text(why + "\n", encoding="utf-8")
    write_labels(out, reference.ids, found)  # last: the loop writes final/labels.csv when it is missing
    return why


def consensus_text(layout: Layout) -> str | None:
    """What :func:`write_consensus` said of the final labels, or None (another ``--keep`` rule)."""
    try:
        return Path(layout.final("consensus.txt")).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def k_choice_text(layout: Layout) -> str | None:
    """What ``cluster --k auto`` wrote at iteration 0 (``iter-00/clusters.k.json``: the K and why), or None."""
    import json

    try:
        found = json.loads(Path(layout.iteration(0, "clusters.k.json")).read_text(encoding="utf-8"))
        return str(found["why"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summary_text(layout: Layout, last: int) -> str:
    from ..files.history import read_history, summary

    final, why = kept_labels(layout, last)
    agreed = consensus_text(layout)
    said = (f"* final/labels.csv is {agreed}; the final model is iteration {final + 1}'s, trained on iteration "
            f"{final}'s clustering: {why}" if agreed and last > 0 else
            f"* final/labels.csv is iteration {final}'s clustering"
            + (f" (the classes the final model, iteration {final + 1}'s, was trained on): {why}" if last > 0 else ""))
    lines = [summary(read_history(layout.history), final), said,
             f"history: {layout.history}  plot: {layout.history_plot}"]
    chosen = k_choice_text(layout)
    if chosen:
        lines.insert(2, f"K chosen at iteration 0 (--k auto): {chosen}")
    if os.path.exists(layout.final("tree/tree.png")):
        levels = Path(layout.final("levels.txt")).read_text(encoding="utf-8").replace("\n", " ") \
            if os.path.isfile(layout.final("levels.txt")) else ""
        lines.append(f"tree: {layout.final('tree/tree.png')} ({levels})")
    if os.path.exists(layout.final("keywords/index.html")):
        lines.append(f"review sheet: {layout.final('keywords/index.html')}")
    lines.append(f"final labels: {layout.final('labels.csv')}")
    if os.path.exists(layout.final("model.pt")):
        lines.append(f"final model: {layout.final('model.pt')} (assign new images with: ldpo assign IMAGES --model "
                     f"{layout.final('model.pt')} --out LABELS.csv)")
    lines.append(f"report: {layout.report('index.html')}")
    return "\n".join(lines)


# -- the lock ------------------------------------------------------------------------------------
# The loop holds an flock on WORK/.ldpo-loop.lock through a descriptor its shell opens. The shell
# cannot open without following a link, so ``lock`` makes (or checks) the file first, and ``hold``
# checks that the descriptor the shell then opened is that same regular file before writing the
# holder's line through it.


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "link"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _not_a_lock(path: str, mode: int) -> InputError:
    return InputError(f"{path}: the work folder's lock is a {_kind_of(mode)}, not a regular file: refusing to open "
                      "it (nothing was written); remove it and rerun")


def make_lock(path: str) -> None:
    """Create the lock file, or check the one there: a regular file, never a link (``O_NOFOLLOW``),
    a FIFO or a device (opened without blocking, and refused)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise _not_a_lock(path, mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        mode = os.lstat(path).st_mode if os.path.lexists(path) else None
        if mode is not None and not stat.S_ISREG(mode):
            raise _not_a_lock(path, mode) from None
        raise InputError(f"{path}: cannot open the work folder's lock ({err.strerror or err})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_lock(path, mode)
    finally:
        os.close(fd)


def hold_lock(path: str, fd: int, pid: int) -> None:
    """Write ``pid … on HOST, started …`` into the lock through the shell's descriptor ``fd``, once it
    is checked to be the regular file at ``path`` (not one swapped in since :func:`make_lock`)."""
    import socket
    import time

    try:
        opened, there = os.fstat(fd), os.lstat(path)
    except OSError as err:
        raise InputError(f"{path}: cannot check the work folder's lock ({err.strerror or err})") from None
    if not stat.S_ISREG(there.st_mode):
        raise _not_a_lock(path, there.st_mode)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (there.st_dev, there.st_ino):
        raise InputError(f"{path}: the work folder's lock changed while it was opened: refusing to write it")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {pid} on {socket.gethostname() or 'unknown host'}, started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
