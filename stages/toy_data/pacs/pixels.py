"""The toy PACS's pixels: phantoms of five body regions whose anatomy changes along the slices,
their tissues' CT (HU) and MR values and CT windows, and the findings drawn on key images
(``--show-findings``)."""

from __future__ import annotations

import numpy as np


REGIONS = ["head", "chest", "abdomen", "spine", "pelvis"]
MODALITIES = {"head": ["CT", "MR"], "chest": ["CT"], "abdomen": ["CT", "CT", "MR"], "spine": ["MR", "CT"],
              "pelvis": ["MR", "CT"]}

# tissue classes of the phantoms, and their values in CT (HU) and MR (arbitrary signal)
AIR, FAT, SOFT, ORGAN, FLUID, BONE, LUNG, LIVER = range(8)
# drawn findings only (--show-findings): dense (blood, calcium, fluid layers), dark (cysts, gaps), hazy
DENSE, DARK, HAZE = range(8, 11)
CT_VALUES = np.array([-1000, -100, 40, 32, 5, 900, -850, 62, 1200, -600, -300], dtype=np.float64)
MR_VALUES = np.array([0, 760, 300, 460, 1050, 90, 25, 240, 2000, 0, 600], dtype=np.float64)
CT_WINDOWS = {"head": [(40, 80), (400, 1800)], "chest": [(-600, 1500), (40, 400)], "abdomen": [(40, 400)],
              "spine": [(400, 1800), (40, 400)], "pelvis": [(40, 400), (400, 1800)]}


# -- phantoms ---------------------------------------------------------------------------

def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def _head(x, y, t, rng):
    s = 0.75 + 0.25 * np.sin(np.pi * (0.15 + 0.7 * t))
    out = np.full(x.shape, AIR)
    out[_ellipse(x, y, 0, 0, 0.74 * s, 0.9 * s)] = BONE
    out[_ellipse(x, y, 0, 0, 0.64 * s, 0.8 * s)] = ORGAN
    v = 0.25 * np.sin(np.pi * t)
    out[_ellipse(x, y, -0.13, -0.05, 0.06 + 0.4 * v * 0.3, 0.1 + v)] = FLUID
    out[_ellipse(x, y, 0.13, -0.05, 0.06 + 0.4 * v * 0.3, 0.1 + v)] = FLUID
    return out


def _chest(x, y, t, rng):
    out = np.full(x.shape, AIR)
    out[_ellipse(x, y, 0, 0.05, 0.92, 0.66)] = FAT
    out[_ellipse(x, y, 0, 0.05, 0.84, 0.58)] = SOFT
    for side in (-1, 1):
        out[_ellipse(x, y, 0.42 * side, 0.0, 0.3, 0.42 + 0.06 * t)] = LUNG
    out[_ellipse(x, y, 0.08, -0.02, 0.2 + 0.08 * np.sin(np.pi * t), 0.2)] = SOFT
    out[_ellipse(x, y, 0, 0.5, 0.09, 0.09)] = BONE
    for vx, vy in rng.uniform(-0.6, 0.6, (6, 2)):
        if abs(vx) > 0.25:
            out[_ellipse(x, y, vx, vy * 0.6, 0.025, 0.025)] = SOFT
    return out


def _abdomen(x, y, t, rng):
    out = np.full(x.shape, AIR)
    out[_ellipse(x, y, 0, 0.05, 0.88, 0.7)] = FAT
    out[_ellipse(x, y, 0, 0.05, 0.78, 0.6)] = SOFT
    out[_ellipse(x, y, -0.35, -0.05, 0.36 - 0.2 * t, 0.3 - 0.1 * t)] = LIVER
    for side in (-1, 1):
        out[_ellipse(x, y, 0.4 * side, 0.33, 0.11, 0.17)] = ORGAN
    out[_ellipse(x, y, 0, 0.45, 0.1, 0.1)] = BONE
    out[_ellipse(x, y, 0.05, 0.25, 0.05, 0.05)] = FLUID
    for gx, gy in rng.uniform(-0.4, 0.4, (5, 2)):
        out[_ellipse(x, y, gx + 0.2, gy * 0.6, 0.05, 0.04)] = AIR
    return out


