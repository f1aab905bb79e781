"""``toy-data pacs``: a small fake PACS whose pixels and words depend on the body region."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ldpo.stages.extract_keyimages.references import mentions
from ldpo.stages.toy_data.pacs import REGIONS, VOCAB


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    from ldpo.stages import run

    out = tmp_path_factory.mktemp("pacs")
    assert run(["toy-data", "pacs", "--out", str(out), "--studies", "10", "--seed", "3", "-q"]) == 0
    return out


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def datasets(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(root.rglob("*.dcm")):
            yield path, pydicom.dcmread(path, defer_size=64)


def test_layout_and_csv_headers(pacs):
    with open(pacs / "reports.csv", encoding="utf-8") as fh:
        assert fh.readline().strip() == "report_id,accession,text"
    with open(pacs / "regions.csv", encoding="utf-8") as fh:
        assert fh.readline().strip() == "accession,region"
    reports, regions = rows(pacs / "reports.csv"), rows(pacs / "regions.csv")
    assert [r["report_id"] for r in reports] == [f"r{i:04d}" for i in range(1, 11)]
    assert {r["accession"] for r in reports} == {r["accession"] for r in regions}
    assert Counter(r["region"] for r in regions) == {region: 2 for region in REGIONS}
    studies = sorted(p.name for p in (pacs / "dicom").iterdir())
    assert studies == [f"ST{i:04d}" for i in range(1, 11)]


def test_tags_storage_and_variety(pacs):
    accessions = {r["accession"] for r in rows(pacs / "regions.csv")}
    seen = Counter()
    for path, ds in datasets(pacs / "dicom"):
        if "PixelData" not in ds or path.name.startswith(("SR", "PR")):
            continue
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
                    "SOPInstanceUID", "AccessionNumber", "SeriesNumber", "InstanceNumber", "WindowCenter"):
            assert tag in ds, f"{path}: no {tag}"
        assert ds.AccessionNumber in accessions
        seen[ds.Modality] += 1
        seen[ds.PhotometricInterpretation] += 1
        seen["multi-window"] += ds["WindowCenter"].VM > 1
        if ds.Modality == "CT":
            assert "RescaleSlope" in ds and "RescaleIntercept" in ds
            seen[f"intercept {ds.RescaleIntercept}"] += 1
    assert seen["CT"] > 0 and seen["MR"] > 0
    assert seen["MONOCHROME1"] > 0 and seen["MONOCHROME2"] > 0
    assert seen["multi-window"] > 0
    assert len([k for k in seen if k.startswith("intercept")]) >= 2  # more than one storage style


def test_ct_values_are_hounsfield_units(pacs):
    from pydicom.pixels import apply_modality_lut

    for path, ds in datasets(pacs / "dicom"):
        if getattr(ds, "Modality", "") == "CT" and "PixelData" in ds:
            try:
                hu = apply_modality_lut(pydicom.dcmread(path).pixel_array, ds)
            except ValueError:
                continue  # the truncated object
            assert hu.min() < -900  # air around the body
            assert hu.max() > 300  # bone
            return
    pytest.fail("no CT image")


def test_pixels_depend_on_region(pacs):
    """Images of one region are nearer their own region's mean than any other's (raw 16-px thumbnails)."""
    from pydicom.pixels import apply_modality_lut

    region = {r["accession"]: r["region"] for r in rows(pacs / "regions.csv")}
    thumbs, labels = [], []
    for path, ds in datasets(pacs / "dicom"):
        if getattr(ds, "Modality", "") != "CT" or "PixelData" not in ds:
            continue
        try:
            hu = apply_modality_lut(pydicom.dcmread(path).pixel_array, ds)
        except ValueError:
            continue
        thumbs.append(np.clip(hu, -1000, 1000)[::4, ::4].ravel())
        labels.append(region[ds.AccessionNumber])
    x, y = np.array(thumbs), np.array(labels)
    names = sorted(set(y))
    assert len(names) >= 3
    means = np.stack([x[y == n].mean(0) for n in names])
    nearest = np.array(names)[((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == y).mean() > 0.9


def test_reports_use_region_words_and_reference_images(pacs):
    region = {r["accession"]: r["region"] for r in rows(pacs / "regions.csv")}
    marker = {"head": "brain", "chest": "lung", "abdomen": "liver", "spine": "lumbar", "pelvis": "pelvi"}
    own, other = 0, 0
    for report in rows(pacs / "reports.csv"):
        text = report["text"].lower()
        reg = region[report["accession"]]
        own += sum(w in text for w in [marker[reg]] + VOCAB[reg]["exam"].lower().split())
        other += sum(marker[r] in text for r in REGIONS if r != reg)
        images = [i for m in mentions(report["text"]) for ref in m.references for i in ref.images]
        assert 4 <= len(images) <= 12, report["report_id"]
        assert any(ch.isdigit() for ch in text.split("findings")[0])  # dates and measurements
    assert own >= 15 and other <= 2


def test_broken_objects_are_there(pacs):
    from pydicom.errors import InvalidDicomError

    kinds = Counter()
    for path in sorted((pacs / "dicom").rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, defer_size=64)
        except InvalidDicomError:
            kinds["not dicom"] += 1
            continue
        if "PixelData" not in ds:
            kinds[f"no pixels {ds.Modality}"] += 1
            continue
        raw = ds._dict[0x7FE00010]
        if raw.value_tell + raw.length > path.stat().st_size:
            kinds["truncated"] += 1
    assert kinds == {"not dicom": 1, "no pixels SR": 1, "no pixels PR": 1, "truncated": 2}


def test_same_seed_same_bytes(pacs, tmp_path):
    from ldpo.stages import run

    assert run(["toy-data", "pacs", "--out", str(tmp_path), "--studies", "10", "--seed", "3", "-q"]) == 0
    assert (tmp_path / "reports.csv").read_bytes() == (pacs / "reports.csv").read_bytes()
    first = sorted((pacs / "dicom").rglob("*.dcm"))[7]
    assert (tmp_path / first.relative_to(pacs)).read_bytes() == first.read_bytes()
    assert run(["toy-data", "pacs", "--out", str(tmp_path / "b"), "--studies", "10", "--seed", "4", "-q"]) == 0
    assert (tmp_path / "b" / "reports.csv").read_bytes() != (pacs / "reports.csv").read_bytes()


def test_bad_arguments_exit_2(cli, tmp_path):
    r = cli("toy-data", "pacs", "--out", tmp_path, "--studies", "0")
    assert r.code == 2 and "--studies" in r.err and len(r.err.strip().splitlines()) == 1


def test_header_fields_for_the_quality_signal(pacs):
    """BodyPartExamined per region (in several spellings, sometimes absent), ImageOrientationPatient (the spine
    phantom is sagittal), SeriesDescription of imaging words, into which a name is sometimes typed."""
    from ldpo.stages.toy_data.pacs import BODY_PART_SPELLINGS, FIRST, LAST, OPERATORS

    region_of = {r["accession"]: r["region"] for r in rows(pacs / "regions.csv")}
    people = set(FIRST) | set(LAST) | {p for o in OPERATORS for p in o.split("^")}
    parts, named = Counter(), 0
    for path, ds in datasets(pacs / "dicom"):
        if "PixelData" not in ds or path.name.startswith(("SR", "PR")):
            continue
        region = region_of[ds.AccessionNumber]
        if "BodyPartExamined" in ds:
            assert ds.BodyPartExamined in BODY_PART_SPELLINGS[region]
            parts[region] += 1
        iop = [float(v) for v in ds.ImageOrientationPatient]
        assert iop == ([0, 1, 0, 0, 0, -1] if region == "spine" else [1, 0, 0, 0, 1, 0])
        words = set(str(ds.SeriesDescription).upper().replace("^", " ").split())
        assert words - people  # imaging words are always there
        named += bool(words & people)
    assert set(parts) == set(REGIONS) and named > 0
