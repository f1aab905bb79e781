"""Key-image references as radiologists write them, and report sentence splitting."""

from __future__ import annotations

import pytest

from ldpo.stages.extract_keyimages.references import expand, mentions, parse_references, split_sentences

R = lambda a, b: tuple(range(a, b + 1))  # noqa: E731 - a short range for the table

TABLE = [
    ("There is a nodule (series 1001, image 32).", [(1001, (32,))]),
    ("Nodule on series 3 image 45.", [(3, (45,))]),
    ("Se 3 Im 45", [(3, (45,))]),
    ("see image 12 of series 4", [(4, (12,))]),
    ("Hemorrhage on images 1013-78.", [(None, R(1013, 1078))]),
    ("Cysts on images 30, 32 and 35.", [(None, (30, 32, 35))]),
    ("Fracture, series 5, images 10-14.", [(5, R(10, 14))]),
    ("Series 2 image 7 and series 4 image 12 show it.", [(2, (7,)), (4, (12,))]),
    ("Se 3 Im 45, Im 47", [(3, (45,)), (3, (47,))]),
    ("A lesion (image 45, series 3).", [(3, (45,))]),
    ("series #6, image #20", [(6, (20,))]),
    ("ser. 2 img. 9", [(2, (9,))]),
    ("images 12 through 15 of series 8", [(8, R(12, 15))]),
    ("Se:4 Im:101", [(4, (101,))]),
    ("image 7 on series 2", [(2, (7,))]),
    ("key images 3 & 5", [(None, (3, 5))]),
    ("Se 3 Im 45-47", [(3, (45, 46, 47))]),
    ("series 7 images 1-3 and 9", [(7, (1, 2, 3, 9))]),
    ("images 30, 32, and 35", [(None, (30, 32, 35))]),
    ("Im 12 Se 4", [(4, (12,))]),
    ("Se3 Im45", [(3, (45,))]),
    ("IMAGE 12 OF SERIES 4", [(4, (12,))]),
    ("images 205-09 of series 201", [(201, R(205, 209))]),
    ("images 10 to 12", [(None, (10, 11, 12))]),
    ("Nodule on image 12, 3 mm in size.", [(None, (12,))]),  # 3 mm is a size, not an image
    ("No image reference in a series of 3 scans.", []),
    ("Imaging of 3 cases at 5 mm slice thickness.", []),
]


@pytest.mark.parametrize("text, expected", TABLE, ids=[t for t, _ in TABLE])
def test_reference_phrasings(text, expected):
    assert [(r.series, r.images) for r in parse_references(text)] == expected


def test_table_is_large_enough():
    assert sum(1 for _, e in TABLE if e) >= 15


@pytest.mark.parametrize("numbers, expected", [
    ("1013-78", R(1013, 1078)), ("10-14", R(10, 14)), ("30, 32 and 35", (30, 32, 35)),
    ("5", (5,)), ("12 through 15", R(12, 15)), ("99-3", (99, 3)),  # a backwards range is two numbers
])
def test_expand(numbers, expected):
    assert expand(numbers) == expected


def test_sentences_and_context():
    text = ("FINDINGS:\nThere is a 3.5 mm nodule (ser. 2, img. 5). Dr. Lee was called. No effusion.\n"
            "Compare series 4 image 9. IMPRESSION: stable.")
    assert split_sentences(text) == ["FINDINGS:", "There is a 3.5 mm nodule (ser. 2, img. 5).",
                                     "Dr. Lee was called.", "No effusion.", "Compare series 4 image 9.",
                                     "IMPRESSION: stable."]
    found = mentions(text)
    assert [m.sentence for m in found] == ["There is a 3.5 mm nodule (ser. 2, img. 5).", "Compare series 4 image 9."]
    assert found[0].context == "FINDINGS: There is a 3.5 mm nodule (ser. 2, img. 5). Dr. Lee was called."
    assert found[1].context == "No effusion. Compare series 4 image 9. IMPRESSION: stable."
    assert [(r.series, r.images) for r in found[1].references] == [(4, (9,))]
