"""``extract-keyimages`` on real DICOM files from pydicom/pydicom-data, NIfTI, image folders and the toy PACS."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ldpo.common.files.stores import open_store
from ldpo.stages.extract_keyimages import MANIFEST_COLUMNS

SALT = ["--salt", "test-salt-0123456789"]


def data_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)  # exact names only: pattern look-ups try to download
    assert path, name
    return Path(path)


def copy(names: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(data_file(name), folder / name)
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def outputs(out: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    manifest = read_csv(out / "manifest.csv")
    store = next(p for p in (out / "images.h5", out / "images.zarr") if p.exists())
    with open_store(store, expect="images") as s:
        images = dict(zip(s.ids, s.read("images")))
    assert [m["id"] for m in manifest] == list(images)  # rows join by id, in the same order
    return manifest, images


def expected_window(name: str, index: int = 0, invert: bool = False) -> np.ndarray:
    """pydicom's own modality LUT + apply_voi_lut, its output range rescaled to 0..255."""
    ds = pydicom.dcmread(data_file(name))
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=index)
    bits = ds.BitsStored
    lo, hi = (0, 2 ** bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        lo, hi = lo * ds.RescaleSlope + ds.RescaleIntercept, hi * ds.RescaleSlope + ds.RescaleIntercept
    out = (values - lo) / (hi - lo) * 255
    return 255 - out if invert else out


def single_image(cli, tmp_path: Path, name: str, size: int, *extra: str) -> np.ndarray:
    out = tmp_path / "out"
    r = cli("extract-keyimages", copy([name], tmp_path / "src"), "--out", out, "--size", size, *SALT, *extra)
    assert r.code == 0, r.err
    _, images = outputs(out)
    assert len(images) == 1
    return next(iter(images.values())).astype(np.float64)


@pytest.mark.parametrize("name, size", [("MR_small.dcm", 64), ("693_UNCI.dcm", 512)])
def test_header_window_matches_pydicom(cli, tmp_path, name, size):
    got = single_image(cli, tmp_path, name, size)
    want = expected_window(name)
    assert np.abs(got - want).max() <= 1
    assert got.std() > 10  # a real picture, not a flat frame


def test_voi_lut_table_matches_pydicom(cli, tmp_path):
    ds = pydicom.dcmread(data_file("vlut_04.dcm"))  # a VOI LUT Sequence (16-bit table), no window
    got = single_image(cli, tmp_path, "vlut_04.dcm", ds.Rows)
    want = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) / 65535 * 255
    assert np.abs(got - want).max() <= 1 and got.std() > 10


def test_window_index_picks_the_second_window_and_pads_to_square(cli, tmp_path):
    name = "examples_overlay.dcm"  # 300×484, WindowCenter [450, 200]
    got = single_image(cli, tmp_path, name, 484, "--window-index", "1")
    top = (484 - 300) // 2
    assert np.abs(got[top:top + 300] - expected_window(name, index=1)).max() <= 1
    assert got[:top].max() == 0 and got[top + 300:].max() == 0  # black padding
    assert np.abs(got[top:top + 300] - expected_window(name, index=0)).max() > 20


def test_window_override_and_presets(cli, tmp_path):
    name = "693_UNCI.dcm"
    got = single_image(cli, tmp_path, name, 512, "--window", "abdomen")
    ds = pydicom.dcmread(data_file(name))
    hu = apply_modality_lut(ds.pixel_array, ds)
    want = np.clip((hu - (40 - 0.5)) / (400 - 1) + 0.5, 0, 1) * 255  # LINEAR window 40,400 (PS3.3 C.11.2.1.2.1)
    assert np.abs(got - want).max() <= 1.5
    r = cli("extract-keyimages", tmp_path / "src", "--out", tmp_path / "bad", "--window", "wide-ish")
    assert r.code == 2 and "--window" in r.err


def test_monochrome1_is_inverted(cli, tmp_path):
    got = single_image(cli, tmp_path, "RG3_UNCR.dcm", 1760)
    want = expected_window("RG3_UNCR.dcm", invert=True)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - (255 - want)).mean() > 30


