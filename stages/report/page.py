"""The report's HTML: one static page, inline CSS and JavaScript, images by relative path.

Nothing here touches files: :func:`render` turns the gathered facts into text. Every
piece of text from the run goes through ``html.escape``. The page asks for nothing
from the network; images load lazily so that a 270-category page opens quickly.
"""

from __future__ import annotations

import html
import json

from ...common.loop.workdir import PATHS

e = html.escape

CSS = """
:root { --fg:#1d2329; --muted:#5b6670; --line:#d5dbe0; --bg:#f6f8fa; --accent:#1f6feb; --warn:#b42318; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
header.top { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid var(--line);
  padding: 8px 16px; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
header.top h1 { font-size: 16px; margin: 0; }
header.top nav a { margin-right: 10px; }
header.top .review { margin-left: auto; display: flex; gap: 8px; align-items: center; }
main { padding: 0 16px 40px; max-width: 1400px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 28px; }
h2, section.cat, details#settings { scroll-margin-top: 64px; }
details#settings > summary { cursor: pointer; margin-top: 28px; }
details#settings > summary h2 { display: inline; border: 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: var(--bg); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.warn { color: var(--warn); }
.plot { max-width: 100%; height: auto; border: 1px solid var(--line); }
details.node { margin-left: 18px; }
details.node > summary { cursor: pointer; }
ul.leaves { list-style: none; margin: 2px 0 4px 18px; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
ul.leaves img { width: 32px; height: 32px; object-fit: cover; vertical-align: middle; margin-right: 4px;
  border: 1px solid var(--line); }
section.cat { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 12px 0;
  content-visibility: auto; contain-intrinsic-size: auto 420px; }
section.cat h3 { margin: 0 0 4px; font-size: 15px; display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
section.cat.merged { background: #fff8e6; }
.form { display: flex; gap: 14px; flex-wrap: wrap; margin: 4px 0 6px; }
.form label { font-size: 13px; }
.form input.name { width: 22em; }
.form input.merge { width: 6em; }
.form input.bad { outline: 2px solid var(--warn); }
.gallery { display: flex; flex-wrap: wrap; gap: 4px; margin: 2px 0 6px; }
.gallery figure { margin: 0; }
.gallery img { display: block; background: var(--bg); border: 1px solid var(--line); }
.gallery figcaption { font-size: 10px; color: var(--muted); max-width: 96px; overflow: hidden;
  white-space: nowrap; text-overflow: ellipsis; }
.kw { font-size: 13px; }
.kw span { display: inline-block; background: var(--bg); border: 1px solid var(--line); border-radius: 10px;
  padding: 0 7px; margin: 1px 2px; }
#status { font-size: 12px; color: var(--muted); }
#status.bad { color: var(--warn); }
button { font: inherit; padding: 3px 10px; cursor: pointer; }
"""

