"""Issue 30, items 6–9, 13, 14 and 19: names scrubbed across the archive, the pseudonym key, bounded text work.

* item 6: a report naming another patient, or staff who appear only in other studies' headers, loses those
  names (every person name of the archive's headers, from every report); an ordinary word that is also
  someone's name stays unless written as a name;
* item 7: word-vectors warns on raw reports like every text stage;
* item 8: image-folder class names are pseudonyms in classes.csv (``--class-names keep`` keeps them);
* item 9: a short ``--salt`` / ``$LDPO_SALT``, a key file that is a link or readable by others: exit 2;
* item 13: word-vectors on a one-word vocabulary: exit 2, no hang;
* item 14: ``--mentions affirmed`` runs NegEx on pieces of bounded length, with the whole text's results;
* item 19: de-identification marks (``XXXX``, ``x-xxxx``, ``[** … **]``, ``___``) are not words;
* done means: the full PACS path on a toy PACS whose reports name people of other studies, every output byte
  searched for every identifier, is ``tests/bench/bench_identifiers.py`` (minutes: too slow for a test).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest

from helpers import read_csv, write_csv

BIN = Path(sys.executable).parent
SALT = "names-salt-0123456789"


def ct_small():
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))


def two_patients(root: Path, other: dict) -> tuple[Path, int]:
    """``root/dicom``: a CT of Jane Doe (accession ACC55731) and one of another patient (``other``: header values),
    in another study; returns the folder and the instance number a report may reference."""
    folder = root / "dicom"
    folder.mkdir(parents=True)
    ds = ct_small()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Doe^Jane", "PID884422", "ACC55731"
    ds.ReferringPhysicianName = "Patel^Priya"
    ds.save_as(folder / "a.dcm")
    instance = int(ds.InstanceNumber)
    ds.StudyInstanceUID, ds.SOPInstanceUID = ds.StudyInstanceUID + ".7", ds.SOPInstanceUID + ".7"
    ds.PatientID, ds.AccessionNumber = "PID551100", "ACC66120"
    for key, value in other.items():
        setattr(ds, key, value)
    ds.save_as(folder / "b.dcm")
    return folder, instance


# -- item 6: every name of the archive's headers, from every report ---------------------------------------------


def test_a_report_loses_the_names_of_other_patients_and_of_staff_of_other_studies(cli, tmp_path):
    other = {"PatientName": "Roe^Marta", "ReferringPhysicianName": "Yamamoto^Kenji", "OperatorsName": "Quintero^Pablo",
             "NameOfPhysiciansReadingStudy": "Wall^Henry"}
    dicom, instance = two_patients(tmp_path, other)
    text = (f"Images of Marta Roe were filed in error. Reviewed with Kenji Yamamoto; scanned by QUINTERO. "
            f"Chest wall thickening and a 5 mm nodule of the lung on image {instance}. Henry Wall agrees. "
            "Discussed with Priya Patel.")
    reports = write_csv(tmp_path / "reports.csv", [["report_id", "accession", "text"], ["R1", "ACC55731", text]])
    out = tmp_path / "out"
    r = cli("extract-keyimages", dicom, "--reports", reports, "--out", out, "--size", 32, "--salt", SALT, "-q")
    assert r.code == 0, r.err
    scrubbed = read_csv(out / "reports.csv")[0]["text"]
    manifest = read_csv(out / "manifest.csv")
    said = scrubbed + " ".join(m["sentence"] + " " + m["context"] for m in manifest)
    for name in ("Marta", "Roe", "Kenji", "Yamamoto", "Quintero", "Henry", "Priya", "Patel"):
        assert name.lower() not in said.lower(), (name, said)
    assert "Wall agrees" not in said and "[removed] agrees" in scrubbed, scrubbed
    # an ordinary word that is also someone's name stays where it is no name
    assert "Chest wall thickening" in scrubbed and "nodule of the lung" in manifest[0]["context"], scrubbed


def test_archive_names_are_one_set_and_one_pass():
    """The archive's names: one look-up per word (no alternation of every name), name forms and ordinary words."""
    from ldpo.common.nlp.phi import ArchiveNames, ordinary_words

    names = ArchiveNames(["roe^marta", "wall^henry", "smith-jones^ann", "o'brien^pat", "small^white"],
                         ordinary_words())
    assert "wall" in names.soft and "roe" in names.sure and "jones" in names.sure and "brien" in names.sure
    assert names("Images of MARTA ROE; Roe, Marta; ROE^MARTA.") == \
        "Images of [removed] [removed]; [removed], [removed]; [removed]^[removed]."
    assert names("chest wall; Wall, Henry") == "chest wall; [removed], [removed]"
    assert names("chest wall and Henry Wall") == "chest wall and [removed] [removed]"
    assert names("Seen by [removed] Wall.") == "Seen by [removed] [removed]."
    assert names("small white matter; Small White called") == "[removed] [removed] matter; [removed] [removed] called"
    assert names("small nodule, white matter") == "small nodule, white matter"
    assert names("Ann Smith-Jones and O'Brien") == "[removed] [removed]-[removed] and O'[removed]"
    letters = "abcdefghijklmnopqrstuvwxyz"
    many = ArchiveNames([f"{letters[i // 676]}{letters[i // 26 % 26]}{letters[i % 26]}son^given" for i in range(17576)])
    assert len(many) == 17577 and many("Dr Abcson and Zzzson x") == "Dr [removed] and [removed] x"
    assert len(ArchiveNames(["doe2^jane"])) == 1  # a part with digits is never a letter run of text


