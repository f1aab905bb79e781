"""Hostile inputs, third pass (issue 30 items 10, 12, 15, 16, 17): records and headers are checked
before they are believed, sizes they claim are bounded before anything is allocated, and every
refusal is one line naming the file or option (exit 2, nothing written).

The inputs are tiny: a checkpoint whose record lies, a few-KB store that *declares* huge
shapes, a small deflated DICOM that *claims* a huge image. The memory each used to take is
measured outside the tests (``/usr/bin/time -v``, see the issue's closing note).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers import refused, toy_workspace


# -- a small workspace, built once and copied per case (``ws``, conftest.py) -----------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory, toy):
    """images.h5 and labels.csv (3 classes x 4 images, 32 px), feats.h5, and model.pt: an untrained
    3-class resnet18 checkpoint (a valid record; the cases below make it lie)."""
    from ldpo.common.nets import models
    from ldpo.common.nets.checkpoint import Checkpoint

    ws = tmp_path_factory.mktemp("bounds")
    toy_workspace(ws, toy(classes=3, per_class=4, size=32), np.random.default_rng(0))
    built = models.build(models.parse_init("random"), "resnet18", 3, 0, 32)
    Checkpoint(arch="resnet18", num_classes=3, classes=[0, 1, 2], state_dict=built.model.state_dict(),
               input_size=32, normalize="zscore", origin="random").save(ws / "model.pt")
    return ws


# -- item 10: a checkpoint's record is checked on load, before a model is built ----------------

def lying_checkpoint(ws: Path, name: str = "lie.pt", state_dict=None, **changes) -> Path:
    """model.pt with ``changes`` to its record (a value None removes the key)."""
    import torch

    data = torch.load(ws / "model.pt", weights_only=True)
    if state_dict is not None:
        data["state_dict"] = state_dict
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    torch.save(data, ws / name)
    return ws / name


def words_checkpoint(ws: Path) -> Path:
    """What finetune --vectors writes: 2 x 16 sigmoids regressing word vectors, target words."""
    from ldpo.common.nets import models

    built = models.build(models.parse_init("random"), "resnet18", 32, 0, 32)
    return lying_checkpoint(ws, "words.pt", built.model.state_dict(), num_classes=32, classes=list(range(32)),
                            target="words", words={"dim": 16, "vectors_checksum": "0" * 64, "terms": []})


def test_assign_refuses_a_words_checkpoint(cli, ws):
    model = words_checkpoint(ws)
    line = refused(cli, ws, ["assign", ws / "images.h5", "--model", model, "--out", ws / "a.csv"], model)
    assert "'words' checkpoint" in line


def test_featurize_probs_refuses_a_words_checkpoint(cli, ws):
    model = words_checkpoint(ws)
    refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "p.h5", "--init", f"checkpoint:{model}",
                      "--layer", "probs", "--device", "cpu"], model)


RECORDS = {
    "target-bogus": (dict(target="bogus"), "target 'bogus' is not one of"),
    "multi-without-thresholds": (dict(target="multi"), "needs one threshold per class (3), it has none"),
    "multi-thresholds-too-few": (dict(target="multi", thresholds=[0.5]), "it has 1"),
    "thresholds-out-of-range": (dict(target="multi", thresholds=[0.5, 7.0, 0.5]), "thresholds must be numbers in [0, 1]"),
    "future-format": (dict(format="ldpo-checkpoint-9"), "is newer than this ldpo reads"),
    "foreign-format": (dict(format="keras-7"), "is not one ldpo wrote"),
    "classes-fewer-than-num-classes": (dict(classes=[0, 1]), "num_classes is 3 but it lists 2 classes"),
    "classes-not-integers": (dict(classes=["a", "b", "c"]), "class 'a' is not a non-negative whole number"),
    "classes-repeated": (dict(classes=[1, 1, 2]), "class 1 is listed twice"),
    "num-classes-fraction": (dict(num_classes=3.5, classes=None), "num_classes 3.5 must be a whole number"),
    "num-classes-zero": (dict(num_classes=0, classes=[]), "num_classes 0 must be a whole number of at least 1"),
    "input-size-zero": (dict(input_size=0), "input_size 0 must be a whole number of at least 1"),
    "input-size-text": (dict(input_size="big"), "input_size 'big' is not a number"),
    # the head's shape is read from the file: no model with a 100,000-way head is built first
    "num-classes-huge": (dict(num_classes=100_000, classes=None), "num_classes is 100000 but its head (fc) has 3"),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_lying_checkpoint_record_is_refused_on_load(cli, ws, case):
    changes, says = RECORDS[case]
    model = lying_checkpoint(ws, **changes)
    for argv in (["assign", ws / "images.h5", "--model", model, "--out", ws / "a.csv"],
                 ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init", f"checkpoint:{model}",
                  "--device", "cpu"]):
        line = refused(cli, ws, argv, model)
        assert says in line, line


def test_the_record_is_checked_before_any_tensor_of_its_size(ws):
    """num_classes 3,000,000 used to build a 512 x 3M head (7 GB) before load_state_dict refused it."""
    import tracemalloc

    from ldpo.common.nets.checkpoint import Checkpoint
    from ldpo.common.errors import InputError

    model = lying_checkpoint(ws, num_classes=3_000_000, classes=None)
    tracemalloc.start()
    with pytest.raises(InputError, match="num_classes is 3000000 but its head"):
        Checkpoint.load(model)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 << 20, peak  # the 3M-entry default class list alone would be ~100 MB


def test_a_valid_checkpoint_still_loads(ws):
    from ldpo.common.nets.checkpoint import Checkpoint

    ckpt = Checkpoint.load(lying_checkpoint(ws, target="multi", thresholds=[0.2, 0.5, 1.0], classes=[4, 7, 9]))
    assert ckpt.classes == [4, 7, 9] and ckpt.thresholds == [0.2, 0.5, 1.0]
    old = Checkpoint.load(lying_checkpoint(ws, "old.pt", format=None, target=None, classes=None))
    assert old.target == "single" and old.classes == [0, 1, 2] and old.format is None


# -- item 12: sizes a header claims are bounded before anything of that size is allocated ----------

def declared_store(ws: Path, name: str, rows: int, side: int) -> Path:
    """An HDF5 images store that *declares* ``rows`` images of ``side`` x ``side`` (a few KB: nothing written)."""
    import h5py

    path = ws / name
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", shape=(rows, side, side), dtype=np.uint8, chunks=(1, min(side, 256), min(side, 256)))
        fh.create_dataset("ids", shape=(rows,), dtype=h5py.string_dtype(), chunks=(min(rows, 65536),))
    assert path.stat().st_size < 64 << 10
    return path


def huge_images(ws: Path) -> Path:
    return declared_store(ws, "huge-images.h5", 4, 65535)


def huge_ids(ws: Path) -> Path:
    return declared_store(ws, "huge-ids.h5", 10**9, 32)


DECLARED = {
    "featurize-65535-px": lambda ws: ["featurize", huge_images(ws), "--out", ws / "f.h5", "--device", "cpu"],
    "finetune-65535-px": lambda ws: ["finetune", huge_images(ws), ws / "labels.csv", "--out", ws / "m.pt",
                                     "--device", "cpu"],
    "assign-65535-px": lambda ws: ["assign", huge_images(ws), "--model", ws / "model.pt", "--out", ws / "a.csv"],
    "export-folders-65535-px": lambda ws: ["export-folders", ws / "labels.csv", huge_images(ws), "--out", ws / "ef"],
    "encode-patches-65535-px": lambda ws: ["encode", huge_images(ws), "--method", "patches", "--model",
                                           f"checkpoint:{ws / 'model.pt'}", "--out", ws / "e.h5"],
    "featurize-1e9-ids": lambda ws: ["featurize", huge_ids(ws), "--out", ws / "f.h5", "--device", "cpu"],
    "cluster-1e9-ids": lambda ws: ["cluster", declared_features(ws), "--out", ws / "l.csv", "--k", "2"],
}


def declared_features(ws: Path) -> Path:
    import h5py

    path = ws / "huge-features.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", shape=(10**9, 8), dtype=np.float32, chunks=(4096, 8))
        fh.create_dataset("ids", shape=(10**9,), dtype=h5py.string_dtype(), chunks=(65536,))
    return path


@pytest.mark.parametrize("case", list(DECLARED))
def test_a_store_declaring_huge_shapes_is_refused_before_reading(cli, ws, case):
    argv = DECLARED[case](ws)
    store = next(a for a in argv if isinstance(a, Path) and a.name.startswith("huge"))
    line = refused(cli, ws, argv, store)
    assert ("LDPO_MAX_PIXELS" in line) != ("LDPO_MAX_ROWS" in line), line
    assert ("65535 x 65535 images" in line) or ("1,000,000,000 rows exceed the bound of 10,000,000" in line), line


def test_the_bounds_are_raised_and_lowered_by_the_environment(cli, ws, monkeypatch):
    monkeypatch.setenv("LDPO_MAX_PIXELS", "1000")  # 32 x 32 = 1,024 values per image: one too many
    line = refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--device", "cpu"], ws / "images.h5")
    assert "32 x 32 images (1,024 values) exceeds the bound of 1,000" in line
    monkeypatch.setenv("LDPO_MAX_PIXELS", "1024")
    monkeypatch.setenv("LDPO_MAX_ROWS", "11")
    line = refused(cli, ws, ["export-folders", ws / "labels.csv", ws / "images.h5", "--out", ws / "ef"],
                   ws / "images.h5")
    assert "12 rows exceed the bound of 11 rows per store" in line
    monkeypatch.setenv("LDPO_MAX_ROWS", "twelve")
    refused(cli, ws, ["export-folders", ws / "labels.csv", ws / "images.h5", "--out", ws / "ef"], "LDPO_MAX_ROWS")
    monkeypatch.setenv("LDPO_MAX_ROWS", "12")
    assert cli("export-folders", ws / "labels.csv", ws / "images.h5", "--out", ws / "ef", "-q").code == 0


def deflated_dicom(path: Path, rows: int, cols: int, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian DICOM whose header claims ``rows`` x ``cols`` x 16 bit, followed by
    ``pixel_bytes`` zero bytes of pixel data (streamed through zlib: a claim of GBs is a few KB on disk)."""
    import struct
    import zlib

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import DeflatedExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, "1.2.3.4.5.6.7", "OT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "1.2.3.4.5", "1.2.3.4.5.6", "P1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body, head = DicomBytesIO(), DicomBytesIO()
    for fp in (body, head):
        fp.is_little_endian, fp.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    pydicom.filewriter.write_file_meta_info(head, meta, enforce_standard=True)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + head.getvalue())
        out.write(z.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)))
        zeros, left = bytes(1 << 20), pixel_bytes
        while left:
            out.write(z.compress(zeros[:min(left, len(zeros))]))
            left -= min(left, len(zeros))
        out.write(z.flush())
    return path