def _spine(x, y, t, rng):
    out = np.full(x.shape, AIR)
    out[_ellipse(x, y, 0.1, 0, 0.8, 1.3)] = SOFT
    width = 0.2 * np.sqrt(max(0.05, 1 - (2 * t - 1) ** 2))  # sagittal: the column narrows off-centre
    for k in range(-4, 5):
        top = k * 0.22
        body = (np.abs(y - top) < 0.08) & (np.abs(x + 0.05) < width)
        disc = (np.abs(y - top - 0.11) < 0.03) & (np.abs(x + 0.05) < width * 0.9)
        out[body] = BONE
        out[disc] = ORGAN
        out[(np.abs(y - top) < 0.06) & (np.abs(x - 0.45) < 0.07)] = BONE
    out[(np.abs(x - 0.24) < 0.06 * (0.3 + width * 3)) & (np.abs(y) < 1.0)] = FLUID
    return out


def _pelvis(x, y, t, rng):
    out = np.full(x.shape, AIR)
    out[_ellipse(x, y, 0, 0.05, 0.95, 0.68)] = FAT
    out[_ellipse(x, y, 0, 0.05, 0.86, 0.6)] = SOFT
    ring = _ellipse(x, y, 0, 0.05, 0.72, 0.5) & ~_ellipse(x, y, 0, 0.05, 0.56, 0.36)
    out[ring & (y > -0.25 + 0.3 * t)] = BONE
    for side in (-1, 1):
        out[_ellipse(x, y, 0.6 * side, 0.05, 0.12 + 0.04 * t, 0.12 + 0.04 * t)] = BONE
    out[_ellipse(x, y, 0, -0.18, 0.24 - 0.1 * t, 0.18 - 0.06 * t)] = FLUID
    out[_ellipse(x, y, 0, 0.32, 0.07, 0.07)] = ORGAN
    return out


PHANTOMS = {"head": _head, "chest": _chest, "abdomen": _abdomen, "spine": _spine, "pelvis": _pelvis}


# -- findings drawn on key images (--show-findings) ----------------------------------------

