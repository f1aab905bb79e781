"""The base every ldpo command is built on.

A command is a short subclass of :class:`Tool`: it names itself, gives a usage
example, declares its options as a dataclass that extends :class:`CommonOptions`,
and implements :meth:`Tool.main`. The base owns the common flags, logging and
progress bars on stderr, seeding, and the exit-status contract:

* 0 success (``converge`` also returns 1 = "not converged" itself);
* 2 bad input or usage, with one line ``COMMAND: error: FILE: problem`` on stderr
  and no traceback unless ``--verbose``;
* 141 when stdout is closed early (``| head``), like other Unix tools.

Before ``main`` runs, the base checks what the options declare (see :func:`opt`): the
range of every numeric option (``min``/``max``/``above``/``below``, and never
``nan``/``inf``), and that no output (``role="output"``, a file, or
``role="output-folder"``) is one of the inputs (``role="input"``), another output, or a
special file; that a file output is not an existing folder (only an earlier ldpo Zarr
store at a ``.zarr`` output is replaced); and that a folder output is not a file.

Tests call ``Tool().run(argv)`` in-process; it returns the exit status and never
calls ``sys.exit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import stat
import sys
import traceback
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import argparse_dataclass
import numpy as np

from . import __version__
from .errors import InputError

log = logging.getLogger("ldpo")

_progress_enabled = True


#: what ``role=`` may say about a path option (see :func:`opt`)
ROLES = ("input", "output", "output-folder")
#: the roles of paths a command writes
OUTPUT_ROLES = ("output", "output-folder")


def opt(help: str, default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
        above: float | None = None, below: float | None = None, role: str | None = None,
        aliases: list[str] | None = None, **argparse_kwargs) -> Any:
    """A dataclass field for an option: ``opt("help text", default, choices=[...])``.

    ``args=["-k", "--k"]`` sets the flag names; ``args=["images"]`` makes it positional.

    Bounds, declared where the option is, checked by :class:`Tool` right after parsing
    (exit 2, ``--size 100000: must be between 8 and 8192``, ``--lr nan: must be a finite number``):

    * ``min=`` / ``max=``: inclusive limits (``opt("…", 3, min=1)``, ``min=0, max=1``);
    * ``above=`` / ``below=``: exclusive limits (``above=0, below=1`` for an open interval);
    * every float option refuses ``nan`` and ``inf`` (bounded or not); ``None`` (an
      ``Optional`` option left unset) is never checked.

    Paths: ``role="input"`` marks a file the command reads, ``role="output"`` a file it
    writes (or a store: a ``.zarr`` store is a folder), ``role="output-folder"`` a folder
    it writes files into. Before ``main`` runs, the base refuses an output that is one
    of the inputs or another output (same resolved path or same inode), an output that
    is a special file (FIFO, ``/dev/null``, a device, a socket; also through a link), a
    file output that is an existing folder or ends with ``/`` (except a ``.zarr`` output
    over an earlier ldpo Zarr store), and a folder output that exists as a file. ``""``
    and ``-`` (stdin/stdout) are never checked. Files derived from options (side files
    named from the main output, files inside an output folder) are added by overriding
    :meth:`Tool.inputs` / :meth:`Tool.outputs`.

    ``aliases=["--batch"]``: old spellings still accepted, hidden from ``--help``.
    """
    if default is not dataclasses.MISSING and not isinstance(default, bool) and default not in ("", None):
        help = f"{help} (default: {default})"
    help += _range_text(min, max, above, below)
    metadata = {"help": help, **argparse_kwargs, **_checks(min, max, above, below, role, aliases)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def positional(help: str, *, role: str | None = None, min: float | None = None, max: float | None = None,
               **argparse_kwargs) -> Any:
    """A required positional argument named after its field (``role=``, ``min=``, ``max=`` as for :func:`opt`)."""
    return field(metadata={"help": help, "positional": True, **argparse_kwargs,
                           **_checks(min, max, None, None, role, None)})


def _range_text(min, max, above, below) -> str:
    """`` [1, 64]``, `` (0, 1)``, `` [0, inf)`` … for --help; empty without bounds."""
    if min is None and max is None and above is None and below is None:
        return ""
    low = f"[{min}" if min is not None else f"({above}" if above is not None else "(-inf"
    high = f"{max}]" if max is not None else f"{below})" if below is not None else "inf)"
    return f" {low}, {high}"


def _checks(min, max, above, below, role, aliases) -> dict:
    if role is not None and role not in ROLES:
        raise ValueError(f"role={role!r}: one of {ROLES}")
    found = {"min": min, "max": max, "above": above, "below": below, "role": role, "aliases": aliases}
    return {key: value for key, value in found.items() if value is not None}


#: --help of ``--workers`` where a stage reads images through ``common/images/imagedata.py``
READER_WORKERS = ("threads reading the images store ahead of the network (0 = the main thread reads in turn); "
                  "threads of this process, not processes: they use no shared memory (/dev/shm), so a container's "
                  "default 64 MiB suffices, and the results do not depend on the count. Host memory: about "
                  "2 x N x 16 MiB of reads ahead")


@dataclass(kw_only=True)
class CommonOptions:
    """Flags every command takes."""

    verbose: bool = opt("log more, and show tracebacks on errors", False, args=["-v", "--verbose"])
    quiet: bool = opt("log only warnings and errors", False, args=["-q", "--quiet"])
    seed: int = opt("random seed (same inputs, seed and device give the same outputs)", 0, min=0)
    device: str = opt("where to compute", "auto", choices=["auto", "cpu", "cuda"])
    workers: int = opt("worker processes for loading/parallel work (0 = in the main process)", 0, min=0, max=1024)
    no_progress: bool = opt("hide progress bars", False)


class _Parser(argparse_dataclass.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like argparse but without usage spam
        raise _UsageError(f"{self.prog}: error: {message} (see --help)")


class _UsageError(Exception):
    pass


class Tool:
    """Base class of every command. Subclasses set the class attributes and ``main``."""

    name: str = "ldpo"
    description: str = ""
    example: str = ""
    Options: type = CommonOptions
    #: groups of options (field names) that are given all together or not at all, e.g.
    #: ``together = (("reference_labels", "reference_images"),)``: checked with the bounds
    together: tuple[tuple[str, ...], ...] = ()

    # -- to implement -------------------------------------------------------------
    def main(self, opts: Any) -> int | None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- machinery ----------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        options_class = _prepare(self.Options)
        epilog = "example:\n" + "\n".join("  " + line for line in self.example.strip().splitlines())
        parser = _Parser(
            options_class,
            prog=self.name,
            description=self.description,
            epilog=epilog if self.example else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--version", action="version", version=f"ldpo {__version__}")
        for f in dataclasses.fields(options_class):
            for alias in f.metadata.get("aliases", ()):
                parser.add_argument(alias, dest=f.name, type=_value_type(f), default=argparse.SUPPRESS,
                                    help=argparse.SUPPRESS)
        return parser

    def inputs(self, opts: Any) -> list[tuple[str, str]]:
        """``(flag, path)`` of every file the command reads: the ``role="input"`` options.

        Override to add inputs that no single option names (call ``super()``)."""
        return _paths(opts, "input")

    def outputs(self, opts: Any) -> list[tuple[str, str]]:
        """``(flag, path)`` of every file and folder the command writes: the ``role="output"``
        and ``role="output-folder"`` options.

        Override to add side files named from the main output, or the files written
        inside an output folder (call ``super()``)."""
        return _paths(opts, *OUTPUT_ROLES)

    def output_folders(self, opts: Any) -> list[tuple[str, str]]:
        """``(flag, path)`` of the outputs that are folders: the ``role="output-folder"`` options."""
        return _paths(opts, "output-folder")

    def check(self, opts: Any) -> None:
        """Bounds of every numeric option, options that go together, then outputs vs inputs,
        folders and special files."""
        check_bounds(opts)
        check_together(opts, self.together)
        check_paths(self.inputs(opts), self.outputs(opts), self.output_folders(opts))

    def parse(self, argv: list[str] | None) -> Any:
        return self.parser().parse_args(argv)

    def run(self, argv: list[str] | None = None) -> int:
        """Parse ``argv``, run the command, and return its exit status."""
        argv = list(sys.argv[1:] if argv is None else argv)
        verbose = "-v" in argv or "--verbose" in argv
        try:
            opts = self.parse(argv)
        except _UsageError as err:
            print(str(err), file=sys.stderr)
            return 2
        except SystemExit as exit_:  # --help / --version
            return int(exit_.code or 0)
        setup(opts)
        try:
            self.check(opts)
            status = self.main(opts)
            sys.stdout.flush()
            return int(status or 0)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141
        except KeyboardInterrupt:
            print(f"{self.name}: interrupted", file=sys.stderr)
            return 130
        except InputError as err:  # ldpo's own one-line message: a newline in it comes from a name (a path)
            return self._fail(str(err), verbose, one_line=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            return self._fail(_describe(err), verbose)
        except Exception as err:  # noqa: BLE001 - an exception must never look like success
            return self._fail(f"unexpected {type(err).__name__}: {err}", verbose, unexpected=True)

    def _fail(self, message: str, verbose: bool, unexpected: bool = False, one_line: bool = False) -> int:
        """Print the one error line; only an unexpected exception (a bug, not bad input) gets
        the ``-v`` hint, whatever words a handled error's text holds. ``one_line``: the whole
        message, its line breaks shown as ``\\n`` (they come from a path or a name)."""
        if verbose:
            traceback.print_exc(file=sys.stderr)
        worker = message.lstrip().startswith("Caught ") and " worker" in message.lstrip().split("\n", 1)[0]
        first = flat(message.strip()) if one_line and not worker else _headline(message)
        hint = " (-v for the traceback)" if unexpected and not verbose else ""
        print(f"{self.name}: error: {first}{hint}", file=sys.stderr)
        return 2

    @classmethod
    def console(cls) -> None:
        """The console-script entry point."""
        sys.exit(cls().run())


def _headline(message: str) -> str:
    """The one line to print: the message's first line, or for an error re-raised from a worker
    process (torch's ``Caught InputError in DataLoader worker process 0.`` + the worker's traceback)
    the original error's own line, which names the file."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "failed"
    if len(lines) > 1 and lines[0].startswith("Caught ") and " worker" in lines[0]:
        kind, sep, rest = lines[-1].partition(": ")
        return rest if sep and kind.rsplit(".", 1)[-1] == "InputError" else lines[-1]
    return lines[0]