def test_a_deflated_dicom_claiming_32768_px_is_rejected_on_its_header(cli, ws):
    """It used to be inflated whole (2 GB, 4.3 GB peak) by dcmread before anything looked at its size."""
    deflated_dicom(ws / "dicom" / "huge.dcm", 32768, 32768, 4096)  # the claim; only 4 KB of pixels follow
    line = refused(cli, ws, ["extract-keyimages", ws / "dicom", "--out", ws / "keys", "--salt", "s" * 20],
                   "LDPO_MAX_PIXELS")
    assert "the header claims 32768 x 32768 pixels x 1 frame(s)" in line and "1,073,741,824 values" in line


def test_a_deflated_dicom_whose_pixel_data_outgrows_its_header_is_rejected_while_inflating(cli, ws, monkeypatch):
    monkeypatch.setenv("LDPO_MAX_PIXELS", "1000")
    deflated_dicom(ws / "dicom" / "liar.dcm", 16, 16, 8 << 20)  # claims 256 values; 8 MiB follow
    line = refused(cli, ws, ["extract-keyimages", ws / "dicom", "--out", ws / "keys", "--salt", "s" * 20],
                   "LDPO_MAX_PIXELS")
    assert "inflates to more than" in line


def test_the_dicom_bound_keeps_images_below_it(cli, ws, monkeypatch):
    deflated_dicom(ws / "dicom" / "small.dcm", 64, 64, 64 * 64 * 2)
    monkeypatch.setenv("LDPO_MAX_PIXELS", "4096")
    r = cli("extract-keyimages", ws / "dicom", "--out", ws / "keys", "--salt", "s" * 20, "--size", "32", "-q")
    assert r.code == 0, r.err
    monkeypatch.setenv("LDPO_MAX_PIXELS", "4095")
    refused(cli, ws, ["extract-keyimages", ws / "dicom", "--out", ws / "keys2", "--salt", "s" * 20],
            "bound of 4,095 values per image")


