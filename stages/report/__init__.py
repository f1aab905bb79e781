"""``report``: one static HTML page about a finished loop, for people to look at and review.

Reads the loop's work folder WORK:

* ``run.json`` (the run record: settings, inputs, commands; absent in old runs:
  "settings unknown"), ``history.csv`` and ``history.png``; ``history.fields.csv`` when the
  loop had a manifest (``converge --fields``: each iteration's agreement with the DICOM
  header fields; the page leaves the section out without it);
* ``final/labels.csv`` (the categories), ``final/probs.h5`` (the final model's softmax,
  where "typical" is measured; without it the last iteration's ``features.h5``),
  ``final/tree/tree.json`` and ``tree.png``, ``final/keywords/keywords.csv`` when
  reports were given; with ``--words``, ``describe``'s WORDS.csv (each category's most frequent
  predicted words, shown beside its keywords);
* the images store named in ``run.json`` (``--images`` overrides it).

Writes OUT (default ``WORK/report``), replaced as a whole when complete:

* ``index.html``: first what a reviewer came for: the category tree as collapsible
  levels, and one section per category: size, its most typical images (nearest its
  centroid), its least typical ones, keywords, its place in the tree, and a name and
  "merge into" field; a button downloads ``review.csv`` (``label,name,merge_into``) for
  ``relabel``. Then the per-iteration table and plot, the agreement with the DICOM header
  fields (NMI and purity per iteration and field), and, folded away, the run's settings:
  the values the stages used (from the final model's checkpoint and the feature stores)
  beside the requested ones where they differ;
* ``thumbs/*.png`` (small thumbnails, loaded lazily), ``history.png``, ``tree.png``.

The page needs no server and no network: open ``OUT/index.html`` from any disk.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ...common import __version__
from ...common.cli import CommonOptions, Tool, opt, positional, progress
from ...common.errors import InputError
from ...common.files.labels import align, read_labels
from ...common.files.stores import atomic_path, open_store
from ...common.files.history import fields_path
from ...common.files.tables import csv_rows, read_cell
from ...common.images.thumbs import thumbnail, write_png
from ...common.loop.keep import kept_by_rule
from ...common.loop.workdir import Layout, final_model, keep_rule

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    work: str = positional("the loop's work folder (run.json, history.csv, final/, iter-NN/)", role="input")
    out: Optional[str] = opt("output folder (default: WORK/report)", None, role="output-folder")
    images: Optional[str] = opt("images store (default: the one in WORK/run.json)", None, role="input")
    typical: int = opt("most typical images shown per category", 8, min=1)
    atypical: int = opt("least typical images shown per category", 4, min=0)
    thumb: int = opt("thumbnail side in pixels", 96, min=16, max=1024)
    title: Optional[str] = opt("page title (default: 'ldpo run: WORK')", None)
    batch_size: int = opt("images read per batch", 256, min=1, aliases=["--batch"])
    words: Optional[str] = opt("describe's WORDS.csv (id,rank,word,score): each category shows its images' most "
                               "frequent predicted words beside its report keywords", None, role="input")


class ReportTool(Tool):
    name = "report"
    description = ("Write one static HTML page about a finished loop: settings, iterations, the category tree, and "
                   "per category its size, most and least typical images, keywords and place in the tree, with "
                   "fields to name and merge categories that download review.csv (for relabel). Opens from disk, "
                   "no server.")
    example = ("report runs/t25 --out runs/t25/report\n"
               "report runs/pacs --images /scratch/me/images.zarr   # the store moved since the run")
    Options = Options

    def main(self, opts: Options) -> int:
        work = Path(opts.work)
        layout = Layout(str(work))
        out = Path(opts.out) if opts.out else Path(layout.report())
        if work.exists() and not work.is_dir():
            raise InputError(f"{work}: is a file, not a work folder (give the loop's --work folder)")
        if not work.is_dir():
            raise InputError(f"{work}: no such work folder")
        check_out(out)
        run = read_run(Path(layout.record))
        images = opts.images or ((run or {}).get("settings") or {}).get("images")
        if not images:
            raise InputError(f"{work / 'run.json'}: names no images store (settings unknown): give --images STORE")
        if run is None:
            log.warning("%s: no run record; the page says 'settings unknown'", layout.record)
        labels_path = Path(layout.final("labels.csv"))
        if not labels_path.is_file():
            raise InputError(f"{labels_path}: missing: the loop has not finished (rerun it to the end)")
        labels = read_labels(labels_path)
        space, scores, classes_of, notes = typicality_space(work, labels)
        history = read_history(Path(layout.history))
        fields = read_fields(fields_path(layout.history), history)
        tree = read_tree(Path(layout.final("tree/tree.json")))
        keywords = read_keywords(Path(layout.final("keywords/keywords.csv")))
        categories = gather(labels, scores, classes_of, opts.typical, opts.atypical, space)
        for c, cat in categories.items():
            cat["keywords"] = keywords.get(c, [])
            cat["place"] = place_in_tree(tree, c)
        if opts.words:
            add_predicted_words(categories, labels, opts.words)
        model = final_model(work)
        usage = usage_lines(work, model, images)
        used = used_settings(work, model)
        run_key = hashlib.sha256(str(work.resolve()).encode()).hexdigest()[:12]
        title = opts.title or f"ldpo run: {work.resolve().name}"
        with open_store(images, expect="images") as store:
            row_of = {ident: i for i, ident in enumerate(store.ids)}
            missing = [i for i in labels.ids if i not in row_of]
            if missing:
                raise InputError(f"{images}: {len(missing)} id(s) of {labels_path} are not in it, e.g. {missing[0]!r} "
                                 "(wrong store? give --images)")
            with atomic_path(out) as tmp:
                tmp.mkdir()
                write_thumbs(store, row_of, categories, tmp, opts.thumb, opts.batch_size)
                history_png = copy_if(Path(layout.history_plot), tmp / "history.png")
                tree_png = copy_if(Path(layout.final("tree/tree.png")), tmp / "tree.png")
                from .page import render

                text = render(title, run_key, run, layout.record, history, history_png, tree, tree_png,
                              categories, len(labels), opts.thumb, notes, __version__, usage, fields, used,
                              *final_iteration(history, run, layout), k_choice(layout))
                (tmp / "index.html").write_text(text, encoding="utf-8")
                from ...common.files.folders import write_record

                write_record(tmp, "report", os.listdir(tmp))
        files = sum(1 for p in out.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        log.info("report: %s (%d categories, %d files, %.1f MB)", out / "index.html", len(categories), files, size / 1e6)
        return 0


def usage_lines(work: Path, model: Path | None, images: str) -> list[str]:
    """Commands that use this run's result (shown on the page, to copy)."""
    labels = Layout(str(work)).final("labels.csv")
    lines = [f"relabel {labels} review.csv --out reviewed.csv",
             f"export-folders {labels} {images} --out categories/ --names review.csv"]
    if model is not None:
        lines.insert(1, f"assign NEW_IMAGES.h5 --model {model} --out new-labels.csv "
                        f"--reference-labels {labels} --reference-images {images}")
    return lines


