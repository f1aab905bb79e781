"""``toy-data pacs``: a small fake PACS — DICOM studies of five body regions plus their reports.

Writes ``DIR/dicom/STnnnn/SEnnnn/IMnnnn.dcm``, ``DIR/reports.csv`` (report_id,accession,text)
and ``DIR/regions.csv`` (accession,region: the truth, for tests and demos only).

Each study is one region (head, chest, abdomen, spine, pelvis) imaged by CT (HU values
stored with RescaleSlope/Intercept, signed or unsigned) or MR (some series stored as
MONOCHROME1), as simple phantoms whose anatomy changes along the slices. Windows are
sometimes multi-valued. Each report uses its region's words, shared filler, dates and
measurements, and references 4–10 key images in the varied ways radiologists write
them; a few references point nowhere or are ambiguous, and a few objects are broken
(truncated pixel data, structured reports and presentation states without pixels, a
file that is not DICOM) so every reject path of ``extract-keyimages`` runs.

Like a real archive, it carries patient identifiers, so every test that uses it
exercises the scrubbing of ``extract-keyimages``: patients have one to three studies;
headers carry PatientName, PatientID (the MRN), OtherPatientIDs, PatientBirthDate,
PatientAddress, AccessionNumber, StudyDate/SeriesDate/AcquisitionDate/ContentDate,
ReferringPhysicianName, NameOfPhysiciansReadingStudy, PerformingPhysicianName,
OperatorsName, InstitutionName/Address and StationName; each report starts with a
header block (patient name with title, MRN, date of birth, accession, exam date in one
of several formats, referring physician without title as ``John Smith``, ``Smith,
John`` or ``SMITH^JOHN``, institution), names the patient's earlier study by its
accession (or a prior accession from outside the archive) and ends with the reading
radiologist's signature (with ``--other-names``, reports also name another patient and a
physician of another patient's study). Series carry BodyPartExamined (spelled differently by
different scanners, missing in some studies), ImageOrientationPatient (sagittal for the
spine, axial otherwise) and a SeriesDescription of imaging words into which, as in real
archives, a person's name was sometimes typed. Those lines and header fields come from
their own random streams, so the clinical text, its references and the images are those
of the same seed without them.
Everything follows ``--seed``: the same seed writes the same bytes.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ....common.cli import CommonOptions, Tool, opt, progress
from ....common.errors import InputError
from ....common.files.folders import output_folder
from ....common.files.tables import write_csv

log = logging.getLogger("ldpo")

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


# -- report text --------------------------------------------------------------------------

SIDES = ["right", "left"]
VOCAB = {
    "head": {
        "exam": "HEAD", "indication": ["headache", "dizziness", "head trauma", "seizure", "altered mental status"],
        "findings": ["There is a {size} mm acute hemorrhage in the {side} {lobe} lobe",
                     "A small enhancing lesion is seen in the {side} cerebral hemisphere",
                     "Periventricular white matter hypodensity consistent with chronic small vessel ischemia",
                     "Mild dilatation of the lateral ventricles without transependymal flow",
                     "Focal encephalomalacia in the {side} {lobe} lobe from a prior infarct",
                     "Subdural hematoma along the {side} cerebral convexity measuring {size} mm",
                     "Mucosal thickening in the {side} maxillary sinus"],
        "normal": ["The ventricles and sulci are normal in size.", "No intracranial hemorrhage or mass effect.",
                   "The gray-white matter differentiation of the brain is preserved.", "The calvarium is intact.",
                   "The basal cisterns are patent and there is no midline shift."],
        "impression": ["Acute intracranial hemorrhage in the {side} {lobe} lobe.",
                       "No acute intracranial abnormality of the brain.",
                       "Chronic microvascular ischemic changes of the cerebral white matter."],
    },
    "chest": {
        "exam": "CHEST", "indication": ["cough", "shortness of breath", "chest pain", "fever", "lung cancer screening"],
        "findings": ["A {size} mm solid nodule in the {side} {lung} lobe of the lung",
                     "Small {side} pleural effusion with adjacent atelectasis",
                     "Consolidation in the {side} lower lobe compatible with pneumonia",
                     "Centrilobular emphysema in both lungs",
                     "Enlarged mediastinal lymph node measuring {size} mm",
                     "Ground glass opacity in the {side} {lung} lobe",
                     "Pulmonary embolism in a {side} segmental pulmonary artery"],
        "normal": ["The heart size is normal.", "No pneumothorax.", "The central airways are patent.",
                   "No pericardial effusion.", "The thoracic aorta is of normal caliber."],
        "impression": ["Pulmonary nodule in the {side} {lung} lobe; follow-up chest CT is recommended.",
                       "Pleural effusion with bibasilar atelectasis of the lungs.",
                       "Pneumonia of the {side} lower lobe."],
    },
    "abdomen": {
        "exam": "ABDOMEN", "indication": ["abdominal pain", "elevated liver enzymes", "weight loss", "hematuria"],
        "findings": ["A {size} mm hypodense lesion in segment {segment} of the liver",
                     "Simple cyst in the {side} kidney measuring {size} mm",
                     "The pancreas is atrophic with a dilated pancreatic duct",
                     "Gallstones within the gallbladder without cholecystitis",
                     "Splenomegaly with the spleen measuring {big} cm",
                     "Diffuse fatty infiltration of the liver",
                     "A {size} mm stone in the {side} renal pelvis with mild hydronephrosis of the kidney",
                     "Wall thickening of the ascending colon"],
        "normal": ["The adrenal glands are normal.", "No free fluid or free air in the abdomen.",
                   "The spleen is normal in size.", "The abdominal aorta is of normal caliber.",
                   "The common bile duct is not dilated."],
        "impression": ["Hepatic lesion in the liver, likely hemangioma.",
                       "Nephrolithiasis of the {side} kidney with mild hydronephrosis.", "Hepatic steatosis."],
    },
    "spine": {
        "exam": "LUMBAR SPINE", "indication": ["low back pain", "radiculopathy", "sciatica", "back trauma"],
        "findings": ["Disc herniation at L{level}-L{next} with narrowing of the spinal canal",
                     "Degenerative disc disease at L{level}-L{next} with loss of disc height",
                     "Compression fracture of the L{level} vertebral body with {pct} percent height loss",
                     "Facet arthropathy at the lower lumbar levels",
                     "Grade 1 spondylolisthesis of L{level} on L{next}",
                     "Neural foraminal stenosis at L{level}-L{next} on the {side}",
                     "Schmorl node in the inferior endplate of the L{level} vertebra"],
        "normal": ["The vertebral alignment is normal.", "The conus medullaris terminates normally.",
                   "The paraspinal soft tissues are unremarkable.", "Vertebral body heights are maintained."],
        "impression": ["Lumbar disc herniation with spinal canal stenosis.",
                       "Degenerative changes of the lumbar spine with disc space narrowing.",
                       "Vertebral compression fracture of L{level}."],
    },
    "pelvis": {
        "exam": "PELVIS", "indication": ["pelvic pain", "urinary retention", "hip pain", "pelvic mass"],
        "findings": ["The prostate is enlarged measuring {big} cm", "A {size} mm fibroid in the uterus",
                     "Ovarian cyst on the {side} measuring {size} mm",
                     "Bladder wall thickening with trabeculation of the urinary bladder",
                     "Sclerotic lesion in the {side} iliac bone",
                     "Degenerative changes of the {side} hip joint with acetabular osteophytes",
                     "Fracture of the {side} superior pubic ramus"],
        "normal": ["The urinary bladder is unremarkable.", "No pelvic lymphadenopathy.",
                   "The sacroiliac joints are normal.", "The rectum and sigmoid colon are unremarkable."],
        "impression": ["Benign prostatic hyperplasia with bladder wall thickening.", "Uterine fibroid in the pelvis.",
                       "Fracture of the {side} pubic ramus of the pelvis."],
    },
}
# Sentences that name findings without affirming them (negated, uncertain), and findings written with
# synonyms or as pairs of diseases, so that negation-aware mining (ldpo.common.nlp.mentions) has something
# to rule out: without it "no pneumothorax" makes "pneumothorax" a keyword of every normal chest study.
# Some regions negate findings of others (a trauma abdomen CT names the lung bases).
HEDGED = {
    "head": {
        "negated": ["No skull fracture.", "No hydrocephalus.", "There is no evidence of acute infarct.",
                    "No subarachnoid hemorrhage.", "No extra-axial collection or midline shift.",
                    "Negative for acute territorial infarct."],
        "uncertain": ["A small acute infarct cannot be excluded; MRI is more sensitive.",
                      "Possible early cerebral edema in the {side} {lobe} lobe.",
                      "Questionable subtle subarachnoid hemorrhage in the {side} sylvian fissure."],
        "synonyms": ["Acute bleed with surrounding vasogenic edema in the {side} {lobe} lobe.",
                     "Ventriculomegaly with periventricular white matter disease."],
    },
    "chest": {
        "negated": ["No pneumothorax.", "Negative for pulmonary embolism.",
                    "The lungs are clear of focal airspace disease.", "Without evidence of acute infiltrate.",
                    "No pneumothorax or pericardial effusion.", "There is no aortic dissection."],
        "uncertain": ["Cannot exclude a small {side} pneumothorax.", "Cannot exclude ascending aortic aneurysm.",
                      "Apical scarring may represent prior tuberculosis.",
                      "Interstitial thickening suggesting lymphangitic metastases."],
        "synonyms": ["Bilateral hydrothorax with compressive atelectasis.",
                     "Lung nodules with mediastinal adenopathy."],
    },
    "abdomen": {
        "negated": ["No ascites.", "No bowel obstruction.", "No pneumothorax at the imaged lung bases.",
                    "No evidence of appendicitis.", "Negative for free air.", "No abscess."],
        "uncertain": ["Cannot exclude early appendicitis.", "Nodular liver contour may represent cirrhosis.",
                      "Dilated small bowel loops, concern for early small bowel obstruction."],
        "synonyms": ["Kidney stone with hydronephrosis of the {side} kidney.", "Fatty liver with hepatomegaly."],
    },
    "spine": {
        "negated": ["No acute fracture.", "No epidural hematoma.", "No evidence of osteomyelitis.",
                    "No abscess in the paraspinal muscles.", "No pneumothorax at the imaged lung apices."],
        "uncertain": ["Cannot exclude osteomyelitis at L{level}.",
                      "Marrow signal change may represent metastatic disease.", "Possible small epidural abscess."],
        "synonyms": ["Disk protrusion with canal stenosis at L{level}-L{next}."],
    },
    "pelvis": {
        "negated": ["No hydronephrosis.", "No ascites in the pelvis.", "No hip fracture or dislocation.",
                    "No pelvic abscess.", "No evidence of osteomyelitis."],
        "uncertain": ["Cannot exclude a small pelvic abscess.", "Sclerotic focus may represent a metastasis.",
                      "Findings could represent early appendicitis."],
        "synonyms": ["Enlarged pelvic lymph nodes with a lytic lesion of the {side} iliac bone."],
    },
}
# What a finding sentence affirms, as kinds of LOOKS drawn on its key images with --show-findings (by template;
# a sentence's neighbours add theirs). Negated and uncertain sentences, normal sentences and filler show nothing;
# findings without a term in ldpo's default vocabulary (a lymph node, a fibroid, an enlarged prostate, fatty
# infiltration) are not drawn.
SHOWN = {
    "There is a {size} mm acute hemorrhage in the {side} {lobe} lobe": ("blob",),
    "A small enhancing lesion is seen in the {side} cerebral hemisphere": ("ring",),
    "Periventricular white matter hypodensity consistent with chronic small vessel ischemia": ("holes",),
    "Focal encephalomalacia in the {side} {lobe} lobe from a prior infarct": ("cyst",),
    "Subdural hematoma along the {side} cerebral convexity measuring {size} mm": ("rim",),
    "Mucosal thickening in the {side} maxillary sinus": ("haze",),
    "Acute bleed with surrounding vasogenic edema in the {side} {lobe} lobe.": ("blob", "haze"),
    "Ventriculomegaly with periventricular white matter disease.": ("enlarged", "holes"),
    "A {size} mm solid nodule in the {side} {lung} lobe of the lung": ("blob",),
    "Small {side} pleural effusion with adjacent atelectasis": ("layer", "patch"),
    "Consolidation in the {side} lower lobe compatible with pneumonia": ("patch",),
    "Centrilobular emphysema in both lungs": ("holes",),
    "Ground glass opacity in the {side} {lung} lobe": ("haze",),
    "Pulmonary embolism in a {side} segmental pulmonary artery": ("cyst",),
    "Bilateral hydrothorax with compressive atelectasis.": ("layer", "patch"),
    "Lung nodules with mediastinal adenopathy.": ("blob", "blob"),
    "A {size} mm hypodense lesion in segment {segment} of the liver": ("cyst",),
    "Simple cyst in the {side} kidney measuring {size} mm": ("cyst",),
    "Gallstones within the gallbladder without cholecystitis": ("dots",),
    "Splenomegaly with the spleen measuring {big} cm": ("enlarged",),
    "A {size} mm stone in the {side} renal pelvis with mild hydronephrosis of the kidney": ("dots", "enlarged"),
    "Wall thickening of the ascending colon": ("ring",),
    "Kidney stone with hydronephrosis of the {side} kidney.": ("dots", "enlarged"),
    "Fatty liver with hepatomegaly.": ("enlarged",),
    "Disc herniation at L{level}-L{next} with narrowing of the spinal canal": ("blob",),
    "Compression fracture of the L{level} vertebral body with {pct} percent height loss": ("fracture",),
    "Facet arthropathy at the lower lumbar levels": ("dots",),
    "Grade 1 spondylolisthesis of L{level} on L{next}": ("step",),
    "Neural foraminal stenosis at L{level}-L{next} on the {side}": ("step",),
    "Disk protrusion with canal stenosis at L{level}-L{next}.": ("step",),
    "Ovarian cyst on the {side} measuring {size} mm": ("cyst",),
    "Bladder wall thickening with trabeculation of the urinary bladder": ("ring",),
    "Sclerotic lesion in the {side} iliac bone": ("blob",),
    "Degenerative changes of the {side} hip joint with acetabular osteophytes": ("dots",),
    "Fracture of the {side} superior pubic ramus": ("fracture",),
    "Enlarged pelvic lymph nodes with a lytic lesion of the {side} iliac bone.": ("blob", "cyst"),
}
FILLER = ["Clinical correlation is recommended.", "No other significant abnormality.",
          "Comparison is made with the prior examination dated {date}.",
          "Findings were discussed with the referring physician on {date} at {time}.",
          "Follow-up in {months} months is suggested.", "Images were reviewed on the PACS workstation."]


def _fill(template: str, rng: np.random.Generator) -> str:
    level = int(rng.integers(1, 5))
    return template.format(
        size=int(rng.integers(3, 40)), side=rng.choice(SIDES), lobe=rng.choice(["frontal", "parietal", "temporal",
                                                                                "occipital"]),
        lung=rng.choice(["upper", "middle", "lower"]), segment=rng.choice(["II", "IV", "VI", "VII", "VIII"]),
        big=round(float(rng.uniform(4, 14)), 1), level=level, next=level + 1, pct=int(rng.integers(10, 50)),
        date=_date(rng), time=f"{int(rng.integers(7, 19)):02d}:{int(rng.integers(0, 60)):02d}",
        months=int(rng.choice([3, 6, 12])))


def _date(rng: np.random.Generator) -> str:
    y, m, d = int(rng.integers(2012, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return rng.choice([f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}"])


def _range(a: int, b: int, rng: np.random.Generator) -> str:
    """``a-b``; the end abbreviated radiologist-style (1013-16) when it shares leading digits."""
    sa, sb = str(a), str(b)
    if a >= 100 and len(sa) == len(sb) and sa[:-2] == sb[:-2] and rng.random() < 0.7:
        sb = sb[-2:]
    return f"{sa}-{sb}"


def reference(series: int, images: list[int], bare: bool, rng: np.random.Generator) -> str:
    """A key-image reference in one of the forms radiologists write (``bare``: the series may go unnamed)."""
    consecutive = len(images) > 1 and images == list(range(images[0], images[-1] + 1))
    if len(images) == 1:
        i = images[0]
        forms = [f"(series {series}, image {i})", f"series {series} image {i}", f"Se {series} Im {i}",
                 f"image {i} of series {series}", f"(image {i}, series {series})", f"ser. {series} img. {i}",
                 f"Se:{series} Im:{i}"]
        if bare:
            forms += [f"image {i}", f"(image {i})", f"key image {i}"]
    else:
        numbers = _range(images[0], images[-1], rng) if consecutive else \
            ", ".join(map(str, images[:-1])) + f" and {images[-1]}"
        forms = [f"series {series}, images {numbers}", f"(Se {series}, images {numbers})",
                 f"images {numbers} of series {series}"]
        if bare:
            forms += [f"images {numbers}", f"(images {numbers})"]
    return str(rng.choice(forms))


def _with_reference(sentence: str, ref: str, rng: np.random.Generator) -> str:
    style = rng.integers(0, 3)
    if style == 0 and not ref.startswith("("):
        return f"On {ref}, {sentence[0].lower()}{sentence[1:]}."
    if ref.startswith("("):
        return f"{sentence} {ref}."
    return f"{sentence} ({ref})." if style == 1 else f"{sentence}, see {ref}."


# -- studies --------------------------------------------------------------------------------

@dataclass
class Series:
    number: int
    modality: str
    first_instance: int
    slices: int
    windows: list[tuple[float, float]]
    monochrome1: bool = False
    storage: str = "unsigned"  # CT: unsigned (intercept -1024), signed (intercept 0) or scaled (slope 2)
    instances: list[int] = field(default_factory=list)
    description: str = ""  # SeriesDescription (see plan_headers)
    body_part: str = ""  # BodyPartExamined, "" = not in the header


@dataclass
class Patient:
    name: str  # DICOM PN: FAMILY^GIVEN
    title: str  # how reports address the patient: Mr. / Mrs. / Ms.
    sex: str
    mrn: str  # PatientID
    other_id: str  # OtherPatientIDs
    birth: str  # YYYYMMDD
    address: str


@dataclass
class Study:
    index: int
    region: str
    modality: str
    accession: str
    patient: tuple[str, str, str]  # name, id, birth date
    series: list[Series]
    person: Patient | None = None
    date: str = "20200101"  # StudyDate
    referring: str = ""  # DICOM PN, no title
    reading: str = ""  # DICOM PN of the radiologist who signs
    institution: tuple[str, str, str] = ("", "", "")  # name, address, station prefix
    prior: str = ""  # the accession of an earlier study the report compares with
    prior_date: str = ""
    other_names: list[str] = field(default_factory=list)  # sentences naming people of other studies (--other-names)


FIRST = ["ANNA", "JOHN", "MARIA", "PETER", "LINDA", "OMAR", "WEI", "SOFIA", "LUCAS", "EMMA", "RAVI", "NORA"]
LAST = ["MILLER", "GARCIA", "NGUYEN", "SCHMIDT", "ROSSI", "KOWALSKI", "TANAKA", "OKAFOR", "SILVA", "JOHANSSON"]
FEMALE = {"ANNA", "MARIA", "LINDA", "SOFIA", "EMMA", "NORA"}
PHYSICIANS = ["SMITH^JOHN", "CHEN^ROBERT", "PATEL^PRIYA", "OKONKWO^DAVID", "LARSEN^INGRID", "FERREIRA^TOMAS",
              "HARTMANN^ELENA", "FISCHER^MARKUS", "DUBOIS^CAMILLE", "YAMAMOTO^KENJI"]
INSTITUTIONS = [("Saint Elsewhere Hospital", "12 Main Street, Springfield", "SEH"),
                ("Lakeview Medical Center", "400 Harbor Road, Eastbrook", "LMC"),
                ("Northfield Clinic", "7 Orchard Lane, Millbrook", "NFC")]
OPERATORS = ["NOVAK^IRENA", "QUINTERO^PABLO", "BERGSTROM^HELGA"]
STREETS = ["Maple Avenue", "Cedar Road", "Birch Street", "Willow Way", "Elm Court"]
TOWNS = ["Greenville", "Fairview", "Riverton", "Kingsport"]


def plan_study(index: int, region: str, rng: np.random.Generator) -> Study:
    modality = str(rng.choice(MODALITIES[region]))
    n_series = int(rng.choice([1, 1, 2, 2, 3]))
    numbers = sorted(rng.choice([2, 3, 4, 5, 6, 201, 601, 1001], size=n_series, replace=False).tolist())
    series = []
    for number in numbers:
        slices = int(rng.integers(8, 15))
        first = int(number) + 1 if number >= 200 and rng.random() < 0.6 else 1
        if modality == "CT":
            windows = [CT_WINDOWS[region][int(rng.integers(len(CT_WINDOWS[region])))]]
            if rng.random() < 0.4:
                windows = windows + [w for w in CT_WINDOWS[region] + [(40, 400)] if w != windows[0]][:1]
            storage = str(rng.choice(["unsigned", "unsigned", "signed", "scaled"]))
            mono1 = False
        else:
            windows = [(500.0, 1000.0)] + ([(300.0, 600.0)] if rng.random() < 0.3 else [])
            storage, mono1 = "unsigned", bool(rng.random() < 0.3)
        s = Series(int(number), modality, first, slices, windows, mono1, storage)
        s.instances = list(range(first, first + slices))
        series.append(s)
    name = f"{rng.choice(LAST)}^{rng.choice(FIRST)}"
    birth = f"{int(rng.integers(1935, 2000))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    patient = (name, f"PID{int(rng.integers(10000, 99999))}", birth)
    return Study(index, region, modality, f"A{int(rng.integers(1_000_000, 9_999_999))}", patient, series)


def plan_patients(studies: list[Study], seed: int) -> None:
    """Give the studies their patients (two patients for every three studies, so many have two or more), dates,
    physicians, institutions and the accession of a prior study, from their own random stream."""
    rng = np.random.default_rng([seed, 0, 9])
    n = max(1, (2 * len(studies) + 2) // 3)
    people = []
    for _ in range(n):
        last, first = str(rng.choice(LAST)), str(rng.choice(FIRST))
        female = first in FEMALE
        title = str(rng.choice(["Mrs.", "Ms."])) if female else "Mr."
        birth = f"{int(rng.integers(1935, 2000))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        address = f"{int(rng.integers(2, 99))} {rng.choice(STREETS)}, {rng.choice(TOWNS)}"
        people.append(Patient(f"{last}^{first}", title, "F" if female else "M", str(int(rng.integers(10**6, 10**7))),
                              f"H{int(rng.integers(10**6, 10**7))}", birth, address))
    owners = rng.permutation([i % n for i in range(len(studies))])
    seen: dict[int, Study] = {}
    for study, owner in zip(studies, owners.tolist()):
        person = people[owner]
        study.person = person
        study.patient = (person.name, person.mrn, person.birth)
        study.date = f"{int(rng.integers(2012, 2024))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        study.referring = str(rng.choice(PHYSICIANS))
        study.reading = str(rng.choice([p for p in PHYSICIANS if p != study.referring]))
        study.institution = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
        # the patient's earlier study in the archive, or one from before the archive
        study.prior = seen[owner].accession if owner in seen else f"A{int(rng.integers(1_000_000, 9_999_999))}"
        study.prior_date = seen[owner].date if owner in seen else \
            f"{int(rng.integers(2005, 2012))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        seen[owner] = study


def plan_other_names(studies: list[Study], seed: int) -> None:
    """(``--other-names``) Each report also names, without a title or a label, another patient of the archive and
    a physician of another patient's study, neither of whom any header of this patient's studies names (an
    outside study filed with the wrong patient, a colleague consulted): only the archive's headers tell that these
    words are names. From their own random stream."""
    rng = np.random.default_rng([seed, 0, 13])
    staff_of: dict[str, set[str]] = {}  # a patient's name → every person name its studies' headers carry
    for st in studies:
        staff_of.setdefault(st.person.name, set()).update(
            {st.person.name, st.referring, st.reading, OPERATORS[st.index % len(OPERATORS)]})

    def parts(pn: str) -> set[str]:
        return set(pn.split("^"))

    for st in studies:
        own = {p for pn in staff_of[st.person.name] for p in parts(pn)}
        patients = sorted({o.person.name for o in studies if not parts(o.person.name) & own})
        staff = sorted({pn for o in studies for pn in (o.referring, o.reading) if not parts(pn) & own})
        if patients:
            last, first = (p.capitalize() for p in str(rng.choice(patients)).split("^"))
            st.other_names.append(f"Images of {first} {last} were filed with this study in error and were not "
                                  "reviewed.")
        if staff:
            last, first = (p.capitalize() for p in str(rng.choice(staff)).split("^"))
            st.other_names.append(f"Case reviewed with {first} {last} at the conference.")


# SeriesDescription as scanners and technologists write them, per modality and region
DESCRIPTIONS = {
    ("CT", "head"): ["AX HEAD STD", "HEAD W/O", "AX BRAIN 5MM", "HEAD BONE", "AXIAL HEAD SOFT TISSUE"],
    ("CT", "chest"): ["AX CHEST LUNG", "CHEST W CONTRAST", "AX MEDIASTINUM", "CTA CHEST PE", "THORAX 1.25 LUNG"],
    ("CT", "abdomen"): ["AX ABD PORTAL VENOUS", "ABDOMEN W CONTRAST", "AX ABD/PELVIS STD", "ABDOMEN ARTERIAL",
                        "ABD DELAYED"],
    ("CT", "spine"): ["SAG L-SPINE BONE", "LUMBAR SPINE SOFT TISSUE", "SAG LSPINE STD"],
    ("CT", "pelvis"): ["AX PELVIS STD", "PELVIS W CONTRAST", "AX PELVIS BONE"],
    ("MR", "head"): ["AX T2 FLAIR", "AX DWI", "AX T1 POST GAD", "AX T2 TSE", "AX SWI"],
    ("MR", "abdomen"): ["AX T2 HASTE", "AX T1 VIBE DIXON", "AX DWI ABD", "AX T1 FS POST"],
    ("MR", "spine"): ["SAG T2 TSE", "SAG T1 TSE", "SAG STIR L-SPINE"],
    ("MR", "pelvis"): ["AX T2 TSE PELVIS", "AX DWI", "AX T1 FS POST"],
}
# BodyPartExamined spellings per region (scanners differ; extract-keyimages maps them to one term)
BODY_PART_SPELLINGS = {"head": ["HEAD", "HEAD", "BRAIN"], "chest": ["CHEST", "CHEST", "THORAX"],
                       "abdomen": ["ABDOMEN", "ABDOMEN", "ABD"], "spine": ["LSPINE", "L SPINE", "LUMBAR_SPINE"],
                       "pelvis": ["PELVIS"]}
SAGITTAL_REGIONS = {"spine"}  # the spine phantom is a sagittal section; the others are axial


def plan_headers(studies: list[Study], seed: int) -> None:
    """SeriesDescription and BodyPartExamined of every series, from their own random stream (so images, reports
    and identifiers are those of the same seed without them). One study in ten has no BodyPartExamined; about one
    series in six has a person's name typed into its description (the patient's, the operator's or another),
    as happens in real archives: extract-keyimages must drop it."""
    rng = np.random.default_rng([seed, 0, 11])
    for study in studies:
        spellings = BODY_PART_SPELLINGS[study.region]
        part = "" if rng.random() < 0.1 else str(spellings[int(rng.integers(len(spellings)))])
        choices = DESCRIPTIONS[(study.modality, study.region)]
        for s in study.series:
            s.body_part = part
            text = str(choices[int(rng.integers(len(choices)))])
            if rng.random() < 0.17:
                who = int(rng.integers(3))
                if who == 0 and study.person is not None:
                    name = study.person.name if rng.random() < 0.5 else " ".join(study.person.name.split("^")[::-1])
                elif who == 1:
                    name = "per " + OPERATORS[study.index % len(OPERATORS)].split("^")[0]
                else:
                    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
                text = f"{text} {name}"
            s.description = text


MONTH_NAMES = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December"]


def written_date(value: str, form: int) -> str:
    """A YYYYMMDD date as reports write it: 20230417, 04/17/2023, 4/17/23, 2023-04-17, April 17, 2023,
    17 Apr 2023 (``form`` 0…5)."""
    y, m, d = int(value[:4]), int(value[4:6]), int(value[6:])
    return [value, f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y % 100:02d}", f"{y}-{m:02d}-{d:02d}",
            f"{MONTH_NAMES[m - 1]} {d}, {y}", f"{d} {MONTH_NAMES[m - 1][:3]} {y}"][form % 6]


def _person(pn: str, form: int) -> str:
    """A DICOM person name as written in a report: John Smith, Smith, John or SMITH^JOHN."""
    last, first = (p.capitalize() for p in pn.split("^")[:2])
    return [f"{first} {last}", f"{last}, {first}", pn][form % 3]


def identifier_lines(study: Study, seed: int) -> tuple[list[str], list[str]]:
    """The report's header block and closing lines: who, when, where, and who signs."""
    rng = np.random.default_rng([seed, study.index, 7])
    person = study.person
    last, first = (p.capitalize() for p in person.name.split("^"))
    patient = [f"{person.title} {first} {last}", f"{person.title} {last}", f"{last.upper()}, {first.upper()}"][
        int(rng.integers(3))]
    mrn = [f"MRN: {person.mrn}", f"MRN{person.mrn}", f"MRN {person.mrn}"][int(rng.integers(3))]
    head = [f"PATIENT: {patient}   {mrn}   DOB: {written_date(person.birth, int(rng.integers(1, 6)))}",
            f"ACCESSION: {study.accession}   EXAM DATE: {written_date(study.date, int(rng.integers(6)))}",
            f"REFERRING PHYSICIAN: {_person(study.referring, int(rng.integers(3)))}",
            f"INSTITUTION: {study.institution[0]}"]
    reader = _person(study.reading, 0)
    tail = [f"Compared with the prior study {study.prior} of {written_date(study.prior_date, int(rng.integers(6)))} "
            f"for {person.title} {last}.",
            f"{_person(study.referring, int(rng.integers(3)))} was informed of the findings by phone.",
            f"Electronically signed by Dr. {reader} on {written_date(study.date, int(rng.integers(6)))}."]
    return head, study.other_names + tail