def test_toy_pacs_other_names_reach_no_scrubbed_report(tmp_path):
    """toy-data pacs --other-names writes reports that name people of other studies; none survives."""
    from ldpo.stages import run

    assert run(["toy-data", "pacs", "--out", str(tmp_path / "pacs"), "--studies", "6", "--size", "32", "--seed", "5",
                "--other-names", "-q"]) == 0
    raw = read_csv(tmp_path / "pacs/reports.csv")
    named = [line for r in raw for line in r["text"].splitlines()
             if line.startswith(("Images of ", "Case reviewed with "))]
    assert len(named) >= 6
    assert run(["extract-keyimages", str(tmp_path / "pacs/dicom"), "--reports", str(tmp_path / "pacs/reports.csv"),
                "--out", str(tmp_path / "keys"), "--size", "32", "--salt", SALT, "-q"]) == 0
    text = " ".join(r["text"] for r in read_csv(tmp_path / "keys/reports.csv"))
    for line in named:
        words = line.replace("Images of ", "").replace("Case reviewed with ", "").split()[:2]
        for word in words:
            assert word not in text, (word, line)
    assert "Images of [removed] were filed" in text and "Case reviewed with [removed] at" in text


# -- item 7: word-vectors reads reports like every text stage ---------------------------------------------------


def test_word_vectors_warns_on_raw_reports_and_not_on_scrubbed_ones(cli, tmp_path):
    from ldpo.common.nlp.phi import RAW_REPORTS, SCRUBBED_MARK

    body = "nodule effusion nodule. effusion nodule effusion. pneumothorax nodule."
    raw = write_csv(tmp_path / "raw.csv", [["report_id", "text"], ["r1", body], ["r2", body]])
    r = cli("word-vectors", raw, "--out", tmp_path / "v.txt", "--min-count", 1, "--dim", 8, "-q")
    assert r.code == 0, r.err
    assert RAW_REPORTS in r.err
    marked = write_csv(tmp_path / "marked.csv", [["report_id", "text", "scrubbed"], ["r1", body, SCRUBBED_MARK],
                                                 ["r2", body, SCRUBBED_MARK]])
    r = cli("word-vectors", marked, "--out", tmp_path / "w.txt", "--min-count", 1, "--dim", 8, "-q")
    assert r.code == 0, r.err
    assert RAW_REPORTS not in r.err