def test_toy_data_archive_never_builds_every_id_at_once(cli, tmp_path, monkeypatch):
    """--n 100000000 used to build 1e8 id strings (3.9 GB) and the labels list before writing anything."""
    from ldpo.stages.toy_data import archive

    asked = []
    real = archive.ids_for

    def spy(lo, hi, n):
        asked.append(hi - lo)
        return real(lo, hi, n)

    monkeypatch.setattr(archive, "ids_for", spy)
    r = cli("toy-data", "archive", "--n", "10000", "--size", "16", "--out", tmp_path / "a.h5", "-q")
    assert r.code == 0, r.err
    assert max(asked) <= 4096, max(asked)  # block by block (a 4 MiB chunk of 16 px images)
    lines = (tmp_path / "a.h5.truth.csv").read_text().splitlines()
    labels = archive.labels_for(10000, 20, 0)
    assert lines[0] == "id,label" and lines[1:] == [f"{i},{c}" for i, c in zip(real(0, 10000, 10000), labels)]
    from ldpo.common.files.stores import open_store

    with open_store(tmp_path / "a.h5") as store:
        assert store.ids == real(0, 10000, 10000)


# -- item 15: --patch-grid is bounded, and checked before any model is loaded ------------------------

def test_encode_patch_grid_is_bounded_before_the_model_loads(cli, ws):
    line = refused(cli, ws, ["encode", ws / "images.h5", "--method", "patches", "--model",
                             f"checkpoint:{ws / 'absent.pt'}", "--out", ws / "e.h5", "--patch-grid", "0.5:100000"],
                   "--patch-grid 0.5:100000")
    assert "10,000,000,000 patches per image, more than the 256 allowed" in line
    refused(cli, ws, ["encode", ws / "images.h5", "--method", "patches", "--model", f"checkpoint:{ws / 'absent.pt'}",
                      "--out", ws / "e.h5", "--patch-grid", "0.5:x"], "--patch-grid 0.5:x")