def hedged_sentences(region: str, rng: np.random.Generator) -> list[str]:
    """1-3 negated, 0-1 uncertain and 0-1 synonym sentences of :data:`HEDGED` for one report."""
    return [text for text, _ in _hedged(region, rng)]


def _hedged(region: str, rng: np.random.Generator) -> list[tuple[str, tuple[str, ...]]]:
    """:func:`hedged_sentences` with what each affirms (:data:`SHOWN`; only synonym sentences affirm)."""
    table = HEDGED[region]
    picked = [str(t) for t in rng.permutation(table["negated"])[: int(rng.integers(1, 4))]]
    if rng.random() < 0.5:
        picked.append(str(rng.choice(table["uncertain"])))
    if rng.random() < 0.5:
        picked.append(str(rng.choice(table["synonyms"])))
    return [(_fill(t, rng), SHOWN.get(t, ())) for t in picked]


def write_report(study: Study, rng: np.random.Generator, seed: int = 0) -> str:
    return report_and_findings(study, rng, seed)[0]


def report_and_findings(study: Study, rng: np.random.Generator,
                        seed: int = 0) -> tuple[str, dict[tuple[int, int], tuple[str, ...]]]:
    """The report's text, and per referenced key image (series, instance) the kinds of finding it shows: those
    affirmed by the sentences referencing it and by their neighbours (as extract-keyimages takes a sentence's
    context), from the templates the sentences are written from (:data:`SHOWN`)."""
    vocab = VOCAB[study.region]
    contrast = rng.choice(["WITHOUT CONTRAST", "WITH CONTRAST", "WITH AND WITHOUT CONTRAST"])
    lines = [f"EXAMINATION: {study.modality} {vocab['exam']} {contrast}",
             f"CLINICAL INDICATION: {str(rng.choice(vocab['indication'])).capitalize()}.",
             f"COMPARISON: {_date(rng) if rng.random() < 0.6 else 'None'}.",
             f"TECHNIQUE: {study.modality} images were obtained with {int(rng.choice([1, 2, 3, 5]))} mm slice "
             f"thickness.", "", "FINDINGS:"]
    findings = [str(f) for f in rng.permutation(vocab["findings"])]
    budget = int(rng.integers(4, 11))
    sentences = []  # (text, kinds of finding it affirms, key images it references)
    single = len(study.series) == 1
    while budget > 0 and findings:
        s = study.series[int(rng.integers(len(study.series)))]
        count = min(budget, int(rng.choice([1, 1, 2, 3])))
        start = int(rng.integers(0, len(s.instances) - count + 1))
        picked = s.instances[start:start + count] if rng.random() < 0.6 else \
            sorted(rng.choice(s.instances, size=count, replace=False).tolist())
        template = findings.pop()
        sentences.append((_with_reference(_fill(template, rng), reference(s.number, picked, single, rng), rng),
                          SHOWN.get(template, ()), [(s.number, int(i)) for i in picked]))
        budget -= count
    if study.index % 7 == 3:  # a reference that points nowhere
        s = study.series[0]
        sentences.append((f"Incidental note on series {s.number} image {s.instances[-1] + 40}.", (), []))
    if study.index % 11 == 6 and not single:  # a reference without a series in a multi-series study
        sentences.append((f"Compare image {study.series[0].instances[0]}.", (), []))
    for normal in rng.permutation(vocab["normal"])[: int(rng.integers(1, 4))]:
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), (str(normal), (), []))
    hedged = np.random.default_rng([seed, study.index, 19])  # its own stream: the text above stays as it was
    for sentence, kinds in _hedged(study.region, hedged):
        sentences.insert(int(hedged.integers(0, len(sentences) + 1)), (sentence, kinds, []))
    sentences += [(_fill(str(f), rng), (), []) for f in rng.permutation(FILLER)[: int(rng.integers(1, 3))]]
    lines.append(" ".join(text for text, _, _ in sentences))
    lines += ["", "IMPRESSION:"]
    for k, text in enumerate(rng.permutation(vocab["impression"])[: int(rng.integers(1, 3))], 1):
        lines.append(f"{k}. {_fill(str(text), rng)}")
    if study.person is not None:
        head, tail = identifier_lines(study, seed)
        lines = head + [""] + lines + [""] + tail
    return "\n".join(lines), _shown_on_images(sentences)


