"""Image and feature stores: one API over HDF5 (``.h5``/``.hdf5``) and Zarr 3 (``.zarr``).

The format follows the path's suffix. Array names are the same in both formats:

* images store: ``images`` uint8 ``[N,H,W]`` or ``[N,H,W,3]``, chunks of whole images (about
  1 MiB each; stores of one image per chunk are read too);
* feature store: ``features`` float32 ``[N,D]`` (global, or softmax ``probs``) or
  ``local`` float16/float32 ``[N,S,C]`` (S positions of C channels);
* every store: ``ids`` strings ``[N]``, unique; rows join labels by id, never position.

Attributes (JSON-able values) record what made the store.

Writing::

    with create_store(path, n=N, arrays={"features": ((D,), "float32")}, ids=ids,
                      attrs={"stage": "featurize"}) as store:
        store.write("features", 0, block)          # by row range
    # the store appears under its final name only here, when the block completed

Reading::

    with open_store(path) as store:
        for start, stop, block in store.batches("features", 1024): ...

Why one module of this size (about 670 lines): it is the one owner of the store contract, and
HDF5 and Zarr, writing and reading, the atomic rename, the header bounds and the checksums are
one API that every stage meets; split, the two formats' rules would drift apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError

H5_SUFFIXES = (".h5", ".hdf5")
ZARR_SUFFIXES = (".zarr",)

#: array name -> (allowed dtypes, allowed ranks)
SCHEMA = {
    "images": ({"uint8"}, {3, 4}),
    "features": ({"float32"}, {2}),
    "local": ({"float16", "float32"}, {3}),
}


def store_format(path: str | os.PathLike) -> str:
    """``"h5"`` or ``"zarr"`` from the path's suffix; anything else is an input error."""
    suffix = Path(path).suffix.lower()
    if suffix in H5_SUFFIXES:
        return "h5"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise InputError(f"{path}: unknown store format {suffix or '(no suffix)'!r}: use .h5, .hdf5 or .zarr")


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden sibling of ``path`` (same folder, so the final rename is atomic), same suffix.

    ``images.h5`` → ``.images.tmp-1a2b3c4d.h5``: the suffix stays last, so a temporary
    store is still recognized as HDF5 or Zarr.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporaries of ``path`` (:func:`temporary_name`: ``.NAME.tmp-1a2b3c4d.SUFFIX``) that a
    killed write left beside it; a command that owns ``path`` removes them once it has written it."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.stem}.tmp-") + "[0-9a-f]{8}" + re.escape(path.suffix) + "$")
    try:
        return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))
    except OSError:
        return []


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    for stale in stale_temporaries(path):
        if stale.is_symlink() or not stale.is_dir():
            stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(stale, ignore_errors=True)


#: what a Zarr store keeps at its top level besides its arrays' folders (v3; v2)
ZARR_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
#: what marks a folder inside a Zarr store as an array or group (v3; v2)
ZARR_NODE_METADATA = ("zarr.json", ".zarray", ".zgroup")