# -- item 16: every refusal is one line naming the file or option ---------------------------------

def test_a_newline_in_a_path_stays_on_the_error_line(cli, ws):
    bad = ws / "a\nb.h5"
    line = refused(cli, ws, ["cluster", bad, "--out", ws / "l.csv", "--k", "2"], "a\\nb.h5")
    assert line.endswith("a\\nb.h5: no such store"), line


def nested(root: Path, levels: int) -> Path:
    """``root/d/d/…/d``, ``levels`` deep (made through folder descriptors: no path grows with it)."""
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY)
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    return root


def test_a_deeply_nested_source_is_refused_naming_it(cli, ws):
    deep = nested(ws / "deep", 300)  # 10,000 levels used to end in "maximum recursion depth exceeded"
    line = refused(cli, ws, ["extract-keyimages", deep, "--out", ws / "keys", "--salt", "s" * 20], deep)
    assert "folders nested more than 128 levels deep" in line


def test_toy_data_pacs_size_range_is_the_one_help_shows(cli, tmp_path):
    r = cli("toy-data", "pacs", "--help")
    assert "[32, 1024]" in " ".join(r.out.split())
    r = cli("toy-data", "pacs", "--out", tmp_path / "p", "--size", "600", "--studies", "1", "-q")
    assert r.code == 0, r.err
    r = cli("toy-data", "pacs", "--out", tmp_path / "q", "--size", "1025", "-q")
    assert r.code == 2 and "--size 1025: must be between 32 and 1024" in r.err


