"""Word vectors, image → words targets, finetune --vectors, describe, report --words (issue 19, items 4–6)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A small toy PACS through extract-keyimages: images.h5, manifest.csv, reports.csv."""
    from ldpo.stages import run

    folder = tmp_path_factory.mktemp("words")
    assert run(["toy-data", "pacs", "--out", str(folder / "pacs"), "--studies", "15", "--size", "32", "-q",
                "--no-progress"]) == 0
    assert run(["extract-keyimages", str(folder / "pacs" / "dicom"), "--reports", str(folder / "pacs" / "reports.csv"),
                "--out", str(folder / "keys"), "--size", "32", "-q", "--no-progress"]) == 0
    return folder / "keys"


@pytest.fixture(scope="module")
def trained(keys, tmp_path_factory):
    """16-d vectors, the words-target file, and a 1-epoch words model."""
    from ldpo.stages import run

    folder = tmp_path_factory.mktemp("trained")
    vectors, targets, model = folder / "v.txt", folder / "t.csv", folder / "w.pt"
    assert run(["word-vectors", str(keys / "reports.csv"), "--out", str(vectors), "--dim", "16", "--min-count", "2",
                "--manifest", str(keys / "manifest.csv"), "--targets", str(targets), "-q"]) == 0
    assert run(["finetune", str(keys / "images.h5"), str(targets), "--vectors", str(vectors), "--out", str(model),
                "--init", "random", "--epochs", "1", "--batch-size", "16", "--input-size", "32", "-q",
                "--no-progress"]) == 0
    return vectors, targets, model


def vocabulary_tokens(path: str | None = None) -> set[str]:
    from ldpo.common.nlp.mentions import load_vocabulary
    from ldpo.common.nlp.words import term_token

    return {term_token(t) for t in load_vocabulary(path).terms}


def test_word_vectors_format_and_determinism(cli, keys, tmp_path):
    from ldpo.common.nlp.words import read_vectors

    outs = []
    for name in ("a.txt", "b.txt"):
        r = cli("word-vectors", keys / "reports.csv", "--out", tmp_path / name, "--dim", "16", "--seed", "3",
                "--probe", "pleural effusion,nodule")
        assert r.code == 0, r.err
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]  # one thread: the same vectors for the same seed
    assert "pleural_effusion:" in r.out and "nodule:" in r.out  # the probes' nearest words are printed
    lines = outs[0].decode("utf-8").splitlines()
    count, dim = map(int, lines[0].split())
    assert dim == 16 and count == len(lines) - 1
    vectors = read_vectors(str(tmp_path / "a.txt"))
    assert vectors.matrix.shape == (count, 16) and np.isfinite(vectors.matrix).all()
    assert vectors.checksum == hashlib.sha256(outs[0]).hexdigest()
    assert "pleural_effusion" in vectors.words  # a multi-word term is one token
    other = cli("word-vectors", keys / "reports.csv", "--out", tmp_path / "c.txt", "--dim", "16", "--seed", "4")
    assert other.code == 0 and (tmp_path / "c.txt").read_bytes() != outs[0]