def ldpo_store_problem(path: str | os.PathLike) -> str:
    """Why the folder at ``path`` is not an ldpo Zarr store, or ``""`` when it is one.

    An ldpo Zarr store is a Zarr group (``zarr.json``, or v2's ``.zgroup``) whose attributes
    record the ``stage`` that wrote it (every ldpo store does: :func:`create_store`'s
    ``attrs``), holding nothing at its top level but that metadata and its arrays' folders.
    Only such a folder is ever replaced or removed as an old output: a user's folder, or a
    store someone put other files in, is not.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return "not a folder"
    try:
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("node_type") != "group":
                return "its zarr.json is not a Zarr group's"
            attrs = meta.get("attributes", {})
        elif (path / ".zgroup").is_file():
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8")) if (path / ".zattrs").is_file() else {}
        else:
            return "no Zarr metadata: zarr.json or .zgroup"
        entries = sorted(path.iterdir())
    except (OSError, ValueError) as err:
        return f"its Zarr metadata is unreadable: {type(err).__name__}"
    stage = attrs.get("stage") if isinstance(attrs, dict) else None
    if not isinstance(stage, str) or not stage:
        return "its attributes record no ldpo stage"
    for entry in entries:
        if entry.name in ZARR_METADATA:
            continue
        if not _is_node(entry):
            return f"it holds {entry.name!r}, which is not part of a Zarr store"
        foreign = _foreign_in_node(entry)
        if foreign is not None:
            return f"it holds {str(foreign.relative_to(path))!r}, which is not part of a Zarr store"
    return ""


#: a chunk's key below an array folder: ``0``, ``0.0`` (v2), or folders of them (v3's ``c/0/0``)
CHUNK_NAME = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _is_node(entry: Path) -> bool:
    """A real folder (not a link) that holds a Zarr array's or group's metadata."""
    return (entry.is_dir() and not entry.is_symlink()
            and any((entry / name).is_file() and not (entry / name).is_symlink() for name in ZARR_NODE_METADATA))


def _foreign_in_node(node: Path, chunks: bool = False) -> Path | None:
    """The first entry anywhere under a Zarr node folder (an array or a group) that is not part
    of the store, or None: only metadata files, chunk files and folders named by chunk keys
    (``c/`` at an array's top), and nested nodes. Links and special files are never part of it."""
    for entry in sorted(node.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_file():
            if CHUNK_NAME.match(entry.name) or (not chunks and entry.name in ZARR_METADATA + (".zarray",)):
                continue
            return entry
        if not entry.is_dir():
            return entry
        if chunks and not CHUNK_NAME.match(entry.name):
            return entry
        if chunks or entry.name == "c" or CHUNK_NAME.match(entry.name):
            found = _foreign_in_node(entry, chunks=True)
        elif _is_node(entry):
            found = _foreign_in_node(entry)
        else:
            return entry
        if found is not None:
            return found
    return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def check_replaceable(final: Path, store: bool) -> None:
    """Raise an input error unless an output may take the place of what is at ``final``.

    Allowed: nothing there; a regular file; a link (the link is replaced, never what it
    points to) unless it points to a special file; and, when the output is a Zarr store
    (``store``, the temporary is a folder), an earlier ldpo Zarr store
    (:func:`ldpo_store_problem`). Refused, and nothing deleted: any other folder (a user's
    data: ``--out runs/``) and a special file (a FIFO, a device such as ``/dev/null``).
    """
    final = Path(final)
    try:
        mode = os.lstat(final).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # the rename itself reports what is wrong
    if stat.S_ISLNK(mode):
        try:
            target = os.stat(final).st_mode
        except OSError:
            return
        if not (stat.S_ISREG(target) or stat.S_ISDIR(target)):
            raise InputError(f"{final}: is a link to a {_kind(target)}, not a regular file: refusing to write to it")
        return
    if stat.S_ISDIR(mode):
        if not store:
            raise InputError(f"{final}: is an existing folder, not a file: refusing to replace it (nothing was "
                             "deleted); give a file path")
        if _owned(final):
            return
        problem = ldpo_store_problem(final)
        if problem:
            raise InputError(f"{final}: is an existing folder that is not an earlier ldpo Zarr store ({problem}): "
                             "refusing to replace it (nothing was deleted); give another path")
        return
    if not stat.S_ISREG(mode):
        raise InputError(f"{final}: is a {_kind(mode)}, not a regular file: refusing to write to it")


def replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final``: a file over a file, a Zarr store (a folder) over an earlier
    ldpo Zarr store, or a folder output over the earlier one its command checked
    (:func:`ldpo.common.files.folders.check_output_folder`); anything else at ``final`` is refused
    (:func:`check_replaceable`)."""
    tmp, final = Path(tmp), Path(final)
    check_replaceable(final, store=tmp.is_dir() and not tmp.is_symlink())
    _OWNED.pop(_key(final), None)
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _make_folder(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{final}: cannot create its folder {final.parent} ({err.strerror or err})") from None


def _about(err: BaseException, tmp: Path, final: Path) -> BaseException:
    """An OSError about a temporary name, re-told about the output the user named."""
    if isinstance(err, OSError) and (str(getattr(err, "filename", "")) == str(tmp) or tmp.name in str(err)):
        return InputError(f"{final}: cannot write ({err.strerror or type(err).__name__})")
    if isinstance(err, InputError) and str(tmp) in str(err):  # told by an inner atomic_path about our temporary
        return InputError(str(err).replace(str(tmp), str(final)))
    return err


def _commit(tmp: Path, final: Path) -> None:
    try:
        replace(tmp, final)
    except InputError:
        remove(tmp)
        raise
    except OSError as err:
        remove(tmp)
        raise InputError(f"{final}: cannot replace it ({err.strerror or err})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block completes.

    On failure the temporary is removed, and an OS error about it names ``path`` instead.
    """
    final = Path(path)
    _make_folder(final)
    tmp = temporary_name(final)
    try:
        yield tmp
    except BaseException as err:
        remove(tmp)
        told = _about(err, tmp, final)
        if told is err:
            raise
        raise told from err
    _commit(tmp, final)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """:func:`atomic_path` for outputs that belong together: all or none.

    Yields one temporary path per output. When the block completes every written one is
    renamed into place (one after the other, after all were written) and an output the
    block did not write is removed, since it would describe an older run. An exception
    removes every temporary and leaves all the older outputs as they were.
    """
    finals = [Path(p) for p in paths]
    for final in finals:
        _make_folder(final)
    tmps = [temporary_name(final) for final in finals]
    try:
        yield tmps
    except BaseException as err:
        for tmp in tmps:
            remove(tmp)
        for tmp, final in zip(tmps, finals):
            told = _about(err, tmp, final)
            if told is not err:
                raise told from err
        raise
    try:  # every output is checked before the first is renamed: all or none
        for tmp, final in zip(tmps, finals):
            check_replaceable(final, store=tmp.is_dir() or not tmp.exists())
    except InputError:
        for tmp in tmps:
            remove(tmp)
        raise
    for tmp, final in zip(tmps, finals):
        if tmp.exists():
            _commit(tmp, final)
        elif not final.is_symlink() and final.is_dir():
            shutil.rmtree(final, ignore_errors=True)  # an earlier ldpo Zarr store (checked above)
        elif final.is_symlink() or final.exists():
            final.unlink()


class Store:
    """An open store. Arrays are read by row ranges; nothing is loaded whole unless asked."""

    def __init__(self, path: Path, handle: Any, fmt: str, writable: bool):
        self.path = Path(path)
        self.format = fmt
        self._handle = handle
        self.writable = writable
        self._opened: dict[str, Any] = {}  # read-only stores: arrays opened once (zarr reads metadata per lookup)

    # -- what is in it ------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return sorted(self._handle.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._handle

    def array(self, name: str) -> Any:
        """The h5py dataset or zarr array (sliceable like numpy)."""
        if name in self._opened:
            return self._opened[name]
        if name not in self._handle:
            raise InputError(f"{self.path}: has no {name!r} array (it has {', '.join(self.names) or 'none'})")
        arr = self._handle[name]
        if not self.writable:
            self._opened[name] = arr
        return arr

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.array(name).shape)

    @property
    def kind(self) -> str:
        """``images``, ``features`` or ``local``: the data array this store holds."""
        for name in SCHEMA:
            if name in self._handle:
                return name
        raise InputError(f"{self.path}: holds no images, features or local array")

    def __len__(self) -> int:
        return self.shape("ids")[0]

    @property
    def ids(self) -> list[str]:
        ids = self.array("ids")
        if ids.dtype.kind not in "OSUT":
            raise InputError(f"{self.path}: ids are {ids.dtype} numbers, but the contract needs strings "
                             "(write them as text)")
        with self._reading("ids"):
            if self.format == "h5":
                return list(ids.asstr()[:])
            return [str(x) for x in ids[:].tolist()]

    @contextlib.contextmanager
    def _reading(self, name: str, where: str = "") -> Iterator[None]:
        """Turn a decoding failure (a corrupt chunk, a truncated file) into one line naming the store."""
        try:
            yield
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - codecs raise anything; the message must name the store
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(f"{self.path}: cannot read {name}{where}: the store is damaged ({text})") from None

    @property
    def attrs(self) -> dict[str, Any]:
        raw = dict(self._handle.attrs)
        if self.format == "h5":
            return {k: _from_h5_attr(v) for k, v in raw.items()}
        return raw

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self._handle.attrs[key] = json.dumps(value) if self.format == "h5" else _jsonable(value)

    # -- reading ------------------------------------------------------------------
    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        arr = self.array(name)
        stop = arr.shape[0] if stop is None else stop
        with self._reading(name, f" rows {start}..{stop}"):
            return np.asarray(arr[start:stop])

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows by index (any order), read in sorted order for speed."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        arr = self.array(name)
        out = np.empty((len(rows),) + tuple(arr.shape[1:]), dtype=arr.dtype)
        sorted_rows = rows[order]
        with self._reading(name, f" ({len(rows)} rows from {int(sorted_rows[0]) if len(rows) else 0})"):
            self._take_sorted(arr, out, order, sorted_rows)
        return out

    def _take_sorted(self, arr, out: np.ndarray, order: np.ndarray, sorted_rows: np.ndarray) -> None:
        if self.format == "h5":
            uniq, inverse = np.unique(sorted_rows, return_inverse=True)
            out[order] = arr[uniq.tolist()][inverse]
        else:
            out[order] = arr.get_orthogonal_selection((sorted_rows,))

    def batches(self, name: str, batch_size: int, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, block)`` over rows ``[start, stop)``."""
        stop = self.shape(name)[0] if stop is None else stop
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield lo, hi, self.read(name, lo, hi)

    # -- writing ------------------------------------------------------------------
    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write rows ``[start, start + len(values))`` of an existing array."""
        if not self.writable:
            raise InputError(f"{self.path}: opened read-only")
        arr = self.array(name)
        values = np.asarray(values)
        if start < 0 or start + len(values) > arr.shape[0]:
            raise InputError(f"{self.path}: rows {start}..{start + len(values)} outside {name} [0, {arr.shape[0]})")
        arr[start:start + len(values)] = values.astype(arr.dtype, copy=False)

    def close(self) -> None:
        if self.format == "h5":
            self._handle.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- checking -----------------------------------------------------------------
    def validate(self, expect: str | None = None) -> "Store":
        """Check the contract: known data array, its dtype and rank, ids unique and of length N."""
        kind = self.kind
        if expect is not None and expect != kind and not (expect == "global" and kind == "features"):
            raise InputError(f"{self.path}: holds {kind}, but a {expect} store is needed here")
        arr = self.array(kind)
        dtypes, ranks = SCHEMA[kind]
        if str(arr.dtype) not in dtypes:
            raise InputError(f"{self.path}: {kind} has dtype {arr.dtype}, expected {'/'.join(sorted(dtypes))}")
        if arr.ndim not in ranks or (kind == "images" and arr.ndim == 4 and arr.shape[3] != 3):
            raise InputError(f"{self.path}: {kind} has shape {tuple(arr.shape)}, which the contract does not allow")
        if "ids" not in self:
            raise InputError(f"{self.path}: has no ids array")
        self.check_bounds(kind)
        if self.shape("ids")[0] != arr.shape[0]:
            raise InputError(f"{self.path}: {arr.shape[0]} {kind} rows but {self.shape('ids')[0]} ids")
        ids = self.ids
        check_ids(ids, self.path)
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"{self.path}: duplicate id {dup!r}")
        return self

    def check_bounds(self, kind: str) -> None:
        """The sizes the store declares, against :mod:`ldpo.common.files.limits`, before any row or id is read:
        its rows (and ids), and the values of one row (an image's pixels x channels, a feature row's dims)."""
        from .limits import check_pixels, check_rows

        shape = tuple(self.shape(kind))
        check_rows(max(shape[0], self.shape("ids")[0]), str(self.path))
        what = " x ".join(map(str, shape[1:])) + (" images" if kind == "images" else f" {kind} rows")
        check_pixels(int(np.prod(shape[1:], dtype=object)), str(self.path), what)