def k_choice(layout: Layout) -> str | None:
    """Why iteration 0 has the K it has, when ``cluster --k auto`` chose it (``iter-00/clusters.k.json``)."""
    from ...common.loop.workdir import k_choice_text

    return k_choice_text(layout)


def final_iteration(history: list[dict], run: dict | None, layout: Layout) -> tuple[int | None, str | None]:
    """``(s, what)``: the iteration whose clustering numbers ``final/labels.csv`` (the run's ``--keep`` rule, as
    the loop applies it), and what the final labels are, in words."""
    from ...common.loop.workdir import consensus_text

    iterations = [int(r["iteration"]) for r in history if str(r.get("iteration", "")).strip().isdigit()]
    if not iterations:
        return None, None
    kept, why = kept_by_rule(keep_rule(run), history, max(iterations))
    agreed = consensus_text(layout) if keep_rule(run) == "consensus" else None
    if agreed:
        return kept, (f"{agreed}, numbered as iteration {kept}'s clustering (the classes the final model, iteration "
                      f"{kept + 1}'s, was trained on)")
    return kept, f"iteration {kept}'s clustering: {why}"


def used_settings(work: Path, model: Path | None) -> dict[str, object]:
    """The values the stages actually used, read from the final model's checkpoint (architecture, learning rate,
    input size, normalization, ...) and the last iteration's feature store (the layer clustered)."""
    used: dict[str, object] = {}
    if model is not None:
        from ...common.nets.checkpoint import Checkpoint

        try:
            ckpt = Checkpoint.load(model)
        except InputError as err:
            log.warning("%s", err)
            ckpt = None
        if ckpt is not None:
            used.update({key: getattr(ckpt, key) for key in ("arch", "input_size", "normalize", "input_filter")
                         if getattr(ckpt, key) is not None})
            options = ckpt.options if isinstance(ckpt.options, dict) else {}
            used.update({key: options[key] for key in ("lr", "epochs", "batch_size", "split", "balanced")
                         if key in options})
    layout = Layout(str(work))
    features = [p for p in (Path(layout.iteration(t, "features.h5")) for t in layout.iterations()) if p.exists()]
    if features:
        try:
            with open_store(features[-1]) as store:
                if store.attrs.get("layer"):
                    used["layer"] = store.attrs["layer"]
        except InputError as err:
            log.warning("%s", err)
    return used


