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
from ldpo.stages.toy_data.pacs.pixels import REGIONS
from ldpo.stages.toy_data.pacs.reports import VOCAB


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
    from ldpo.stages.toy_data.pacs.headers import BODY_PART_SPELLINGS
    from ldpo.stages.toy_data.pacs.studies import FIRST, LAST, OPERATORS

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


# -- --show-findings -------------------------------------------------------------------------------------------

#: sha256 over every file (relative path + bytes) of ``generate(studies=12, size=32, seed=3)``, computed with the
#: generator as it was before --show-findings existed: without the flag the output must stay byte-identical
PLAIN_DIGEST = "b5f4b52d8bc8e87c785defe85b5c74dd384133879086a47a4c5134c40405c758"


def tree_digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_without_show_findings_output_is_unchanged(tmp_path):
    from ldpo.stages.toy_data.pacs import generate

    generate(tmp_path, studies=12, size=32, seed=3, show_progress=False)
    assert tree_digest(tmp_path) == PLAIN_DIGEST


@pytest.fixture(scope="module")
def with_findings(tmp_path_factory):
    """The same toy PACS twice, plain and --show-findings, and the tissue masks the drawing changed, in order."""
    from ldpo.stages.toy_data import pacs as toy
    from ldpo.stages.toy_data.pacs import pixels

    out = tmp_path_factory.mktemp("findings")
    toy.generate(out / "plain", studies=10, size=32, seed=3, show_progress=False)
    drawn = []
    original = pixels.draw_findings

    def recording(tissue, x, y, findings, rng):
        after = original(tissue, x, y, findings, rng)
        drawn.append((findings, after != tissue))
        return after

    mp = pytest.MonkeyPatch()
    mp.setattr(pixels, "draw_findings", recording)
    try:
        toy.generate(out / "shown", studies=10, size=32, seed=3, show_progress=False, show_findings=True)
    finally:
        mp.undo()
    return out, drawn


def pixels(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path).pixel_array.astype(np.int64)


def expected_findings(seed: int = 3, studies: int = 10) -> dict[tuple[int, int, int], tuple[str, ...]]:
    """(study index, series, instance) → kinds drawn, from the plans the generator makes (in writing order)."""
    from ldpo.stages.toy_data.pacs import reports as toy_reports, studies as toy_studies

    rng = np.random.default_rng([seed, 0])
    regions = [REGIONS[i % len(REGIONS)] for i in range(studies)]
    regions = [regions[i] for i in rng.permutation(studies)]
    plans = [toy_studies.plan_study(i, r, np.random.default_rng([seed, i, 0])) for i, r in enumerate(regions)]
    toy_studies.plan_patients(plans, seed)
    out = {}
    for st in plans:
        _, shown = toy_reports.report_and_findings(st, np.random.default_rng([seed, st.index, 5]), seed)
        for s in st.series:
            for i in s.instances:
                if shown.get((s.number, i)):
                    out[(st.index, s.number, i)] = shown[(s.number, i)]
    return out


def test_show_findings_changes_key_images_exactly_where_drawn(with_findings):
    out, drawn = with_findings
    expected = expected_findings()
    assert len(drawn) == len(expected) >= 10
    changed = 0
    for key, (kinds, mask) in zip(expected, drawn):  # written study by study, series by series, slice by slice
        index, series, instance = key
        assert kinds == expected[key]
        rel = Path("dicom") / f"ST{index + 1:04d}" / f"SE{series:04d}" / f"IM{instance:04d}.dcm"
        diff = pixels(out / "plain" / rel) != pixels(out / "shown" / rel)
        assert mask.any(), f"{rel}: {kinds} drew nothing"
        assert not (diff & ~mask).any(), f"{rel}: pixels changed outside the drawn findings"
        assert diff.sum() >= 0.5 * mask.sum(), f"{rel}: most drawn pixels must be visible"
        changed += 1
    # every other image (not referenced, or its sentences affirm nothing drawable) is byte-identical
    keys = {(f"ST{i + 1:04d}", f"SE{s:04d}", f"IM{n:04d}.dcm") for i, s, n in expected}
    for path in sorted((out / "plain" / "dicom").rglob("*")):
        if path.is_file() and path.relative_to(out / "plain" / "dicom").parts not in keys:
            assert (out / "shown" / path.relative_to(out / "plain")).read_bytes() == path.read_bytes(), path
    assert (out / "plain" / "reports.csv").read_bytes() == (out / "shown" / "reports.csv").read_bytes()
    assert changed == len(expected)


def test_drawn_findings_are_the_affirmed_ones():
    """Every drawing stands for a finding the image's context affirms (as ldpo.common.nlp.mentions reads it); an image
    whose context affirms no finding, only negated or uncertain ones, shows nothing."""
    from ldpo.common.nlp.mentions import find_mentions, load_vocabulary
    from ldpo.stages.toy_data.pacs import reports as toy_reports, studies as toy_studies

    vocab = load_vocabulary()
    checked = {"drawn": 0, "hedged only": 0, "affirmed, not drawable": 0}
    for seed in (3, 4):
        plans = [toy_studies.plan_study(i, REGIONS[i % 5], np.random.default_rng([seed, i, 0])) for i in range(15)]
        toy_studies.plan_patients(plans, seed)
        for st in plans:
            text, shown = toy_reports.report_and_findings(st, np.random.default_rng([seed, st.index, 5]), seed)
            contexts: dict[tuple[int, int], set[str]] = {}  # image → statuses of its sentences' contexts
            for m in mentions(text):
                statuses = {x.status for x in find_mentions(m.context, vocab)}
                for ref in m.references:
                    series = ref.series if ref.series is not None else st.series[0].number
                    for i in ref.images:
                        contexts.setdefault((series, i), set()).update(statuses)
            for key, kinds in shown.items():
                statuses = contexts.get(key, set())
                if kinds:
                    assert "affirmed" in statuses, (st.index, key, kinds)
                    checked["drawn"] += 1
                elif statuses:
                    checked["hedged only" if "affirmed" not in statuses else "affirmed, not drawable"] += 1
            for key, statuses in contexts.items():
                if statuses and "affirmed" not in statuses:
                    assert not shown.get(key), (st.index, key)
    assert checked["drawn"] >= 20 and checked["hedged only"] >= 5, checked


def test_negated_and_uncertain_sentences_draw_nothing():
    from ldpo.stages.toy_data.pacs.reports import HEDGED, SHOWN

    hedged = {t for table in HEDGED.values() for part in ("negated", "uncertain") for t in table[part]}
    assert not hedged & set(SHOWN)
    assert {t for table in VOCAB.values() for t in table["normal"]}.isdisjoint(SHOWN)
    templates = {t for table in VOCAB.values() for t in table["findings"]} | \
        {t for table in HEDGED.values() for t in table["synonyms"]}
    assert set(SHOWN) <= templates  # no stale key: every entry is a sentence the reports are written from


def test_show_findings_option(cli, tmp_path):
    assert "--show-findings" in cli("toy-data", "pacs", "--help").out
    assert cli("toy-data", "pacs", "--out", tmp_path / "a", "--studies", "5", "--size", "32", "-q").code == 0
    assert cli("toy-data", "pacs", "--out", tmp_path / "b", "--studies", "5", "--size", "32", "-q",
               "--show-findings").code == 0
    a, b = (sorted((tmp_path / d / "dicom").rglob("IM*.dcm")) for d in "ab")
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert sum(x.read_bytes() != y.read_bytes() for x, y in zip(a, b)) >= 5
