"""``toy-data``: the embedded data sets, generated (nothing is downloaded).

``toy-data texture25 --out DIR`` — 25 procedural texture classes (images + truth).
``toy-data pacs --out DIR`` — a small fake PACS: DICOM studies + reports.
``toy-data archive --n N --size S --out A.zarr`` — a synthetic archive of any size (images + truth).
``toy-data multilabel --out DIR`` — images showing one, two or none of four body parts (images + multi-label truth).
``toy-data scenes --out DIR`` — scenes whose category is which objects appear (images + truth).
"""

from __future__ import annotations

import importlib
import sys

from ...common.cli import Tool

SETS = {"texture25": "texture25", "pacs": "pacs", "archive": "archive", "multilabel": "multilabel", "scenes": "scenes"}


class ToyDataTool(Tool):
    name = "toy-data"
    description = ("Generate an embedded toy data set: texture25 (images + truth), pacs (DICOM + reports), "
                   "archive (a synthetic archive of any size: images + truth), multilabel (one, two or no body parts per "
                   "image: images + multi-label truth) or scenes (categories by the objects they show: images + truth).")
    example = ("toy-data texture25 --out toy/ --per-class 12 --size 64\ntoy-data pacs --out pacs/\n"
               "toy-data archive --n 216000 --size 256 --out archive.zarr\ntoy-data multilabel --out ml/ --n 600\n"
               "toy-data scenes --out scenes/ --classes 10 --per-class 40")

    def sets(self) -> dict[str, type[Tool]]:
        found = {}
        for name, module in SETS.items():
            try:
                found[name] = importlib.import_module(f"{__name__}.{module}").TOOL
            except ModuleNotFoundError as err:
                if err.name != f"{__name__}.{module}":
                    raise
        return found

    def run(self, argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        sets = self.sets()
        if not argv or argv[0] in ("-h", "--help"):
            print(f"usage: toy-data {{{','.join(sets)}}} [options]\n\n{self.description}\n\nexample:")
            print("\n".join("  " + line for line in self.example.splitlines()))
            return 0 if argv else 2
        if argv[0] == "--version":
            return sets[next(iter(sets))]().run(["--version"])
        if argv[0] not in sets:
            print(f"toy-data: error: unknown data set {argv[0]!r} (one of: {', '.join(sets)})", file=sys.stderr)
            return 2
        return sets[argv[0]]().run(argv[1:])


TOOL = ToyDataTool
main = ToyDataTool.console