def flat(text: str) -> str:
    """``text`` on one line: line breaks (from a file or folder name) shown as ``\\n`` / ``\\r``."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and getattr(err, "filename", None):
        return f"{flat(err.filename)}: {err.strerror or err}"
    if isinstance(err, KeyError):
        return f"missing key {err}"
    return str(err) or type(err).__name__


def flag_of(f: dataclasses.Field) -> str:
    """How the user spells a field: its long flag (``--batch-size``) or positional name."""
    args = f.metadata.get("args")
    if f.metadata.get("positional") or (args and not args[0].startswith("-")):
        return f.name.upper()
    if args:
        return max(args, key=len)
    return "--" + f.name.replace("_", "-")


def _value_type(f: dataclasses.Field):
    kind = f.metadata.get("type", f.type)
    inner = [t for t in typing.get_args(kind) if t is not type(None)]
    return inner[0] if inner else kind


def check_bounds(opts: Any, raw: dict[str, str] | None = None) -> None:
    """Refuse values outside the ``min``/``max``/``above``/``below`` an option declares, and non-finite floats.
    The message shows ``raw[name]`` (the text as given) when known, and a field's ``says`` metadata when declared."""
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        problem = _out_of_bounds(value, f.metadata)
        if problem:
            shown = (raw or {}).get(f.name, value)
            raise InputError(f"{flag_of(f)} {shown}: {f.metadata.get('says') or problem}")