def test_multiframe_by_frame(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("extract-keyimages", copy(["emri_small.dcm"], tmp_path / "src"), "--out", out, "--size", 64, *SALT)
    assert r.code == 0, r.err
    manifest, images = outputs(out)
    assert [int(m["frame"]) for m in manifest] == list(range(10))
    ds = pydicom.dcmread(data_file("emri_small.dcm"))
    frame3 = ds.pixel_array[3].astype(np.float64)
    want = (frame3 - frame3.min()) / (frame3.max() - frame3.min()) * 255  # no window in the header: min..max
    assert np.abs(images[manifest[3]["id"]] - want).max() <= 1
    assert len({im.tobytes() for im in images.values()}) == 10


def report_key(report_id: str, salt: str = SALT[1]) -> str:
    """How the manifest, rejects.csv and reports.csv name a report: its salted hash (ids are often accessions)."""
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    return Pseudonyms(salt)("report", report_id, length=12)


def file_pseudonym(relative: str, salt: str = SALT[1]) -> str:
    """How rejects.csv names a file: its salted hash, never its path."""
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    return "file:" + Pseudonyms(salt)("file", relative, length=16)


def test_broken_files_become_rejects_and_the_batch_goes_on(cli, tmp_path):
    src = copy(["MR_small.dcm", "MR_truncated.dcm", "JPEG-lossy.dcm", "test-SR.dcm", "CT_small.dcm"], tmp_path / "src")
    (src / "notes.bin").write_bytes(b"not a dicom file at all" * 20)
    out = tmp_path / "out"
    r = cli("extract-keyimages", src, "--out", out, "--size", 32, *SALT)
    assert r.code == 0, r.err
    reasons = {row["source"]: row["reason"] for row in read_csv(out / "rejects.csv")}
    assert reasons[file_pseudonym("MR_truncated.dcm")].startswith("truncated pixel data")
    assert reasons[file_pseudonym("JPEG-lossy.dcm")].startswith("pixel data cannot be decoded")  # fails in pass 2
    assert reasons[file_pseudonym("test-SR.dcm")].startswith("no pixel data")
    assert reasons[file_pseudonym("notes.bin")] == "unreadable: not a DICOM file"
    assert not any(".dcm" in reason for reason in reasons.values())
    manifest, images = outputs(out)
    assert sorted(m["modality"] for m in manifest) == ["CT", "MR"]
    assert all(im.max() > 0 for im in images.values())  # the pass-2 failure left no blank row behind
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".ldpo-output.json"]  # no partial store


def test_nothing_usable_exits_2_with_one_line(cli, tmp_path):
    src = copy(["MR_truncated.dcm", "test-SR.dcm"], tmp_path / "src")
    r = cli("extract-keyimages", src, "--out", tmp_path / "out", "-q", *SALT)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "nothing usable: 2 rejects" in r.err
    assert "truncated pixel data" in r.err and "no pixel data" in r.err
    assert not (tmp_path / "out" / "rejects.csv").exists()  # outputs are written together, or not at all
    assert not (tmp_path / "out" / "images.h5").exists()


def uids(ds) -> set[str]:
    found = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            found.update(str(v) for v in values if len(str(v)) > 8)
    return found


def test_no_phi_or_uid_in_any_output(cli, tmp_path):
    names = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "examples_overlay.dcm", "693_UNCI.dcm"]
    src = copy(names, tmp_path / "src")
    secrets: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        headers = [pydicom.dcmread(src / n) for n in names]
    for ds in headers:
        secrets |= uids(ds) | uids(ds.file_meta)
        secrets |= {p for p in str(ds.get("PatientName", "")).replace("=", "^").split("^") if len(p) > 2}
        if ds.get("PatientBirthDate"):
            secrets.add(str(ds.PatientBirthDate))
    ct = headers[0]
    reports = tmp_path / "reports.csv"
    with open(reports, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["report_id", "study_uid", "text"])
        w.writerow(["rep1", ct.StudyInstanceUID,
                    f"Patient {ct.PatientName.family_name} (born {ct.get('PatientBirthDate', '')}, "
                    f"study {ct.StudyInstanceUID}). A nodule is seen on image {ct.InstanceNumber}. No effusion."])
    if ct.get("PatientBirthDate"):
        secrets.add(str(ct.PatientBirthDate))
    out = tmp_path / "out"
    r = cli("extract-keyimages", src, "--reports", reports, "--all-slices", "--out", out, "--size", 32, *SALT)
    assert r.code == 0, r.err
    manifest, _ = outputs(out)
    rep1 = report_key("rep1")  # report ids are pseudonyms too
    row = next(m for m in manifest if m["report_id"] == rep1 and m["sentence"])
    assert row["sentence"] == f"A nodule is seen on image {ct.InstanceNumber}."
    assert "[removed]" in row["context"] and "[uid]" in row["context"]
    assert {m["report_id"] for m in manifest} == {rep1, ""}
    assert len(secrets) > 10
    blobs = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for secret in secrets:
        for path, blob in blobs.items():
            assert secret.encode() not in blob, f"{secret!r} leaked into {path.name}"


