"""``ldpo _workdir COMMAND … -- LOOP-ARGUMENTS``: the loop's bookkeeping as plumbing (like git's) for
``pipelines/ldpo-loop.sh``; not a user command, not listed by ``ldpo --help``. The loop parses no
JSON and no CSV: every command prints shell assignments that the loop ``eval``s, or one error line
``ldpo-loop: error: …`` and exits 2. Each reads the loop's own arguments (after ``--``) with
:mod:`ldpo.common.loop.loop_options`; the work folder is :mod:`ldpo.common.loop.workdir`'s, the stage
command lines :mod:`ldpo.common.loop.loop_plan`'s.

Its own module so that the work folder and the plan of stage command lines do not import each
other: the plan reads the work folder's layout, and this command line uses both.

Commands: ``options`` (``--help``, or the settings the loop needs), ``lock`` (make or check the
lock file: never a link, a FIFO or a device), ``hold FD PID`` (write who holds the lock through
the shell's descriptor, once checked to be that file), ``begin`` (the run record:
resume, ``--restart-from``, ``--fresh``, or refuse), ``iteration T`` (paths and stage command
lines of iteration ``T``), ``check T`` (a verdict an earlier run recorded, else converge's
command line), ``verdict T STATUS`` (converge's verdict from what it printed), ``final LAST``
(the final model and labels, and the command lines of the steps after the loop), ``summary
LAST``; and for tests, ``forget WORK FROM WHY``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .. import __version__
from ..errors import InputError
from . import loop_plan
from .loop_options import help_text, parse
from .workdir import Layout, begin, forget, hold_lock, make_final, make_lock, recorded_verdict, summary_text, verdict

USAGE = ("usage: ldpo _workdir options|lock|hold FD PID|begin|iteration T|check T|verdict T STATUS|final LAST|"
         "summary LAST -- LOOP-ARGUMENTS | forget WORK FROM WHY")


def shell(**values: str | int | list[str]) -> str:
    """Shell assignments of ``values`` (a list becomes an array), quoted for ``eval``."""
    lines = []
    for name, value in values.items():
        if isinstance(value, list):
            lines.append(f"{name}=(" + " ".join(shlex.quote(str(v)) for v in value) + ")")
        else:
            lines.append(f"{name}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def main(argv: list[str], defaults=None) -> int:
    """``ldpo _workdir …`` (see the module's text); errors are one ``ldpo-loop: error:`` line, exit 2
    (a newline in a path is written ``\\n``). ``defaults(stage, option)``: a stage's declared default."""
    try:
        return _main(argv, defaults)
    except InputError as err:
        message = str(err)
    except OSError as err:
        message = f"{err.filename}: {err.strerror or err}" if getattr(err, "filename", None) else str(err)
    print("ldpo-loop: error: " + message.replace("\n", "\\n"), file=sys.stderr)
    return 2


def _main(argv: list[str], defaults=None) -> int:
    if len(argv) == 4 and argv[0] == "forget":
        if argv[2] != "tree" and not argv[2].isdigit():
            raise InputError(f"forget: {argv[2]!r} is not an iteration number or 'tree'")
        forget(Path(argv[1]), argv[2], argv[3])
        return 0
    if "--" not in argv:
        raise InputError(USAGE)
    cut = argv.index("--")
    command, loop_args = argv[:cut], argv[cut + 1:]
    if command == ["options"] and any(a in ("-h", "--help") for a in loop_args):
        sys.stdout.write(f"printf '%s\\n' {shlex.quote(help_text())}\nexit 0\n")
        return 0
    if command == ["options"] and "--version" in loop_args:
        sys.stdout.write(f"echo {shlex.quote('ldpo ' + __version__)}\nexit 0\n")
        return 0
    parsed = parse(loop_args)
    parsed.defaults = defaults
    layout = Layout(parsed.opts.work)
    numbers = [int(a) for a in command[1:] if a.isdigit()]
    if len(numbers) != len(command) - 1 or not command:
        raise InputError(USAGE)
    name = command[0]
    if name == "options" and not numbers:
        sys.stdout.write(shell(**loop_plan.loop_settings(parsed, layout)))
    elif name == "lock" and not numbers:
        make_lock(layout.lock)
    elif name == "hold" and len(numbers) == 2:
        hold_lock(layout.lock, *numbers)
    elif name == "begin" and not numbers:
        begin(parsed)
    elif name == "iteration" and len(numbers) == 1:
        sys.stdout.write(shell(**loop_plan.iteration(parsed, layout, numbers[0])))
    elif name == "check" and len(numbers) == 1:
        found = recorded_verdict(layout, numbers[0])
        plan = {"converged": found} if found is not None else \
            {"converged": "", "converge": loop_plan.converge(parsed, layout, numbers[0])}
        sys.stdout.write(shell(**plan))
    elif name == "verdict" and len(numbers) == 2:
        sys.stdout.write(shell(converged=verdict(layout, *numbers)))
    elif name == "final" and len(numbers) == 1:
        make_final(layout, numbers[0])
        sys.stdout.write(shell(**loop_plan.final(parsed, layout, numbers[0])))
    elif name == "summary" and len(numbers) == 1:
        print(summary_text(layout, numbers[0]))
    else:
        raise InputError(USAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
