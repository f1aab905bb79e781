"""The loop's bookkeeping without running a loop (ldpo.common.loop.workdir, loop_options, loop_plan,
history): options and their LDPO_* defaults, what each stage is passed, the run record, the
resume/restart/fresh decisions, the verdict, the final model and labels, the summary. One test
runs the real loop with every stage swapped for a stub that records its command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.loop import loop_plan, workdir
from ldpo.common.errors import InputError
from ldpo.common.files.history import COLUMNS, keep_before, read_history, summary, write_history
from ldpo.common.loop.loop_options import help_text, parse
from ldpo.common.loop.workdir import Layout

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("LDPO_") or v.endswith(("_CMD", "_ARGS"))]:
        monkeypatch.delenv(var)
    (tmp_path / "images.h5").write_bytes(b"images")
    (tmp_path / "truth.csv").write_text("id,label\na,0\n")
    return tmp_path


def opts(inputs: Path, *extra: str, env: dict | None = None):
    return parse(["--images", str(inputs / "images.h5"), "--work", str(inputs / "w"), *extra], env or {})


def test_options_take_environment_defaults_and_the_command_line_wins(inputs):
    parsed = opts(inputs, "--epochs", "4", env={"LDPO_EPOCHS": "2", "LDPO_K": "7", "LDPO_BALANCED": "1"})
    assert parsed.opts.epochs == 4 and parsed.opts.k == "7" and parsed.opts.balanced
    assert {"epochs", "k", "balanced"} <= parsed.given and "threshold" not in parsed.given


@pytest.mark.parametrize("args, says", [
    (["--k"], "--k needs a value (see --help)"),
    (["--bogus"], "unknown option --bogus (see --help)"),
    (["--k", "x"], "--k x: a whole number >= 1, or auto"),
    (["--k", "0"], "--k 0: a whole number >= 1, or auto"),
    (["--max-iter", "-1"], "--max-iter -1: not a whole number"),
    (["--encode", "pca"], "--encode pca: one of none, fv, vlad, avg, max, patches"),
    (["--tree-affinity", "nearest"], "--tree-affinity nearest: one of lift, confusion, centroids, reports"),
    (["--tree-preference", "2"], "--tree-preference 2: a quantile between 0 and 1"),
    (["--tree-affinity", "reports"], "--tree-affinity reports needs --reports and --manifest"),
    (["--normalize", "x"], "--normalize x: imagenet, zscore or timm"),
    (["--restart-from", "2"], "--restart-from 2: use iter-N, e.g. iter-2"),
    (["--truth", "/no/such.csv"], "/no/such.csv: no such truth file"),
])
def test_bad_options_are_one_line(inputs, args, says):
    with pytest.raises(InputError) as err:
        opts(inputs, *args)
    assert str(err.value) == says


def test_help_comes_from_the_declarations():
    text = help_text()
    assert "--restart-from" in text and "[LDPO_MAX_ITER]" in text and "(default: auto)" in text
    assert "--encode {none,fv,vlad,avg,max,patches}" in text


def test_stages_get_only_what_the_user_set(inputs):
    layout = Layout(str(inputs / "w"))
    plan = loop_plan.iteration(opts(inputs), layout, 0)
    featurize = plan["featurize"]
    assert featurize[:2] == ["ldpo", "featurize"] and "--layer" in featurize and "multiscale" in featurize
    for flag in ("--batch-size", "--epochs", "--input-filter", "--seed", "--device", "--arch"):
        assert flag not in featurize
    assert plan["cluster"][plan["cluster"].index("--k") + 1] == "auto"  # the loop's k, not cluster's 100
    assert "--size-prior" not in plan["cluster"]  # iteration 0: cluster's own (the graph's communities)
    assert plan["cluster"][plan["cluster"].index("--method") + 1] == "scan"
    assert plan["finetune"] == [] and plan["encode"] == []
    converge = loop_plan.converge(opts(inputs), layout, 0)
    assert "--metric" not in converge and "--threshold" not in converge and "--prev" not in converge
    set_ = opts(inputs, "--batch-size", "16", "--input-filter", "sobel", "--seed", "3", "--threshold", "0.8")
    featurize = loop_plan.iteration(set_, layout, 0)["featurize"]
    assert featurize[featurize.index("--batch-size") + 1] == "16" and "sobel" in featurize and "3" in featurize
    words = loop_plan.converge(set_, layout, 0)
    assert words[words.index("--threshold") + 1] == "0.8"


def test_finetune_from_init_then_from_checkpoints(inputs):
    layout = Layout(str(inputs / "w"))
    parsed = opts(inputs, "--input-filter", "sobel", "--input-size", "48", "--lr", "0.02", "--balanced")
    first = loop_plan.iteration(parsed, layout, 1)
    tune = first["finetune"]
    assert tune[2:4] == [str(inputs / "images.h5"), layout.iteration(0, "labels.csv")]
    assert tune[tune.index("--init") + 1] == "random" and "--input-filter" in tune and "--new-head" not in tune
    assert {"--resume", "--balanced", "--lr"} <= set(tune)
    assert first["featurize"][first["featurize"].index("--init") + 1] == "checkpoint:" + layout.iteration(1, "model.pt")
    assert "--input-size" not in first["featurize"] and "--input-filter" not in first["featurize"]  # the checkpoint's
    second = loop_plan.iteration(parsed, layout, 2)["finetune"]
    assert second[second.index("--init") + 1] == "checkpoint:" + layout.iteration(1, "model.pt")
    assert "--new-head" in second and "--input-filter" not in second and "--input-size" in second


def test_encode_methods_and_patches(inputs):
    layout = Layout(str(inputs / "w"))
    vlad = loop_plan.iteration(opts(inputs, "--encode", "vlad"), layout, 1)
    assert vlad["encode"][2:] == [vlad["features"], "--out", vlad["encoded"], "--method", "vlad"]
    assert vlad["cluster"][2] == vlad["encoded"] and "local" in vlad["featurize"]
    patches = opts(inputs, "--encode", "patches", "--init", "weights:" + str(inputs / "images.h5"))
    zero = loop_plan.iteration(patches, layout, 0)
    assert zero["featurize"] == []
    assert zero["encode"][2:] == [str(inputs / "images.h5"), "--out", zero["encoded"], "--method", "patches",
                                  "--model", "weights:" + str(inputs / "images.h5")]  # no labels at iteration 0
    one = loop_plan.iteration(patches, layout, 1)
    assert one["encode"][-4:] == ["--model", "checkpoint:" + layout.iteration(1, "model.pt"),
                                  "--labels", layout.iteration(0, "labels.csv")]


def test_neighbour_consistency_mines_where_the_labels_were_clustered(inputs):
    layout = Layout(str(inputs / "w"))
    assert "--neighbours" not in loop_plan.iteration(opts(inputs), layout, 1)["finetune"]  # off by default
    tune = loop_plan.iteration(opts(inputs, "--neighbour-weight", "0.5"), layout, 2)["finetune"]
    assert tune[tune.index("--neighbours") + 1] == layout.iteration(1, "features.h5")
    assert tune[tune.index("--neighbour-weight") + 1] == "0.5"
    vlad = loop_plan.iteration(opts(inputs, "--neighbour-weight", "1", "--encode", "vlad"), layout, 1)["finetune"]
    assert vlad[vlad.index("--neighbours") + 1] == layout.iteration(0, "encoded.h5")
    given = opts(inputs, "--neighbour-weight", "1", "--init-labels", str(inputs / "truth.csv"))
    assert "--neighbours" not in loop_plan.iteration(given, layout, 1)["finetune"]  # iteration 0 has no features
    assert "--neighbours" in loop_plan.iteration(given, layout, 2)["finetune"]
    record = workdir.build_record(opts(inputs), {}).as_dict()
    older = json.loads(json.dumps(record))
    del older["settings"]["neighbour_weight"]  # a record from before the option resumes as the same run
    assert workdir.difference(older, record) == ("", "")
    assert workdir.build_record(opts(inputs, "--neighbour-weight", "1"), {}).settings["neighbour_weight"] == "1"


def test_patience_goes_to_converge_and_an_older_record_stopped_at_the_first_agreement(inputs):
    layout = Layout(str(inputs / "w"))
    words = loop_plan.converge(opts(inputs), layout, 2)
    assert words[words.index("--patience") + 1] == "2"  # the loop's default, not converge's 1
    words = loop_plan.converge(opts(inputs, "--patience", "1"), layout, 2)
    assert words[words.index("--patience") + 1] == "1"
    record = workdir.build_record(opts(inputs), {}).as_dict()
    older = json.loads(json.dumps(record))
    del older["settings"]["patience"]  # recorded before the option: the loop stopped at the first agreement
    assert workdir.difference(older, record) == ("settings", 'patience: "1" -> "2"')
    assert workdir.difference(older, workdir.build_record(opts(inputs, "--patience", "1"), {}).as_dict()) == ("", "")


def test_initial_labels_stand_for_iteration_0(inputs):
    plan = loop_plan.iteration(opts(inputs, "--init-labels", str(inputs / "truth.csv")), Layout("w"), 0)
    assert plan["featurize"] == plan["encode"] == plan["cluster"] == []


def test_swapped_commands_and_extra_arguments(inputs, monkeypatch):
    monkeypatch.setenv("CLUSTER_CMD", "python3 my_cluster.py")
    monkeypatch.setenv("CLUSTER_ARGS", "--lam 1e-5")
    monkeypatch.setenv("LDPO_BIN", "/opt/ldpo")
    plan = loop_plan.iteration(opts(inputs), Layout("w"), 0)
    assert plan["cluster"][:2] == ["python3", "my_cluster.py"] and plan["cluster"][-2:] == ["--lam", "1e-5"]
    assert plan["featurize"][:2] == ["/opt/ldpo", "featurize"]


def test_the_record_holds_strings_and_the_one_checksum(inputs, monkeypatch):
    from ldpo.common.files.stores import file_checksum

    store = inputs / "images.zarr"
    (store / "images").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    (store / "images" / "c0").write_bytes(b"chunk")
    parsed = parse(["--images", str(store), "--work", str(inputs / "w"), "--k", "3", "--epochs", "2"], {})
    record = workdir.build_record(parsed, {})
    assert record.settings["k"] == "3" and record.settings["epochs"] == "2" and record.settings["lr"] == ""
    assert record.settings["images"] == os.path.realpath(store) and record.settings["max_iter"] == "6"
    assert record.inputs["images_sha256"] == file_checksum(store)  # a Zarr folder: the stores' function
    data = json.loads(record.text())
    assert data["format"] == workdir.RUN_FORMAT and data["ldpo_version"]
    assert all(isinstance(v, str) for section in ("settings", "commands", "inputs") for v in data[section].values())


def test_unset_settings_are_recorded_as_the_stages_declare_them(inputs):
    from ldpo.stages import stage_default

    parsed = opts(inputs, "--k", "3")
    parsed.defaults = stage_default
    settings = workdir.build_record(parsed, {}).settings
    assert (settings["epochs"], settings["split"], settings["batch_size"]) == ("3", "70/10/20", "64")
    assert (settings["metric"], settings["threshold"]) == ("nmi", "0.9")
    assert (settings["tree_affinity"], settings["tree_preference"]) == ("lift", "0.5")
    assert settings["arch"] == settings["lr"] == settings["input_filter"] == ""  # decided from the init
    assert "--epochs" not in loop_plan.iteration(parsed, Layout("w"), 1)["finetune"]  # and not passed


def test_a_record_of_the_older_format_resumes_as_the_same(inputs):
    from ldpo.stages import stage_default

    parsed = opts(inputs, "--k", "3")
    parsed.defaults = stage_default
    new = workdir.build_record(parsed, {}).as_dict()
    old = json.loads(json.dumps(new))
    old["format"] = "ldpo-run-1"
    old.pop("ldpo_version")
    old["settings"]["input_filter"] = "none"  # what ldpo-run-1 loops recorded for no --input-filter
    assert workdir.difference(workdir.upgrade(old), new) == ("", "")
    old["settings"]["epochs"] = "5"
    assert workdir.difference(workdir.upgrade(old), new) == ("settings", 'epochs: "5" -> "3"')
    assert workdir.difference({**new, "ldpo_version": "0.0.1"}, new) == ("", "")  # the version is not a setting


def finished(inputs: Path, parsed) -> Path:
    """A work folder as a finished one-iteration loop leaves it (files only)."""
    work = Path(parsed.opts.work)
    work.mkdir()
    workdir.begin(parsed, {})
    for name in ("iter-00/labels.csv", "iter-00/converge.txt", "iter-01/model.pt", "iter-01/labels.csv",
                 "iter-01/converge.txt"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("converged=0\n" if name.endswith(".txt") else name)
    write_history(work / "history.csv", [{"iteration": "0", "k": "3"}, {"iteration": "1", "k": "3"}])
    return work


def test_begin_resumes_refuses_restarts_and_starts_fresh(inputs):
    parsed = opts(inputs, "--k", "3")
    work = finished(inputs, parsed)
    record = (work / "run.json").read_bytes()
    workdir.begin(parsed, {})  # the same settings: the record stays as it was
    assert (work / "run.json").read_bytes() == record
    with pytest.raises(InputError, match=r'other settings or inputs \(k: "3" -> "2"\)'):
        workdir.begin(opts(inputs, "--k", "2"), {})
    workdir.begin(opts(inputs, "--k", "3", "--tree-preference", "0.9"), {})  # the tree alone: kept iterations
    assert (work / "iter-01/model.pt").exists()
    assert json.loads((work / "run.json").read_text())["settings"]["tree_preference"] == "0.9"
    workdir.begin(opts(inputs, "--k", "2", "--tree-preference", "0.9", "--restart-from", "iter-1"), {})
    assert not (work / "iter-01").exists() and (work / "iter-00/labels.csv").exists()
    assert [r["iteration"] for r in read_history(work / "history.csv")] == ["0"]
    with pytest.raises(InputError, match="iter-01 has no labels.csv to start from"):
        workdir.begin(opts(inputs, "--k", "2", "--tree-preference", "0.9", "--restart-from", "iter-2"), {})
    workdir.begin(opts(inputs, "--fresh"), {})
    assert sorted(p.name for p in work.iterdir()) == ["run.json"]


def test_begin_refuses_iterations_without_a_record(inputs):
    parsed = opts(inputs)
    work = finished(inputs, parsed)
    (work / "run.json").unlink()
    with pytest.raises(InputError, match="missing, and .* holds iterations made with unknown settings"):
        workdir.begin(parsed, {})
    (work / "run.json").write_text("[1]")
    with pytest.raises(InputError, match="not a run record .*the settings of this work folder are unknown"):
        workdir.begin(parsed, {})


def test_a_recorded_verdict_stands_only_while_newer_than_what_it_compared(inputs):
    parsed = opts(inputs)
    work = finished(inputs, parsed)
    layout = Layout(str(work))
    for t in (0, 1):
        os.utime(layout.iteration(t, "labels.csv"), ns=(10**18, 10**18))
        os.utime(layout.iteration(t, "converge.txt"), ns=(2 * 10**18, 2 * 10**18))
    Path(layout.iteration(1, "converge.txt")).write_text("k=3\nconverged=1\n")
    os.utime(layout.iteration(1, "converge.txt"), ns=(2 * 10**18, 2 * 10**18))
    assert workdir.recorded_verdict(layout, 1) == "1"
    os.utime(layout.iteration(0, "labels.csv"), ns=(3 * 10**18, 3 * 10**18))  # the previous labels changed
    assert workdir.recorded_verdict(layout, 1) is None
    write_history(work / "history.csv", [{"iteration": "1"}])
    assert workdir.recorded_verdict(layout, 0) is None  # no history row of iteration 0
    Path(layout.iteration(1, "converge.txt")).write_text("Traceback\n")
    with pytest.raises(InputError, match="printed no converged=0|1 verdict \\(exit status 1\\)"):
        workdir.verdict(layout, 1, 1)
    with pytest.raises(InputError, match="converge failed with exit status 2 at iteration 1"):
        workdir.verdict(layout, 1, 2)


def test_the_final_model_and_labels(inputs):
    parsed = opts(inputs, "--k", "3")  # K given: the last model's labels (with --k auto, the consensus: below)
    work = finished(inputs, parsed)
    layout = Layout(str(work))
    workdir.make_final(layout, 1)
    assert (work / "final/labels.csv").read_text() == "iter-00/labels.csv"  # what the final model learned
    assert (work / "final/model.pt").read_text() == "iter-01/model.pt"
    assert workdir.final_model(work) == work / "final/model.pt" and workdir.final_labels_iteration(1) == 0
    assert workdir.final_labels_iteration(0) == 0 and workdir.final_labels_iteration(5) == 4
    text = workdir.summary_text(layout, 1)
    assert text.splitlines()[2].startswith("0*") and "iteration 0's clustering" in text


def test_history_schema_summary_and_trimming(tmp_path):
    path = tmp_path / "history.csv"
    write_history(path, [{"iteration": "0", "k": "4", "purity_truth": "0.5"},
                         {"iteration": "1", "k": "4", "top1": "0.25", "nmi_prev": "0.9"}])
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    lines = summary(read_history(path), 0).splitlines()
    assert lines[2].split() == ["0*", "4", "-", "-", "-", "-", "0.500"]
    assert lines[3].split() == ["1", "4", "0.250", "0.900", "-", "-", "-"]
    keep_before(path, 1)
    assert [r["iteration"] for r in read_history(path)] == ["0"]
    keep_before(path, 0)
    assert not path.exists()


STUB = '''
import json, shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open(sys.argv[0] + ".log", "a") as log:
    log.write(json.dumps(args) + "\\n")
if "--out" in args:
    out = Path(args[args.index("--out") + 1])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        shutil.copyfile(sys.argv[0] + ".labels", out)
    elif out.suffix:
        out.write_bytes(b"stub")
'''


def test_the_loop_passes_patches_encode_the_model_and_the_previous_labels(tmp_path):
    """--encode patches through pipelines/ldpo-loop.sh, every stage a stub recording its command line."""
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    (tmp_path / "stub.py.labels").write_text("id,label\na,0\nb,1\nc,0\n")
    (tmp_path / "images.h5").write_bytes(b"images")
    command = f"{sys.executable} {stub}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDPO_")}
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", LDPO_QUIET="1", FEATURIZE_CMD=command, FINETUNE_CMD=command,
               ENCODE_CMD=command, CLUSTER_CMD=command, HIERARCHY_CMD=command, REPORT_CMD="true")
    work = tmp_path / "w"
    proc = subprocess.run(["bash", str(ROOT / "pipelines/ldpo-loop.sh"), "--images", str(tmp_path / "images.h5"),
                           "--work", str(work), "--encode", "patches", "--max-iter", "2", "--no-early-stop"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in (tmp_path / "stub.py.log").read_text().splitlines()]
    encodes = [c for c in calls if "--method" in c and "patches" in c]
    images = str(tmp_path / "images.h5")
    assert encodes[0] == [images, "--out", f"{work}/iter-00/encoded.h5", "--method", "patches", "--model", "random",
                          "--quiet"]  # (LDPO_QUIET)
    for t in (1, 2):
        assert encodes[t] == [images, "--out", f"{work}/iter-0{t}/encoded.h5", "--method", "patches", "--model",
                              f"checkpoint:{work}/iter-0{t}/model.pt", "--labels", f"{work}/iter-0{t - 1}/labels.csv",
                              "--quiet"]
    assert not [c for c in calls if "--layer" in c and "probs" not in c]  # nothing featurized for clustering
    assert [r["iteration"] for r in read_history(work / "history.csv")] == ["0", "1", "2"]
    assert "2 " in proc.stdout and (work / "final/model.pt").read_bytes() == b"stub"


def test_vocabulary_and_mentions_reach_the_report_readers_and_the_record(inputs):
    from ldpo.stages import stage_default

    (inputs / "reports.csv").write_text("report_id,text\n")
    (inputs / "manifest.csv").write_text("id\n")
    (inputs / "vocab.txt").write_text("nodule\n")
    base = ["--reports", str(inputs / "reports.csv"), "--manifest", str(inputs / "manifest.csv"),
            "--tree-affinity", "reports"]
    plain = opts(inputs, *base)
    plain.defaults = stage_default
    final = loop_plan.final(plain, Layout(str(inputs / "w")), 2)
    assert all(isinstance(w, str) for stage in ("keywords", "hierarchy") for w in final[stage])
    assert "--vocabulary" not in final["keywords"] and "--mentions" not in final["hierarchy"]
    given = opts(inputs, *base, "--vocabulary", str(inputs / "vocab.txt"), "--mentions", "all")
    given.defaults = stage_default
    final = loop_plan.final(given, Layout(str(inputs / "w")), 2)
    for stage in ("keywords", "hierarchy"):
        words = final[stage]
        assert all(isinstance(w, str) for w in words), words  # one word per argument
        assert words[words.index("--vocabulary") + 1] == str(inputs / "vocab.txt")
        assert words[words.index("--mentions") + 1] == "all"
    new = workdir.build_record(plain, {}).as_dict()
    assert new["settings"]["mentions"] == "affirmed" and new["settings"]["vocabulary"] == ""
    older = json.loads(json.dumps(new))  # a record written before these settings existed resumes as the same
    for section, key in (("settings", "vocabulary"), ("settings", "mentions"), ("inputs", "vocabulary_sha256")):
        older[section].pop(key)
    assert workdir.difference(older, new) == ("", "")
    other = workdir.build_record(given, {}).as_dict()
    kind, shown = workdir.difference(new, other)
    assert kind == "inputs" and "mentions" in shown and "vocabulary" in shown


def test_the_loop_keeps_the_labels_the_last_model_was_trained_on_by_default_when_k_is_given(inputs):
    """--keep auto (the default) with K given is --keep last (as is a record made before --keep): the last
    model's labels, whatever the held-out figures say; the summary says so and lists the figures."""
    parsed = opts(inputs, "--k", "3")
    work = finished(inputs, parsed)
    for name in ("iter-02/model.pt", "iter-02/labels.csv", "iter-03/model.pt", "iter-03/labels.csv"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(name)
    write_history(work / "history.csv", [{"iteration": "0", "k": "3", "heldout": "0.80", "heldout_se": "0.05"},
                                         {"iteration": "1", "k": "3", "heldout": "0.60", "heldout_se": "0.05"},
                                         {"iteration": "2", "k": "3", "heldout": "0.50", "heldout_se": "0.05"},
                                         {"iteration": "3", "k": "3"}])
    layout = Layout(str(work))
    assert json.loads((work / "run.json").read_text())["settings"]["keep"] == "auto"
    assert workdir.keep_rule(workdir.read_record(layout.record)) == "last"
    assert workdir.final_labels_iteration(3, layout) == 2
    workdir.make_final(layout, 3)
    assert (work / "final/labels.csv").read_text() == "iter-02/labels.csv"
    assert (work / "final/model.pt").read_text() == "iter-03/model.pt"
    text = workdir.summary_text(layout, 3)
    assert "--keep last" in text and "0: 0.800, 1: 0.600, 2: 0.500" in text
    record = json.loads((work / "run.json").read_text())
    del record["settings"]["keep"]  # a record from before --keep: the same rule
    record["settings"]["k"] = "auto"  # ... whatever its K
    (work / "run.json").write_text(json.dumps(record))
    assert workdir.keep_rule(workdir.read_record(layout.record)) == "last"
    assert workdir.final_labels_iteration(3, layout) == 2


@pytest.mark.parametrize("keep, k, rule", [("auto", "auto", "consensus"), ("auto", "12", "last"),
                                           ("last", "auto", "last"), ("heldout", "auto", "heldout"),
                                           ("consensus", "12", "consensus")])
def test_keep_auto_is_the_consensus_where_k_is_chosen_from_the_data(keep, k, rule):
    assert workdir.keep_rule({"settings": {"keep": keep, "k": k}}) == rule


def test_the_loop_keeps_the_labels_held_out_images_agree_with_best(inputs):
    """--keep heldout: three fine-tuned iterations whose labels held-out images agree with less and less: the
    loop keeps iteration 0's labels and iteration 1's model (trained on them), and says why; a drop within one
    standard error keeps the later labels, as does a history without held-out figures."""
    parsed = opts(inputs, "--keep", "heldout")
    work = finished(inputs, parsed)
    for name in ("iter-02/model.pt", "iter-02/labels.csv", "iter-03/model.pt", "iter-03/labels.csv"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(name)
    rows = [{"iteration": "0", "k": "3", "heldout": "0.80", "heldout_se": "0.05"},
            {"iteration": "1", "k": "3", "heldout": "0.60", "heldout_se": "0.05"},
            {"iteration": "2", "k": "3", "heldout": "0.50", "heldout_se": "0.05"},
            {"iteration": "3", "k": "3"}]
    write_history(work / "history.csv", rows)
    layout = Layout(str(work))
    assert workdir.final_labels_iteration(3, layout) == 0
    workdir.make_final(layout, 3)
    assert (work / "final/labels.csv").read_text() == "iter-00/labels.csv"
    assert (work / "final/model.pt").read_text() == "iter-01/model.pt"
    text = workdir.summary_text(layout, 3)
    assert text.splitlines()[2].startswith("0*") and "held-out agreement" in text and "best 0.800" in text
    rows[1]["heldout"] = "0.76"  # within one standard error of the best: the later labels win
    write_history(work / "history.csv", rows)
    assert workdir.final_labels_iteration(3, layout) == 1
    write_history(work / "history.csv", [{k: v for k, v in r.items() if not k.startswith("heldout")} for r in rows])
    assert workdir.final_labels_iteration(3, layout) == 2


@pytest.mark.parametrize("keep", [("--keep", "consensus"), ()], ids=["consensus", "default-k-auto"])
def test_keep_consensus_writes_the_consensus_of_every_clustering_numbered_as_the_last_models_classes(inputs, keep):
    """--keep consensus, and the default with K not given: final/labels.csv is the consensus of iterations 0..3's clusterings (here three agree
    on a partition that iteration 2's, the one the last model was trained on, breaks for two images), in the
    classes and numbers of iteration 2's labels; the model is the last one; the summary and consensus.txt say
    so; --fresh may delete consensus.txt (the loop's own file)."""
    from ldpo.common.files.labels import read_labels, write_labels

    parsed = opts(inputs, *keep)
    work = finished(inputs, parsed)
    ids = [f"img{i}" for i in range(9)]
    partition = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for t, (numbers, broken) in enumerate([((0, 1, 2), False), ((2, 0, 1), False), ((5, 3, 4), True),
                                           ((1, 2, 0), False)]):
        labels = [numbers[c] for c in partition]
        if broken:
            labels[0], labels[3] = labels[3], labels[0]
        (work / f"iter-{t:02d}").mkdir(exist_ok=True)
        write_labels(work / f"iter-{t:02d}/labels.csv", ids, labels)
        if t:
            (work / f"iter-{t:02d}/model.pt").write_text(f"iter-{t:02d}/model.pt")
    write_history(work / "history.csv", [{"iteration": str(t), "k": "3"} for t in range(4)])
    layout = Layout(str(work))
    assert workdir.final_labels_iteration(3, layout) == 2
    workdir.make_final(layout, 3)
    final = read_labels(work / "final/labels.csv")
    assert final.ids == ids and final.labels.tolist() == [5, 5, 5, 3, 3, 3, 4, 4, 4]
    assert (work / "final/model.pt").read_text() == "iter-03/model.pt"
    said = (work / "final/consensus.txt").read_text()
    assert "consensus of 4 clusterings" in said and "22.2% of the images differ" in said
    text = workdir.summary_text(layout, 3)
    assert "final/labels.csv is the consensus of 4 clusterings" in text and "--keep consensus" in text
    assert text.splitlines()[4].startswith("2*")
    workdir.begin(opts(inputs, "--keep", "consensus", "--fresh"), {})
    assert not (work / "final").exists()


def test_heldout_agreement_is_chance_corrected():
    import numpy as np

    from ldpo.common.loop.keep import heldout_agreement

    labels = np.array([0] * 90 + [1] * 10)  # chance agreement 0.82: always answering 0 scores 0.9
    metrics = {"final": {"val_top1": 0.9, "n_val": 10, "test_top1": 0.9, "n_test": 20}}
    kappa, se = heldout_agreement(metrics, labels)
    assert abs(kappa - (0.9 - 0.82) / 0.18) < 1e-9 and se > 0
    even = np.arange(100) % 2
    assert heldout_agreement(metrics, even)[0] > kappa  # the same top-1 on even classes is far above chance
    assert heldout_agreement({"final": {"val_top1": None, "test_top1": None}}, labels) is None


def test_k_auto_is_chosen_at_iteration_0_then_kept_with_the_previous_sizes(inputs):
    """Under --k auto iteration 0 chooses K; later iterations cluster into iteration 0's label count (not
    re-estimated on features fine-tuned to those labels) and scan aims at the previous labels' sizes."""
    from ldpo.common.files.labels import write_labels

    layout = Layout(str(inputs / "w"))
    os.makedirs(layout.iteration(0), exist_ok=True)
    write_labels(layout.iteration(0, "labels.csv"), [f"i{n}" for n in range(9)], np.array([0, 0, 0, 0, 1, 1, 2, 2, 5]))
    cluster = loop_plan.iteration(opts(inputs), layout, 1)["cluster"]
    assert cluster[cluster.index("--k") + 1] == "4"
    assert cluster[cluster.index("--size-prior") + 1] == layout.iteration(0, "labels.csv")
    given = loop_plan.iteration(opts(inputs, "--k", "7"), layout, 1)["cluster"]
    assert given[given.index("--k") + 1] == "7" and "--size-prior" not in given
    with pytest.raises(InputError, match="--k auto: --method rim"):
        opts(inputs, "--method", "rim")