def open_store(path: str | os.PathLike, mode: str = "r", expect: str | None = None,
               validate: bool = True) -> Store:
    """Open an existing store (``mode`` ``"r"`` or ``"r+"``), validated against the contract.

    ``expect`` (``images``, ``features``, ``local``) turns a store of another kind into
    a clear input error.
    """
    path = Path(path)
    fmt = store_format(path)
    if not path.exists():
        raise InputError(f"{path}: no such store")
    if fmt == "h5" and path.is_dir():
        raise InputError(f"{path}: is a folder, not an HDF5 file")
    if fmt == "zarr" and not path.is_dir():
        raise InputError(f"{path}: is a file, not a Zarr store (a Zarr store is a folder)")
    if fmt == "zarr" and not any((path / name).is_file() for name in ("zarr.json", ".zgroup")):
        raise InputError(f"{path}: is a folder without Zarr group metadata (zarr.json), not a Zarr store")
    try:
        if fmt == "h5":
            import h5py

            handle = h5py.File(path, mode)
        else:
            import zarr

            handle = zarr.open_group(str(path), mode=mode)
    except (OSError, ValueError, Exception) as err:  # noqa: BLE001 - any open failure is bad input
        if isinstance(err, InputError):
            raise
        detail = " ".join(str(err).split())  # one line, whole: h5py's messages span lines
        detail = detail if len(detail) <= 200 else detail[:199] + "…"
        raise InputError(f"{path}: cannot open as {fmt} store ({type(err).__name__}: {detail})") from err
    store = Store(path, handle, fmt, writable=mode != "r")
    if validate:
        try:
            store.validate(expect)
        except BaseException:
            store.close()
            raise
    return store


