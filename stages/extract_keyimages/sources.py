"""What a SOURCE holds, in two passes over its files.

Pass 1 (:func:`index_file`) reads headers only: DICOM with pixel data deferred (its
length and file offset are checked against the file size, the bytes are not read),
NIfTI headers, image sizes. Pass 2 (:func:`read_file`) decodes the frames that were
selected and turns them into uint8 ``size``×``size`` images. Both are plain functions of
picklable arguments so a process pool can run them; each returns records or a reason,
never raises for a bad file.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...common.errors import InputError
from ...common.files.limits import max_pixels, pixels_problem

from .headers import header_fields, modality
from .phi import (DATE_KEYWORDS, ID_KEYWORDS, NAME_KEYWORDS, PLACE_KEYWORDS,
                                               WHOLE_PLACE_KEYWORDS, name_parts, place_phrases)
from .pixels import BadPixels, dicom_frame, finite_range, fit, scale, volume_window

#: inflated bytes of a deflated DICOM read for its header (the elements before the pixel data)
DEFLATED_HEAD = 4 << 20
#: bytes per pixel value at most (32-bit samples), for the inflated size a deflated DICOM may reach
MAX_SAMPLE_BYTES = 4
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: folder levels walked below a SOURCE at most (a PACS export has a handful)
MAX_DEPTH = 128
SKIP_SUFFIXES = (".txt", ".csv", ".json", ".md", ".xml", ".html", ".py", ".sh", ".zip", ".gz", ".log")


def kind_of(path: Path) -> str | None:
    """``dicom``, ``nifti``, ``image``, or None for files that are not images (reports, notes)."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
        return None
    return "dicom"


def walk(source: Path) -> list[tuple[str, str]]:
    """``(path, kind)`` of every candidate file under ``source`` (or ``source`` itself), sorted by path."""
    if source.is_file():
        kind = kind_of(source) or "dicom"
        return [(str(source), kind)]
    found = []
    for root, dirs, files in os.walk(source):
        depth = len(Path(root).relative_to(source).parts)
        if dirs and depth >= MAX_DEPTH:  # os.walk recurses: a deeper tree ends in a RecursionError, no path
            raise InputError(f"{source}: folders nested more than {MAX_DEPTH} levels deep (under "
                             f"{Path(root).relative_to(source).parts[0]}/…): refusing to walk it")
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root) / name
            kind = kind_of(path)
            if kind:
                found.append((str(path), kind))
    return sorted(found)


@dataclass
class Record:
    """One object found in pass 1 (a DICOM instance, a NIfTI volume, or an image file)."""

    path: str
    kind: str
    frames: int = 1
    study_uid: str = ""
    accession: str = ""
    patient_id: str = ""
    series_uid: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    sop_uid: str = ""
    modality: str = ""
    # the manifest's header fields, already reduced to their allow-lists (see .headers)
    body_part: str = ""
    view: str = ""
    orientation: str = ""
    series_words: str = ""
    # what the header says about the patient, to scrub from report text (see phi.scrubber)
    names: list[str] = field(default_factory=list)
    persons: list[str] = field(default_factory=list)  # each person name's parts joined by "^" (doe^jane)
    ids: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)


@dataclass
class Failure:
    path: str
    reason: str
    # a DICOM object that is rejected (no pixel data, truncated …) still tells who its patient is
    study_uid: str = ""
    patient_id: str = ""
    identity: dict[str, list[str]] = field(default_factory=dict)


