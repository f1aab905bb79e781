"""One reader per CSV kind, one encoding rule, atomic writing (common/files/tables.py)."""

from __future__ import annotations

import pytest

from ldpo.common.errors import InputError
from ldpo.common.files.labels import read_labels
from ldpo.common.files.tables import side_file, write_csv
from ldpo.common.nlp.reports import read_manifest, read_reports

TEXT = "report_id,accession,text\nr1,A1,Épanchement pleural: naïve reader\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_utf8_with_or_without_bom_is_read(tmp_path, encoding):
    path = tmp_path / "reports.csv"
    path.write_bytes(TEXT.encode(encoding))
    (report,) = read_reports(path)
    assert (report.report_id, report.accession, report.text) == ("r1", "A1", "Épanchement pleural: naïve reader")


@pytest.mark.parametrize("encoding, hint", [("latin-1", "not UTF-8 text (byte"), ("utf-16", "looks like UTF-16")])
@pytest.mark.parametrize("reader", [read_reports, read_manifest, read_labels])
def test_other_encodings_are_an_error_naming_the_file(tmp_path, encoding, hint, reader):
    path = tmp_path / "file.csv"
    content = {read_reports: TEXT, read_manifest: "id,report_id\nimé,r1\n", read_labels: "id,label\nimé,1\n"}[reader]
    path.write_bytes(content.encode(encoding))
    with pytest.raises(InputError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and hint in message and "save it as UTF-8" in message


def test_a_report_folder_is_read_recursively_with_the_same_rules(tmp_path):
    (tmp_path / "2024").mkdir()
    (tmp_path / "2024" / "A7.txt").write_text("lung", encoding="utf-8")
    (tmp_path / "B2.TXT").write_bytes("\ufeffbrain".encode("utf-8"))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "C.txt").write_text("ignored")
    reports = read_reports(tmp_path)
    assert [(r.report_id, r.accession, r.text) for r in reports] == [("A7", "A7", "lung"), ("B2", "B2", "brain")]
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "A7.txt").write_text("again")
    with pytest.raises(InputError, match="duplicate report id 'A7'"):
        read_reports(tmp_path)
    (tmp_path / "dup" / "A7.txt").unlink()
    (tmp_path / "dup" / "D4.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match=r"D4\.txt: not UTF-8"):
        read_reports(tmp_path)


def test_a_header_only_reports_csv_is_an_error(tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text("report_id,accession,text\n")
    with pytest.raises(InputError, match="no reports in the file"):
        read_reports(path)


def test_side_files_are_named_from_the_main_output(tmp_path):
    assert side_file(tmp_path / "labels.csv", "topics.csv") == tmp_path / "labels.topics.csv"
    assert side_file(tmp_path / "topics.csv", "topics.csv") == tmp_path / "topics.topics.csv"
    assert side_file(tmp_path / "labels", "perplexity.png") == tmp_path / "labels.perplexity.png"


def test_write_csv_is_atomic(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, ["a", "b"], [[1, "x,y"], [2, "é"]])
    assert path.read_text(encoding="utf-8") == 'a,b\n1,"x,y"\n2,é\n'

    def rows():
        yield [3, "z"]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_csv(path, ["a", "b"], rows())
    assert path.read_text(encoding="utf-8") == 'a,b\n1,"x,y"\n2,é\n'
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