def _create(path: Path, fmt: str, n: int, arrays: dict[str, tuple[tuple[int, ...], str]],
            ids: list[str] | None, attrs: dict[str, Any], chunk_rows: int | None) -> Store:
    if fmt == "h5":
        import h5py

        handle = h5py.File(path, "w")
        store = Store(path, handle, fmt, writable=True)
        for name, (row_shape, dtype) in arrays.items():
            rows = chunk_rows or _default_chunk_rows(name, row_shape, dtype)
            handle.create_dataset(name, shape=(n, *row_shape), dtype=dtype,
                                  chunks=(max(1, min(rows, n)), *row_shape) if n else None)
        handle.create_dataset("ids", shape=(n,), dtype=h5py.string_dtype())
    else:
        import zarr

        handle = zarr.open_group(str(path), mode="w")
        store = Store(path, handle, fmt, writable=True)
        for name, (row_shape, dtype) in arrays.items():
            rows = chunk_rows or _default_chunk_rows(name, row_shape, dtype)
            handle.create_array(name, shape=(n, *row_shape), dtype=dtype,
                                chunks=(max(1, min(rows, n)), *row_shape), fill_value=0)
        handle.create_array("ids", shape=(n,), dtype=str, chunks=(max(1, min(65536, n)),))
    if ids is not None:
        if len(ids) != n:
            raise InputError(f"{path}: {len(ids)} ids for {n} rows")
        write_ids(store, ids)
    store.set_attrs(**attrs)
    return store