def test_nifti_canonical_axial_slices(cli, tmp_path):
    import nibabel as nib

    z = np.arange(10, dtype=np.float32)
    volume = np.zeros((20, 24, 10), dtype=np.float32) + z * 10  # brighter towards the last stored slice
    volume[2:5, 2:8, :] = 500  # a marker near the start of the first two (flipped) axes
    affine = np.diag([-2.0, -2.0, -3.0, 1.0])  # LPI storage: canonical RAS flips all three axes
    src = tmp_path / "vol"
    src.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), src / "ct.nii.gz")
    out = tmp_path / "out"
    r = cli("extract-keyimages", src, "--out", out, "--size", 24, "--every", 3, "--window", "45,110", *SALT)
    assert r.code == 0, r.err
    manifest, images = outputs(out)
    assert [m["instance"] for m in manifest] == ["1", "4", "7", "10"]
    background = [images[m["id"]][12, 12] for m in manifest]
    # canonical order is inferior→superior: the stored last slice (90) comes first
    assert background == sorted(background, reverse=True) and background[0] > background[-1]
    # the marker sits at the patient's right-anterior corner (stored axes run right→left, anterior→posterior):
    # displayed radiologically it is top-left; 20 columns are padded by 2 black columns each side
    first = images[manifest[0]["id"]]
    assert first.shape == (24, 24)
    assert np.argwhere(first == 255).min(0).tolist() == [2, 4] and np.argwhere(first == 255).max(0).tolist() == [7, 6]


