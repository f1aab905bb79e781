"""pipelines/ldpo-loop.sh against a careless user and a hostile work folder (issue 22, items 7, 8,
15, 20 and 25): what --fresh may delete, a missing or broken run record, paths no shell quoting
survives, two loops on one work folder, and a resume that must change nothing.

The loops here are tiny (3 classes x 4 images at 32 px, one iteration of one epoch): one finished
work folder is made per module and copied into each test, so most tests only resume or refuse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import loop_env

ROOT = Path(__file__).resolve().parents[1]
LOOP = ROOT / "pipelines/ldpo-loop.sh"
BIN = Path(sys.executable).parent
FAST = ["--input-size", "64", "--batch-size", "32", "--device", "cpu", "--split", "none"]
TINY = ["--k", 3, "--max-iter", 1, "--epochs", 1, *FAST]
LOCK = ".ldpo-loop.lock"


env = loop_env


def loop(*args, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(LOOP), *map(str, args)], env=env(**extra_env), capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The loop failed with exit 2 and said why in one line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ldpo-loop: error: "), proc.stderr[-3000:]
    return lines[0]


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under FOLDER and its bytes, less the lock file (it names the last run's process)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
            if p.name != LOCK}


@pytest.fixture(scope="module")
def finished(toy, tmp_path_factory):
    """A finished tiny loop and the arguments (less --work) that made it."""
    data = toy(classes=3, per_class=4, size=32)
    work = tmp_path_factory.mktemp("hostile-loop") / "work"
    args = ["--images", data / "images.h5", "--truth", data / "truth.csv", *TINY]
    loop("--work", work, *args)
    return work, args


def copy_of(finished, tmp_path: Path) -> tuple[Path, list]:
    """The finished work folder copied (times kept, so it resumes as itself), and its arguments."""
    work, args = finished
    shutil.copytree(work, tmp_path / "work", symlinks=True)
    return tmp_path / "work", ["--work", tmp_path / "work", *args]


def test_fresh_deletes_only_what_the_loop_wrote(finished, tmp_path):
    """Item 7: --fresh refuses a folder holding a file ldpo did not write (deleting nothing), keeps
    the user's files beside its own, and a stage that fails with exit 1 stops the loop with 2."""
    work, args = copy_of(finished, tmp_path)
    (work / "report/quarterly.docx").write_bytes(b"the user's")
    (work / "notes.txt").write_text("the user's")
    before = listing(work)
    line = one_error_line(loop(*args, "--fresh", check=False))
    assert str(work / "report/quarterly.docx") in line and "nothing was deleted" in line
    assert listing(work) == before
    # the same rule for what --restart-from and a tree-only change delete
    (work / "iter-01/notes.txt").write_text("the user's")
    line = one_error_line(loop(*args, "--k", 2, "--restart-from", "iter-1", check=False))
    assert str(work / "iter-01/notes.txt") in line
    (work / "final/tree/mine.png").write_bytes(b"the user's")
    line = one_error_line(loop(*args, "--tree-preference", 0.9, check=False))
    assert str(work / "final/tree/mine.png") in line
    assert listing(work) == {**before, "iter-01/notes.txt": b"the user's", "final/tree/mine.png": b"the user's"}
    for mine in ("report/quarterly.docx", "iter-01/notes.txt", "final/tree/mine.png"):
        (work / mine).unlink()
    # --fresh now deletes the loop's results; featurize then fails with exit 1: the loop exits 2
    line = one_error_line(loop(*args, "--fresh", check=False, FEATURIZE_CMD="false"))
    assert "featurize" in line and "exit status 1" in line
    assert (work / "notes.txt").read_text() == "the user's"
    left = {p.name for p in work.iterdir()}
    assert not left & {"iter-01", "final", "report", "history.csv", "history.png"}, left


def test_a_stage_failing_with_exit_1_stops_the_loop_with_2(toy, tmp_path):
    """Item 7: exit 1 means "not converged" to a caller; a failed stage is 2, whatever it returned."""
    data = toy(classes=3, per_class=4, size=32)
    proc = loop("--images", data / "images.h5", "--work", tmp_path / "w", *TINY, check=False,
                CLUSTER_CMD="false")
    line = one_error_line(proc)
    assert "cluster" in line and "exit status 1" in line