def check_together(opts: Any, groups: tuple[tuple[str, ...], ...]) -> None:
    """Refuse a group of options given in part (``--a and --b go together``); unset means ``None``."""
    fields = {f.name: f for f in dataclasses.fields(opts)}
    for group in groups:
        given = [getattr(opts, name) is not None for name in group]
        if any(given) and not all(given):
            raise InputError(" and ".join(flag_of(fields[name]) for name in group) + " go together")


def _out_of_bounds(value: float, meta: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if "min" in meta and "max" in meta and not meta["min"] <= value <= meta["max"]:
        return f"must be between {meta['min']} and {meta['max']}"
    if "min" in meta and value < meta["min"]:
        return f"must be at least {meta['min']}"
    if "max" in meta and value > meta["max"]:
        return f"must be at most {meta['max']}"
    if "above" in meta and value <= meta["above"]:
        return f"must be above {meta['above']}"
    if "below" in meta and value >= meta["below"]:
        return f"must be below {meta['below']}"
    return ""


def _paths(opts: Any, *roles: str) -> list[tuple[str, str]]:
    """``(flag, path)`` of the options declared with one of ``roles``, in declaration order."""
    found = []
    for f in dataclasses.fields(opts):
        if f.metadata.get("role") not in roles:
            continue
        value = getattr(opts, f.name)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path not in (None, "", "-"):
                found.append((flag_of(f), str(path)))
    return found


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when it exists): two paths naming one file share one of them."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return os.path.realpath(path), inode


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (``./x.h5`` and ``x.h5``, a link and its target)."""
    return _same(_identity(a), _identity(b))


def check_paths(inputs: list[tuple[str, str]], outputs: list[tuple[str, str]],
                folders: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse an output that is an input, another output, or a special file; a file output
    that is an existing folder (or ends with ``/``), unless it is a ``.zarr`` output over an
    earlier ldpo Zarr store; and a folder output (one of ``folders``) that is a file. Exit
    2, one line naming the path; nothing is touched."""
    folder_paths = {path for _, path in folders}
    known = [(flag, path, _identity(path)) for flag, path in inputs if path not in ("", "-")]
    for flag, path in outputs:
        if path in ("", "-"):
            continue
        special = _special_kind(path)
        if special:
            raise InputError(f"{path}: {flag} is a {special}, not a regular file: refusing to write to it")
        if path in folder_paths:
            if os.path.exists(path) and not os.path.isdir(path):
                raise InputError(f"{path}: {flag} exists and is not a folder: give a folder path")
        else:
            _check_file_output(flag, path)
        me = _identity(path)
        for other_flag, other, ident in known:
            if _same(me, ident):
                role = "an output" if (other_flag, other) in outputs else "an input"
                raise InputError(f"{path}: {flag} is the same file as {other_flag} ({other}), {role} of this "
                                 "command: give another output path")
        known.append((flag, path, me))