JS = r"""
(function () {
  "use strict";
  var KEY = "ldpo-review:" + document.body.dataset.run;
  var labels = {};
  document.querySelectorAll("section.cat").forEach(function (s) { labels[s.dataset.label] = s; });
  function fields(label) {
    var s = labels[label];
    return { name: s.querySelector("input.name"), merge: s.querySelector("input.merge") };
  }
  function save() {
    var state = {};
    Object.keys(labels).forEach(function (l) {
      var f = fields(l);
      if (f.name.value || f.merge.value) state[l] = [f.name.value, f.merge.value];
    });
    try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (err) { /* storage off: fine */ }
  }
  function load() {
    var state = null;
    try { state = JSON.parse(localStorage.getItem(KEY) || "null"); } catch (err) { state = null; }
    if (!state) return;
    Object.keys(state).forEach(function (l) {
      if (!labels[l]) return;
      var f = fields(l);
      f.name.value = state[l][0] || "";
      f.merge.value = state[l][1] || "";
    });
  }
  function check() {
    var bad = [], named = 0, merged = 0;
    Object.keys(labels).forEach(function (l) {
      var f = fields(l), m = f.merge.value.trim();
      // "5" merges into 5; "5;8" keeps the category in both groups (relabel writes several labels per id)
      var ok = m === "" || m.split(";").every(function (t) {
        return Object.prototype.hasOwnProperty.call(labels, t.trim()); });
      f.merge.classList.toggle("bad", !ok);
      labels[l].classList.toggle("merged", ok && m !== "" && m !== l);
      if (!ok) bad.push(l);
      if (f.name.value.trim()) named++;
      var shown = f.name.value.trim() + (ok && m !== "" && m !== l ? " → " + m : "");
      document.querySelectorAll('.tree-name[data-label="' + l + '"]').forEach(function (t) { t.textContent = shown; });
      if (ok && m !== "" && m !== l) merged++;
    });
    var status = document.getElementById("status");
    status.textContent = bad.length ? "category " + bad[0] + ": merge into an unknown category"
      : named + " named, " + merged + " to merge";
    status.classList.toggle("bad", bad.length > 0);
    return bad.length === 0;
  }
  function cell(text) {
    text = String(text).replace(/\s+/g, " ").trim();
    // a spreadsheet runs a cell starting with = + - @ (tab, CR) as a formula: quote it with ' unless it is a
    // plain number, and quote a leading ' that comes before one of those or another ' -- ldpo's CSV rule
    // (common/files/tables.py csv_cell), which relabel reads back exactly
    var number = /^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|nan)$/;
    if ((/^[=+\-@\t\r]/.test(text) && !number.test(text)) || /^'[=+\-@\t\r']/.test(text)) text = "'" + text;
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function csv() {
    var lines = ["label,name,merge_into"];
    Object.keys(labels).sort(function (a, b) { return a - b; }).forEach(function (l) {
      var f = fields(l), m = f.merge.value.trim();
      lines.push([cell(l), cell(f.name.value), m === l ? "" : cell(m)].join(","));
    });
    return lines.join("\n") + "\n";
  }
  function download() {
    if (!check()) return;
    var blob = new Blob([csv()], { type: "text/csv" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "review.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    document.getElementById("status").textContent = "review.csv downloaded: apply it with relabel";
  }
  function filter() {
    var q = document.getElementById("find").value.trim().toLowerCase();
    Object.keys(labels).forEach(function (l) {
      var s = labels[l], hay = (l + " " + fields(l).name.value + " " + (s.dataset.words || "")).toLowerCase();
      s.hidden = q !== "" && hay.indexOf(q) < 0;
    });
  }
  load();
  check();
  document.addEventListener("input", function (ev) {
    if (ev.target.matches("input.name, input.merge")) { save(); check(); }
    if (ev.target.id === "find") filter();
  });
  document.getElementById("download").addEventListener("click", download);
  document.getElementById("clear").addEventListener("click", function () {
    if (!window.confirm("Clear every name and merge on this page?")) return;
    Object.keys(labels).forEach(function (l) { var f = fields(l); f.name.value = ""; f.merge.value = ""; });
    save(); check();
  });
})();
"""


def fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and abs(number) < 1e15 and "." not in str(value):
        return str(int(number))
    return f"{number:.{digits}f}"


def input_item(key: str, value, settings: dict) -> dict:
    """An input of the run record as ``{"name", "path", "sha256"}``: the loop writes
    ``"images_sha256": HASH`` (the path is ``settings["images"]``); ``{"path", "sha256"}``
    objects are read too."""
    if isinstance(value, dict):
        return {"name": key, "path": str(value.get("path", "")), "sha256": str(value.get("sha256", ""))}
    name = key[:-len("_sha256")] if key.endswith("_sha256") else key
    path = str(settings.get(name, ""))
    if name == "init":
        path = path.partition(":")[2]
    return {"name": name, "path": path, "sha256": str(value or "")}


#: the settings whose used value the report reads (checkpoint, feature store), in the table's order
USED_FIRST = ("arch", "layer", "lr", "epochs", "batch_size", "split", "balanced", "input_size", "normalize",
              "input_filter")


def same_value(requested, used) -> bool:
    try:
        return float(requested) == float(used)
    except (TypeError, ValueError):
        shown = {True: "1", False: "0"}.get(used, used) if isinstance(used, bool) else used
        return str(requested) == str(shown)