def _shown_on_images(sentences: list[tuple[str, tuple[str, ...], list[tuple[int, int]]]]
                     ) -> dict[tuple[int, int], tuple[str, ...]]:
    """Per referenced image, the kinds affirmed by its sentences and their neighbours (each sentence once)."""
    shown: dict[tuple[int, int], list[int]] = {}
    for i, (_, _, images) in enumerate(sentences):
        for key in images:
            near = shown.setdefault(key, [])
            near += [j for j in range(max(0, i - 1), min(len(sentences), i + 2)) if j not in near]
    return {key: tuple(kind for j in sorted(near) for kind in sentences[j][1]) for key, near in shown.items()}


# -- DICOM writing --------------------------------------------------------------------------------

def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(seed), *(str(p) for p in parts)])


def _dataset(study: Study, seed: int, sop_class: str, sop_uid: str, modality: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    name, pid, birth = study.patient
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, pid, birth
    ds.PatientSex = study.person.sex if study.person else "O"
    ds.StudyInstanceUID = _uid(seed, "study", study.index)
    ds.StudyDate, ds.StudyTime, ds.StudyID = study.date, "120000", str(study.index + 1)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.date
    ds.AccessionNumber = study.accession
    if study.person is not None:
        ds.OtherPatientIDs = study.person.other_id
        ds.PatientAddress = study.person.address
        ds.ReferringPhysicianName = study.referring
        ds.NameOfPhysiciansReadingStudy = study.reading
        ds.PerformingPhysicianName = study.reading
        ds.OperatorsName = OPERATORS[study.index % len(OPERATORS)]
        ds.InstitutionName, ds.InstitutionAddress = study.institution[:2]
        ds.StationName = f"{study.institution[2]}-{modality}1"
    ds.StudyDescription = f"{study.modality} {VOCAB[study.region]['exam']}"
    return ds


CT_STORAGE, MR_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
SR_STORAGE, PR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.11.1"


def image_dataset(study: Study, s: Series, instance: int, values: np.ndarray, seed: int, thickness: float):
    """A CT or MR image object carrying ``values`` (HU or MR signal) in the series' storage style."""
    sop_class = CT_STORAGE if s.modality == "CT" else MR_STORAGE
    ds = _dataset(study, seed, sop_class, _uid(seed, "sop", study.index, s.number, instance), s.modality)
    ds.SeriesInstanceUID = _uid(seed, "series", study.index, s.number)
    ds.SeriesNumber, ds.InstanceNumber = s.number, instance
    ds.SeriesDescription = s.description or f"{s.modality} series {s.number}"
    if s.body_part:
        ds.BodyPartExamined = s.body_part
    ds.FrameOfReferenceUID = _uid(seed, "frame", study.index)
    z = (instance - s.first_instance) * thickness
    if study.region in SAGITTAL_REGIONS:  # rows run anterior→posterior, columns head→foot; slices along x
        ds.ImagePositionPatient = [round(z - 40, 2), -160.0, 160.0]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    else:
        ds.ImagePositionPatient = [-160.0, -160.0, round(z, 2)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness, ds.PixelSpacing = thickness, [320 / values.shape[0]] * 2
    ds.SamplesPerPixel, ds.Rows, ds.Columns = 1, values.shape[0], values.shape[1]
    ds.BitsAllocated, ds.HighBit = 16, 11
    ds.BitsStored = 12
    ds.PhotometricInterpretation = "MONOCHROME1" if s.monochrome1 else "MONOCHROME2"
    windows = list(s.windows)
    if s.modality == "CT":
        slope, intercept = {"unsigned": (1, -1024), "signed": (1, 0), "scaled": (2, -2048)}[s.storage]
        stored = np.rint((np.clip(values, -1024, 3071) - intercept) / slope)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        if s.storage == "signed":
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
            pixels = stored.astype(np.int16)
        else:
            ds.PixelRepresentation = 0
            pixels = np.clip(stored, 0, 4095).astype(np.uint16)
    else:
        ds.PixelRepresentation = 0
        stored = np.clip(np.rint(values), 0, 4095)
        if s.monochrome1:  # stored inverted, so a correct reader shows the same picture
            stored = 4095 - stored
            windows = [(4095 - c, w) for c, w in windows]
        pixels = stored.astype(np.uint16)
    centers, widths = [c for c, _ in windows], [w for _, w in windows]
    ds.WindowCenter = centers if len(centers) > 1 else centers[0]
    ds.WindowWidth = widths if len(widths) > 1 else widths[0]
    ds.PixelData = pixels.tobytes()
    return ds


def non_image_dataset(study: Study, seed: int, kind: str):
    """A structured report or presentation state: a DICOM object with no pixel data."""
    sop_class = SR_STORAGE if kind == "SR" else PR_STORAGE
    ds = _dataset(study, seed, sop_class, _uid(seed, kind, study.index), kind)
    ds.SeriesInstanceUID = _uid(seed, "series", study.index, kind)
    ds.SeriesNumber, ds.InstanceNumber = 999, 1
    if kind == "SR":
        ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    return ds


def write_study(study: Study, folder: Path, size: int, seed: int,
                shown: dict[tuple[int, int], tuple[str, ...]] | None = None) -> int:
    """Write the study's series (one file per slice); return how many files. ``shown``: the kinds of finding
    drawn on each key image (series, instance), each image from a random stream of its own."""
    rng = np.random.default_rng([seed, study.index, 1])
    pose = (float(rng.normal(0, 0.04)), float(rng.normal(0, 0.04)), float(rng.uniform(0.88, 1.08)),
            float(rng.normal(0, 0.06)))
    count = 0
    for s in study.series:
        sub = folder / f"SE{s.number:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        thickness = float(rng.choice([2.5, 3.0, 5.0]))
        for k, instance in enumerate(s.instances):
            t = (k + 0.5) / len(s.instances)
            kinds = (shown or {}).get((s.number, instance), ())
            values = phantom(study.region, s.modality, t, size, rng, pose, kinds,
                             np.random.default_rng([seed, study.index, 23, s.number, instance]))
            image_dataset(study, s, instance, values, seed, thickness).save_as(
                sub / f"IM{instance:04d}.dcm", enforce_file_format=True)
            count += 1
    return count


def write_broken(study: Study, folder: Path, kind: str, size: int, seed: int) -> str:
    """One broken object in the study's folder; returns its path relative to ``folder``'s parent."""
    if kind in ("SR", "PR"):
        path = folder / f"{kind}0001.dcm"
        non_image_dataset(study, seed, kind).save_as(path, enforce_file_format=True)
    elif kind == "truncated":
        s = study.series[0]
        instance = s.instances[-1] + 1
        path = folder / f"SE{s.number:04d}" / f"IM{instance:04d}.dcm"
        values = phantom(study.region, s.modality, 1.0, size, np.random.default_rng([seed, study.index, 2]),
                         (0, 0, 1, 0))
        image_dataset(study, s, instance, values, seed, 5.0).save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - size * 3])  # cut off the end of the pixel data
    else:
        path = folder / "IM_CORRUPT"
        path.write_bytes(np.random.default_rng([seed, study.index, 3]).bytes(2048))
    return path.relative_to(folder.parent).as_posix()