def check_out(out: Path) -> None:
    """OUT is replaced as a whole: the one rule of output folders (:mod:`ldpo.common.files.folders`)."""
    from ...common.files.folders import check_output_folder

    check_output_folder(out, "report")


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"{path}: not readable ({err.strerror or err})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        detail = "empty file" if not path.read_bytes().strip() else str(err).splitlines()[0]
        raise InputError(f"{path}: not valid JSON ({detail})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data


def read_run(path: Path) -> dict | None:
    """The loop's run record, its shape checked as the loop checks it (one line naming the file)."""
    from ...common.loop.workdir import read_record

    return read_record(path)


def read_tree(path: Path) -> dict | None:
    """hierarchy's tree.json, checked where the page relies on it: every node an object whose
    ``classes`` are whole numbers and whose ``children`` are nodes (one line naming the file)."""
    tree = read_json(path)
    if tree is None:
        return None
    problem = tree_problem(tree)
    if problem:
        raise InputError(f"{path}: not a category tree from hierarchy ({problem})")
    return tree


def tree_problem(tree: dict, max_depth: int = 200) -> str:
    """What makes ``tree`` no tree the page can show, or ``""``."""
    levels = tree.get("levels", [])
    if not isinstance(levels, list) or not all(_whole(x) for x in levels):
        return "`levels` is not a list of whole numbers"
    todo = [(tree, "the root", 0)]
    while todo:
        node, where, depth = todo.pop()
        if not isinstance(node, dict):
            return f"{where} is not an object"
        if depth > max_depth:
            return f"nodes nested deeper than {max_depth} levels"
        classes = node.get("classes", [])
        if not isinstance(classes, list) or not all(_whole(c) for c in classes):
            return f"{where}: `classes` {str(classes)[:60]} are not whole numbers"
        for key in ("size", "level"):
            if key in node and not _whole(node[key]):
                return f"{where}: `{key}` {str(node[key])[:60]} is not a whole number"
        children = node.get("children") or []
        if not isinstance(children, list):
            return f"{where}: `children` is not a list"
        name = f"node {str(node.get('id', ''))[:40]!r}"
        todo += [(child, f"a child of {name}", depth + 1) for child in children]
    return ""


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_history(path: Path) -> list[dict]:
    """converge's history (schema: :mod:`ldpo.common.files.history`); [] without the file."""
    from ...common.files.history import read_history as read

    return read(path)


def read_fields(path: Path, history: list[dict]) -> list[dict]:
    """converge's agreement with the header fields (iteration,field,values,coverage,nmi,purity), of the
    iterations the history has (an interrupted restart may leave rows of iterations no longer run); [] without
    the file."""
    if not path.is_file():
        return []
    iterations = {str(r.get("iteration", "")).strip() for r in history}
    rows = []
    for line_no, r in csv_rows(path, "field agreement CSV (from converge --fields)",
                               ["iteration", "field", "values", "coverage", "nmi", "purity"]):
        try:
            int(r["iteration"])
            for key in ("coverage", "nmi", "purity"):
                if r[key].strip():
                    float(r[key])
        except ValueError:
            raise InputError(f"{path}: line {line_no}: not a number in iteration, coverage, nmi or purity") from None
        if not history or r["iteration"].strip() in iterations:
            rows.append({k: r[k].strip() for k in ("iteration", "field", "values", "coverage", "nmi", "purity")})
    return rows


def read_keywords(path: Path) -> dict[int, list[tuple[str, int]]]:
    found: dict[int, list[tuple[str, int]]] = {}
    if not path.is_file():
        return found
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            try:
                found.setdefault(int(r["cluster"]), []).append((read_cell(r["word"]), int(r["count"])))
            except (KeyError, ValueError):
                raise InputError(f"{path}: not a keywords CSV (cluster,rank,word,count)") from None
    return found


def add_predicted_words(categories: dict[int, dict], labels, path: str, top: int = 10) -> None:
    """``predicted_words`` of each category: the words ``describe`` gave its images, ``top`` most frequent
    first (an image counts each of its words once)."""
    from collections import Counter

    per_image: dict[str, set[str]] = {}
    for _, row in csv_rows(path, "describe words CSV", ["id", "word"]):
        per_image.setdefault(row["id"].strip(), set()).add(row["word"].strip())
    counts: dict[int, Counter] = {}
    for ident, label in zip(labels.ids, labels.labels.tolist()):
        counts.setdefault(int(label), Counter()).update(per_image.get(ident, ()))
    if not any(counts.values()):
        raise InputError(f"{path}: no id of it is an image of the run's labels (words of another store?)")
    for c, cat in categories.items():
        found = counts.get(c, Counter())
        cat["predicted_words"] = sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def copy_if(src: Path, dst: Path) -> str | None:
    if not src.is_file():
        return None
    shutil.copyfile(src, dst)
    return dst.name


def typicality_space(work: Path, labels) -> tuple[str, np.ndarray | None, list[int] | None, list[str]]:
    """The vectors "typical" is measured in: the final softmax, else the last iteration's features."""
    notes: list[str] = []
    layout = Layout(str(work))
    candidates = [(Path(layout.final("probs.h5")), "the final model's class probabilities")]
    iters = [Path(layout.iteration(t)) for t in reversed(layout.iterations())]
    candidates += [(p / "features.h5", f"{p.name}'s features") for p in iters]
    for path, what in candidates:
        if not path.exists():
            continue
        with open_store(path) as store:
            if store.kind != "features":
                continue
            store_ids = store.ids
            align(labels, store_ids, str(path))  # labels naming ids the store lacks, or missing some: an error
            index = {ident: i for i, ident in enumerate(store_ids)}
            order = np.array([index[i] for i in labels.ids], dtype=np.int64)
            values = store.read("features")[order]  # one sequential read; rows in the labels' order
            classes = store.attrs.get("classes") if path.name == "probs.h5" else None
        if path.name != "probs.h5":
            notes.append(f"No final/probs.h5: typical images are measured in {what}.")
        return what, values, [int(c) for c in classes] if classes else None, notes
    notes.append("No probabilities or features found: images are shown in id order, not by typicality.")
    return "id order (no features found)", None, None, notes


def gather(labels, scores: np.ndarray | None, classes_of: list[int] | None, typical: int, atypical: int,
           space: str) -> dict[int, dict]:
    """Per category: size, the ids of its most and least typical images, its mean own-class probability."""
    out: dict[int, dict] = {}
    ids = np.asarray(labels.ids, dtype=object)
    column = {c: j for j, c in enumerate(classes_of)} if classes_of else {}
    for c in labels.classes:
        rows = np.flatnonzero(labels.labels == c)
        member_ids = ids[rows]
        confidence = None
        if scores is not None:
            x = scores[rows].astype(np.float64)
            dist = np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1))
            order = np.lexsort((member_ids.astype(str), dist))  # by distance, ties by id
            if c in column:
                confidence = float(scores[rows, column[c]].mean())
        else:
            order = np.argsort(member_ids.astype(str), kind="stable")
        ranked = member_ids[order].tolist()
        near = ranked[:typical]
        far = ranked[typical:][::-1][:atypical]
        out[c] = {"label": c, "size": int(len(rows)), "typical": [{"id": i} for i in near],
                  "atypical": [{"id": i} for i in far], "confidence": confidence, "space": space,
                  "cluster_confidence": cluster_confidence(labels, rows)}
    return out


