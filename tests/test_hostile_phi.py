"""Issue 22, items 9–12 (and the PHI-side halves of 18 and 25): no patient identifier in any output.

* item 9: a full PACS run (toy-data pacs with identifiers → extract-keyimages →
  topic-label → the loop with reports → report → export-folders); every byte of every
  output, the report folder included, is searched for the study's identifiers;
* item 10: each scrubbing gap (a referring physician without a title, in every written
  form; the institution; the exam date in every format; another study's accession; the
  title itself; the other identifying attributes of the DICOM basic profile, across
  every study of the patient), and the pattern layer for reports that never met a
  header;
* item 11: accession-keyed reports get pseudonymous ``report_id``s;
* item 12: without ``--salt``, a random key in a 0600 file beside (never in) the outputs,
  reused by later runs;
* item 18: ``topic-label --topics`` bounded by the data, no temporary of a temporary;
* item 25: a failed ``extract-keyimages`` removes the folders it created, nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest

from helpers import header_identifiers, loop_env, read_csv, write_csv

ROOT = Path(__file__).resolve().parents[1]
LOOP = ROOT / "pipelines/ldpo-loop.sh"
BIN = Path(sys.executable).parent


def leaks(folders: list[Path], secrets: set[str]) -> list[str]:
    """Where any secret occurs in any file under ``folders``: in text files case-insensitively between
    non-alphanumerics; in binary files (stores, checkpoints, PNGs) as bytes in its usual spellings, for
    secrets of 6 characters or more (shorter byte strings occur by chance in megabytes of weights)."""
    found = []
    files = [p for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()]
    assert files
    for path in files:
        blob = path.read_bytes()
        try:
            text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "", blob.decode("utf-8"))
        except UnicodeDecodeError:
            text = None
        for secret in secrets:
            if text is not None:
                pattern = re.compile(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", re.IGNORECASE)
                if pattern.search(text):
                    found.append(f"{secret!r} in {path}")
            elif len(secret) >= 6:
                for form in {secret, secret.upper(), secret.lower(), secret.title()}:
                    if form.encode() in blob:
                        found.append(f"{form!r} (bytes) in {path}")
    return found


# -- item 9: a full PACS run, every output byte -------------------------------------------------------


@pytest.fixture(scope="module")
def pacs_run(tmp_path_factory):
    """toy PACS → extract-keyimages (no --salt) → topic-label → loop with reports (tree by reports, keywords,
    report) → export-folders, in one folder; returns (root, the outputs' folders)."""
    from ldpo.stages import run

    root = tmp_path_factory.mktemp("phi-run")
    env = {k: v for k, v in loop_env().items() if k != "LDPO_SALT"}

    def sh(*argv):
        proc = subprocess.run([str(a) for a in argv], env=env, cwd=root, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    assert run(["toy-data", "pacs", "--out", str(root / "pacs"), "--studies", "10", "--size", "32", "--seed", "5",
                "-q"]) == 0
    extract = sh("ldpo", "extract-keyimages", "pacs/dicom", "--reports", "pacs/reports.csv", "--out", "keys",
                 "--size", "32")
    sh("ldpo", "topic-label", "keys/reports.csv", "--manifest", "keys/manifest.csv", "--out", "topics/labels.csv",
       "--topics", "3", "--model-dir", "topics/model", "-q")
    sh("bash", LOOP, "--images", "keys/images.h5", "--work", "run", "--init-labels", "topics/labels.csv",
       "--reports", "keys/reports.csv", "--manifest", "keys/manifest.csv", "--k", "3", "--max-iter", "1",
       "--epochs", "1", "--input-size", "32", "--batch-size", "32", "--device", "cpu", "--split", "none",
       "--tree-affinity", "reports", "--tree-preference", "0.9")
    sh("ldpo", "export-folders", "run/final/labels.csv", "keys/images.h5", "--out", "export", "-q")
    return root, [root / "keys", root / "topics", root / "run", root / "export"], extract.stderr


def test_no_identifier_of_the_archive_in_any_output_of_a_full_pacs_run(pacs_run):
    root, outputs, _ = pacs_run
    assert (root / "run/report/index.html").exists() and (root / "run/final/keywords/keywords.csv").exists()
    assert any((root / "export").iterdir())
    secrets = header_identifiers(root / "pacs/dicom")
    raw = read_csv(root / "pacs/reports.csv")
    priors = {a for r in raw for a in re.findall(r"prior study (A\d{7})", r["text"])}
    assert priors - secrets  # some prior accessions are from outside the archive: no header names them
    secrets |= priors
    # the toy archive says all of it in its reports: names with titles, MRNs, DOBs, exam dates, physicians
    text = " ".join(r["text"] for r in raw)
    assert re.search(r"\b(?:Mr|Mrs|Ms)\. [A-Z][a-z]+", text) and "MRN" in text and "Saint Elsewhere" in text
    assert sum(s in text for s in secrets) > 40
    # some of it only the headers can find (a physician named without a title or a label)
    from ldpo.common.nlp.phi import scrub_text

    assert any(re.search(r"\b" + re.escape(s) + r"\b", scrub_text(r["text"]), re.IGNORECASE)
               for r in raw for s in secrets)
    assert not leaks(outputs, secrets)


def test_the_medical_words_survive(pacs_run):
    """Scrubbing keeps what the keywords and topics are for: the body regions' words."""
    root, _, _ = pacs_run
    regions = {"brain", "cerebral", "lung", "lungs", "pulmonary", "liver", "kidney", "lumbar", "spine", "vertebral",
               "pelvis", "bladder", "prostate", "uterus", "disc", "lobe", "hepatic", "pleural"}
    keywords = {row["word"] for row in read_csv(root / "run/final/keywords/keywords.csv")}
    topics = {row["word"] for row in read_csv(root / "topics/labels.topics.csv")}
    assert len(keywords & regions) >= 3, keywords
    assert len(topics & regions) >= 5, topics
    reports = read_csv(root / "keys/reports.csv")
    assert "[removed]" in reports[0]["text"] and "FINDINGS" in reports[0]["text"]


def test_scrubbed_reports_are_marked_and_joined_by_pseudonyms(pacs_run):
    from ldpo.common.nlp.phi import SCRUBBED_MARK
    from ldpo.common.nlp.text import read_reports

    root, _, stderr = pacs_run
    reports = read_csv(root / "keys/reports.csv")
    assert list(reports[0]) == ["report_id", "text", "scrubbed"]
    assert all(r["scrubbed"] == SCRUBBED_MARK for r in reports) and len(reports) == 10
    assert read_reports(root / "keys/reports.csv").scrubbed
    assert not read_reports(root / "pacs/reports.csv").scrubbed
    manifest = read_csv(root / "keys/manifest.csv")
    assert {m["report_id"] for m in manifest} == {r["report_id"] for r in reports}
    raw = read_csv(root / "pacs/reports.csv")
    assert not {r["report_id"] for r in reports} & {x for r in raw for x in (r["report_id"], r["accession"])}
    assert "reports.csv" in stderr


def test_the_key_file_is_beside_the_outputs_and_in_none_of_them(pacs_run):
    root, outputs, stderr = pacs_run
    key_file = root / ".ldpo-salt"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert str(key_file) in stderr or ".ldpo-salt" in stderr
    assert not leaks(outputs, {key})
    assert not any(p.name == ".ldpo-salt" for folder in outputs for p in folder.rglob("*"))


# -- item 10: each scrubbing gap, through extract-keyimages ----------------------------------------------


def data_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path, name
    return Path(path)


def two_studies(root: Path, first: dict, second: dict | None = None) -> Path:
    """``root/dicom``: a CT of one patient (``first`` header values); ``second``: an earlier study of the same
    patient (another StudyInstanceUID and accession) with its own header values."""
    folder = root / "dicom"
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Doe^Jane", "PID884422", "ACC55731"
    ds.PatientBirthDate = "19230417"
    for key, value in first.items():
        setattr(ds, key, value)
    ds.save_as(folder / "ct1.dcm")
    if second is not None:
        ds.StudyInstanceUID, ds.SOPInstanceUID = ds.StudyInstanceUID + ".9", ds.SOPInstanceUID + ".9"
        ds.AccessionNumber = "B7654321"
        for key, value in second.items():
            setattr(ds, key, value)
        ds.save_as(folder / "ct0.dcm")
    return folder


def extract_one(cli, root: Path, text: str, first: dict, second: dict | None = None) -> tuple[str, list[Path]]:
    """Extract the key image a report names with ``text`` in its referencing sentence; return what the
    outputs say (every file's text) and the files."""
    dicom = two_studies(root, first, second)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instance = pydicom.dcmread(dicom / "ct1.dcm").InstanceNumber
    reports = write_csv(root / "reports.csv", [["report_id", "accession", "text"],
                                               ["R1", "ACC55731", f"Exam of the chest. {text} A 5 mm nodule of the "
                                                                  f"lung on image {instance}. No effusion."]])
    out = root / "out"
    r = cli("extract-keyimages", dicom, "--reports", reports, "--out", out, "--size", 32, "--salt", "s-salt-0123456789ab", "-q")
    assert r.code == 0, r.err
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = read_csv(out / "manifest.csv")
    assert len(manifest) >= 1 and "nodule" in manifest[0]["context"] and "lung" in manifest[0]["context"]
    said = "\n".join(p.read_bytes().decode("latin-1") for p in files)
    return said, files


GAPS = {
    # referring physician without a title, in every written form, and each part alone
    "referring-first-last": ({"ReferringPhysicianName": "SMITH^JOHN"}, "Discussed with John Smith today.",
                             ["John", "Smith"]),
    "referring-last-first": ({"ReferringPhysicianName": "SMITH^JOHN"}, "Smith, John agrees.", ["John", "Smith"]),
    "referring-pn": ({"ReferringPhysicianName": "SMITH^JOHN"}, "Copy: SMITH^JOHN.", ["John", "Smith"]),
    "referring-part": ({"ReferringPhysicianName": "Smith^John"}, "Smith saw it.", ["Smith"]),
    "institution": ({"InstitutionName": "Saint Elsewhere Hospital"},
                    "Seen at Saint Elsewhere Hospital, also called Saint Elsewhere.", ["Saint Elsewhere", "Elsewhere"]),
    "institution-address": ({"InstitutionAddress": "12 Main Street, Springfield"},
                            "Sent from 12 Main Street, Springfield.", ["Main Street", "Springfield"]),
    **{f"exam-date-{i}": ({"StudyDate": "20220311"}, f"Exam date {form}.", [form])
       for i, form in enumerate(["20220311", "03/11/2022", "3/11/22", "2022-03-11", "March 11, 2022",
                                 "11 Mar 2022"])},
    "series-date": ({"SeriesDate": "20230418", "AcquisitionDate": "20230419"}, "Scanned 4/18/23 and April 19, 2023.",
                    ["4/18/23", "April 19"]),
    "title-itself": ({}, "Mrs. Doe is well.", ["Mrs", "Doe"]),
    "other-annex-e-names": ({"PerformingPhysicianName": "Okonkwo^David", "OperatorsName": "Novak^Irena",
                             "NameOfPhysiciansReadingStudy": "Larsen^Ingrid"},
                            "Done by David Okonkwo and Irena Novak, read by Ingrid Larsen.",
                            ["Okonkwo", "David", "Novak", "Irena", "Larsen", "Ingrid"]),
    "other-ids-and-address": ({"OtherPatientIDs": "H5544332", "PatientAddress": "9 Birch Street, Riverton"},
                              "Hospital number H5544332, of 9 Birch Street, Riverton.",
                              ["H5544332", "Birch Street", "Riverton"]),
}


@pytest.mark.parametrize("case", list(GAPS))
def test_scrubbing_gap(cli, tmp_path, case):
    header, text, secrets = GAPS[case]
    said, _ = extract_one(cli, tmp_path, text, header)
    for secret in secrets:
        assert not re.search(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", said, re.IGNORECASE), \
            (secret, said)


def test_another_study_of_the_patient_counts(cli, tmp_path):
    """Its accession (in the archive), its names and dates are removed from this study's report; an accession
    from outside the archive is removed by its label or its shape."""
    text = ("Compared with study B7654321 of 3/2/21 (the accession then), and ACC999 and accession ZZ4711, read by "
            "Priya Patel as Mrs. Jane Roe.")
    said, _ = extract_one(cli, tmp_path, text, {}, {"StudyDate": "20210302", "ReferringPhysicianName": "PATEL^PRIYA",
                                                    "OtherPatientNames": "Roe^Jane"})
    for secret in ["B7654321", "3/2/21", "Priya", "Patel", "Roe", "ZZ4711"]:
        assert not re.search(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", said, re.IGNORECASE), \
            (secret, said)


def test_a_department_is_removed_whole_and_takes_no_medical_word(cli, tmp_path):
    said, _ = extract_one(cli, tmp_path, "Read in Chest Imaging of Saint Elsewhere.",
                          {"InstitutionalDepartmentName": "Chest Imaging", "InstitutionName": "Saint Elsewhere Hospital"})
    assert "Chest Imaging" not in said and "Elsewhere" not in said
    text = read_csv(tmp_path / "out/reports.csv")[0]["text"]
    assert text.startswith("Exam of the chest. Read in [removed] of [removed].")


def test_a_name_in_the_header_fields_never_reaches_the_manifest(cli, tmp_path):
    """Issue 18 item 6: the manifest's header fields (body_part, view, orientation, series_words) come from fixed
    allow-lists, so a name typed into SeriesDescription, BodyPartExamined or ViewPosition (or Modality) is
    dropped, whether the header names that person elsewhere (Doe Jane, the patient) or not (Kowalczyk)."""
    header = {"SeriesDescription": "AX T2 FLAIR+C Doe^Jane per Kowalczyk Zbigniew 5MM",
              "BodyPartExamined": "DOE", "ViewPosition": "KOWALCZYK", "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}
    said, _ = extract_one(cli, tmp_path, "Seen.", header)
    row = read_csv(tmp_path / "out/manifest.csv")[0]
    assert row["series_words"] == "axial contrast flair t2" and row["orientation"] == "axial"
    assert row["body_part"] == "" and row["view"] == ""
    for secret in ["Doe", "Jane", "Kowalczyk", "Zbigniew"]:
        assert not re.search(r"(?<![A-Za-z0-9])" + secret + r"(?![A-Za-z0-9])", said, re.IGNORECASE), (secret, said)
    # an imaging word that is also a part of the patient's name is dropped too; Modality outside the defined terms
    # is written as OT ("other"), never as given
    shutil.rmtree(tmp_path / "dicom")
    shutil.rmtree(tmp_path / "out")
    said, _ = extract_one(cli, tmp_path, "Seen.", {"PatientName": "Chest^Brain", "Modality": "JANEDOE",
                                                   "SeriesDescription": "CHEST CT BRAIN",
                                                   "BodyPartExamined": "L SPINE"})
    row = read_csv(tmp_path / "out/manifest.csv")[0]
    assert row["series_words"] == "ct" and row["modality"] == "OT" and row["body_part"] == "LSPINE"
    assert "JANEDOE" not in said.upper()


def test_names_typed_into_the_toy_archive_series_descriptions_reach_no_output(pacs_run):
    """The toy PACS types the operator's, the patient's or another person's name into some SeriesDescriptions;
    the manifest's series_words hold only allow-listed words, and no such name is in any output."""
    from ldpo.stages.extract_keyimages.headers import SERIES_WORDS
    from ldpo.stages.toy_data.pacs.studies import FIRST, LAST, OPERATORS

    root, outputs, _ = pacs_run
    people = {n for n in FIRST + LAST} | {p for o in OPERATORS for p in o.split("^")}
    typed = set()
    for path in sorted((root / "pacs/dicom").rglob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        typed |= set(re.split(r"[^A-Z]+", str(ds.get("SeriesDescription", "")).upper())) & people
    assert typed, "the toy archive typed no name into a SeriesDescription"
    manifest = read_csv(root / "keys/manifest.csv")
    words = {w for m in manifest for w in m["series_words"].split()}
    assert words and words <= set(SERIES_WORDS.values())
    assert {m["orientation"] for m in manifest} == {"axial", "sagittal"}
    assert {m["body_part"] for m in manifest} - {""} <= {"HEAD", "BRAIN", "CHEST", "ABDOMEN", "LSPINE", "PELVIS"}
    assert not leaks(outputs, typed)
    # the loop (given the manifest) measured each iteration against the fields, and the report shows it
    fields = read_csv(root / "run/history.fields.csv")
    assert {"modality", "body_part", "orientation", "series_words"} <= {r["field"] for r in fields}
    assert {r["iteration"] for r in fields} == {r["iteration"] for r in read_csv(root / "run/history.csv")}
    assert "Agreement with DICOM header fields" in (root / "run/report/index.html").read_text()


def test_the_issue_report_leaves_nothing_through_extract_keyimages(cli, tmp_path):
    """The report of the issue, through the recommended path: everything named goes, the medical words stay."""
    text = ("Mrs. Doe (MRN123456, accession ACC999, DOB 04/17/1923) was seen by Dr. Smith (John Smith) of Saint "
            "Elsewhere Hospital; call 555-867-5309.")
    said, files = extract_one(cli, tmp_path, text, {"PatientID": "123456", "ReferringPhysicianName": "Smith^John",
                                                    "InstitutionName": "Saint Elsewhere Hospital"})
    for secret in ["Doe", "MRN123456", "123456", "ACC999", "04/17/1923", "Smith", "John", "Elsewhere", "Mrs",
                   "867-5309", "1923"]:
        assert not re.search(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", said, re.IGNORECASE), \
            (secret, said)
    assert {p.name for p in files} == {"images.h5", "manifest.csv", "rejects.csv", "reports.csv", ".ldpo-output.json"}
    text = read_csv(tmp_path / "out/reports.csv")[0]["text"]
    assert "nodule" in text and "lung" in text and "chest" in text


# -- item 10, the pattern layer: reports that never met a header ------------------------------------------

PATTERNS = {
    "MRN123456 and MRN: 654321 and MRN 777888": ["MRN123456", "654321", "777888"],
    "accession ACC999, Acc #: 12-3456, accession number A1234567": ["ACC999", "12-3456", "A1234567"],
    "born 04/17/1923, seen 2023-04-17, 4/17/23, April 17, 2023, 17 Apr 2023, 17th of April 1923, 20230417":
        ["04/17/1923", "2023-04-17", "4/17/23", "April 17", "17 Apr", "17th", "20230417", "1923"],
    "call (555) 867-5309 or 555.867.5309, pager: 4471, tel +1 555 867 5309": ["867", "5309", "4471"],
    "Mrs. Doe, Dr J. Smith and MR. JONES; Mrs. [removed] again": ["Doe", "Smith", "JONES", "Mrs", "Dr"],
    "Referring physician: John Smith. Electronically signed by Robert Chen on Monday.": ["John", "Smith", "Robert",
                                                                                       "Chen"],
    "seen at Saint Elsewhere Hospital and St. Mary's Medical Center": ["Elsewhere", "Mary"],
    "jane.doe@example.org, SMITH^JOHN, study 1.2.840.113619.2.55.3": ["jane", "example", "SMITH", "113619"],
}


@pytest.mark.parametrize("text", list(PATTERNS))
def test_raw_reports_are_scrubbed_by_pattern_on_reading(tmp_path, text):
    from ldpo.common.nlp.text import read_reports

    path = write_csv(tmp_path / "reports.csv", [["report_id", "text"], ["r1", f"Liver lesion. {text}. MR images, "
                                                                              f"MS lesions, T2 signal."]])
    reports = read_reports(path)
    assert not reports.scrubbed
    scrubbed = reports["r1"]
    for secret in PATTERNS[text]:
        assert not re.search(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", scrubbed,
                             re.IGNORECASE), (secret, scrubbed)
    assert scrubbed.startswith("Liver lesion.") and scrubbed.endswith("MR images, MS lesions, T2 signal.")


def test_manifest_text_is_scrubbed_on_reading(tmp_path):
    from ldpo.common.nlp.text import read_manifest

    path = write_csv(tmp_path / "m.csv", [["id", "report_id", "sentence", "context"],
                                          ["i1", "r1", "Nodule, Mrs. Doe, MRN123456.", "Seen 04/17/2023."]])
    row = read_manifest(path).rows[0]
    assert row["sentence"] == "Nodule, [removed], [removed]." and row["context"] == "Seen [removed]."


def issue_corpus(folder: Path) -> tuple[Path, Path, Path, Path]:
    """The issue's reports (raw, pattern-detectable identifiers), their manifest, labels and an images store."""
    import numpy as np

    from ldpo.common.files.labels import write_labels
    from ldpo.common.files.stores import write_store

    regions = ["liver hepatic lesion", "lung pulmonary nodule", "brain cerebral hemorrhage"]
    rows, manifest, ids = [["report_id", "text"]], [["id", "report_id"]], []
    for i in range(12):
        rows.append([f"r{i}", f"Mrs. Doe (MRN123456, accession ACC999, DOB 04/17/1923): {regions[i % 3]} seen, "
                              f"{regions[i % 3].split()[0]} again. Dr. Smith of Saint Elsewhere Hospital, "
                              f"555-867-5309, on April 17, 2023."])
        manifest.append([f"i{i}", f"r{i}"])
        ids.append(f"i{i}")
    reports = write_csv(folder / "reports.csv", rows)
    manifest_path = write_csv(folder / "manifest.csv", manifest)
    labels = folder / "labels.csv"
    write_labels(labels, ids, [i % 3 for i in range(12)])
    images = folder / "images.h5"
    write_store(images, ids, {"stage": "test"}, images=np.zeros((12, 8, 8), np.uint8))
    return reports, manifest_path, labels, images


def test_keywords_and_topics_of_raw_reports_hold_no_identifier(cli, tmp_path):
    """The issue's page showed ``doe (6) smith (5) acc999 (4) mrn123456 (4)``; raw reports are now scrubbed on
    reading, and the run ends with a warning pointing to extract-keyimages' reports.csv."""
    reports, manifest, labels, images = issue_corpus(tmp_path)
    r = cli("keywords", labels, "--manifest", manifest, "--reports", reports, "--images", images, "--out",
            tmp_path / "kw", "--common-fraction", "1.0")
    assert r.code == 0, r.err
    assert "not extract-keyimages' scrubbed reports.csv" in r.err
    r = cli("topic-label", reports, "--manifest", manifest, "--out", tmp_path / "topics/labels.csv", "--topics", "3",
            "--passes", "2", "--min-df", "1", "--max-df", "1.0", "--model-dir", tmp_path / "topics/model")
    assert r.code == 0, r.err
    assert "not extract-keyimages' scrubbed reports.csv" in r.err
    words = {row["word"] for row in read_csv(tmp_path / "kw/keywords.csv")}
    words |= {row["word"] for row in read_csv(tmp_path / "topics/labels.topics.csv")}
    assert {"liver", "lung", "brain"} <= words
    secrets = {"doe", "smith", "acc999", "mrn123456", "123456", "1923", "elsewhere", "5309", "mrs", "removed"}
    assert not words & secrets, words & secrets
    assert not leaks([tmp_path / "kw", tmp_path / "topics"], secrets - {"removed"})


# -- item 11: reports keyed by accession ------------------------------------------------------------------


def test_accession_keyed_reports_get_pseudonymous_ids(cli, tmp_path):
    """The documented .txt layout (report id = accession): manifest, rejects and reports.csv carry pseudonyms."""
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    dicom = two_studies(tmp_path, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instance = pydicom.dcmread(dicom / "ct1.dcm").InstanceNumber
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "ACC55731.txt").write_text(f"Nodule on image {instance}. No change on image 999.", encoding="utf-8")
    out = tmp_path / "out"
    r = cli("extract-keyimages", dicom, "--reports", folder, "--out", out, "--size", 32, "--salt", "s-salt-0123456789ab", "-q")
    assert r.code == 0, r.err
    key = Pseudonyms("s-salt-0123456789ab")("report", "ACC55731", length=12)
    assert {m["report_id"] for m in read_csv(out / "manifest.csv")} == {key}
    assert [row["source"] for row in read_csv(out / "rejects.csv")] == [f"report:{key}"]
    assert [row["report_id"] for row in read_csv(out / "reports.csv")] == [key]
    assert not leaks([out], {"ACC55731", "55731"})


# -- item 12: the pseudonyms' key ----------------------------------------------------------------------------


def image_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    src = root / "src"
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(src / f"img{i}.png")
    return src


def test_without_salt_a_random_key_file_is_made_beside_the_outputs_and_reused(cli, tmp_path, no_salt):
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    src = image_folder(tmp_path)
    project = tmp_path / "project"
    r = cli("extract-keyimages", src, "--out", project / "keys", "--size", 16)
    assert r.code == 0, r.err
    key_file = project / ".ldpo-salt"
    assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in r.err  # one line says where the key is
    key = key_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert not any(p.name == ".ldpo-salt" for p in (project / "keys").rglob("*"))
    ids = [m["id"] for m in read_csv(project / "keys/manifest.csv")]
    assert ids == [Pseudonyms(key)("file", f"img{i}.png", length=16) for i in range(3)]
    public = [Pseudonyms("ldpo-default-salt")("file", f"img{i}.png", length=16) for i in range(3)]
    assert not set(ids) & set(public)  # not the old public key, which enumeration reversed
    # reused: a later run into the same parent gets the same ids and leaves the key as it was
    r = cli("extract-keyimages", src, "--out", project / "again", "--size", 16)
    assert r.code == 0, r.err
    assert [m["id"] for m in read_csv(project / "again/manifest.csv")] == ids
    assert key_file.read_text().strip() == key
    # another parent, another key
    r = cli("extract-keyimages", src, "--out", tmp_path / "elsewhere" / "keys", "--size", 16, "-q")
    assert r.code == 0, r.err
    assert (tmp_path / "elsewhere" / ".ldpo-salt").read_text().strip() != key


def test_an_explicit_salt_makes_no_key_file_and_a_bad_key_file_is_one_line(cli, tmp_path, no_salt):
    src = image_folder(tmp_path)
    r = cli("extract-keyimages", src, "--out", tmp_path / "a" / "keys", "--size", 16, "--salt", "mine-salt-0123456789", "-q")
    assert r.code == 0, r.err
    assert not (tmp_path / "a" / ".ldpo-salt").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".ldpo-salt").write_text("short\n")
    r = cli("extract-keyimages", src, "--out", tmp_path / "b" / "keys", "--size", 16, "-q")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and ".ldpo-salt" in r.err, r.err
    assert not (tmp_path / "b" / "keys").exists()
    (tmp_path / "c" / ".ldpo-salt").mkdir(parents=True)
    r = cli("extract-keyimages", src, "--out", tmp_path / "c" / "keys", "--size", 16, "-q")
    assert r.code == 2 and "not a regular file" in r.err, r.err


# -- item 25 (last sentence): a failed extraction removes what it created ----------------------------------


def test_a_failed_extraction_removes_the_folders_it_made_and_nothing_else(cli, tmp_path, no_salt):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.dcm").write_bytes(b"not a DICOM file" * 20)
    r = cli("extract-keyimages", broken, "--out", tmp_path / "new" / "deeper" / "keys", "--size", 16, "-q")
    assert r.code == 2 and "nothing usable" in r.err, r.err
    assert not (tmp_path / "new").exists()  # neither the folders it made nor a key file in them
    existing = tmp_path / "existing"
    (existing / "keys").mkdir(parents=True)
    r = cli("extract-keyimages", broken, "--out", existing / "keys", "--size", 16, "-q")
    assert r.code == 2
    assert (existing / "keys").is_dir() and not any((existing / "keys").iterdir())
    assert sorted(p.name for p in existing.iterdir()) == ["keys"]  # the key file made by the failed run is gone


# -- item 18 (second half): topic-label's K is bounded by the data -----------------------------------------


def test_topic_label_refuses_more_topics_than_the_data_allows_at_once(cli, tmp_path):
    reports, manifest, _, _ = issue_corpus(tmp_path)
    out = tmp_path / "topics" / "labels.csv"
    argv = [BIN / "ldpo", "topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "1000000",
            "--min-df", "1"]
    try:  # in a process of its own: before the bound this ran for many minutes
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"))
    except subprocess.TimeoutExpired:
        pytest.fail("topic-label --topics 1000000 on 12 reports ran for more than 60 s")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"--topics 1000000: at most \d+ topics for the", lines[0]), proc.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())
    r = cli("topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "2,4,64", "--min-df", "1", "-q")
    assert r.code == 2 and "--topics 2,4,64: at most" in r.err


def test_topic_label_writes_no_temporary_of_a_temporary(cli, tmp_path, monkeypatch):
    """Each output is written straight into its own temporary: a killed run leaves no ``..x.tmp-a.tmp-b``."""
    import ldpo.common.files.stores as stores

    made = []
    original = stores.temporary_name

    def recording(path):
        tmp = original(path)
        made.append(Path(tmp).name)
        return tmp

    monkeypatch.setattr(stores, "temporary_name", recording)
    reports, manifest, _, _ = issue_corpus(tmp_path)
    out = tmp_path / "topics" / "labels.csv"
    r = cli("topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "2,3", "--min-df", "1",
            "--passes", "2", "--holdout", "0.25", "-q")
    assert r.code == 0, r.err
    assert made and not [name for name in made if name.startswith("..") or name.count(".tmp-") > 1], made
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.csv", "labels.perplexity.csv",
                                                            "labels.perplexity.png", "labels.topics.csv"]