BROKEN = ["truncated", "SR", "notdicom", "PR", "truncated"]


#: the image sides toy-data pacs draws (--size), one range for the option and the generator
SIZES = (32, 1024)


def generate(out: Path, studies: int = 40, size: int = 64, seed: int = 0, show_progress: bool = True,
             show_findings: bool = False, other_names: bool = False) -> dict:
    """Write the toy PACS under ``out``; returns a summary (counts, broken files). ``show_findings``: each key
    image shows the findings its report sentence and their neighbours affirm (:func:`report_and_findings`);
    ``other_names``: reports also name people of other studies (:func:`plan_other_names`)."""
    if studies < 1:
        raise InputError(f"--studies {studies}: must be at least 1")
    if not SIZES[0] <= size <= SIZES[1]:
        raise InputError(f"--size {size}: must be between {SIZES[0]} and {SIZES[1]}")
    rng = np.random.default_rng([seed, 0])
    regions = [REGIONS[i % len(REGIONS)] for i in range(studies)]
    regions = [regions[i] for i in rng.permutation(studies)]
    plans = [plan_study(i, region, np.random.default_rng([seed, i, 0])) for i, region in enumerate(regions)]
    plan_patients(plans, seed)
    plan_headers(plans, seed)
    if other_names:
        plan_other_names(plans, seed)
    out.mkdir(parents=True, exist_ok=True)
    dicom_tmp = out / ".dicom.tmp"
    shutil.rmtree(dicom_tmp, ignore_errors=True)
    written = [report_and_findings(st, np.random.default_rng([seed, st.index, 5]), seed) for st in plans]
    files, broken = 0, []
    for study in progress(plans, desc="studies", disable=not show_progress):
        folder = dicom_tmp / f"ST{study.index + 1:04d}"
        files += write_study(study, folder, size, seed, written[study.index][1] if show_findings else None)
        if study.index < len(BROKEN):
            broken.append((BROKEN[study.index], write_broken(study, folder, BROKEN[study.index], size, seed)))
    dicom = out / "dicom"
    shutil.rmtree(dicom, ignore_errors=True)
    dicom_tmp.rename(dicom)
    reports = [(f"r{i + 1:04d}", st.accession, written[i][0]) for i, st in enumerate(plans)]
    write_csv(out / "reports.csv", ["report_id", "accession", "text"], reports)
    write_csv(out / "regions.csv", ["accession", "region"], [(st.accession, st.region) for st in plans])
    return {"studies": studies, "files": files, "broken": broken}