def index_file(item: tuple[str, str]) -> Record | Failure:
    path, kind = item
    try:
        if kind == "dicom":
            return _index_dicom(path)
        if kind == "nifti":
            return _index_nifti(path)
        return _index_image(path)
    except Exception as err:  # noqa: BLE001 - any failure of one file is a reject, the batch goes on
        return Failure(path, f"unreadable: {_short(err)}")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _index_dicom(path: str) -> Record | Failure:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    try:
        too_big = _deflated_problem(path)  # before dcmread, which inflates a deflated file whole
        if too_big:
            return Failure(path, too_big)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        return Failure(path, "unreadable: not a DICOM file")
    identity = _patient(ds)
    study_uid, patient_id = str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", "") or "")

    def failure(reason: str) -> Failure:
        return Failure(path, reason, study_uid, patient_id, identity)

    if "PixelData" not in ds:
        what = modality(ds.get("Modality", "")) or "non-image"
        return failure(f"no pixel data ({what} object)")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        return failure("unreadable: no transfer syntax in the file meta information")
    decoder = get_decoder(syntax)
    if not decoder.is_available:
        return failure(f"compressed syntax without a decoder: {syntax.name}")
    too_big = _size_problem(ds)
    if too_big:
        return failure(too_big)
    truncated = _truncated(path, ds)
    if truncated:
        return failure(truncated)
    return Record(
        path=path, kind="dicom", frames=max(1, _int(ds.get("NumberOfFrames", 1)) or 1),
        study_uid=str(ds.get("StudyInstanceUID", "")), accession=str(ds.get("AccessionNumber", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""), series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_number=_int(ds.get("SeriesNumber")), instance_number=_int(ds.get("InstanceNumber")),
        sop_uid=str(ds.get("SOPInstanceUID", "")), **header_fields(ds, identity["names"]), **identity)


def _values(elem) -> list[str]:
    value = elem.value
    values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


_KINDS = {**{k: "names" for k in NAME_KEYWORDS}, **{k: "ids" for k in ID_KEYWORDS},
          **{k: "phrases" for k in PLACE_KEYWORDS}, **{k: "dates" for k in DATE_KEYWORDS}}


def _patient(ds, depth: int = 0) -> dict[str, list[str]]:
    """What the header says about the patient (the identifying attributes of the DICOM basic profile, also
    inside sequences), for scrubbing report text: name parts, ids, dates, place phrases."""
    from pydicom.datadict import keyword_for_tag

    found: dict[str, list[str]] = {"names": [], "persons": [], "ids": [], "dates": [], "phrases": []}
    for tag in list(ds.keys()):
        if tag.group == 0x7FE0 or tag.group == 0x0002:
            continue
        keyword = keyword_for_tag(tag)
        kind = _KINDS.get(keyword)
        try:
            if kind:
                values = _values(ds[tag])
                if kind == "names":
                    found["names"] += [part for v in values for part in name_parts(v)]
                    found["persons"] += ["^".join(name_parts(v)) for v in values if name_parts(v)]
                elif kind == "phrases":
                    found["phrases"] += [p for v in values for p in place_phrases(
                        v, parts=keyword not in WHOLE_PLACE_KEYWORDS, strip=keyword == "InstitutionName")]
                else:
                    found[kind] += values
            elif keyword.endswith("Sequence") and depth < 4:
                for item in ds[tag].value or []:
                    for key, more in _patient(item, depth + 1).items():
                        found[key] += more
        except Exception:  # noqa: BLE001 - a malformed element says nothing we could scrub; the rest still counts
            continue
    return found
def _size_problem(ds) -> str:
    """Why the image the header claims is too large to decode (rows x columns x frames x samples
    against LDPO_MAX_PIXELS), else ''."""
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    frames = max(1, _int(ds.get("NumberOfFrames", 1)) or 1)
    samples = max(1, _int(ds.get("SamplesPerPixel", 1)) or 1)
    return pixels_problem(rows * cols * frames * samples,
                          f"the header claims {rows} x {cols} pixels x {frames} frame(s) x {samples} sample(s)")


def _deflated_problem(path: str) -> str:
    """For a deflated DICOM (the whole data set zlib-compressed), why it is too large to read, else ''
    (also for any other file). Inflated as a stream, never whole: the header (its first
    ``DEFLATED_HEAD`` bytes) is checked like any other (:func:`_size_problem`), and the data set may
    inflate to no more than the bound's bytes (``LDPO_MAX_PIXELS`` x 4, plus the header)."""
    from io import BytesIO

    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    with open(path, "rb") as fp:
        try:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
        except Exception:  # noqa: BLE001 - not a DICOM file with a preamble: dcmread will say what it is
            return ""
        if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            return ""
        inflate, head, total, checked = zlib.decompressobj(-zlib.MAX_WBITS), bytearray(), 0, False
        cap = max_pixels() * MAX_SAMPLE_BYTES + DEFLATED_HEAD
        for block in iter(lambda: fp.read(1 << 20), b""):
            while block:
                out = inflate.decompress(block, 16 << 20)  # at most 16 MiB at a time, whatever the ratio
                block = inflate.unconsumed_tail
                total += len(out)
                if len(head) < DEFLATED_HEAD:
                    head += out[:DEFLATED_HEAD - len(head)]
                if not checked and len(head) >= DEFLATED_HEAD:
                    checked = True
                    problem = _head_problem(bytes(head), read_dataset, BytesIO)
                    if problem:
                        return problem
                if total > cap:
                    return (f"the deflated data set inflates to more than {cap:,} bytes, the most an image within "
                            f"the bound of {max_pixels():,} values can take (set LDPO_MAX_PIXELS to raise it)")
    return "" if checked else _head_problem(bytes(head), read_dataset, BytesIO)


def _head_problem(head: bytes, read_dataset, BytesIO) -> str:
    """:func:`_size_problem` of the elements before the pixel data in the inflated bytes ``head``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag.group >= 0x7FE0)
    except Exception:  # noqa: BLE001 - a header cut off or damaged: the inflated size is still bounded
        return ""
    return _size_problem(ds)


def _truncated(path: str, ds) -> str:
    """A reason when the pixel data is shorter than the header says, else ''."""
    if ds.file_meta.TransferSyntaxUID.is_deflated:
        return ""  # offsets are into the inflated data set, not the file: the decoder will tell
    raw = ds._dict.get(0x7FE00010)
    length, offset = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if length is None or offset is None or length == 0xFFFFFFFF:
        return ""  # already read, or encapsulated (undefined length): the decoder will tell
    size = os.path.getsize(path)
    if offset + length > size:
        return f"truncated pixel data: {size - offset} of {length} bytes"
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = (_int(ds.get("Rows")) or 0) * (_int(ds.get("Columns")) or 0) * (_int(ds.get("SamplesPerPixel", 1)) or 1) \
            * max(1, _int(ds.get("NumberOfFrames", 1)) or 1) * (_int(ds.get("BitsAllocated", 8)) or 8) // 8
        if length < expected:
            return f"truncated pixel data: {length} of {expected} bytes"
    return ""


def _index_nifti(path: str) -> Record | Failure:
    import nibabel as nib
    from nibabel.orientations import io_orientation

    img = nib.load(path)
    shape = img.shape
    if len(shape) < 3 or min(shape[:3]) < 1:
        return Failure(path, f"not a 3-D volume (shape {tuple(shape)})")
    too_big = pixels_problem(int(np.prod(shape, dtype=object)), "the header claims a volume of " +
                             " x ".join(map(str, shape)) + " voxels")  # read whole (all volumes of 4-D data)
    if too_big:
        return Failure(path, too_big)
    ornt = io_orientation(img.affine)
    axial_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # input axis that becomes S
    return Record(path=path, kind="nifti", frames=int(shape[axial_axis]), modality="NIFTI")


def _index_image(path: str) -> Record | Failure:
    from PIL import Image

    with Image.open(path) as img:
        too_big = pixels_problem(img.width * img.height * len(img.getbands()),
                                 f"the header claims {img.width} x {img.height} pixels x {len(img.getbands())} bands")
        if too_big:
            return Failure(path, too_big)
        img.verify()
    return Record(path=path, kind="image")


@dataclass
class Job:
    """Pass 2 work for one file: which frames, and how to render them."""

    path: str
    kind: str
    frames: list[int]
    size: int
    window: tuple[float, float] | None
    window_index: int


def read_file(job: Job) -> tuple[list[np.ndarray | str], str]:
    """The selected frames as uint8 ``size``×``size`` images, or ``([], reason)``.

    A frame that decodes but cannot be displayed (no finite pixel value, a NaN window)
    is its reason (a string) in place of the image, so only that frame is rejected.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if job.kind == "dicom":
                return _read_dicom(job), ""
            if job.kind == "nifti":
                return _read_nifti(job), ""
            return _read_image(job), ""
    except BadPixels as err:
        return [], str(err)
    except Exception as err:  # noqa: BLE001 - a file that fails to decode is a reject
        return [], f"pixel data cannot be decoded: {_short(err)}"


def _frame(render, *args) -> np.ndarray | str:
    try:
        return render(*args)
    except BadPixels as err:
        return str(err)


def _read_dicom(job: Job) -> list[np.ndarray | str]:
    import pydicom
    from pydicom.pixels import iter_pixels

    ds = pydicom.dcmread(job.path)
    return [_frame(lambda f: fit(dicom_frame(f, ds, job.window, job.window_index), job.size), frame)
            for frame in iter_pixels(ds, indices=job.frames)]


def canonical_volume(path: str) -> np.ndarray:
    """A NIfTI volume in closest-canonical (RAS) orientation, float32, first volume of 4-D data."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    while data.ndim > 3:
        data = data[..., 0]
    return data


def axial_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS volume, displayed radiologically (anterior up, patient's right on the left)."""
    return volume[::-1, ::-1, k].T


def _read_nifti(job: Job) -> list[np.ndarray | str]:
    volume = canonical_volume(job.path)
    lo, hi = volume_window(volume, job.window)

    def render(k: int) -> np.ndarray:
        plane = axial_slice(volume, k)
        finite_range(plane)  # an all-NaN slice is a reject, not a black image
        return fit(scale(plane, lo, hi), job.size)

    return [_frame(render, k) for k in job.frames]


def _read_image(job: Job) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(job.path) as img:
        if img.mode in ("I", "I;16", "I;16B", "F"):
            arr = np.asarray(img, dtype=np.float64)
            gray = scale(arr, *finite_range(arr))
        else:
            gray = np.asarray(img.convert("L"), dtype=np.uint8)
    return [fit(gray, job.size)]
