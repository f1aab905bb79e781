"""The identifier check of issue 30 ("done means"): the full PACS path, every output byte, every identifier.

A toy PACS whose reports also name, without a title, other patients of the archive and physicians of other
patients' studies (``toy-data pacs --other-names``) goes through extract-keyimages (no ``--salt``: a key file) →
topic-label (``--min-df 1 --max-df 1``: every word in its saved gensim dictionary; ``--model-dir``) → the loop
with reports at 32 px (fine-tuning, tree by reports, keywords, report) → export-folders, extract-keyimages again
into a Zarr store, and word-vectors
(``--min-count 1``, ``--targets``). Every command's stdout and stderr is kept in ``logs/``. Then every file of
every output folder is searched for every identifier the archive's headers carry (names in their written forms,
patient ids, other ids, accessions and the prior accessions the reports name, birth and study dates in six written
forms, institutions, addresses, station names): text files (CSV, JSON, HTML, logs, word vectors) between
non-alphanumerics, case-insensitively, with the PNGs embedded in HTML decoded; HDF5 and Zarr attributes and string
arrays (ids); checkpoints (their pickle and the loaded dict); pickles (gensim dictionaries and models) as Latin-1
text; PNG text chunks; and every file's raw bytes for identifiers of 6 characters or more. The same search on the
toy PACS itself is the control (it must find them there).

Run: ``python tests/bench/bench_identifiers.py [--studies 10] [--seed 5] [--keep DIR]``; about 80 s of CPU
(5 min wall on the shared 2-core machine). Last line: ``identifiers: hits=N in the outputs``; exit 1 when N > 0.
Not a test (too slow for one); prints, and exits 1 on a hit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import header_identifiers, read_csv  # noqa: E402 - the DICOM headers' identifiers, as the hostile tests read them

BIN = Path(sys.executable).parent


LOOP = Path(__file__).resolve().parents[2] / "pipelines/ldpo-loop.sh"


def archive_identifiers(dicom: Path, raw_reports: list[dict[str, str]]) -> set[str]:
    """Every identifier of the toy archive: what its headers carry (the hostile tests' list: names in their
    written forms, ids, accessions, dates in written forms, institutions, addresses, station names), and the
    prior accessions the reports name (some from outside the archive)."""
    import re

    found = header_identifiers(dicom)
    found |= {a for r in raw_reports for a in re.findall(r"prior study (A\d{7})", r["text"])}
    return found


def _text_hits(text: str, secrets: set[str], where: str) -> list[str]:
    import re

    hits = []
    low = text.lower()
    for secret in secrets:
        if secret.lower() not in low:
            continue
        before = r"(?<![A-Za-z0-9.])" if secret[:1].isdigit() else r"(?<![A-Za-z0-9])"  # 0.4829170 is a float
        if re.search(before + re.escape(secret) + r"(?![A-Za-z0-9])", text, re.IGNORECASE):
            hits.append(f"{secret!r} in {where}")
    return hits


def _byte_hits(blob: bytes, secrets: set[str], where: str) -> list[str]:
    """Secrets of 6 characters or more as raw bytes (shorter ones occur by chance in megabytes of numbers)."""
    return [f"{form!r} (bytes) in {where}" for secret in secrets if len(secret) >= 6
            for form in {secret, secret.upper(), secret.lower(), secret.title()} if form.encode() in blob]


def _strings(value) -> list[str]:
    """Every string inside a decoded value (attributes, checkpoint dicts, arrays of ids)."""
    import numpy as np

    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [s for v in value.ravel().tolist() for s in _strings(v)]
    return []


def _png_texts(blob: bytes) -> list[str]:
    import struct
    import zlib

    texts, at = [], 8
    while at + 8 <= len(blob):
        length, kind = struct.unpack(">I4s", blob[at:at + 8])
        data = blob[at + 8:at + 8 + length]
        if kind == b"tEXt":
            texts.append(data.decode("latin-1"))
        elif kind == b"zTXt":
            key, _, rest = data.partition(b"\0")
            texts.append(key.decode("latin-1") + " " + zlib.decompress(rest[1:]).decode("latin-1"))
        elif kind == b"iTXt":
            texts.append(data.decode("utf-8", "replace"))
        at += 12 + length
    return texts


def identifier_hits(folders: list[Path], secrets: set[str]) -> tuple[list[str], dict[str, int]]:
    """Where any secret occurs in any file under ``folders``: text files (CSV, JSON, HTML, logs, word vectors)
    case-insensitively between non-alphanumerics, PNGs embedded in HTML included; HDF5 and Zarr attributes and
    string arrays (ids); checkpoint dicts; pickles (gensim dictionaries and models) as Latin-1 text; PNG text
    chunks; and every file's raw bytes for secrets of 6 characters or more. Returns the hits and how many files of
    each kind were read."""
    import base64
    import re
    import zipfile

    import h5py

    hits: list[str] = []
    kinds: dict[str, int] = {}

    def count(kind: str) -> None:
        kinds[kind] = kinds.get(kind, 0) + 1

    for folder in folders:
        for store in sorted(p for p in folder.rglob("*.zarr") if p.is_dir()):
            import zarr

            group = zarr.open_group(str(store), mode="r")
            hits += _text_hits(" ".join(_strings(dict(group.attrs))), secrets, f"{store} attributes")
            for name, array in group.arrays():
                hits += _text_hits(" ".join(_strings(dict(array.attrs))), secrets, f"{store}/{name} attributes")
                if array.dtype.kind in "OSUT" or str(array.dtype).startswith("<U") or "str" in str(array.dtype):
                    hits += _text_hits(" ".join(_strings(array[:])), secrets, f"{store}/{name}")
            count("zarr")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            blob = path.read_bytes()
            hits += _byte_hits(blob, secrets, str(path))
            if blob.startswith(b"\x89HDF"):
                with h5py.File(path, "r") as fh:
                    def visit(name, obj, path=path):
                        nonlocal hits
                        hits += _text_hits(" ".join(_strings(dict(obj.attrs))), secrets, f"{path}:{name} attributes")
                        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "OSU":
                            hits += _text_hits(" ".join(_strings(obj[()])), secrets, f"{path}:{name}")
                    hits += _text_hits(" ".join(_strings(dict(fh.attrs))), secrets, f"{path} attributes")
                    fh.visititems(visit)
                count("hdf5")
            elif blob.startswith(b"\x89PNG"):
                hits += _text_hits(" ".join(_png_texts(blob)), secrets, f"{path} text chunks")
                count("png")
            elif blob.startswith(b"PK"):
                import torch

                with zipfile.ZipFile(path) as zf:
                    for member in zf.namelist():
                        if member.endswith(".pkl"):
                            hits += _text_hits(zf.read(member).decode("latin-1"), secrets, f"{path}:{member}")
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                hits += _text_hits(" ".join(_strings(checkpoint)), secrets, f"{path} (loaded)")
                count("checkpoint")
            elif blob[:1] == b"\x80":
                hits += _text_hits(blob.decode("latin-1"), secrets, f"{path} (pickle)")
                count("pickle")
            else:
                try:
                    text = blob.decode("utf-8")
                except UnicodeDecodeError:
                    count("other binary")
                    continue
                for uri in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
                    png = base64.b64decode(uri)
                    hits += _text_hits(" ".join(_png_texts(png)), secrets, f"{path} (embedded PNG)")
                    hits += _byte_hits(png, secrets, f"{path} (embedded PNG)")
                    count("embedded png")
                text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "", text)
                hits += _text_hits(text, secrets, str(path))
                count(path.suffix or "text")
    return hits, kinds


def full_path(root: Path, studies: int = 10, seed: int = 5) -> Path:
    """toy PACS whose reports name other patients and staff of other studies → extract-keyimages (no --salt) →
    topic-label (every word kept, model saved) → the loop with reports (tree by reports, keywords, report) →
    export-folders, extract-keyimages into a Zarr store, and word-vectors (every word kept, targets); every
    command's log kept in logs/."""
    from ldpo.stages import run

    (root / "logs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "LDPO_SALT"}
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", OMP_NUM_THREADS="1")

    def sh(name, *argv):
        proc = subprocess.run([str(a) for a in argv], env=env, cwd=root, capture_output=True, text=True)
        (root / "logs" / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)

    start = time.perf_counter()
    if (root / "pacs").exists():  # a toy PACS made earlier (to run other code on the same archive)
        print("toy-data pacs: reusing", root / "pacs")
    elif run(["toy-data", "pacs", "--out", str(root / "pacs"), "--studies", str(studies), "--size", "32", "--seed",
            str(seed), "--other-names", "-q"]) != 0:
        raise SystemExit("toy-data pacs failed")
    sh("extract", "ldpo", "extract-keyimages", "pacs/dicom", "--reports", "pacs/reports.csv", "--out", "keys",
       "--size", "32", "-v")
    sh("topics", "ldpo", "topic-label", "keys/reports.csv", "--manifest", "keys/manifest.csv", "--out",
       "topics/labels.csv", "--topics", "3", "--min-df", "1", "--max-df", "1", "--model-dir", "topics/model")
    sh("loop", "bash", LOOP, "--images", "keys/images.h5", "--work", "run", "--init-labels", "topics/labels.csv",
       "--reports", "keys/reports.csv", "--manifest", "keys/manifest.csv", "--k", "3", "--max-iter", "1",
       "--epochs", "1", "--input-size", "32", "--batch-size", "32", "--device", "cpu", "--split", "none",
       "--tree-affinity", "reports", "--tree-preference", "0.9")
    sh("export", "ldpo", "export-folders", "run/final/labels.csv", "keys/images.h5", "--out", "export")
    sh("zarr", "ldpo", "extract-keyimages", "pacs/dicom", "--reports", "pacs/reports.csv", "--out", "keys-zarr",
       "--size", "32", "--format", "zarr")
    sh("vectors", "ldpo", "word-vectors", "keys/reports.csv", "--out", "vectors/vectors.txt", "--min-count", "1",
       "--dim", "16", "--manifest", "keys/manifest.csv", "--targets", "vectors/words.csv")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep", default="", help="run in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ldpo-identifiers-") as tmp:
        root = Path(args.keep or tmp)
        start = time.perf_counter()
        full_path(root, args.studies, args.seed)
        raw = read_csv(root / "pacs/reports.csv")
        secrets = archive_identifiers(root / "pacs/dicom", raw)
        others = [line for r in raw for line in r["text"].splitlines()
                  if line.startswith(("Images of ", "Case reviewed"))]
        outputs = [root / name for name in ("keys", "keys-zarr", "topics", "run", "export", "vectors", "logs")]
        files = sum(1 for folder in outputs for p in folder.rglob("*") if p.is_file())
        hits, kinds = identifier_hits(outputs, secrets)
        raw_hits, _ = identifier_hits([root / "pacs"], secrets)
        print(f"identifiers: {len(secrets)} searched (names in their written forms, ids, accessions, dates, "
              f"institutions, addresses); {len(others)} report lines name people of other studies")
        print(f"files searched: {files} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
        print(f"control: {len(raw_hits)} hits in the toy PACS itself (the search finds what it looks for)")
        for hit in hits[:40]:
            print("HIT", hit)
        print(f"identifiers: hits={len(hits)} in the outputs ({time.perf_counter() - start:.0f} s)")
        return 1 if hits or not raw_hits else 0


if __name__ == "__main__":
    sys.exit(main())