def test_cluster_scan_on_one_row_names_what_needs_two(cli, ws):
    from ldpo.common.files.stores import write_store

    write_store(ws / "one.h5", ["a"], {"stage": "test"}, features=np.ones((1, 8), np.float32))
    line = refused(cli, ws, ["cluster", ws / "one.h5", "--out", ws / "l.csv", "--method", "scan", "--k", "1"],
                   ws / "one.h5")
    assert "--method scan" in line and "--k 2" not in line and "needs 2 rows, the store has 1" in line


def nan_checkpoint(ws: Path) -> Path:
    import torch

    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in torch.load(ws / "model.pt", weights_only=True)["state_dict"].items()}
    return lying_checkpoint(ws, "nan.pt", state)


def test_encode_patches_with_a_diverged_checkpoint_names_it(cli, ws):
    model = nan_checkpoint(ws)
    line = refused(cli, ws, ["encode", ws / "images.h5", "--method", "patches", "--model", f"checkpoint:{model}",
                             "--out", ws / "e.h5", "--device", "cpu"], model)
    assert "gives non-finite features" in line and "Input contains NaN" not in line


@pytest.mark.parametrize("confidence", ["nan", "7", "-1"])
def test_finetune_refuses_confidences_that_are_not_probabilities(cli, ws, confidence):
    rows = (ws / "labels.csv").read_text().splitlines()
    text = "\n".join([rows[0] + ",confidence"] + [f"{r},0.9" for r in rows[1:-1]] + [f"{rows[-1]},{confidence}"])
    (ws / "conf.csv").write_text(text + "\n")
    line = refused(cli, ws, ["finetune", ws / "images.h5", ws / "conf.csv", "--out", ws / "m.pt",
                             "--min-confidence", "0.5", "--epochs", "1", "--input-size", "32", "--device", "cpu"],
                   ws / "conf.csv")
    assert f"confidence {float(confidence)!r} is not a probability in [0, 1]" in line


def test_featurize_shard_before_create_only_says_so(cli, ws):
    line = refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "f.zarr", "--shard", "0/2",
                             "--device", "cpu"], ws / "f.zarr")
    assert "--create-only" in line


HISTORY_HEAD = ("iteration,k,purity_prev,inverse_purity_prev,nmi_prev,ari_prev,purity_truth,nmi_truth,ari_truth,"
                "hungarian_truth,top1,converged,timestamp\n")


@pytest.mark.parametrize("rows,says", [
    (["0,3,,,,,,,,,,0,t", "1,3,1,1,high,1,,,,,,0,t"], "line 3: nmi_prev 'high' is not a number"),
    (["0,3,,,,,,,,,,0,t", "1,3,1,1,1,1,,,,,,0,t", "1,3,1,1,0.2,1,,,,,,0,t"],
     "line 4: a second row of iteration 1"),
])
def test_converge_refuses_a_history_it_cannot_read(cli, ws, rows, says):
    (ws / "h.csv").write_text(HISTORY_HEAD + "\n".join(rows) + "\n")
    line = refused(cli, ws, ["converge", ws / "labels.csv", "--prev", ws / "labels.csv", "--history", ws / "h.csv",
                             "--patience", "2"], ws / "h.csv")
    assert says in line


def test_extract_keyimages_source_inside_out_says_so(cli, ws):
    deflated_dicom(ws / "src" / "dicom" / "a.dcm", 16, 16, 512)
    line = refused(cli, ws, ["extract-keyimages", ws / "src" / "dicom", "--out", ws / "src", "--salt", "s" * 20],
                   ws / "src" / "dicom")
    assert f"is inside --out {ws / 'src'}" in line and "holds no DICOM" not in line