def check_ids(ids: list[str], where: str | os.PathLike) -> None:
    """One rule for ids everywhere: an id never starts or ends with white space.

    Labels CSVs are read with the spaces around a cell stripped (spreadsheets add them), so an
    id with such spaces could never join its labels row: a store holding one is refused, on
    reading and on writing, naming the id."""
    bad = next((i for i in ids if i != i.strip()), None)
    if bad is not None:
        raise InputError(f"{where}: id {bad!r} starts or ends with white space; ids are compared exactly and "
                         "labels CSVs strip the spaces around their cells: rename it")


def write_ids(store: Store, ids: list[str], start: int = 0) -> None:
    check_ids([str(i) for i in ids], store.path)
    arr = store.array("ids")
    values = np.array([str(i) for i in ids], dtype=object)
    if store.format == "zarr":
        values = np.array([str(i) for i in ids], dtype=str)
    arr[start:start + len(ids)] = values


def _default_chunk_rows(name: str, row_shape: tuple[int, ...], dtype: str) -> int:
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    if name == "images":  # read in whole chunks (common/images/imagedata.py): about 1 MiB, 16 images at 256 px
        return int(max(1, min(1024, (1 << 20) // max(row_bytes, 1))))
    return int(max(1, min(4096, (4 << 20) // max(row_bytes, 1))))  # about 4 MiB chunks


@contextlib.contextmanager
def create_store(path: str | os.PathLike, n: int, arrays: dict[str, tuple[tuple[int, ...], str]],
                 ids: list[str] | None = None, attrs: dict[str, Any] | None = None,
                 chunk_rows: int | None = None) -> Iterator[Store]:
    """Create a store under a temporary name; it gets its final name when the block ends.

    ``arrays`` maps an array name to ``(row_shape, dtype)``. An exception inside the
    block removes the temporary store and leaves any older file at ``path`` untouched.
    """
    path = Path(path)
    fmt = store_format(path)
    with atomic_path(path) as tmp:
        store = _create(tmp, fmt, n, arrays, ids, attrs or {}, chunk_rows)
        try:
            yield store
        finally:
            store.close()
    store.path = path


def write_store(path: str | os.PathLike, ids: list[str], attrs: dict[str, Any] | None = None,
                **arrays: np.ndarray) -> None:
    """Write whole in-memory arrays as a store in one call (small data, tests)."""
    spec = {name: (tuple(a.shape[1:]), str(a.dtype)) for name, a in arrays.items()}
    with create_store(path, n=len(ids), arrays=spec, ids=ids, attrs=attrs) as store:
        for name, a in arrays.items():
            store.write(name, 0, a)
        store.validate()


def _from_h5_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def file_checksum(path: str | os.PathLike, limit: int | None = None) -> str:
    """SHA-256 of a file (or of a Zarr directory's files), for provenance attributes."""
    import hashlib

    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:limit] if limit else digest.hexdigest()


#: folders that a command checked it may replace as a whole (:func:`ldpo.common.files.folders.check_output_folder`):
#: resolved path -> the entries they held then
_OWNED: dict[str, frozenset[str]] = {}


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _owned(final: Path) -> bool:
    """True when ``final`` was checked by check_output_folder and holds nothing new since."""
    listed = _OWNED.get(_key(final))
    try:
        return listed is not None and {p.name for p in final.iterdir()} <= listed
    except OSError:
        return False