def test_word_vectors_same_across_processes(keys, tmp_path):
    """The same bytes from two processes with different string hashing (PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    outs = []
    for h in ("1", "2"):
        out = tmp_path / f"v{h}.txt"
        code = ("import sys; from ldpo.stages import run; "
                f"sys.exit(run(['word-vectors', {str(keys / 'reports.csv')!r}, '--out', {str(out)!r}, '--dim', '8', "
                "'-q']))")
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": h},
                       stdout=subprocess.DEVNULL)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_tokens_join_terms_and_synonyms_and_drop_numbers():
    from ldpo.common.nlp.mentions import parse_vocabulary
    from ldpo.common.nlp.words import corpus, phrase_table

    vocab = parse_vocabulary(["pleural effusion|hydrothorax", "nodule"])
    got = corpus(["Small Pleural Effusions on images 3-4 of series 5. Hydrothorax [removed] 12 mm nodules.\n"
                  "Seen 2014-03-12 acc99912."], phrase_table(vocab))
    assert got == [["small", "pleural_effusion", "on", "images", "of", "series"],
                   ["pleural_effusion", "mm", "nodule"], ["seen"]]


def test_bigrams_keep_affirmed_terms_only():
    from ldpo.common.nlp.mentions import load_vocabulary
    from ldpo.common.nlp.words import bigrams, image_bigrams

    vocab = load_vocabulary(None)
    assert image_bigrams("No pleural effusion. A small nodule with atelectasis (image 3).", vocab) == \
        [("nodule", "atelectasis")]
    assert image_bigrams("Cannot exclude pneumonia. Pneumothorax on series 2.", vocab) == \
        [("pneumothorax", "pneumothorax")]
    assert image_bigrams("The lungs are clear.", vocab) == []
    assert bigrams(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_words_target_file_has_vectors_for_every_term(trained):
    from ldpo.common.nlp.words import read_vectors, read_words_target

    vectors, targets, _ = trained
    target = read_words_target(str(targets), read_vectors(str(vectors)))
    assert len(target.ids) > 20 and set(target.terms()) <= vocabulary_tokens()
    assert len(set(target.ids)) < len(target.ids)  # some image has several bi-grams (one row each)


def test_scaling_round_trip():
    from ldpo.common.nlp.words import Scaling

    m = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    s = Scaling.fit(m)
    scaled = s.scale(m)
    assert scaled.min() >= 0 and scaled.max() <= 1 + 1e-6
    np.testing.assert_allclose(s.unscale(scaled), m, atol=1e-5)
    np.testing.assert_allclose(Scaling.from_state(s.state()).scale(m), scaled)


def test_finetune_words_records_target(trained):
    import torch

    vectors, targets, model = trained
    ckpt = torch.load(model, weights_only=True)
    assert ckpt["target"] == "words" and ckpt["num_classes"] == 32  # two 16-d halves
    meta = ckpt["words"]
    assert meta["vectors_checksum"] == hashlib.sha256(vectors.read_bytes()).hexdigest()
    assert meta["dim"] == 16 and meta["scaling"]["kind"] == "minmax-per-dimension"
    assert ckpt["options"]["schedule"] == "cosine"  # the words target's default
    assert len(meta["scaling"]["lo"]) == 16 and len(meta["scaling"]["hi"]) == 16
    assert set(meta["terms"]) <= vocabulary_tokens()
    from ldpo.common.nlp.words import PRIOR_WEIGHTS

    assert len(meta["prior"]) == len(meta["terms"]) and all(p < 0 for p in meta["prior"])
    assert meta["prior_weight"] in PRIOR_WEIGHTS and ckpt["metrics"]["final"]["prior_weight"] == meta["prior_weight"]
    final = ckpt["metrics"]["final"]
    assert np.isfinite(final["train_loss"]) and 0 <= final["test_recall5"] <= 1


def test_finetune_words_rejects_class_options(cli, keys, trained, tmp_path):
    vectors, targets, _ = trained
    r = cli("finetune", keys / "images.h5", targets, "--vectors", vectors, "--out", tmp_path / "m.pt",
            "--multi-label")
    assert r.code == 2 and "--multi-label" in r.err and len(r.err.strip().splitlines()) == 1


def test_describe_gives_only_vocabulary_words(cli, keys, trained, tmp_path):
    from ldpo.common.files.stores import open_store
    from ldpo.common.files.tables import csv_rows

    vectors, _, model = trained
    r = cli("describe", keys / "images.h5", "--model", model, "--vectors", vectors, "--out", tmp_path / "w.csv",
            "--top", "3", "--prior-weight", "0")
    assert r.code == 0, r.err
    rows = [row for _, row in csv_rows(tmp_path / "w.csv", "words", ["id", "rank", "word", "score"])]
    with open_store(str(keys / "images.h5")) as store:
        ids = store.ids
    assert [row["id"] for row in rows] == [i for i in ids for _ in range(3)]
    assert {row["word"] for row in rows} <= vocabulary_tokens()
    assert all(-1 <= float(row["score"]) <= 1 for row in rows)
    # a narrower vocabulary: only its terms can come out
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("nodule\npleural effusion\nsplenomegaly\n", encoding="utf-8")
    r = cli("describe", keys / "images.h5", "--model", model, "--vectors", vectors, "--out", tmp_path / "n.csv",
            "--vocabulary", vocab, "--top", "5")
    assert r.code == 0, r.err
    words = {row["word"] for _, row in csv_rows(tmp_path / "n.csv", "words", ["id", "word"])}
    assert words and words <= {"nodule", "pleural_effusion", "splenomegaly"}


def test_term_prior_names_a_common_term_the_cosine_ranks_second():
    from ldpo.common.nlp.words import Scaling, Vectors, describe, term_prior

    # three terms; the prediction lies nearest "cyst", a little farther from "nodule"
    matrix = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]], np.float32)
    vectors = Vectors(["cyst", "nodule", "edema"], matrix, "", "")
    scaling = Scaling(np.full(2, -1, np.float32), np.ones(2, np.float32))
    out = np.tile(scaling.scale(np.array([[1.0, 0.25]], np.float32)), (1, 2))
    prior = dict(zip(["cyst", "nodule", "edema"],
                     term_prior([["nodule"]] * 8 + [["cyst"]] + [["edema", "nodule"]], ["cyst", "nodule", "edema"])))
    assert prior["nodule"] > prior["edema"] == prior["cyst"]
    plain = describe(out, vectors, scaling, ["cyst", "nodule", "edema"], 2)
    assert [w for w, _ in plain[0]] == ["cyst", "nodule"] and all(-1 <= v <= 1 for _, v in plain[0])
    weighted = describe(out, vectors, scaling, ["cyst", "nodule", "edema"], 2, prior, 0.3)
    assert [w for w, _ in weighted[0]] == ["nodule", "cyst"]


def test_describe_refuses_other_vectors(cli, keys, trained, tmp_path):
    vectors, _, model = trained
    other = tmp_path / "other.txt"
    other.write_bytes(vectors.read_bytes().replace(b"\n", b" \n", 1))
    r = cli("describe", keys / "images.h5", "--model", model, "--vectors", other, "--out", tmp_path / "w.csv")
    assert r.code == 2 and str(other) in r.err and len(r.err.strip().splitlines()) == 1


def test_describe_reads_a_checkpoint_from_before_the_prior(cli, keys, trained, tmp_path):
    import torch

    vectors, _, model = trained
    ckpt = torch.load(model, weights_only=True)
    for key in ("prior", "prior_weight"):
        ckpt["words"].pop(key)
    torch.save(ckpt, tmp_path / "old.pt")
    r = cli("describe", keys / "images.h5", "--model", tmp_path / "old.pt", "--vectors", vectors, "--out",
            tmp_path / "w.csv", "--top", "2")
    assert r.code == 0, r.err  # no prior recorded: the nearest terms alone
    r = cli("describe", keys / "images.h5", "--model", tmp_path / "old.pt", "--vectors", vectors, "--out",
            tmp_path / "x.csv", "--prior-weight", "0.2")
    assert r.code == 2 and "--prior-weight 0" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def one_line_error(r, name: str) -> None:
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], r.err


def test_bad_input_is_one_line(cli, keys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    one_line_error(cli("word-vectors", keys / "reports.csv", "--out", tmp_path / "v.txt", "--vocabulary", empty),
                   str(empty))
    absent = tmp_path / "absent.txt"
    absent.write_text("zebra stripes\nunicorn horn\n", encoding="utf-8")
    one_line_error(cli("word-vectors", keys / "reports.csv", "--out", tmp_path / "v.txt", "--vocabulary", absent),
                   str(absent))
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("report_id,text\nr1,Kleine Pleuraerguss rechts, Größe unverändert.\n".encode("latin-1"))
    one_line_error(cli("word-vectors", latin, "--out", tmp_path / "v.txt"), str(latin))
    assert not (tmp_path / "v.txt").exists()
    bad = tmp_path / "bad.txt"
    bad.write_text("3 4\nword 1 2 3 4\n", encoding="utf-8")
    one_line_error(cli("describe", keys / "images.h5", "--model", tmp_path / "none.pt", "--vectors", bad,
                       "--out", tmp_path / "w.csv"), "none.pt")


def test_report_shows_predicted_words_per_category(tmp_path):
    from ldpo.common.files.labels import Labels
    from ldpo.stages.report import add_predicted_words
    from ldpo.stages.report.page import predicted_words_html

    words = tmp_path / "w.csv"
    words.write_text("id,rank,word,score\na,1,nodule,0.9\na,2,pleural_effusion,0.8\nb,1,nodule,0.7\n"
                     "c,1,cyst,0.5\n", encoding="utf-8")
    labels = Labels(["a", "b", "c"], np.array([0, 0, 1]))
    cats = {0: {}, 1: {}}
    add_predicted_words(cats, labels, str(words))
    assert cats[0]["predicted_words"] == [("nodule", 2), ("pleural_effusion", 1)]
    assert cats[1]["predicted_words"] == [("cyst", 1)]
    assert "pleural effusion (1)" in predicted_words_html(cats[0])[0]
    assert predicted_words_html({}) == []


def test_featurize_probs_of_a_words_model_is_refused(cli, keys, trained, tmp_path):
    """Its 2 x dim sigmoids are word-vector coordinates, not class scores (issue 30 item 10)."""
    _, _, model = trained
    r = cli("featurize", keys / "images.h5", "--out", tmp_path / "p.h5", "--init", f"checkpoint:{model}",
            "--layer", "probs")
    one_line_error(r, str(model))
    assert "'words' checkpoint" in r.err and not (tmp_path / "p.h5").exists()