def _centre(body: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random point inside the body (the image centre when there is no body)."""
    inside = np.flatnonzero(body)
    if not len(inside):
        return 0.0, 0.0
    k = int(inside[int(rng.integers(len(inside)))])
    return float(x.flat[k]), float(y.flat[k])


def _blob(out, x, y, body, rng, value=DENSE):
    """Nodule, mass, bleed: a bright round blob of random size."""
    cx, cy = _centre(body, x, y, rng)
    r = rng.uniform(0.09, 0.2)
    out[_ellipse(x, y, cx, cy, r, r)] = value


def _cyst(out, x, y, body, rng):
    """Cyst, hypodense lesion, infarct: a dark round blob."""
    _blob(out, x, y, body, rng, DARK)


def _ring(out, x, y, body, rng):
    """Enhancing lesion, wall thickening: a bright ring around soft tissue."""
    cx, cy = _centre(body, x, y, rng)
    r = rng.uniform(0.16, 0.26)
    out[_ellipse(x, y, cx, cy, r, r) & ~_ellipse(x, y, cx, cy, r - 0.08, r - 0.08)] = DENSE


def _layer(out, x, y, body, rng):
    """Effusion, ascites: a dense fluid layer at the bottom of the body."""
    if body.any():
        bottom = float(y[body].max())
        out[body & (y > bottom - rng.uniform(0.18, 0.32))] = DENSE


def _fracture(out, x, y, body, rng):
    """Fracture: a bright bone-like bar broken by a dark line."""
    cx, cy = _centre(body, x, y, rng)
    a = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(a) + (y - cy) * np.sin(a)
    v = -(x - cx) * np.sin(a) + (y - cy) * np.cos(a)
    bar = (np.abs(u) < rng.uniform(0.3, 0.45)) & (np.abs(v) < 0.08)
    out[bar] = DENSE
    out[bar & (np.abs(u - rng.uniform(-0.1, 0.1)) < 0.05)] = DARK


def _dots(out, x, y, body, rng):
    """Stones, calcifications, osteophytes: a few small bright dots close together."""
    cx, cy = _centre(body, x, y, rng)
    for dx, dy in rng.uniform(-0.22, 0.22, (int(rng.integers(3, 7)), 2)):
        out[_ellipse(x, y, cx + dx, cy + dy, 0.075, 0.075)] = DENSE


def _patch(out, x, y, body, rng, value=DENSE, spread=0.2):
    """Consolidation, atelectasis: an irregular dense patch of overlapping ellipses."""
    cx, cy = _centre(body, x, y, rng)
    mask = np.zeros(out.shape, dtype=bool)
    for dx, dy, rx, ry in zip(*rng.uniform(-spread, spread, (2, 4)), *rng.uniform(0.1, 0.22, (2, 4))):
        mask |= _ellipse(x, y, cx + dx, cy + dy, rx, ry)
    out[mask & body] = value


def _haze(out, x, y, body, rng):
    """Ground glass, edema, mucosal thickening: a speckled hazy patch."""
    mask = np.zeros(out.shape, dtype=int)
    _patch(mask, x, y, body, rng, 1, 0.25)
    out[(mask == 1) & (rng.random(out.shape) < 0.6)] = HAZE


def _holes(out, x, y, body, rng):
    """Emphysema, small-vessel ischemia: many small dark holes spread over the body."""
    cx, cy = _centre(body, x, y, rng)
    for dx, dy in rng.uniform(-0.45, 0.45, (int(rng.integers(8, 15)), 2)):
        out[body & _ellipse(x, y, cx + dx, cy + dy, 0.07, 0.07)] = DARK


def _rim(out, x, y, body, rng):
    """Subdural hematoma: a bright crescent along one side of the body's edge."""
    if body.any():
        side = 1 if rng.random() < 0.5 else -1
        edge = float((side * x)[body].max())
        cy = rng.uniform(-0.3, 0.3)
        out[body & (side * x > edge - 0.14) & (np.abs(y - cy) < 0.45)] = DENSE


def _enlarged(out, x, y, body, rng):
    """Enlarged organ (spleen, liver, prostate, ventricles): a large hazy ellipse."""
    cx, cy = _centre(body, x, y, rng)
    out[body & _ellipse(x, y, cx, cy, rng.uniform(0.28, 0.4), rng.uniform(0.2, 0.3))] = HAZE


def _step(out, x, y, body, rng):
    """Spondylolisthesis, stenosis: two bright blocks, one slipped sideways over the other."""
    cx, cy = _centre(body, x, y, rng)
    shift = rng.uniform(0.1, 0.2) * (1 if rng.random() < 0.5 else -1)
    out[(np.abs(x - cx) < 0.18) & (np.abs(y - cy + 0.1) < 0.07)] = DENSE
    out[(np.abs(x - cx - shift) < 0.18) & (np.abs(y - cy - 0.1) < 0.07)] = DENSE


#: how each kind of finding is drawn
LOOKS = {"blob": _blob, "cyst": _cyst, "ring": _ring, "layer": _layer, "fracture": _fracture, "dots": _dots,
         "patch": _patch, "haze": _haze, "holes": _holes, "rim": _rim, "enlarged": _enlarged, "step": _step}


def draw_findings(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, findings: tuple[str, ...],
                  rng: np.random.Generator) -> np.ndarray:
    """A copy of the tissue map with each finding kind drawn at a random place and size inside the body."""
    out = tissue.copy()
    body = tissue != AIR
    for kind in findings:
        LOOKS[kind](out, x, y, body, rng)
    return out


def phantom(region: str, modality: str, t: float, size: int, rng: np.random.Generator,
            pose: tuple[float, float, float, float], findings: tuple[str, ...] = (),
            finding_rng: np.random.Generator | None = None) -> np.ndarray:
    """Float image of ``region`` at slice position ``t`` in [0, 1]: HU for CT, signal for MR; with
    ``findings`` (kinds of :data:`LOOKS`) drawn over the anatomy from ``finding_rng`` (``rng`` is used
    as without them, so only the drawn pixels change)."""
    dx, dy, zoom, angle = pose
    axis = np.linspace(-1, 1, size)
    gx, gy = np.meshgrid(axis, axis)
    c, s = np.cos(angle), np.sin(angle)
    x = ((gx - dx) * c + (gy - dy) * s) / zoom
    y = (-(gx - dx) * s + (gy - dy) * c) / zoom
    tissue = PHANTOMS[region](x, y, t, rng)
    if findings:
        tissue = draw_findings(tissue, x, y, findings, finding_rng)
    values = (CT_VALUES if modality == "CT" else MR_VALUES)[tissue]
    noise = 12.0 if modality == "CT" else 25.0
    out = values + rng.normal(0, noise, values.shape)
    return out if modality == "CT" else np.clip(out, 0, 4095)