def _check_file_output(flag: str, path: str) -> None:
    """A file output may not be a folder (it would be replaced by the file, everything in it
    lost): only a ``.zarr`` output may replace an earlier ldpo Zarr store."""
    from .files.stores import ZARR_SUFFIXES, ldpo_store_problem

    zarr = os.path.splitext(path.rstrip("/" + os.sep))[1].lower() in ZARR_SUFFIXES
    if zarr:
        if os.path.isdir(path):
            problem = ldpo_store_problem(path)
            if problem:
                raise InputError(f"{path}: {flag} is an existing folder that is not an earlier ldpo Zarr store "
                                 f"({problem}): refusing to replace it; give another path")
        return
    if os.path.isdir(path):
        raise InputError(f"{path}: {flag} is an existing folder, not a file: give a file path")
    if path.endswith(("/", os.sep)):
        raise InputError(f"{path}: {flag} ends with '/' (a folder), but this output is a file: "
                         "give a file path")


def _special_kind(path: str) -> str:
    """``FIFO``, ``character device`` … for a special file at ``path`` (a link is followed), else ``""``."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return ""


_prepared: set[type] = set()


def _prepare(options_class: type) -> type:
    """Make an options dataclass readable by argparse-dataclass.

    Resolves string annotations (``from __future__ import annotations``) to types and
    gives fields declared with :func:`positional` the ``args`` entry that makes them
    positional.
    """
    if options_class in _prepared:
        return options_class
    hints = typing.get_type_hints(options_class)
    for f in dataclasses.fields(options_class):
        f.type = hints.get(f.name, f.type)
        if f.metadata.get("positional") and "args" not in f.metadata:
            f.metadata = type(f.metadata)({**f.metadata, "args": [f.name]})
    _prepared.add(options_class)
    return options_class


def setup(opts: Any) -> None:
    """Logging level, progress bars and seeds from the common flags."""
    global _progress_enabled
    level = logging.DEBUG if opts.verbose else logging.WARNING if opts.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # zarr decodes on an asyncio loop: a failed chunk must give one line, not the loop's tracebacks
    logging.getLogger("asyncio").setLevel(logging.DEBUG if opts.verbose else logging.CRITICAL)
    _progress_enabled = not (opts.no_progress or opts.quiet)
    warnings.showwarning = warning_line  # numpy's and libraries' warnings: one ldpo line, never a source line
    seed_everything(opts.seed)


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (numpy's ``RuntimeWarning: overflow …``, a library's ``UserWarning``) as one ldpo line
    on stderr, ``ldpo: warning: overflow encountered in cast (RuntimeWarning)``; the code line is never shown."""
    text = flat(" ".join(str(message).split()) or category.__name__)
    log.warning("warning: %s (%s)", text, category.__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def progress(iterable: Iterable | None = None, **kwargs):
    """A tqdm progress bar on stderr, hidden by ``--quiet``/``--no-progress``."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs["disable"] = kwargs.get("disable", False) or not _progress_enabled
    return tqdm(iterable, **kwargs)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible (use --device auto or cpu)")
    return name
