"""``converge``: exit codes 0/1/2, the history CSV, the plot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ldpo.common.files.labels import write_labels
from ldpo.stages import converge as converge_stage

N = 120
IDS = [f"im{i:04d}" for i in range(N)]


def labels_file(path, labels, ids=IDS):
    write_labels(path, ids, np.asarray(labels))
    return path


def history_rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == converge_stage.HISTORY_COLUMNS
        return list(reader)


def summary(out: str) -> dict[str, str]:
    """The key=value line; the verdict line after it must agree with its `converged`."""
    lines = out.strip().splitlines()
    assert len(lines) == 2
    values = dict(pair.split("=", 1) for pair in lines[0].split())
    assert lines[1] == f"converged={values['converged']}"
    return values


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.arange(N) % 4
    return {
        "truth": labels_file(tmp_path / "truth.csv", truth),
        "same": labels_file(tmp_path / "same.csv", (truth + 1) % 4),  # the truth, renamed
        "split": labels_file(tmp_path / "split.csv", truth * 2 + (np.arange(N) // 4) % 2),  # every class in two
        "random": labels_file(tmp_path / "random.csv", rng.integers(0, 4, N)),
        "random2": labels_file(tmp_path / "random2.csv", rng.integers(0, 4, N)),
    }


def test_identical_partitions_converge(cli, files):
    r = cli("converge", files["same"], "--prev", files["truth"])
    assert r.code == 0, r.err
    s = summary(r.out)
    assert s["nmi_prev"] == "1" and s["purity_prev"] == "1" and s["ari_prev"] == "1" and s["converged"] == "1"


def test_independent_partitions_do_not(cli, files):
    r = cli("converge", files["random"], "--prev", files["random2"])
    assert r.code == 1, r.err
    assert float(summary(r.out)["nmi_prev"]) < 0.1


def test_no_previous_labels_means_go_on(cli, files):
    r = cli("converge", files["same"])
    assert r.code == 1, r.err
    assert summary(r.out) == {"iteration": "0", "k": "4", "converged": "0"}


def test_purity_criterion_catches_splits_that_purity_alone_misses(cli, files):
    r = cli("converge", files["split"], "--prev", files["truth"], "--metric", "purity", "--threshold", "0.9")
    assert r.code == 1
    s = summary(r.out)
    assert s["purity_prev"] == "1" and s["inverse_purity_prev"] == "0.5"
    assert cli("converge", files["split"], "--prev", files["truth"], "--metric", "nmi", "--threshold", "0.7").code == 0


def test_missing_or_malformed_files_exit_2(cli, files, tmp_path):
    (tmp_path / "bad.csv").write_text("id,label\nim0000,zero\n")
    (tmp_path / "few.csv").write_text("id,label\nim0000,1\n")
    (tmp_path / "metrics.json").write_text("{not json")
    (tmp_path / "nofinal.json").write_text(json.dumps({"epochs": 3}))
    cases = [
        ([tmp_path / "absent.csv", "--prev", files["truth"]], "absent.csv"),
        ([files["same"], "--prev", tmp_path / "absent.csv"], "absent.csv"),
        ([tmp_path / "bad.csv", "--prev", files["truth"]], "not an integer"),
        ([files["same"], "--prev", tmp_path / "few.csv"], "have no label"),
        ([files["same"], "--truth", tmp_path / "few.csv"], "have no label"),
        ([files["same"], "--metrics-json", tmp_path / "metrics.json"], "JSON"),
        ([files["same"], "--metrics-json", tmp_path / "nofinal.json"], "final"),
        ([files["same"], "--metrics-json", tmp_path / "absent.json"], "absent.json"),
        ([files["same"], "--threshold", "1.5"], "--threshold"),
        ([files["same"], "--plot", tmp_path / "h.png"], "--history"),
    ]
    for argv, needle in cases:
        r = cli("converge", *argv)
        assert r.code == 2, (argv, r.err)
        assert len(r.err.strip().splitlines()) == 1 and needle in r.err, r.err
        assert r.out == ""


@pytest.mark.parametrize("failure", [ZeroDivisionError("boom"), MemoryError(), AssertionError("inner"), SystemExit(1)])
def test_an_internal_exception_exits_2_never_1(cli, files, monkeypatch, failure):
    def broken(*args):
        raise failure

    monkeypatch.setattr(converge_stage.metrics, "nmi", broken)
    r = cli("converge", files["random"], "--prev", files["random2"])
    assert r.code == 2, r.err
    assert r.err.startswith("converge: error:")


def test_a_nan_metric_is_an_error_not_a_no(cli, files, monkeypatch):
    monkeypatch.setattr(converge_stage.metrics, "ari", lambda *a: float("nan"))
    r = cli("converge", files["random"], "--prev", files["random2"])
    assert r.code == 2 and "ari_prev" in r.err


def test_history_appends_rows_and_replaces_a_rerun_iteration(cli, files, tmp_path):
    hist, plot = tmp_path / "history.csv", tmp_path / "history.png"
    (tmp_path / "m.json").write_text(json.dumps({"final": {"train_top1": 0.9, "val_top1": 0.75}}))
    (tmp_path / "m2.json").write_text(json.dumps({"final": {"train_top1": 0.8}}))
    common = ["--history", hist, "--truth", files["truth"], "--plot", plot]
    assert cli("converge", files["random"], *common).code == 1  # iteration 0: nothing to compare with
    assert cli("converge", files["split"], "--prev", files["random"], *common, "--metrics-json", tmp_path / "m.json"
               ).code == 1
    r = cli("converge", files["same"], "--prev", files["split"], "--iteration", "2", *common, "--threshold", "0.7",
            "--metrics-json", tmp_path / "m2.json")
    assert r.code == 0
    rows = history_rows(hist)
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    assert [r["k"] for r in rows] == ["4", "8", "4"]
    assert rows[0]["nmi_prev"] == "" and rows[0]["top1"] == "" and rows[0]["nmi_truth"] != ""
    assert rows[1]["top1"] == "0.75" and rows[2]["top1"] == "0.8"  # val_top1 first, else train_top1
    assert rows[1]["hungarian_truth"] == "0.5" and rows[1]["purity_truth"] == "1"  # 8 clusters vs 4 classes
    assert rows[2]["hungarian_truth"] == "1" and [r["converged"] for r in rows] == ["0", "0", "1"]
    assert all(r["timestamp"] for r in rows)
    first_plot = plot.read_bytes()
    assert first_plot[:8] == b"\x89PNG\r\n\x1a\n"

    # a resumed loop re-runs iteration 1: its row is replaced, not duplicated
    assert cli("converge", files["same"], "--prev", files["truth"], "--iteration", "1", *common).code == 0
    rows = history_rows(hist)
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["nmi_prev"] == "1" and rows[1]["top1"] == "" and rows[1]["k"] == "4"
    assert plot.read_bytes() != first_plot
    # without --iteration the next number follows the history's last
    cli("converge", files["same"], "--history", hist)
    assert [r["iteration"] for r in history_rows(hist)] == ["0", "1", "2", "3"]


def test_a_history_that_is_not_one_is_exit_2_and_left_alone(cli, files, tmp_path):
    hist = tmp_path / "h.csv"
    hist.write_text("a,b\n1,2\n")
    r = cli("converge", files["same"], "--prev", files["truth"], "--history", hist)
    assert r.code == 2 and "iteration" in r.err
    assert hist.read_text() == "a,b\n1,2\n"


def test_the_verdict_is_printed_on_its_own_last_line(cli, files, tmp_path):
    """The loop reads `converged=1` (stop) / `converged=0` (go on), not only the exit status."""
    r = cli("converge", files["truth"], "--prev", files["same"])
    assert r.code == 0 and r.out.splitlines()[-1] == "converged=1"
    r = cli("converge", files["truth"])
    assert r.code == 1 and r.out.splitlines()[-1] == "converged=0"
    r = cli("converge", tmp_path / "missing.csv", "--prev", files["truth"])
    assert r.code == 2 and "converged=" not in r.out


# -- issue 18 item 6: agreement with DICOM header fields (evaluation only) --------------------------------


def manifest_file(path, columns: dict[str, list[str]], ids=IDS):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "report_id", *columns])
        for i, ident in enumerate(ids):
            writer.writerow([ident, "", *(values[i] for values in columns.values())])
    return path


def field_rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == converge_stage.FIELD_COLUMNS
        return list(reader)


@pytest.fixture
def manifest(tmp_path):
    """Four classes (the truth): modality follows them exactly, body_part half-way (two classes share a value),
    view is empty everywhere, orientation is known for the first quarter only."""
    truth = np.arange(N) % 4
    return manifest_file(tmp_path / "manifest.csv", {
        "modality": [["CT", "MR", "DX", "US"][c] for c in truth],
        "body_part": [["HEAD", "HEAD", "CHEST", "CHEST"][c] for c in truth],
        "view": [""] * N,
        "orientation": [["axial", "sagittal", "axial", "coronal"][c] if i < N // 4 else ""
                        for i, c in enumerate(truth)],
        "extra": ["x"] * N,
    })


def test_header_fields_go_to_a_side_file_and_leave_the_history_alone(cli, files, manifest, tmp_path):
    hist, plot = tmp_path / "history.csv", tmp_path / "history.png"
    r = cli("converge", files["same"], "--history", hist, "--fields", manifest, "--plot", plot, "-v")
    assert r.code == 1, r.err
    assert summary(r.out) == {"iteration": "0", "k": "4", "converged": "0"}  # stdout unchanged
    history_rows(hist)  # the history's columns are those of HISTORY_COLUMNS, nothing added
    rows = {r["field"]: r for r in field_rows(tmp_path / "history.fields.csv")}
    assert list(rows) == ["modality", "body_part", "orientation"]  # view: empty everywhere; extra: not asked
    assert rows["modality"] == {"iteration": "0", "field": "modality", "values": "4", "coverage": "1", "nmi": "1",
                                "purity": "1"}
    assert rows["body_part"]["values"] == "2" and rows["body_part"]["purity"] == "1"
    assert 0.6 < float(rows["body_part"]["nmi"]) < 0.7  # 1 bit of the 2: 2·1/(2+1)
    assert rows["orientation"]["coverage"] == "0.25" and rows["orientation"]["purity"] == "1"
    assert "vs header field modality: NMI 1" in r.err and "coverage 25%" in r.err

    # random labels follow nothing; iteration 1's rows are added, a re-run of it replaces them
    for _ in range(2):
        assert cli("converge", files["random"], "--prev", files["same"], "--history", hist, "--iteration", "1",
                   "--fields", manifest, "--plot", plot).code == 1
    rows = field_rows(tmp_path / "history.fields.csv")
    assert [(r["iteration"], r["field"]) for r in rows] == [("0", "modality"), ("0", "body_part"),
                                                            ("0", "orientation"), ("1", "modality"),
                                                            ("1", "body_part"), ("1", "orientation")]
    assert float(rows[3]["nmi"]) < 0.1 and float(rows[3]["purity"]) < 0.5

    # explicit columns: only those; a new history starts a new side file
    hist.unlink()
    assert cli("converge", files["split"], "--history", hist, "--fields", manifest,
               "--field-columns", "body_part,extra").code == 1
    rows = field_rows(tmp_path / "history.fields.csv")
    assert [(r["iteration"], r["field"], r["values"]) for r in rows] == [("0", "body_part", "2"), ("0", "extra", "1")]
    assert rows[1]["nmi"] == "0" and rows[1]["purity"] == "1"  # one value: no information, trivially pure


def test_header_fields_never_change_the_verdict(cli, files, manifest, tmp_path):
    plain = cli("converge", files["split"], "--prev", files["truth"], "--threshold", "0.7")
    with_fields = cli("converge", files["split"], "--prev", files["truth"], "--threshold", "0.7", "--fields", manifest,
                      "--field-columns", "modality")
    assert plain.code == with_fields.code == 0 and plain.out == with_fields.out


def test_bad_fields_input_exits_2_with_one_line(cli, files, manifest, tmp_path):
    few = manifest_file(tmp_path / "few.csv", {"modality": ["CT"] * 10}, ids=IDS[:10])
    (tmp_path / "noid.csv").write_text("name,modality\na,CT\n")
    (tmp_path / "dup.csv").write_text("id,modality\nim0000,CT\nim0000,MR\n")
    cases = [
        (["--fields", tmp_path / "absent.csv"], "absent.csv"),
        (["--fields", few], "110 id(s)"),
        (["--fields", tmp_path / "noid.csv"], "'id'"),
        (["--fields", tmp_path / "dup.csv"], "duplicate id"),
        (["--fields", manifest, "--field-columns", "modality,laterality"], "no column laterality"),
        (["--fields", manifest, "--field-columns", " , "], "--field-columns"),
        (["--fields", manifest, "--history", manifest], "--history"),  # the history may not be an input
    ]
    for argv, needle in cases:
        r = cli("converge", files["same"], *argv)
        assert r.code == 2, (argv, r.err)
        assert len(r.err.strip().splitlines()) == 1 and needle in r.err, r.err
        assert r.out == ""
    hist = tmp_path / "h.csv"
    r = cli("converge", files["same"], "--history", hist, "--fields", hist.with_name("h.fields.csv"))
    assert r.code == 2 and "h.fields.csv" in r.err and not hist.exists()  # the side file may not be an input


def test_patience_waits_for_consecutive_agreements(cli, files, tmp_path):
    hist = tmp_path / "history.csv"
    common = ["--history", hist, "--patience", "2"]
    assert cli("converge", files["truth"], *common, "--iteration", "0").code == 1
    r = cli("converge", files["same"], "--prev", files["truth"], *common, "--iteration", "1")
    assert r.code == 1 and summary(r.out)["nmi_prev"] == "1"  # agrees, but only once: go on
    assert "1 consecutive iteration(s) of the --patience 2" in r.err
    assert cli("converge", files["truth"], "--prev", files["same"], *common, "--iteration", "2").code == 0
    assert [row["converged"] for row in history_rows(hist)] == ["0", "0", "1"]
    # an iteration below the threshold breaks the streak; the next agreement starts counting again
    assert cli("converge", files["random"], "--prev", files["truth"], *common, "--iteration", "3").code == 1
    assert cli("converge", files["random"], "--prev", files["random"], *common, "--iteration", "4").code == 1
    assert cli("converge", files["random"], "--prev", files["random"], *common, "--iteration", "5").code == 0
    # a rerun of iteration 5 with a stricter rule reads the same history
    assert cli("converge", files["random"], "--prev", files["random"], *common[:2], "--patience", "3",
               "--iteration", "5").code == 1  # iteration 3 disagreed: 4 and 5 are 2 of 3
    # ... and patience 1 is the plain two-labelings rule
    assert cli("converge", files["random"], "--prev", files["random"], "--history", hist, "--iteration", "4").code == 0


def test_patience_needs_a_history(cli, files):
    r = cli("converge", files["same"], "--prev", files["truth"], "--patience", "2")
    assert r.code == 2 and "--history" in r.err and len(r.err.strip().splitlines()) == 1


def test_heldout_agreement_goes_into_the_previous_labels_row_and_survives_a_rerun(cli, files, tmp_path):
    """The model of iteration 1 was trained on iteration 0's labels: its held-out top-1 scores those labels,
    so it lands in row 0 (chance-corrected); re-running iteration 0's converge keeps it."""
    hist = tmp_path / "history.csv"
    (tmp_path / "m.json").write_text(json.dumps({"final": {"val_top1": 0.5, "n_val": 12, "test_top1": 0.5,
                                                           "n_test": 24}}))
    assert cli("converge", files["random"], "--history", hist, "--iteration", "0").code == 1
    assert cli("converge", files["split"], "--prev", files["random"], "--history", hist, "--iteration", "1",
               "--metrics-json", tmp_path / "m.json").code == 1
    rows = history_rows(hist)
    shares = np.bincount(read_back(files["random"])) / N
    chance = float((shares ** 2).sum())
    assert abs(float(rows[0]["heldout"]) - (0.5 - chance) / (1 - chance)) < 1e-5 and float(rows[0]["heldout_se"]) > 0
    assert rows[1]["heldout"] == ""
    assert cli("converge", files["random"], "--history", hist, "--iteration", "0").code == 1
    assert history_rows(hist)[0]["heldout"] == rows[0]["heldout"]


def read_back(path):
    from ldpo.common.files.labels import read_labels

    return read_labels(path).labels