def cluster_confidence(labels, rows: np.ndarray) -> float | None:
    """The median of the labels' ``confidence`` column (written by ``cluster --method scan``)
    over a category's rows; ``None`` without that column or with a value that is not a number."""
    values = (getattr(labels, "extra", None) or {}).get("confidence")
    if not values:
        return None
    try:
        return float(np.median([float(values[i]) for i in rows]))
    except ValueError:
        return None


def place_in_tree(tree: dict | None, label: int) -> str:
    """"joined first with categories 3, 9 (group L1-2), then L2-0, then the root", or ""."""
    if not tree:
        return ""
    path: list[dict] = []

    def find(node: dict) -> bool:
        path.append(node)
        if not node.get("children"):
            if (node.get("classes") or [None])[0] == label:
                return True
        else:
            for child in node["children"]:
                if find(child):
                    return True
        path.pop()
        return False

    if not find(tree) or len(path) < 2:
        return ""
    parent = path[-2]
    siblings = [int(c) for c in parent.get("classes", []) if int(c) != label]
    first = (f"joined first with categor{'y' if len(siblings) == 1 else 'ies'} "
             + ", ".join(f'<a href="#cat-{c}">{c}</a>' for c in siblings[:30])
             + (f" and {len(siblings) - 30} more" if len(siblings) > 30 else "")
             + f" (group {html.escape(str(parent.get('id', '')))})") if siblings else "alone"
    above = [html.escape(str(n.get("id", ""))) for n in reversed(path[:-2])]
    if path[-2] is tree:
        return first + ", at the root"
    return first + ", then " + " → ".join(above[:-1] + ["the root"]) if above else first


def write_thumbs(store, row_of: dict[str, int], categories: dict[int, dict], folder: Path, side: int,
                 batch: int) -> None:
    """thumbs/<label>-t<j>.png (typical) and <label>-a<j>.png (least typical), read in store order."""
    (folder / "thumbs").mkdir()
    jobs = []
    for c, cat in categories.items():
        for kind, key in (("t", "typical"), ("a", "atypical")):
            for j, item in enumerate(cat[key]):
                item["src"] = f"thumbs/{c}-{kind}{j}.png"
                jobs.append((row_of[item["id"]], item))
    jobs.sort(key=lambda job: job[0])
    for lo in progress(range(0, len(jobs), batch), desc="thumbnails", unit="batch"):
        part = jobs[lo:lo + batch]
        block = store.take("images", np.array([r for r, _ in part], dtype=np.int64))
        for image, (_, item) in zip(block, part):
            small = thumbnail(image, side)
            item["h"], item["w"] = int(small.shape[0]), int(small.shape[1])
            write_png(small, folder / item["src"])


TOOL = ReportTool
main = ReportTool.console
