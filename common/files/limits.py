"""Bounds on the sizes a file's header claims, checked before anything of that size is decoded or allocated.

A header can claim any size: a 2 MB deflated DICOM that says 32768 x 32768 x 16 bit, a 6 KB
store that declares images of 65535 x 65535 or a billion ids. Every stage checks the claim
against two bounds before it believes it, and refuses with one line naming the file and the
bound:

* ``LDPO_MAX_PIXELS`` (default 67,108,864 = 8192 x 8192): the values of one image, all frames
  and samples counted (a DICOM's rows x columns x frames x samples per pixel; a store row's
  height x width x channels; a feature store row's dimensions);
* ``LDPO_MAX_ROWS`` (default 10,000,000): the rows (images, ids) of a store.

Both are environment variables, so one setting reaches every stage (and the loop passes it
on): ``LDPO_MAX_PIXELS=268435456 extract-keyimages …`` for larger images.
"""

from __future__ import annotations

import os

from ..errors import InputError

#: name -> (default, what it counts)
BOUNDS = {
    "LDPO_MAX_PIXELS": (8192 * 8192, "values per image (pixels x frames x samples)"),
    "LDPO_MAX_ROWS": (10_000_000, "rows per store"),
}


def bound(name: str) -> int:
    """The bound ``name`` (``LDPO_MAX_PIXELS`` or ``LDPO_MAX_ROWS``): the environment's, else the default."""
    default, _ = BOUNDS[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text)) if text.lower() not in ("nan", "inf", "-inf") else 0
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{name}={text!r}: must be a whole number of at least 1")
    return value


def max_pixels() -> int:
    return bound("LDPO_MAX_PIXELS")


def max_rows() -> int:
    return bound("LDPO_MAX_ROWS")


def pixels_problem(values: int, what: str) -> str:
    """Why an image of ``values`` values (described by ``what``, e.g. ``32768 x 32768 x 1 frame``) is
    refused, or ``""``: the text names the bound and how to raise it."""
    limit = max_pixels()
    if values <= limit:
        return ""
    return (f"{what} ({values:,} values) exceeds the bound of {limit:,} values per image "
            "(set LDPO_MAX_PIXELS to raise it)")


def check_rows(rows: int, source: str, what: str = "rows") -> None:
    """Refuse a store that claims more than ``LDPO_MAX_ROWS`` rows, naming it."""
    limit = max_rows()
    if rows > limit:
        raise InputError(f"{source}: {rows:,} {what} exceed the bound of {limit:,} rows per store "
                         "(set LDPO_MAX_ROWS to raise it)")


def check_pixels(values: int, source: str, what: str) -> None:
    """Refuse an image (a store row) of more than ``LDPO_MAX_PIXELS`` values, naming the file."""
    problem = pixels_problem(values, what)
    if problem:
        raise InputError(f"{source}: {problem}")