# -- item 8: image-folder class names ------------------------------------------------------------------------


def class_folders(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    src = root / "src"
    for name, level in (("DOE JANE ACC999", 40), ("ROE^MARTA 2231", 200)):
        (src / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20), level + i, np.uint8)).save(src / name / f"im{i}.png")
    return src


def test_class_folder_names_become_pseudonyms(cli, tmp_path):
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    src = class_folders(tmp_path)
    r = cli("extract-keyimages", src, "--out", tmp_path / "out", "--size", 16, "--salt", SALT, "-q")
    assert r.code == 0, r.err
    said = "\n".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "out").iterdir() if p.suffix == ".csv")
    for secret in ("DOE", "JANE", "ACC999", "ROE", "MARTA", "2231"):
        assert secret.lower() not in said.lower(), (secret, said)
    classes = read_csv(tmp_path / "out/classes.csv")
    key = Pseudonyms(SALT)
    assert classes == [{"label": "0", "name": "class-" + key("class", "DOE JANE ACC999", length=10)},
                       {"label": "1", "name": "class-" + key("class", "ROE^MARTA 2231", length=10)}]
    assert len(read_csv(tmp_path / "out/truth.csv")) == 4
    r = cli("extract-keyimages", src, "--out", tmp_path / "kept", "--size", 16, "--salt", SALT,
            "--class-names", "keep", "-q")
    assert r.code == 0, r.err
    assert [c["name"] for c in read_csv(tmp_path / "kept/classes.csv")] == ["DOE JANE ACC999", "ROE^MARTA 2231"]


# -- item 9: the pseudonym key --------------------------------------------------------------------------------