def test_image_folder_with_classes(cli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("bark", 40), ("wool", 200)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            img = np.clip(rng.normal(level, 10, (30, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "src" / cls / f"{cls}{i}.png")
    out = tmp_path / "out"
    r = cli("extract-keyimages", tmp_path / "src", "--out", out, "--size", 32, *SALT, "--class-names", "keep")
    assert r.code == 0, r.err
    manifest, images = outputs(out)
    truth = {row["id"]: int(row["label"]) for row in read_csv(out / "truth.csv")}
    assert read_csv(out / "classes.csv") == [{"label": "0", "name": "bark"}, {"label": "1", "name": "wool"}]
    assert set(truth) == set(images)
    for ident, image in images.items():
        inner = image[6:26]  # 30×40 padded to 40×40 then resized to 32: rows 6..26 hold the picture
        assert (inner.mean() > 120) == (truth[ident] == 1)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    from ldpo.stages import run

    out = tmp_path_factory.mktemp("pacs")
    assert run(["toy-data", "pacs", "--out", str(out), "--studies", "10", "--seed", "1", "-q"]) == 0
    return out


def test_toy_pacs_end_to_end(cli, pacs, tmp_path):
    out = tmp_path / "keys"
    r = cli("extract-keyimages", pacs / "dicom", "--reports", pacs / "reports.csv", "--out", out, "--size", 64, *SALT)
    assert r.code == 0, r.err
    with open(out / "manifest.csv", encoding="utf-8") as fh:
        assert fh.readline().strip() == ",".join(MANIFEST_COLUMNS)
    manifest, images = outputs(out)
    reports = {report_key(row["report_id"]): row for row in read_csv(pacs / "reports.csv")}
    scrubbed = {row["report_id"]: row for row in read_csv(out / "reports.csv")}
    assert 30 <= len(manifest) <= 120
    assert {m["report_id"] for m in manifest} <= set(reports)
    assert len({m["report_id"] for m in manifest}) == len(reports) == len(scrubbed)  # every study has key images
    for m in manifest:
        assert m["sentence"] and m["sentence"] in m["context"]
        assert " ".join(scrubbed[m["report_id"]]["text"].split()).find(m["sentence"]) >= 0
        # the raw report's sentence, less its identifiers
        assert len(m["sentence"]) <= len(" ".join(reports[m["report_id"]]["text"].split()))
        assert m["series"].isdigit() and m["instance"].isdigit() and m["modality"] in ("CT", "MR")
    rejects = read_csv(out / "rejects.csv")
    broken = {row["source"]: row["reason"] for row in rejects if row["source"].startswith("file:")}
    assert sorted(broken.values(), key=str)[:1] and len(broken) == 5
    assert sum(v.startswith("truncated") for v in broken.values()) == 2
    assert sum(v.startswith("no pixel data") for v in broken.values()) == 2
    assert any(v.startswith("unreadable") for v in broken.values())
    assert any(row["reason"].startswith("reference not found") for row in rejects)
    assert all(im.std() > 5 for im in images.values())

    # parallel workers and the Zarr format give the same rows; another salt gives other ids
    out2 = tmp_path / "keys2"
    r = cli("extract-keyimages", pacs / "dicom", "--reports", pacs / "reports.csv", "--out", out2, "--size", 64,
            "--workers", 2, "--format", "zarr", *SALT)
    assert r.code == 0, r.err
    manifest2, images2 = outputs(out2)
    assert manifest2 == manifest
    assert all(np.array_equal(images[k], images2[k]) for k in images)
    r = cli("extract-keyimages", pacs / "dicom", "--reports", pacs / "reports.csv", "--out", tmp_path / "k3",
            "--size", 32, "--salt", "other-salt-0123456789")
    assert r.code == 0
    ids3 = [m["id"] for m in read_csv(tmp_path / "k3" / "manifest.csv")]
    assert len(ids3) == len(manifest) and not set(ids3) & set(images)


def test_toy_pacs_all_slices_and_txt_reports(cli, pacs, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    for row in read_csv(pacs / "reports.csv"):
        (folder / f"{row['accession']}.txt").write_text(row["text"], encoding="utf-8")
    out = tmp_path / "all"
    r = cli("extract-keyimages", pacs / "dicom", "--reports", folder, "--all-slices", "--every", 4,
            "--out", out, "--size", 32, *SALT)
    assert r.code == 0, r.err
    manifest, _ = outputs(out)
    accessions = {row["accession"] for row in read_csv(pacs / "reports.csv")}
    # .txt reports: report id = stem = accession, which the outputs name by its pseudonym only
    assert {m["report_id"] for m in manifest} == {report_key(a) for a in accessions}
    assert not {m["report_id"] for m in manifest} & accessions
    unreferenced = [m for m in manifest if not m["sentence"]]
    assert unreferenced and len(manifest) > 60


# -- PHI: a study named after its patient ---------------------------------------------

PHI_NAME, PHI_ID, PHI_ACCESSION, PHI_BIRTH = "Doe^Jane", "PID884422", "ACC55731", "19230417"
PHI_STRINGS = ["Doe", "Jane", PHI_ID, PHI_ACCESSION, PHI_BIRTH, "1923", "17-04-1923", "April 17, 1923",
               "17/04/1923", "04/17/1923", "Doe_Jane_19230417"]


def patient_study(root: Path) -> tuple[Path, Path]:
    """``root/Doe_Jane_19230417/`` with a good CT, a broken file and a truncated one; and a report."""
    folder = root / "dicom" / "Doe_Jane_19230417"
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = PHI_NAME, PHI_ID, PHI_ACCESSION, PHI_BIRTH
    ds.save_as(folder / "Doe_Jane_19230417_ct1.dcm")
    (folder / "Doe_Jane_scout.dcm").write_bytes(b"Doe Jane 19230417: not a DICOM file" * 10)
    shutil.copy(data_file("MR_truncated.dcm"), folder / "Jane_Doe_mr.dcm")
    reports = root / "reports.csv"
    text = (f"Mrs. Doe (MRN {PHI_ID}, accession {PHI_ACCESSION}), born 17-04-1923, i.e. April 17, 1923 "
            f"(DOB {PHI_BIRTH}). Jane Doe has a 5 mm nodule on image {ds.InstanceNumber}, born 17/04/1923 "
            f"or 04/17/1923. No change on image 999. Dr Smith agrees.")
    with open(reports, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["report_id", "accession", "text"], ["R1", PHI_ACCESSION, text]])
    return root / "dicom", reports


def test_no_phi_from_a_study_named_after_its_patient(cli, tmp_path):
    import re

    dicom, reports = patient_study(tmp_path)
    out = tmp_path / "out"
    r = cli("extract-keyimages", dicom, "--reports", reports, "--out", out, "--size", 32, *SALT)
    assert r.code == 0, r.err
    manifest, _ = outputs(out)
    assert len(manifest) == 1 and "nodule" in manifest[0]["sentence"] and "[removed]" in manifest[0]["sentence"]
    rejects = read_csv(out / "rejects.csv")
    assert {row["reason"].split(":")[0] for row in rejects} >= {"unreadable", "truncated pixel data",
                                                                  "reference not found"}
    assert all(row["source"].startswith(("file:", "report:")) for row in rejects)
    blobs = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(blobs) == 5  # images, manifest, rejects, scrubbed reports, the record of what it wrote
    for secret in PHI_STRINGS:
        pattern = re.compile(rb"(?<![A-Za-z0-9])" + re.escape(secret.encode()) + rb"(?![A-Za-z0-9])", re.IGNORECASE)
        for path, blob in blobs.items():
            assert not pattern.search(blob), f"{secret!r} leaked into {path.name}"


@pytest.mark.parametrize("birth, written", [
    ("19230417", "1923-04-17"), ("19230417", "17-04-1923"), ("19230417", "17/04/1923"), ("19230417", "04/17/1923"),
    ("19230417", "17.04.1923"), ("19230417", "April 17, 1923"), ("19230417", "17 April 1923"),
    ("19230417", "Apr 17 1923"), ("19230417", "17th of April, 1923"), ("19230417", "4/17/23"),
    ("19230417", "19230417"), ("19230905", "Sept. 5, 1923"),
])
def test_birth_dates_are_scrubbed_in_every_common_form(birth, written):
    from ldpo.stages.extract_keyimages.phi import scrubber

    scrub = scrubber(dates=[birth])
    assert scrub(f"Born {written}, seen today.") == "Born [removed], seen today."


def test_names_ids_and_titles_are_scrubbed_but_not_medical_words():
    from ldpo.stages.extract_keyimages.phi import scrubber

    scrub = scrubber(names=["Doe", "Jane"], ids=["PID884422", "ACC55731"])
    text = scrub("Mrs. Doe and JANE (PID884422, ACC55731) seen by Dr Smith and MR. JONES; MR images, MS lesions.")
    assert text == ("[removed] and [removed] ([removed], [removed]) seen by [removed] and [removed]; "
                    "MR images, MS lesions.")  # no title left either


# -- every transfer syntax pydicom ships a sample of decodes ---------------------------

TRANSFER_SYNTAXES = [
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG Baseline (Process 1)
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG Extended (Process 2 and 4), 12-bit
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG Lossless P14 SV1, the PACS favourite
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),  # the same, 16-bit
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000 (lossy)
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE lossless
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),  # Deflated explicit VR little endian
    ("MR_small.dcm", "1.2.840.10008.1.2.1"),  # explicit VR little endian
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),  # implicit VR little endian
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),  # explicit VR big endian
]