def test_a_work_folder_without_a_valid_run_record_is_refused(finished, tmp_path):
    """Item 8 (and item 21's loop half): iterations without a record, or with an unreadable one,
    are not resumed under whatever settings this run has; --fresh and --restart-from still work."""
    work, args = copy_of(finished, tmp_path)
    labels = (work / "final/labels.csv").read_bytes()
    (work / "run.json").unlink()
    for extra in ([], ["--k", 2]):
        line = one_error_line(loop(*args, *extra, check=False))
        assert str(work / "run.json") in line and "--fresh" in line and "--restart-from" in line
    assert not (work / "run.json").exists() and (work / "final/labels.csv").read_bytes() == labels
    for text, says in (("", "not valid JSON (empty file)"), ('{"settings": {"k": "3"', "not valid JSON ("),
                       ("[1, 2]", "not a run record"), ('{"settings": []}', "not a run record")):
        (work / "run.json").write_text(text)
        line = one_error_line(loop(*args, check=False))
        assert f"{work / 'run.json'}: {says}" in line, line
        assert "->" not in line  # not printed as a "difference" of settings
    assert (work / "final/labels.csv").read_bytes() == labels
    # --restart-from is accepted without a valid record: iteration 1 is recomputed (finetune
    # swapped for one that fails at once, to keep this test fast), and the new record is written
    proc = loop(*args, "--restart-from", "iter-1", check=False, FINETUNE_CMD="false")
    line = one_error_line(proc)
    assert "finetune" in line and not (work / "final").exists()
    assert json.loads((work / "run.json").read_text())["commands"]["finetune_cmd"] == "false"


def test_paths_with_tab_newline_quote_and_backslash(toy, tmp_path):
    """Item 15: the run record is JSON whatever the paths hold; the loop, its report and reruns work."""
    data = toy(classes=3, per_class=4, size=32)
    weird = tmp_path / 'a\ttab "quoted"\\back\nnewline'
    weird.mkdir()
    for name in ("images.h5", "truth.csv"):
        shutil.copy(data / name, weird / name)
    work = weird / "work"
    args = ["--images", weird / "images.h5", "--work", work, "--truth", weird / "truth.csv", "--k", 3,
            "--max-iter", 0, *FAST]
    loop(*args)
    record = json.loads((work / "run.json").read_text(encoding="utf-8"))
    assert record["settings"]["images"] == str(weird / "images.h5")
    assert record["settings"]["truth"] == str(weird / "truth.csv")
    assert (work / "report/index.html").is_file()
    loop(*args)  # the same record: resumes
    line = one_error_line(loop(*args, "--k", 2, check=False))
    assert 'k: "3" -> "2"' in line


SLOW = '''
import sys, time
from pathlib import Path
folder = Path(sys.argv[1])
(folder / "started").touch()
for _ in range(600):
    if (folder / "release").exists():
        break
    time.sleep(0.1)
sys.exit(1)
'''


def test_a_second_loop_on_the_same_work_folder_is_refused(toy, tmp_path):
    """Item 20: the first loop holds a lock on WORK; the second says who holds it; a killed
    holder's lock does not block the next run."""
    data = toy(classes=3, per_class=4, size=32)
    (tmp_path / "slow.py").write_text(SLOW)
    slow = f"{sys.executable} {tmp_path / 'slow.py'} {tmp_path}"
    args = ["--images", data / "images.h5", "--work", tmp_path / "w", *TINY]
    first = subprocess.Popen(["bash", str(LOOP), *map(str, args)], env=env(FEATURIZE_CMD=slow),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            if (tmp_path / "started").exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "started").exists(), "the first loop never reached featurize"
        line = one_error_line(loop(*args, check=False, FEATURIZE_CMD=slow))
        assert str(tmp_path / "w") in line and f"pid {first.pid}" in line
        # the second loop touched nothing: the first still owns its record and its iteration
        assert (tmp_path / "w/run.json").is_file()
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the loop and its stage, as a crash would
        first.wait()
    (tmp_path / "release").touch()  # the stage now fails at once
    line = one_error_line(loop(*args, check=False, FEATURIZE_CMD=slow))
    assert "featurize" in line and "pid" not in line  # the dead holder's lock was released