def one_image(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    src = root / "src"
    src.mkdir(parents=True)
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(src / "img.png")
    return src


def refused(r, *words: str) -> bool:
    lines = r.err.strip().splitlines()
    return r.code == 2 and len(lines) == 1 and all(w in lines[0] for w in words)


def test_a_short_given_key_is_refused(cli, tmp_path, no_salt, monkeypatch):
    src = one_image(tmp_path)
    r = cli("extract-keyimages", src, "--out", tmp_path / "a/out", "--size", 16, "--salt", "x", "-q")
    assert refused(r, "--salt"), r.err
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("LDPO_SALT", "x" * 15)
    r = cli("extract-keyimages", src, "--out", tmp_path / "b/out", "--size", 16, "-q")
    assert refused(r, "LDPO_SALT"), r.err
    monkeypatch.setenv("LDPO_SALT", "y" * 16)
    r = cli("extract-keyimages", src, "--out", tmp_path / "c/out", "--size", 16, "-q")
    assert r.code == 0, r.err


def test_a_key_file_that_is_a_link_or_open_to_others_is_refused(cli, tmp_path, no_salt):
    src = one_image(tmp_path)
    public = tmp_path / "public.txt"
    public.write_text("f" * 64 + "\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a/.ldpo-salt").symlink_to(public)
    r = cli("extract-keyimages", src, "--out", tmp_path / "a/out", "--size", 16, "-q")
    assert refused(r, ".ldpo-salt", "link"), r.err
    assert not (tmp_path / "a/out").exists()
    (tmp_path / "b").mkdir()
    key = tmp_path / "b/.ldpo-salt"
    key.write_text("e" * 64 + "\n")
    key.chmod(0o644)
    r = cli("extract-keyimages", src, "--out", tmp_path / "b/out", "--size", 16, "-q")
    assert refused(r, ".ldpo-salt", "chmod 600"), r.err
    assert not (tmp_path / "b/out").exists()
    key.chmod(0o600)
    r = cli("extract-keyimages", src, "--out", tmp_path / "b/out", "--size", 16, "-q")
    assert r.code == 0, r.err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_text().strip() == "e" * 64


# -- item 13: word-vectors on a one-word vocabulary -------------------------------------------------------------


def test_word_vectors_on_one_word_exits_2_instead_of_hanging(tmp_path):
    reports = tmp_path / "one.csv"
    reports.write_text("report_id,text\nr1,nodule nodule nodule nodule\n")
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    try:
        proc = subprocess.run([str(BIN / "word-vectors"), str(reports), "--out", str(tmp_path / "v.txt")], env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("word-vectors hung on a one-word vocabulary")
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "one.csv" in lines[0], proc.stderr
    assert not (tmp_path / "v.txt").exists()


# -- item 14: --mentions affirmed in time linear in a report's length -------------------------------------------


SENTENCES = ("There is no pleural effusion. A small nodule in the right upper lobe may represent atelectasis. "
             "Cannot exclude pneumonia. The heart is enlarged; no pneumothorax. Mild emphysema without "
             "consolidation. Mass in the liver but no ascites. ")


def test_negex_sees_pieces_of_bounded_length_and_the_whole_texts_results(monkeypatch):
    """NegEx's time is clauses × tokens of the text it is given; a long report must reach it in pieces of bounded
    length (the cause of the super-linear time, found with cProfile), with the statuses and the kept text of the
    whole."""
    from ldpo.common.nlp import mentions

    vocab = mentions.load_vocabulary(None)
    long = SENTENCES * 60  # about 12 KB
    seen = []
    nlp = mentions._pipeline(vocab)
    negex = nlp.get_pipe(mentions._EXT["negated"])
    original = type(negex).negex

    def spy(self, doc):
        seen.append(len(doc.text))
        return original(self, doc)

    monkeypatch.setattr(type(negex), "negex", spy)
    found = mentions.find_mentions(long, vocab)
    assert seen and max(seen) <= 8000 < len(long)  # pieces of about 4,000 characters
    monkeypatch.setattr(type(negex), "negex", original)
    kept = mentions.affirmed_text(long, vocab)
    assert "pneumothorax" not in kept and "nodule" in kept
    monkeypatch.setattr(mentions, "PIECE_CHARS", 10 ** 9)  # the whole text at once, as before
    assert mentions.find_mentions(long, vocab) == found
    assert mentions.affirmed_text(long, vocab) == kept


def test_one_sentence_longer_than_a_piece_is_cut_between_tokens():
    from ldpo.common.nlp.mentions import _pieces

    text = "nodule and " * 2000 + "end."
    pieces = _pieces(text, size=500)
    assert "".join(p for _, p in pieces) == text
    assert all(text[o:o + len(p)] == p for o, p in pieces)
    assert max(len(p) for _, p in pieces) <= 500 + len("nodule and ")


# -- item 19: de-identification marks are not words -------------------------------------------------------------


MARKED = ("Seen by XXXX on XX/XX/XXXX at x-xxxx. [**Known lastname 2212**] reviewed the nodule with ___ today; "
          "[**Hospital1 18**] x-ray shows effusion, 3 x 4 cm.")


def test_the_cleaner_drops_deidentification_marks():
    from ldpo.common.nlp.text import Cleaner

    words = Cleaner().words(MARKED)
    assert {"nodule", "effusion", "x-ray", "reviewed", "today"} <= set(words), words
    for mark in ("xxxx", "x-xxxx", "known", "lastname", "hospital1", "xxx"):
        assert not any(mark in w for w in words), (mark, words)


def test_word_tokens_drop_deidentification_marks():
    from ldpo.common.nlp.words import corpus

    tokens = [t for s in corpus([MARKED]) for t in s]
    assert "nodule" in tokens and "effusion" in tokens
    for mark in ("xxxx", "x-xxxx", "known", "lastname", "hospital1", "xx"):
        assert not any(mark in t for t in tokens), (mark, tokens)