@pytest.mark.parametrize("name, syntax", TRANSFER_SYNTAXES, ids=[n for n, _ in TRANSFER_SYNTAXES])
def test_every_transfer_syntax_decodes(cli, tmp_path, name, syntax):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom.dcmread(data_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    out = tmp_path / "out"
    r = cli("extract-keyimages", copy([name], tmp_path / "src"), "--out", out, "--size", 32, *SALT)
    assert r.code == 0, r.err
    _, images = outputs(out)
    assert len(images) >= 1 and all(im.std() > 1 for im in images.values())  # real pictures, not flat frames
    assert read_csv(out / "rejects.csv") == []


def test_an_object_no_decoder_reads_is_a_reject_with_its_reason(cli, tmp_path):
    """JPEG-lossy.dcm (JPEG Extended) defeats every installed decoder: a reject, the batch goes on."""
    out = tmp_path / "out"
    r = cli("extract-keyimages", copy(["JPEG-lossy.dcm", "MR_small.dcm"], tmp_path / "src"), "--out", out,
            "--size", 32, *SALT)
    assert r.code == 0, r.err
    (reject,) = read_csv(out / "rejects.csv")
    assert reject["source"] == file_pseudonym("JPEG-lossy.dcm")
    assert reject["reason"].startswith("pixel data cannot be decoded: Unable to decode")


def test_a_nan_window_or_an_all_nan_slice_is_a_reject_not_a_black_image(cli, tmp_path):
    import nibabel as nib

    src = copy(["MR_small.dcm"], tmp_path / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(data_file("MR_small.dcm"))
        ds.WindowCenter, ds.WindowWidth = "NaN", "400"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(src / "nan-window.dcm")
    volume = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
    volume[:, :, 1] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), src / "vol.nii.gz")
    out = tmp_path / "out"
    r = cli("extract-keyimages", src, "--out", out, "--size", 32, *SALT)
    assert r.code == 0, r.err
    manifest, images = outputs(out)
    assert sorted(m["modality"] for m in manifest) == ["MR", "NIFTI", "NIFTI"]  # slice 1 of the volume is gone
    assert all(im.max() > 0 for im in images.values())
    reasons = {row["source"]: row["reason"] for row in read_csv(out / "rejects.csv")}
    assert reasons == {file_pseudonym("nan-window.dcm"): "frame 0: WindowCenter is nan: the header's window is not "
                                                         "a finite number",
                       file_pseudonym("vol.nii.gz"): "frame 1: no finite pixel values (all NaN or infinite)"}


