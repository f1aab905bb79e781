"""The import graph of ldpo.common and ldpo.stages, read from the source with ``ast``: every import of
ldpo names a module that exists, no module reaches itself through its imports (no cycle), no stage
imports another stage, and common/ never imports a stage. Imports inside functions and under
``TYPE_CHECKING`` count: a reader (and an import-graph tool) sees them all the same.

The layering of common/'s sub-packages is in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = {"common": "ldpo.common", "stages": "ldpo.stages"}


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of ldpo.common and ldpo.stages: name -> (file, is a package)."""
    found = {}
    for top, prefix in TOPS.items():
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            package = parts[-1] == "__init__"
            if package:
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = (path, package)
    return found


def imports(name: str, path: Path, package: bool, known: dict) -> list[tuple[str, int, bool]]:
    """(module imported, line, written relative) for each ldpo module that ``name``'s file imports."""
    here = name if package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, False) for a in node.names if a.name.startswith("ldpo.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ldpo."):
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            plain = len(subs) < len(node.names)
            found += [(s, node.lineno, bool(node.level)) for s in subs]
            if plain:
                found.append((target, node.lineno, bool(node.level)))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, (path, package) in known.items():
        edges[name] = set()
        for target, line, _ in imports(name, path, package, known):
            assert target in known, f"{path.relative_to(ROOT)}:{line}: imports {target}, which is no module"
            if target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def folder_of(name: str) -> str:
    """The sub-package of common/ that a module lies in (``ldpo.common.files.stores`` ->
    ``ldpo.common.files``); a module at common/'s root, and any other module, stands for itself."""
    parts = name.split(".")
    if parts[:2] == ["ldpo", "common"] and len(parts) > 3:
        return ".".join(parts[:3])
    return name


def stage_of(name: str) -> str | None:
    """``ldpo.stages.cluster.scan`` -> ``cluster``; the stages package itself -> None."""
    parts = name.split(".")
    return parts[2] if parts[:2] == ["ldpo", "stages"] and len(parts) > 2 else None


def test_every_import_names_a_module_and_no_module_imports_itself_in_a_circle():
    assert cycles(graph()) == []


def test_no_two_sub_packages_of_common_import_each_other():
    """common/'s sub-packages stand in layers (docs/architecture.md): a tool that draws each folder as
    one box shows no circle either."""
    folders: dict[str, set[str]] = {}
    for name, targets in graph().items():
        folders.setdefault(folder_of(name), set()).update(folder_of(t) for t in targets if folder_of(t) != folder_of(name))
    for folder in list(folders.values()):
        for target in folder:
            folders.setdefault(target, set())
    assert cycles(folders) == []


def test_no_stage_imports_another_and_common_imports_no_stage():
    for name, targets in graph().items():
        for target in targets:
            if name.startswith("ldpo.common"):
                assert not target.startswith("ldpo.stages"), f"{name} imports the stage {target}"
            elif stage_of(name) and stage_of(target):
                assert stage_of(target) == stage_of(name), f"the stage {name} imports another stage, {target}"
            elif stage_of(name):
                assert target.startswith("ldpo.common"), f"the stage {name} imports {target}"


def test_imports_within_ldpo_are_relative():
    """The files on disk are the package (``stages/`` and ``common/`` install as ``ldpo.stages`` and
    ``ldpo.common``; no ``ldpo/`` folder exists): a relative import is one that a tool reading the
    folders can follow."""
    known = modules()
    for name, (path, package) in known.items():
        for target, line, relative in imports(name, path, package, known):
            assert relative, f"{path.relative_to(ROOT)}:{line}: import {target} relatively (from ..common… import)"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
