"""Pixels → uint8 display images: DICOM LUTs and windows, NIfTI windows, pad to square, resize.

DICOM: ``apply_modality_lut`` (rescale or modality LUT), then ``apply_voi_lut`` with the
header's window (``index`` picks one of a multi-valued WindowCenter/Width; a ``window``
given by the user replaces it), then the VOI output range is mapped to 0..255 here
(pydicom returns stored units, not 0..255). MONOCHROME1 is inverted afterwards. Without
any window in the header the frame's own min..max is used. Colour objects (RGB, YBR,
PALETTE COLOR) become luminance.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from ...common.errors import InputError

#: named windows (center, width) in Hounsfield units
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40, 80),
    "subdural": (75, 215),
    "stroke": (40, 40),
    "lung": (-600, 1500),
    "mediastinum": (50, 350),
    "abdomen": (40, 400),
    "liver": (60, 160),
    "bone": (400, 1800),
}


class BadPixels(ValueError):
    """A frame that decodes but has nothing to display (no finite value, a non-finite window)."""


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values; none at all is :class:`BadPixels`."""
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0:
        raise BadPixels("no finite pixel values (all NaN or infinite)")
    return float(finite.min()), float(finite.max())


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"40,400"`` or a preset name (``brain``, ``lung``, ``abdomen``, ``bone``, …) → (center, width)."""
    if not text:
        return None
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    try:
        center, width = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--window {text!r}: give CENTER,WIDTH (e.g. 40,400) or one of {', '.join(PRESETS)}") from None
    if not (np.isfinite(center) and np.isfinite(width)):
        raise InputError(f"--window {text!r}: CENTER and WIDTH must be finite numbers")
    if width <= 0:
        raise InputError(f"--window {text!r}: the width must be positive")
    return center, width


def scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo..hi`` linearly to 0..255 (clipped, rounded) as uint8; NaN pixels become 0.

    A flat range (``hi <= lo``) gives a black image; a non-finite one is :class:`BadPixels`.
    """
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise BadPixels(f"the display window is not finite ({lo}..{hi})")
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        out = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(np.nan_to_num(out, nan=0.0)), 0, 255).astype(np.uint8)


def _window_count(ds: Dataset) -> int:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return len(ds.VOILUTSequence)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return min(ds["WindowCenter"].VM, ds["WindowWidth"].VM)
    return 0


def _with_window(ds: Dataset, center: float, width: float) -> Dataset:
    """A header carrying only what windowing needs, with the user's window."""
    out = Dataset()
    for key in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope",
                "RescaleIntercept", "ModalityLUTSequence"):
        if key in ds:
            setattr(out, key, ds[key].value)
    out.WindowCenter, out.WindowWidth = center, width
    return out


def _check_window(ds: Dataset, index: int) -> None:
    """A NaN or infinite WindowCenter/WindowWidth is :class:`BadPixels` (it would display as black)."""
    for key in ("WindowCenter", "WindowWidth"):
        elem = ds[key]
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        try:
            value = float(values[min(index, len(values) - 1)])
        except (TypeError, ValueError):
            continue  # unreadable: voi() falls back to min..max
        if not np.isfinite(value):
            raise BadPixels(f"{key} is {value}: the header's window is not a finite number")


def voi(values: np.ndarray, ds: Dataset, index: int = 0) -> tuple[np.ndarray, float, float] | None:
    """``apply_voi_lut`` and its output range (lo, hi); None when the header has no usable window."""
    count = _window_count(ds)
    if count == 0:
        return None
    index = min(max(index, 0), count - 1)
    if not ("VOILUTSequence" in ds and len(ds.VOILUTSequence)):
        _check_window(ds, index)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            out = apply_voi_lut(values, ds, index=index)
            if "VOILUTSequence" in ds and len(ds.VOILUTSequence):  # a LUT table: its entries' bit depth
                return out, 0.0, float(2 ** int(ds.VOILUTSequence[index].LUTDescriptor[2]) - 1)
            ends = apply_voi_lut(np.array([-1e12, 1e12]), ds, index=index)  # a window: its range's two ends
    except (ValueError, TypeError, AttributeError, IndexError):
        return None  # e.g. a zero window width: fall back to min..max
    return out, float(np.min(ends)), float(np.max(ends))


def dicom_frame(frame: np.ndarray, ds: Dataset, window: tuple[float, float] | None = None,
                index: int = 0) -> np.ndarray:
    """One decoded DICOM frame → uint8 ``[H, W]`` as a reader would display it."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:  # RGB (pydicom already converted YBR)
        gray = frame[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        top = 255.0 if frame.dtype == np.uint8 else float(2 ** int(ds.get("BitsStored", 16)) - 1)
        return scale(gray, 0.0, top)
    values = apply_modality_lut(frame, ds)
    low, high = finite_range(values)
    header = _with_window(ds, *window) if window else ds
    windowed = voi(values, header, index)
    if windowed is None:
        out = scale(values, low, high)
    else:
        out = scale(*windowed)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def volume_window(volume: np.ndarray, window: tuple[float, float] | None,
                  percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """(lo, hi) for a NIfTI volume: the user's fixed window, else the volume's percentiles."""
    if window:
        center, width = window
        return center - width / 2, center + width / 2
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        raise BadPixels("no finite voxel values (all NaN or infinite)")
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


def square(image: np.ndarray) -> np.ndarray:
    """Pad to a square with black, the image centred."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    out = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Pad to square, then resize to ``size``×``size`` (bilinear, antialiased when shrinking)."""
    from PIL import Image

    image = square(np.asarray(image, dtype=np.uint8))
    if image.shape[0] == size:
        return image
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