def test_an_output_folder_inside_the_source_is_not_read_back(cli, tmp_path):
    src = copy(["MR_small.dcm"], tmp_path / "src")
    for _ in range(2):
        r = cli("extract-keyimages", src, "--out", src / "keys", "--size", 32, *SALT)
        assert r.code == 0, r.err
    assert read_csv(src / "keys" / "rejects.csv") == []  # its own images.h5 was not taken for a broken DICOM


# -- issue 18 item 6: the manifest's header fields --------------------------------------------------------


@pytest.mark.parametrize("cosines, plane", [
    ([1, 0, 0, 0, 1, 0], "axial"), ([0, 1, 0, 0, 0, -1], "sagittal"), ([1, 0, 0, 0, 0, -1], "coronal"),
    ([1, 0, 0, 0, 0.94, -0.342], "axial"),  # tilted 20°: still axial
    ([1, 0, 0, 0, 0.7071, -0.7071], "oblique"),  # 45° between axial and coronal
    (["1", "0", "0", "0", "1", "0"], "axial"), (None, ""), ([1, 0, 0], ""), ([1, 0, 0, 1, 0, 0], ""),
    (["a"] * 6, ""), ([float("nan")] * 6, ""),
])
def test_orientation_from_the_direction_cosines(cosines, plane):
    from ldpo.stages.extract_keyimages.headers import orientation

    assert orientation(cosines) == plane


def test_header_fields_keep_only_their_vocabularies():
    from pydicom.dataset import Dataset

    from ldpo.stages.extract_keyimages.headers import body_part, dicom_orientation, modality, series_words, view

    assert [body_part(v) for v in ("L-Spine", "lumbar spine", "chest", "Thorax", "SMITH", "", None)] == \
        ["LSPINE", "LSPINE", "CHEST", "CHEST", "", "", ""]
    assert [view(v) for v in ("pa", "AP", "Lateral", "mlo", "Doe")] == ["PA", "AP", "LAT", "MLO", ""]
    assert [modality(v) for v in ("ct", "MR", "DX", "JANE", "")] == ["CT", "MR", "DX", "OT", ""]
    assert series_words("t1_mprage_sag_p2_iso") == "mprage sagittal t1"
    assert series_words("HEAD W/O") == "head noncontrast"
    assert series_words("ep2d_diff_3scan_trace ADC") == "adc dwi"
    assert series_words("AX T1 FS +C Anna Miller 4711") == "axial contrast fatsat t1"
    assert series_words("Post Emily AX", {"post", "emily"}) == "axial"  # a name part of the header is dropped
    assert series_words("") == "" and series_words(None) == ""
    enhanced = Dataset()
    group, plane = Dataset(), Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    group.PlaneOrientationSequence = [plane]
    enhanced.SharedFunctionalGroupsSequence = [group]
    assert dicom_orientation(enhanced) == "sagittal" and dicom_orientation(Dataset()) == ""


def test_nifti_and_image_files_leave_the_header_fields_empty(cli, tmp_path):
    import nibabel as nib
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 8, 2)).astype(np.float32), np.eye(4)),
             src / "vol.nii.gz")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(src / "a.png")
    r = cli("extract-keyimages", src, "--out", tmp_path / "out", "--size", 16, *SALT)
    assert r.code == 0, r.err
    manifest = read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == 3 and {m["modality"] for m in manifest} == {"NIFTI", ""}
    assert all(m[c] == "" for m in manifest for c in ("body_part", "view", "orientation", "series_words"))