def test_an_output_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    """toy-data archive writes its truth CSV inside an atomic_path of its own: a read-only folder used to be
    reported as the inner temporary (``.a.h5.truth.tmp-….csv``)."""
    import errno

    from ldpo.common.errors import InputError
    from ldpo.common.files.stores import atomic_path

    final = tmp_path / "t.csv"
    with pytest.raises(InputError) as err:
        with atomic_path(final) as tmp:
            with atomic_path(tmp) as inner:
                raise PermissionError(errno.EACCES, "Permission denied", str(inner))
    assert str(err.value) == f"{final}: cannot write (Permission denied)"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_toy_data_archive_into_a_read_only_folder_names_it(cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = cli("toy-data", "archive", "--n", "10", "--size", "16", "--out", ro / "a.h5", "-q")
    finally:
        ro.chmod(0o755)
    assert r.code == 2 and ".tmp-" not in r.err and str(ro) in r.err, r.err


# -- item 17: degenerate results are refused, and no Python warning reaches the user --------------

def test_describe_prior_weight_is_bounded(cli, ws):
    model = words_checkpoint(ws)
    (ws / "v.txt").write_text("1 16\nnodule " + " ".join(["0.5"] * 16) + "\n")
    line = refused(cli, ws, ["describe", ws / "images.h5", "--model", model, "--vectors", ws / "v.txt",
                             "--out", ws / "w.csv", "--prior-weight", "1e300"], "--prior-weight")
    assert "must be between 0 and 100" in line


def test_vectors_beyond_float32_are_one_line_without_a_warning(cli, ws):
    model = words_checkpoint(ws)
    (ws / "v.txt").write_text("2 16\nnodule 1e39" + " 0.5" * 15 + "\ncyst" + " 0.5" * 16 + "\n")
    line = refused(cli, ws, ["describe", ws / "images.h5", "--model", model, "--vectors", ws / "v.txt",
                             "--out", ws / "w.csv"], ws / "v.txt")
    assert "line 2" in line and "float32" in line


def small_store(ws: Path, name: str, images: np.ndarray) -> Path:
    from ldpo.common.files.stores import write_store

    write_store(ws / name, [f"i{k}" for k in range(len(images))], {"stage": "test"}, images=images)
    return ws / name


DEGENERATE = {
    "one-image": (lambda ws: small_store(ws, "one.h5", np.random.default_rng(0).integers(0, 255, (1, 32, 32), np.uint8)),
                  "1 image"),
    "all-black": (lambda ws: small_store(ws, "black.h5", np.zeros((6, 32, 32), np.uint8)), "the same encoding"),
    "one-pixel": (lambda ws: small_store(ws, "px.h5", np.random.default_rng(0).integers(0, 255, (6, 1, 1), np.uint8)),
                  "the same encoding"),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_encode_patches_refuses_images_it_cannot_tell_apart(cli, ws, case):
    make, says = DEGENERATE[case]
    store = make(ws)
    line = refused(cli, ws, ["encode", store, "--method", "patches", "--model", f"checkpoint:{ws / 'model.pt'}",
                             "--out", ws / "e.h5", "--device", "cpu"], store)
    assert says in line


def test_a_python_warning_is_one_ldpo_line(capsys):
    import warnings

    from ldpo.common.cli import Tool

    class Overflow(Tool):
        name = "overflow"

        def main(self, opts):
            np.array([1e39]).astype(np.float32)
            warnings.warn("two\nlines", stacklevel=2)
            return 0

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert Overflow().run(["-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ldpo: warning: overflow encountered in cast (RuntimeWarning)",
                   "ldpo: warning: two lines (UserWarning)"], err


def test_hierarchy_refuses_word_vector_outputs_as_probabilities(cli, ws):
    """What featurize --layer probs wrote for a words model before it refused one."""
    from ldpo.common.files.stores import write_store

    scores = np.random.default_rng(0).random((12, 3)).astype(np.float32)
    with open(ws / "labels.csv") as fh:
        ids = [line.split(",")[0] for line in fh.read().splitlines()[1:]]
    write_store(ws / "wprobs.h5", ids, {"stage": "featurize", "layer": "probs", "classes": [0, 1, 2],
                                        "target": "words"}, features=scores)
    line = refused(cli, ws, ["hierarchy", ws / "wprobs.h5", ws / "labels.csv", "--out", ws / "tree"], ws / "wprobs.h5")
    assert "not class probabilities" in line