def settings_html(run: dict | None, run_path: str, used: dict | None = None) -> list[str]:
    """The run's settings, folded away: per setting the value the stages used (where the report could read it)
    and the requested one beside it where they differ ("stage default" where the loop passed nothing)."""
    used = used or {}
    out = ['<details id="settings"><summary><h2>Run settings</h2> <span class="muted">(the values the stages '
           "used, and what was requested where it differs)</span></summary>"]
    if run is None:
        out.append(f'<p class="warn">Settings unknown: no run record ({e(run_path)}) in this work folder '
                   "(a run from before run records).</p>")
        out += _used_table(used, {})
        out.append("</details>")
        return out
    settings = run.get("settings") or {}
    out += _used_table(used, settings)
    out.append("<table><tr><th>setting</th><th>value</th></tr>")
    for key in sorted(k for k in settings if k not in used):
        value = settings[key]
        shown = json.dumps(value) if isinstance(value, (dict, list)) else ("" if value is None else str(value))
        if not shown:
            shown = "(none)" if key in PATHS else "(stage default)"
        out.append(f"<tr><td>{e(str(key))}</td><td>{e(shown)}</td></tr>")
    out.append("</table>")
    inputs = run.get("inputs") or {}
    if inputs:
        out.append('<p class="muted">Inputs (SHA-256, first 16 hex digits):</p><table>'
                   "<tr><th>input</th><th>path</th><th>sha256</th></tr>")
        for key in sorted(inputs):
            item = input_item(key, inputs[key], settings)
            if not item["path"] and not item["sha256"]:
                continue  # an input this run did not have
            out.append(f"<tr><td>{e(item['name'])}</td><td>{e(item['path'])}</td>"
                       f"<td><code>{e(item['sha256'][:16])}</code></td></tr>")
        out.append("</table>")
    commands = run.get("commands") or {}
    if commands:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(commands.items()))
        out.append(f'<p class="muted">Stage commands: {e(shown)}</p>')
    if run.get("ldpo_version"):
        out.append(f'<p class="muted">ldpo {e(str(run["ldpo_version"]))}</p>')
    out.append("</details>")
    return out


def _used_table(used: dict, settings: dict) -> list[str]:
    if not used:
        return []
    out = ['<table class="used"><tr><th>setting</th><th>used</th><th>requested</th></tr>']
    for key in [k for k in USED_FIRST if k in used] + sorted(k for k in used if k not in USED_FIRST):
        value = used[key]
        requested = settings.get(key, "")
        shown = "" if requested in ("", None) or same_value(requested, value) else str(requested)
        if requested in ("", None) and key in settings:
            shown = "(stage default)"
        out.append(f'<tr><td>{e(str(key))}</td><td>{e(str(value))}</td><td class="muted">{e(shown)}</td></tr>')
    out.append("</table>")
    return out


