"""The CLI base: common flags, help with an example, and the exit-status contract."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

from ldpo.common.cli import CommonOptions, Tool, opt, positional
from ldpo.common.errors import InputError


@dataclass(kw_only=True)
class EchoOptions(CommonOptions):
    path: str = positional("a file")
    times: int = opt("repeat count", 1)


class Echo(Tool):
    name = "echo-test"
    description = "Print a file's path."
    example = "echo-test some.csv --times 2"
    Options = EchoOptions

    def main(self, opts):
        if opts.path == "bad":
            raise InputError("bad: not a real file")
        if opts.path == "boom":
            raise ZeroDivisionError("division by zero")
        for _ in range(opts.times):
            print(opts.path)
        return 0


def test_success_and_options(capsys):
    assert Echo().run(["a.csv", "--times", "2", "--seed", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "a.csv\na.csv\n"


def test_bad_input_is_one_line_exit_2(capsys):
    assert Echo().run(["bad"]) == 2
    err = capsys.readouterr().err
    assert err == "echo-test: error: bad: not a real file\n"


def test_unexpected_error_is_exit_2_without_traceback(capsys):
    assert Echo().run(["boom"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "ZeroDivisionError" in err and "-v" in err


def test_verbose_shows_traceback(capsys):
    assert Echo().run(["bad", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("echo-test: error: bad: not a real file")


def test_usage_errors_exit_2(capsys):
    assert Echo().run([]) == 2
    assert Echo().run(["x", "--times", "many"]) == 2
    assert Echo().run(["x", "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("echo-test: error:") for line in err)


def test_help_shows_example_and_common_flags(capsys):
    assert Echo().run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "example:\n  echo-test some.csv --times 2" in out
    for flag in ("--verbose", "--quiet", "--seed", "--device", "--workers", "--no-progress", "--version"):
        assert flag in out


def test_version(capsys):
    from ldpo.common import __version__

    assert Echo().run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ldpo {__version__}"


def test_ldpo_dispatcher(cli):
    r = cli("no-such-stage")
    assert r.code == 2 and "unknown command 'no-such-stage'" in r.err
    r = cli("--help")
    assert r.code == 0 and "toy-data" in r.out


def test_closed_stdout_is_not_an_error(tmp_path):
    """``ldpo … | head -1``: a closed pipe ends quietly with 141, not a traceback."""
    script = (
        "import sys\n"
        "sys.path.insert(0, %r)\n"
        "from test_cli import Echo\n"
        "sys.exit(Echo().run(['x' * 1000, '--times', '100000']))\n" % str(__import__('pathlib').Path(__file__).parent)
    )
    proc = subprocess.run(f"{sys.executable} -c \"{script}\" | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert proc.stdout.strip() == "141"
    assert "Traceback" not in proc.stderr


# -- bounds and input/output roles, declared on the option --------------------------------

@dataclass(kw_only=True)
class CopyOptions(CommonOptions):
    source: str = positional("a file", role="input")
    out: str = opt("where to copy it", role="output")
    log: str = opt("a second output", "", role="output")
    size: int = opt("a size", 8, min=1, max=64)
    rate: float = opt("a rate", 0.5, above=0, below=1)
    batch_size: int = opt("a batch", 4, min=1, aliases=["--batch"])


class Copy(Tool):
    name = "copy-test"
    example = "copy-test a.csv --out b.csv"
    Options = CopyOptions

    def main(self, opts):
        print(opts.size, opts.rate, opts.batch_size)
        return 0


def test_bounds_are_checked_with_the_flag_named(capsys, tmp_path):
    (tmp_path / "a").write_text("x")
    base = [str(tmp_path / "a"), "--out", str(tmp_path / "b")]
    assert Copy().run([*base, "--size", "64", "--rate", "0.1", "--batch", "2"]) == 0
    assert capsys.readouterr().out == "64 0.1 2\n"  # the old spelling still works
    for args, message in ((["--size", "100"], "--size 100: must be between 1 and 64"),
                          (["--size", "0"], "--size 0: must be between 1 and 64"),
                          (["--rate", "1"], "--rate 1.0: must be below 1"),
                          (["--rate", "0"], "--rate 0.0: must be above 0"),
                          (["--rate", "nan"], "--rate nan: must be a finite number"),
                          (["--rate", "inf"], "--rate inf: must be a finite number"),
                          (["--batch-size", "0"], "--batch-size 0: must be at least 1")):
        assert Copy().run([*base, *args]) == 2
        assert capsys.readouterr().err == f"copy-test: error: {message}\n"
    assert Copy().run(["--help"]) == 0
    assert "--batch " not in capsys.readouterr().out  # aliases are hidden


def test_an_output_may_not_be_an_input_another_output_or_a_special_file(capsys, tmp_path):
    import os

    a = tmp_path / "a.csv"
    a.write_text("x")
    os.link(a, tmp_path / "hard.csv")
    (tmp_path / "link.csv").symlink_to(a)
    os.mkfifo(tmp_path / "fifo")
    cases = [
        ([str(a), "--out", str(a)], f"{a}: --out is the same file as SOURCE ({a}), an input"),
        ([str(a), "--out", str(tmp_path / "link.csv")], "--out is the same file as SOURCE"),
        ([str(a), "--out", str(tmp_path / "hard.csv")], "--out is the same file as SOURCE"),
        ([str(a), "--out", str(tmp_path / "b"), "--log", str(tmp_path / "b")], "--log is the same file as --out"),
        ([str(a), "--out", str(tmp_path / "fifo")], "--out is a FIFO, not a regular file"),
        ([str(a), "--out", "/dev/null"], "/dev/null: --out is a character device"),
    ]
    for args, message in cases:
        assert Copy().run(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("copy-test: error: ") and message in err and len(err.splitlines()) == 1, err
    assert a.read_text() == "x"
    assert Copy().run([str(a), "--out", "-"]) == 0  # stdout is never a clash


class Noisy(Tool):
    """Fails the way a damaged Zarr chunk did: asyncio logs the failed tasks, then the read raises."""

    name = "noisy-test"
    Options = EchoOptions

    def main(self, opts):
        import logging

        logging.getLogger("asyncio").error("Task exception was never retrieved\nTraceback (most recent call last):")
        raise InputError(f"{opts.path}: cannot read images rows 0..12: the store is damaged")


def test_asyncio_noise_stays_off_stderr_unless_verbose():
    """In a real process (pytest captures logging itself): one line, the asyncio log only with -v."""
    def run(*flags: str) -> subprocess.CompletedProcess:
        script = ("import sys; sys.path.insert(0, %r); from test_cli import Noisy; sys.exit(Noisy().run(%r))"
                  % (str(__import__("pathlib").Path(__file__).parent), ["img.zarr", *flags]))
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    quiet = run()
    assert quiet.returncode == 2
    assert quiet.stderr == "noisy-test: error: img.zarr: cannot read images rows 0..12: the store is damaged\n"
    loud = run("-v")
    assert loud.returncode == 2 and "Task exception was never retrieved" in loud.stderr


def test_an_error_from_a_worker_process_prints_the_workers_own_line(capsys):
    class Worker(Tool):
        name = "worker-test"
        Options = EchoOptions

        def main(self, opts):
            raise InputError("Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                             "call last):\n  File \"x.py\", line 1, in f\nldpo.common.errors.InputError: "
                             f"{opts.path}: the store is damaged")

    assert Worker().run(["img.zarr"]) == 2
    assert capsys.readouterr().err == "worker-test: error: img.zarr: the store is damaged\n"


@dataclass(kw_only=True)
class FolderOptions(CommonOptions):
    source: str = positional("a file", role="input")
    out: str = opt("a file to write", "", role="output")
    folder: str = opt("a folder to write files into", "", role="output-folder")


class Folder(Tool):
    name = "folder-test"
    Options = FolderOptions

    def main(self, opts):
        return 0


def test_a_file_output_is_never_an_existing_folder_and_a_folder_output_never_a_file(capsys, tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("x")
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    store = tmp_path / "f.zarr"
    store.mkdir()
    cases = [
        (["--out", str(runs)], f"{runs}: --out is an existing folder, not a file: give a file path"),
        (["--out", f"{runs}/"], f"{runs}/: --out is an existing folder, not a file: give a file path"),
        (["--out", str(tmp_path / "new") + "/"], "--out ends with '/' (a folder), but this output is a file"),
        (["--out", str(store)], "--out is an existing folder that is not an earlier ldpo Zarr store"),
        (["--folder", str(a)], f"{a}: --folder exists and is not a folder"),
        (["--folder", "/dev/null"], "/dev/null: --folder is a character device"),
    ]
    for args, message in cases:
        assert Folder().run([str(a), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("folder-test: error: ") and message in err and len(err.splitlines()) == 1, err
    assert (runs / "a").is_dir() and store.is_dir() and a.read_text() == "x"
    assert Folder().run([str(a), "--folder", str(runs), "--out", str(tmp_path / "b.csv")]) == 0
    assert Folder().run([str(a), "--folder", str(tmp_path / "new-folder") + "/"]) == 0
    assert Folder().outputs(Folder().parse([str(a), "--folder", str(runs)])) == [("--folder", str(runs))]


def test_the_traceback_hint_follows_the_exception_type_not_the_word(capsys):
    class Handled(Tool):
        name = "handled-test"
        Options = EchoOptions

        def main(self, opts):
            if opts.path == "value":
                raise ValueError("x.csv: unexpected column 'foo'")
            raise InputError("x.csv: unexpected end of file")

    for path in ("input", "value"):
        assert Handled().run([path]) == 2
        err = capsys.readouterr().err
        assert "unexpected" in err and "-v for the traceback" not in err, err
    assert Echo().run(["boom"]) == 2
    assert capsys.readouterr().err.endswith("(-v for the traceback)\n")


@dataclass(kw_only=True)
class PairOptions(CommonOptions):
    left: Optional[str] = opt("one half", None)
    right: Optional[str] = opt("the other half", None)


class Pair(Tool):
    name = "pair-test"
    Options = PairOptions
    together = (("left", "right"),)

    def main(self, opts):
        print(opts.left, opts.right)


def test_options_declared_together_are_refused_in_part(capsys):
    assert Pair().run([]) == 0 and Pair().run(["--left", "a", "--right", "b"]) == 0
    assert Pair().run(["--right", "b"]) == 2
    assert capsys.readouterr().err.endswith("pair-test: error: --left and --right go together\n")


def test_same_file_sees_through_spellings_and_links(tmp_path, monkeypatch):
    from ldpo.common.cli import same_file

    (tmp_path / "x.csv").write_text("id\n")
    (tmp_path / "y.csv").write_text("id\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "x.csv")
    monkeypatch.chdir(tmp_path)
    assert same_file("./x.csv", "x.csv") and same_file("link.csv", str(tmp_path / "x.csv"))
    assert not same_file("x.csv", "y.csv")