@dataclass(kw_only=True)
class Options(CommonOptions):
    out: str = opt("output folder (dicom/, reports.csv, regions.csv)", role="output-folder")
    studies: int = opt("number of studies (spread evenly over head, chest, abdomen, spine, pelvis)", 40, min=1,
                       max=10000)
    size: int = opt("image side in pixels", 64, min=SIZES[0], max=SIZES[1])
    show_findings: bool = opt("draw on each key image the findings its report sentence (and the two around it) "
                              "affirms: blobs, cysts, fluid layers, fractures, dots ...; negated and uncertain "
                              "findings are not drawn (default: the images show only their body region)", False)
    other_names: bool = opt("reports also name, without a title, another patient of the archive and a physician "
                            "of another patient's study (for testing that every name of the archive's headers is "
                            "scrubbed from every report)", False)


class PacsTool(Tool):
    name = "toy-data pacs"
    description = ("Generate a small fake PACS: DICOM CT/MR studies of five body regions (dicom/), their reports "
                   "referencing key images (reports.csv: report_id,accession,text) and the true region of each study "
                   "(regions.csv: accession,region). A few objects are broken on purpose.")
    example = "toy-data pacs --out pacs/ --studies 40 --seed 0 [--show-findings]\nextract-keyimages pacs/dicom --reports pacs/reports.csv --out keys/"
    Options = Options

    def main(self, opts: Options) -> int:
        with output_folder(opts.out, self.name, ["dicom", ".dicom.tmp", "reports.csv", "regions.csv"]):
            summary = generate(Path(opts.out), opts.studies, opts.size, opts.seed, show_progress=True,
                               show_findings=opts.show_findings, other_names=opts.other_names)
        log.info("wrote %d studies (%d image files, %d broken objects) to %s", summary["studies"], summary["files"],
                 len(summary["broken"]), opts.out)
        return 0


TOOL = PacsTool