def history_html(rows: list[dict], plot: str | None, final_row: int | None = None,
                 final_note: str | None = None) -> list[str]:
    from ...common.files.history import TITLES

    out = ['<h2 id="history">Iterations</h2>']
    if not rows:
        out.append('<p class="warn">No history.csv in this work folder.</p>')
        return out
    shown = [(key, title) for key, title in TITLES.items() if any(r.get(key, "") != "" for r in rows)]
    out.append("<table><tr>" + "".join(f"<th>{e(t)}</th>" for _, t in shown) + "</tr>")
    for r in rows:
        cells = []
        for k, _ in shown:
            text = fmt(r.get(k, ""))
            if k == "iteration" and final_row is not None and str(r.get(k, "")).strip() == str(final_row):
                text += " *"
            cells.append(f'<td class="num">{e(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    default_note = f"iteration {final_row}'s clustering"
    out.append('<p class="muted">"vs previous": agreement of this iteration\'s clusters with the previous '
               'iteration\'s (the loop stops when it is high); "vs truth": with the ground truth given to the loop.'
               + (f" * The categories on this page (final/labels.csv) are {e(final_note or default_note)}."
                  if final_row is not None and len(rows) > 1 else "") + "</p>")
    if plot:
        out.append(f'<p><img class="plot" src="{e(plot)}" alt="history plot" loading="lazy"></p>')
    return out


ANCHOR = ("Manojlović et al. 2022 (deep embedded clustering of 38K PACS images) reached NMI 0.645 against modality "
          "and 0.473 against anatomical region")


def fields_html(rows: list[dict]) -> list[str]:
    """The agreement of each iteration's categories with the DICOM header fields, or nothing without rows."""
    if not rows:
        return []
    names = list(dict.fromkeys(r["field"] for r in rows))
    iterations = sorted({int(r["iteration"]) for r in rows})
    cell = {(int(r["iteration"]), r["field"]): r for r in rows}
    last = {name: next(cell[i, name] for i in reversed(iterations) if (i, name) in cell) for name in names}
    out = ['<h2 id="fields">Agreement with DICOM header fields</h2>',
           '<p class="muted">How far each iteration\'s categories follow header fields the method never saw '
           "(evaluation only): NMI (0 = independent, 1 = the same grouping) and purity (the share of images whose "
           "category's most common value is their own; it rises with the number of categories) over the images "
           "that have the field (coverage). A good categorization partly follows modality and body region, not "
           f"every field: {e(ANCHOR)}. The dotted lines of the iterations plot show the same NMI.</p>",
           "<table><tr><th rowspan=\"2\">iteration</th>"]
    for name in names:
        coverage = float(last[name]["coverage"] or 0)
        out.append(f'<th colspan="2">{e(name)} <span class="muted">({e(last[name]["values"])} values, '
                   f"{100 * coverage:.0f}% of images)</span></th>")
    out.append("</tr><tr>" + "<th>NMI</th><th>purity</th>" * len(names) + "</tr>")
    for i in iterations:
        out.append(f'<tr class="fields"><td class="num">{i}</td>' + "".join(
            f'<td class="num">{e(fmt(cell[i, n]["nmi"]))}</td><td class="num">{e(fmt(cell[i, n]["purity"]))}</td>'
            if (i, n) in cell else "<td></td><td></td>" for n in names) + "</tr>")
    out.append("</table>")
    return out


def tree_html(tree: dict | None, categories: dict[int, dict], tree_png: str | None) -> list[str]:
    out = ['<h2 id="tree">Category tree</h2>']
    if tree is None:
        out.append('<p class="muted">No category tree in this work folder (no fine-tuning iteration ran, '
                   'or hierarchy was not run).</p>')
        return out
    levels = tree.get("levels") or []
    if tree.get("affinity") == "centroids":
        basis, first = "the similarity of the categories' mean features", "whose images look most alike to the model"
    elif tree.get("affinity") == "reports":
        basis, first = "the similarity of the words of the categories' reports", "whose reports read most alike"
    else:
        basis, first = "the final model's class confusion", "that the model confuses most"
    out.append(f'<p class="muted">Built by affinity propagation on {e(basis)}: groups per '
               f'level {e(", ".join(str(x) for x in levels))} (level 0 = the categories). Categories {e(first)} '
               "are joined first. Click a group to open it.")
    if tree.get("forced_final_merge"):
        out.append(" The last join into the root was forced (no more structure was found).")
    out.append("</p>")
    signals = tree.get("level_signals") or []
    if signals:
        out.append('<p class="muted">How many categories, without labels: the modularity of each level\'s groups in '
                   "the nearest-neighbour graph of iteration 0's features (no labels trained them; higher = the "
                   "level's groups follow the images' own neighbourhoods): "
                   + e("; ".join(f"level {s['level']} ({s['groups']} groups) {s['modularity']:.3f}" for s in signals))
                   + "</p>")
    top = len(levels) - 1
    small = len(categories) <= 40  # a small tree opens whole; a large one shows its top levels

    def node(n: dict) -> list[str]:
        children = n.get("children") or []
        leaves = [c for c in children if not c.get("children")]
        inner = [c for c in children if c.get("children")]
        classes = n.get("classes") or []
        is_open = " open" if small or n.get("level", 0) >= top - 1 else ""
        listed = (" (" + ", ".join(str(c) for c in classes) + ")") if len(classes) <= 12 else ""
        lines = [f'<details class="node"{is_open}><summary>group {e(str(n.get("id", "")))}: '
                 f'{len(classes)} categories{e(listed)}, {int(n.get("size", 0))} images</summary>']
        for c in inner:
            lines += node(c)
        if leaves:
            lines.append('<ul class="leaves">')
            for leaf in leaves:
                lines.append(leaf_item(leaf))
            lines.append("</ul>")
        lines.append("</details>")
        return lines

    def leaf_item(leaf: dict) -> str:
        c = int((leaf.get("classes") or [-1])[0])
        cat = categories.get(c)
        if cat is None:
            return f"<li>category {c}</li>"
        thumb = cat["typical"][0]["src"] if cat["typical"] else ""
        img = f'<img src="{e(thumb)}" alt="" loading="lazy" width="32" height="32">' if thumb else ""
        return (f'<li><a href="#cat-{c}">{img}category {c}</a> '
                f'<span class="muted">({cat["size"]})</span> <span class="tree-name" data-label="{c}"></span></li>')

    if tree.get("children"):
        out += node(tree)
    else:
        out.append(f'<ul class="leaves">{leaf_item(tree)}</ul>')
    if tree_png:
        out.append(f'<p><a href="{e(tree_png)}">The tree as one picture (PNG)</a></p>')
    return out


def gallery(images: list[dict], side: int) -> str:
    items = []
    for im in images:
        items.append(f'<figure><img src="{e(im["src"])}" alt="{e(im["id"])}" title="{e(im["id"])}" '
                     f'loading="lazy" decoding="async" width="{im["w"]}" height="{im["h"]}">'
                     f'<figcaption>{e(im["id"])}</figcaption></figure>')
    return f'<div class="gallery" style="--side:{side}px">' + "".join(items) + "</div>"


def predicted_words_html(cat: dict) -> list[str]:
    """The words an image → words model predicted for the category's images (report --words), with
    how many of its images got each."""
    if not cat.get("predicted_words"):
        return []
    return ['<p class="kw">Predicted words: ' + "".join(f"<span>{e(w.replace('_', ' '))} ({n})</span>"
                                                        for w, n in cat["predicted_words"]) + "</p>"]


def category_html(cat: dict, total: int, side: int) -> list[str]:
    c = cat["label"]
    words = " ".join(w for w, _ in cat.get("keywords", []))
    out = [f'<section class="cat" id="cat-{c}" data-label="{c}" data-words="{e(words)}">',
           f'<h3><span>Category {c}</span><span class="muted">{cat["size"]} images '
           f'({100.0 * cat["size"] / max(total, 1):.1f}%)</span>']
    if cat.get("confidence") is not None:
        out.append(f'<span class="muted">mean probability of its own class {cat["confidence"]:.2f}</span>')
    if cat.get("cluster_confidence") is not None:
        out.append(f'<span class="muted">median clustering confidence {cat["cluster_confidence"]:.2f}</span>')
    out.append("</h3>")
    out.append('<div class="form">'
               f'<label>name <input class="name" type="text" data-label="{c}" placeholder="e.g. axial CT liver" '
               f'aria-label="name of category {c}"></label>'
               f'<label>merge into category <input class="merge" type="text" list="labels" '
               f'title="one category, or several joined by ; to keep it in each" '
               f'data-label="{c}" aria-label="merge category {c} into"></label></div>')
    place = cat.get("place")
    if place:
        out.append(f'<p class="muted">In the tree: {place}</p>')
    if cat.get("keywords"):
        out.append('<p class="kw">Keywords: ' + "".join(f"<span>{e(w)} ({n})</span>" for w, n in cat["keywords"])
                   + "</p>")
    out.extend(predicted_words_html(cat))
    out.append(f'<div class="muted">Most typical (nearest the category\'s centroid in {e(cat["space"])}):</div>')
    out.append(gallery(cat["typical"], side))
    if cat["atypical"]:
        out.append('<div class="muted">Least typical (farthest from the centroid):</div>')
        out.append(gallery(cat["atypical"], side))
    out.append("</section>")
    return out


def render(title: str, run_key: str, run: dict | None, run_path: str, history: list[dict], history_png: str | None,
           tree: dict | None, tree_png: str | None, categories: dict[int, dict], total: int, side: int,
           notes: list[str], version: str, usage: list[str] | None = None, fields: list[dict] | None = None,
           used: dict | None = None, final_row: int | None = None, final_note: str | None = None,
           k_choice: str | None = None) -> str:
    """The page: first what a reviewer came for (the tree, the categories), then the iterations, the header
    fields, and the settings folded away."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>",
           f'<body data-run="{e(run_key)}">',
           '<header class="top">', f"<h1>{e(title)}</h1>",
           '<nav><a href="#tree">tree</a><a href="#categories">categories</a><a href="#history">iterations</a>'
           + ('<a href="#fields">header fields</a>' if fields else "")
           + '<a href="#settings">settings</a></nav>',
           '<div class="review"><input id="find" type="search" placeholder="find category, name, keyword" '
           'aria-label="find a category">'
           '<button id="download" type="button">Download review.csv</button>'
           '<button id="clear" type="button">Clear</button><span id="status"></span></div>',
           "</header>", "<main>"]
    out.append(f'<p>{total} images in {len(categories)} categories. Name categories and mark merges below; '
               '"Download review.csv" saves them (<code>label,name,merge_into</code>); apply them with '
               '<code>relabel final/labels.csv review.csv --out reviewed.csv</code> and start a new run with '
               '<code>--init-labels reviewed.csv</code>. Entries are kept in this browser until cleared.</p>')
    for note in notes:
        out.append(f'<p class="warn">{e(note)}</p>')
    out += tree_html(tree, categories, tree_png)
    out.append('<h2 id="categories">Categories</h2>')
    out.append('<datalist id="labels">' + "".join(f'<option value="{c}">' for c in sorted(categories)) + "</datalist>")
    for c in sorted(categories):
        out += category_html(categories[c], total, side)
    out += history_html(history, history_png, final_row, final_note)
    if k_choice:
        out.append(f'<p class="muted">How many categories (<code>--k auto</code>, at iteration 0): {e(k_choice)}</p>')
    out += fields_html(fields or [])
    out += settings_html(run, run_path, used)
    if usage:
        out.append('<details><summary>Use this run: apply the review, assign new images, export folders</summary>'
                   '<pre>' + "\n".join(e(line) for line in usage) + "</pre></details>")
    out.append(f'<p class="muted">Made by ldpo {e(version)} <code>report</code>.</p>')
    out += ["</main>", f"<script>{JS}</script>", "</body>", "</html>", ""]
    return "\n".join(out)
