"""The ldpo commands, one module per command. ``ldpo COMMAND …`` runs any of them.

A command is listed here only if its module exists (no placeholders): the table
maps the command name to its module under ``ldpo.stages``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from ..common import __version__

COMMANDS = {
    "toy-data": "toy_data",
    "extract-keyimages": "extract_keyimages",
    "topic-label": "topic_label",
    "finetune": "finetune",
    "featurize": "featurize",
    "encode": "encode",
    "cluster": "cluster",
    "converge": "converge",
    "hierarchy": "hierarchy",
    "keywords": "keywords",
    "report": "report",
    "relabel": "relabel",
    "assign": "assign",
    "export-folders": "export_folders",
    "word-vectors": "word_vectors",
    "describe": "describe",
}


def available() -> dict[str, str]:
    return {cmd: mod for cmd, mod in COMMANDS.items()
            if importlib.util.find_spec(f"ldpo.stages.{mod}") is not None}


def tool(command: str):
    """The Tool class of a command, e.g. ``tool("cluster")().run([...])``."""
    module = importlib.import_module(f"ldpo.stages.{available()[command]}")
    return module.TOOL


def stage_default(command: str, option: str):
    """The default a command declares for an option (None when it declares none): the loop's run record
    states a setting the user left to a stage as that stage's own default."""
    import dataclasses

    for f in dataclasses.fields(tool(command).Options):
        if f.name == option:
            return None if f.default is dataclasses.MISSING else f.default
    return None


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ldpo COMMAND [options]   (ldpo COMMAND --help for each)\n\ncommands:")
        for cmd in commands:
            print(f"  {cmd}")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"ldpo {__version__}")
        return 0
    if argv[0] == "_workdir":  # the loop's bookkeeping (ldpo.common.loop.command): plumbing, not a command
        from ..common.loop import command

        return command.main(argv[1:], stage_default)
    if argv[0] not in commands:
        print(f"ldpo: error: unknown command {argv[0]!r} (one of: {', '.join(commands)})", file=sys.stderr)
        return 2
    return tool(argv[0])().run(argv[1:])


def main() -> None:
    sys.exit(run())