def test_a_pure_resume_leaves_history_as_it_was(finished, tmp_path):
    """Item 25: rerunning a finished loop with its settings changes no byte of history.csv."""
    work, args = copy_of(finished, tmp_path)
    time.sleep(1.1)  # history.csv's timestamps have whole seconds
    before = listing(work)
    loop(*args)
    assert listing(work) == before


def test_forget_deletes_the_loops_files_and_never_follows_a_link(tmp_path):
    """What --fresh and --restart-from delete, without a loop: every name the loop and its stages
    write (temporaries of interrupted writes included), links removed but never followed, the
    history's rows before the restart kept."""
    from ldpo.common.errors import InputError
    from ldpo.common.loop.workdir import forget

    work = tmp_path / "work"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.csv").write_text("keep")
    files = ["iter-00/labels.csv", "iter-00/clusters.csv", "iter-00/clusters.png", "iter-00/converge.txt",
             "iter-00/.labels.tmp-1a2b3c4d.csv", "iter-00/features.h5/.zgroup", "iter-01/model.pt",
             "iter-01/model.pt.partial", "iter-01/model.metrics.json", "iter-01/metrics.json", "iter-01/encoded.h5",
             "iter-01/labels.csv", "iter-01/converge.txt", "final/labels.csv", "final/consensus.txt", "final/model.pt", "final/probs.h5",
             "final/levels.txt", "final/tree/tree.json", "final/tree/levels.csv", "final/tree/tree.png",
             "final/keywords/index.html", "final/keywords/keywords.csv", "final/keywords/montage-3.png",
             "report/index.html", "report/thumbs/0-t0.png", "report/history.png", "report/tree.png",
             ".report.tmp-0badf00d/index.html", "history.png", "run.json", LOCK, "notes.txt"]
    for name in files:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("x")
    (work / "history.csv").write_text("iteration,k\n0,3\n1,3\n")
    (work / "iter-01/features.h5").symlink_to(outside / "precious.csv")
    forget(work, "1", "--restart-from iter-1")
    assert sorted(p.name for p in work.iterdir()) == sorted([LOCK, "history.csv", "iter-00", "notes.txt", "run.json"])
    assert not (work / "iter-00/converge.txt").exists() and (work / "iter-00/labels.csv").exists()
    assert (work / "history.csv").read_text() == "iteration,k\n0,3\n"
    (work / "final").mkdir()
    (work / "final/tree").symlink_to(outside, target_is_directory=True)  # a link where the loop makes a folder
    with pytest.raises(InputError, match="final/tree: ldpo did not write this file"):
        forget(work, "0", "--fresh")
    assert (work / "iter-00/labels.csv").exists()  # refused: nothing deleted
    (work / "final/tree").unlink()
    forget(work, "0", "--fresh")
    assert sorted(p.name for p in work.iterdir()) == [LOCK, "notes.txt", "run.json"]
    assert (outside / "precious.csv").read_text() == "keep"


def test_record_differences_are_named_by_kind():
    from ldpo.common.loop.workdir import difference

    old = {"format": "ldpo-run-1", "settings": {"images": "/a.h5", "k": "3", "tree_preference": "0.5"},
           "inputs": {"images_sha256": "ab"}}
    assert difference(old, old) == ("", "")
    assert difference(old, {**old, "settings": {**old["settings"], "tree_preference": "0.9"}}) == \
        ("tree", 'tree_preference: "0.5" -> "0.9"')
    both = {**old["settings"], "k": "2", "tree_preference": "0.9"}
    assert difference(old, {**old, "settings": both})[0] == "settings"
    assert difference(old, {**old, "inputs": {"images_sha256": "cd"}})[0] == "inputs"
    newer = {**old, "settings": {**old["settings"], "tree_affinity": "lift"}}  # a record from before a setting
    assert difference(old, newer) == ("tree", 'tree_affinity: (none) -> "lift"')
    assert difference(old, {**old, "settings": {**old["settings"], "images": "/x\n\t.h5"}})[1] == \
        r'images: "/a.h5" -> "/x\n\t.h5"'
