"""common/nlp/text.py: tokens, stop words, numbers and dates, stemming, and reading reports/manifests."""

from __future__ import annotations

import pytest

from ldpo.common.errors import InputError
from ldpo.common.nlp.text import Cleaner, is_date_like, is_number, read_manifest, read_reports, stop_words, tokenize


def test_tokenize_keeps_dates_and_measurements_whole():
    assert tokenize("Se 3, Im 45: 12/03/2014 at 10:30; lesion 3.2cm (prev. 2.9 cm).") == [
        "se", "3", "im", "45", "12/03/2014", "at", "10:30", "lesion", "3.2cm", "prev", "2.9", "cm"]
    assert tokenize("Patient’s T2-weighted images") == ["patient's", "t2-weighted", "images"]


@pytest.mark.parametrize("token", ["12", "3.2", "1,000", "1013-78", "5mm", "3.2cm", "2nd", "4x", "10-12mm", "-3"])
def test_numbers(token):
    assert is_number(token)


@pytest.mark.parametrize("token", ["2014-03-12", "12/03/2014", "3.12.14", "10:30", "10:30:15", "10:30pm",
                                   "march", "jan", "sept", "monday", "thu"])
def test_dates(token):
    assert is_date_like(token)


@pytest.mark.parametrize("token", ["lung", "t2-weighted", "l4-l5", "c5", "brain", "marching"])
def test_words_are_neither(token):
    assert not is_number(token) and not is_date_like(token)


def test_stop_words_come_from_gensim_and_sklearn_plus_reference_words():
    stop = stop_words()
    assert {"the", "and", "of", "without", "show"} <= stop
    assert {"series", "image", "images"} <= stop
    assert not {"lung", "brain", "left", "right", "normal"} & stop


def test_cleaner_drops_stop_words_numbers_dates_and_short_tokens():
    text = ("On 2014-03-12 the brain's ventricles (series 3, image 45) measured 12 mm; "
            "CT of the lungs.Pleural effusion seen on Monday, March 3rd, 10:30. T2-weighted MR.")
    assert Cleaner().words(text) == ["brain", "ventricles", "measured", "lungs", "pleural", "effusion", "seen",
                                     "t2-weighted"]
    assert Cleaner(min_length=2).words("CT of the lungs") == ["ct", "lungs"]
    assert Cleaner(extra_stop=frozenset({"Seen"})).words("effusion seen") == ["effusion"]


def test_stemming_and_display_of_stems():
    cleaner = Cleaner(stem=True)
    assert cleaner.words("ventricles ventricle ventricles enlarged enlarging") == [
        "ventricl", "ventricl", "ventricl", "enlarg", "enlarg"]
    assert cleaner.display("ventricl") == "ventricles"
    assert cleaner.display("enlarg") == "enlarged"  # a tie goes to the first word alphabetically
    assert Cleaner().display("lungs") == "lungs"


def test_read_reports_csv_with_extra_columns_and_multiline_text(tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text('report_id,accession,text\nr1,A1,"Line one.\nLine two, with comma."\nr2,A2,brain\n\n')
    assert read_reports(path) == {"r1": "Line one.\nLine two, with comma.", "r2": "brain"}


def test_read_reports_folder(tmp_path):
    (tmp_path / "b.txt").write_text("lung")
    (tmp_path / "a.TXT").write_text("brain")
    (tmp_path / "notes.md").write_text("ignored")
    assert read_reports(tmp_path) == {"a": "brain", "b": "lung"}


@pytest.mark.parametrize("content, message", [
    ("id,text\n1,x\n", "missing report_id"),
    ("report_id,text\nr1,x\nr1,y\n", "line 3: duplicate report_id 'r1'"),
    ("report_id,text\n,x\n", "line 2: empty report_id"),
    ("report_id,text\n", "no reports"),
    ("", "empty reports CSV"),
    ("report_id,text\nr1,x,extra\n", "line 2: 3 fields"),
])
def test_bad_reports_csv_name_file_and_problem(tmp_path, content, message):
    path = tmp_path / "reports.csv"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_reports(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_bad_report_files(tmp_path):
    with pytest.raises(InputError, match="no such reports CSV"):
        read_reports(tmp_path / "none.csv")
    with pytest.raises(InputError, match="no .txt reports"):
        read_reports(tmp_path)
    (tmp_path / "r.txt").write_bytes(b"\xff\xfe\xfa lung")
    with pytest.raises(InputError, match=r"r\.txt: not UTF-8"):
        read_reports(tmp_path)


def test_read_manifest(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("id,study,patient,series,instance,frame,modality,report_id,sentence,context\n"
                    'i1,s,p,3,45,0,CT, r1 ,"Lung (series 3, image 45).",ctx\n'
                    "i2,s,p,3,46,0,CT,,,\n")
    m = read_manifest(path, need=("sentence",))
    assert m.ids == ["i1", "i2"]
    assert m.column("report_id") == ["r1", ""]
    assert m.column("sentence") == ["Lung (series 3, image 45).", ""]
    with pytest.raises(InputError, match="missing nothere"):
        read_manifest(path, need=("nothere",))
    path.write_text("id,report_id\ni1,r1\ni1,r2\n")
    with pytest.raises(InputError, match="line 3: duplicate id 'i1'"):
        read_manifest(path)
