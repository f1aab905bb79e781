"""The CLI base: common flags, help with an example, and the exit-status contract."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

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
