"""The manifest's header fields: non-identifying DICOM attributes, reduced to fixed vocabularies.

``converge`` and ``report`` show how well a run's categories agree with these fields
(never using them as input), so a user can judge a run on an unlabeled archive. They
leave ``extract-keyimages``, so nothing in them may name a person: every field is built
from a **fixed allow-list** held in this module, and anything not on it is dropped, never
copied. A name typed into SeriesDescription or BodyPartExamined cannot pass.

* ``modality`` (Modality): a DICOM defined term (:data:`MODALITIES`, PS3.3 C.7.3.1.1.1,
  retired terms too), upper-case; any other value becomes ``OT`` ("other").
* ``body_part`` (BodyPartExamined): upper-case with spaces, hyphens and underscores
  removed (``L-Spine`` → ``LSPINE``), kept when on :data:`BODY_PARTS` (the defined terms of
  PS3.16 Annex L, the common ones, plus frequent local spellings mapped to them), else empty.
* ``view`` (ViewPosition): upper-case, on :data:`VIEW_POSITIONS` (radiography and
  mammography views), else empty.
* ``orientation``: from ImageOrientationPatient (or, in enhanced multi-frame objects,
  the PlaneOrientationSequence of the shared or first per-frame functional group): the
  slice normal ``row × column``; ``axial``, ``coronal`` or ``sagittal`` when it lies within
  :data:`OBLIQUE_DEGREES` of the patient's z, y or x axis, else ``oblique``; empty when
  absent or malformed (radiographs carry none).
* ``series_words`` (SeriesDescription): lower-cased, split at every non-alphanumeric
  character, each token mapped through :data:`SERIES_WORDS` (sequence, plane, contrast,
  reconstruction and body-region words and their usual abbreviations, to one spelling:
  ``ax``/``tra``/``axial`` → ``axial``); unknown tokens, digits and any token that is a part
  of a person name in the same header are dropped; the kept words, deduplicated and
  sorted, joined by one space (``AX T2 FLAIR FS`` → ``axial fatsat flair t2``).

NIfTI and plain images have none of these (empty; NIfTI's modality stays ``NIFTI``).
"""

from __future__ import annotations

import re

import numpy as np

#: the manifest's columns from this module (after ``context``; ``modality`` is an older column)
HEADER_COLUMNS = ["body_part", "view", "orientation", "series_words"]

#: DICOM Modality defined terms (current and retired); anything else is written as ``OT``
MODALITIES = frozenset("""
AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO LEN
LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE
RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())

#: BodyPartExamined: the defined terms in common use (PS3.16 Annex L) and local spellings mapped to them
BODY_PARTS: dict[str, str] = {term: term for term in """
ABDOMEN ABDOMENPELVIS ACJOINT ADRENAL AMNIOTICFLUID AORTA ANKLE APPENDIX ARM AXILLA BACK BILEDUCT BLADDER BRAIN
BREAST BRONCHUS BUTTOCK CALCANEUS CALF CAROTID CEREBELLUM CERVIX CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CIRCLEOFWILLIS
CLAVICLE COCCYX COLON CORNEA CORONARYARTERY CSPINE CTSPINE DUODENUM EAR ELBOW ESOPHAGUS EXTREMITY EYE EYELID FACE
FEMUR FINGER FOOT FOREARM GALLBLADDER HAND HEAD HEADNECK HEART HIP HUMERUS ILEUM ILIUM IAC JAW JEJUNUM KIDNEY KNEE
LARYNX LEG LIVER LSPINE LSSPINE LUNG MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE
ORBIT OVARY PANCREAS PAROTID PATELLA PELVIS PENIS PHARYNX PROSTATE RADIUS RECTUM RIB SACRUM SCALP SCAPULA SCLERA
SCROTUM SELLA SHOULDER SKULL SPINE SPLEEN SSPINE STERNUM STOMACH SUBMANDIBULAR TESTIS THIGH THUMB THYMUS THYROID TIBIA
TOE TONGUE TRACHEA TSPINE TLSPINE UTERUS VAGINA WHOLEBODY WRIST ZYGOMA
""".split()}
BODY_PARTS.update({
    "ABD": "ABDOMEN", "ABDOMENPELV": "ABDOMENPELVIS", "ABDPELVIS": "ABDOMENPELVIS", "ABDPEL": "ABDOMENPELVIS",
    "THORAX": "CHEST", "CAP": "CHESTABDPELVIS", "LUMBARSPINE": "LSPINE", "CERVICALSPINE": "CSPINE",
    "THORACICSPINE": "TSPINE", "CERVSPINE": "CSPINE", "WBODY": "WHOLEBODY", "WB": "WHOLEBODY", "CRANIUM": "SKULL",
    "BREASTS": "BREAST", "LUNGS": "LUNG", "ORBITS": "ORBIT", "SINUS": "SINUS", "SINUSES": "SINUS",
    "PITUITARY": "SELLA", "CARDIAC": "HEART", "EXTREMITIES": "EXTREMITY", "LOWEXM": "EXTREMITY",
    "UPREXM": "EXTREMITY",
})

#: ViewPosition: radiographic projections and mammographic views (upper-case, without separators)
VIEW_POSITIONS: dict[str, str] = {term: term for term in """
AP PA LL RL LR RLD LLD RLO LLO RAO LAO RPO LPO LATERAL LAT OBLIQUE OBL AXIAL CC MLO ML LM LMO SIO XCC XCCL XCCM FB
RCC LCC RMLO LMLO TAN AT
""".split()}
VIEW_POSITIONS.update({"LATERAL": "LAT", "OBLIQUE": "OBL", "APPA": "AP", "PAAP": "PA"})

#: SeriesDescription: the only words that may pass (token → canonical spelling); everything else is dropped
SERIES_WORDS: dict[str, str] = {}
for _canonical, _aliases in {
    # MR weighting and sequences
    "t1": "t1 t1w t1wi", "t2": "t2 t2w t2wi", "pd": "pd pdw", "flair": "flair tirm darkfluid", "stir": "stir tir",
    "dwi": "dwi diffusion dw trace", "adc": "adc", "dti": "dti tensor", "swi": "swi swan", "gre": "gre fl2d fl3d",
    "se": "se", "tse": "tse fse frfse", "epi": "epi", "mprage": "mprage mpr_age tfl bravo", "spgr": "spgr",
    "ssfp": "ssfp fiesta trufi truefisp bffe", "haste": "haste ssfse", "space": "space cube vista",
    "vibe": "vibe lava thrive", "dixon": "dixon ideal mdixon", "inphase": "inphase ip", "opposed": "opposed opp oop",
    "fatsat": "fs fatsat fatsup spair spir", "water": "water", "fat": "fat", "tof": "tof", "mra": "mra", "mrv": "mrv",
    "perfusion": "perfusion perf dsc asl pwi", "dce": "dce", "bold": "bold fmri", "mrcp": "mrcp", "cine": "cine",
    "lge": "lge psir",
    # CT reconstruction and kernels
    "bone": "bone b70 b60 bonealg", "soft": "soft softtissue st b30 b31", "lung": "lung lungs b70f",
    "std": "std standard",
    "sharp": "sharp", "smooth": "smooth", "thin": "thin", "thick": "thick", "mpr": "mpr reformat", "mip": "mip",
    "minip": "minip", "vr": "vr vrt", "recon": "recon", "idose": "idose", "asir": "asir",
    "localizer": "localizer localiser loc scout survey topogram scanogram", "tracker": "tracker bolus monitoring",
    "dose": "dose", "calcium": "calcium cascore", "angio": "angio cta angiography", "venogram": "venogram ctv",
    "cardiac": "cardiac heart", "pe": "pe",
    # planes
    "axial": "ax axial tra trans transverse", "coronal": "cor coronal", "sagittal": "sag sagittal",
    "oblique": "obl oblique", "3d": "3d", "2d": "2d",
    # contrast and phases
    "contrast": "contrast c gd gad gado cont cect cemr enh enhanced", "pre": "pre precontrast",
    "post": "post postcontrast",
    "noncontrast": "nc noncon noncontrast wo native plain", "delayed": "delayed delay late",
    "arterial": "arterial", "venous": "venous ven portal pv portovenous", "nephrographic": "nephrographic",
    "early": "early", "dynamic": "dynamic dyn", "subtraction": "sub subtraction subtr",
    # regions
    "head": "head", "brain": "brain", "neck": "neck", "chest": "chest thorax", "abdomen": "abdomen abd",
    "pelvis": "pelvis pelv", "spine": "spine", "cspine": "cspine", "tspine": "tspine", "lspine": "lspine",
    "cervical": "cervical", "thoracic": "thoracic", "lumbar": "lumbar", "sacrum": "sacrum", "liver": "liver",
    "kidney": "kidney kidneys renal", "pancreas": "pancreas", "prostate": "prostate", "breast": "breast breasts",
    "orbit": "orbit orbits", "sinus": "sinus sinuses", "iac": "iac", "pituitary": "pituitary sella",
    "knee": "knee", "hip": "hip", "shoulder": "shoulder", "ankle": "ankle", "wrist": "wrist", "elbow": "elbow",
    "hand": "hand", "foot": "foot", "extremity": "extremity", "wholebody": "wb wholebody", "body": "body",
    "cap": "cap", "mediastinum": "mediastinum mediastinal med", "aorta": "aorta aortic", "vessels": "vessels",
    # sides, modality words
    "left": "left lt", "right": "right rt", "bilateral": "bilateral bilat", "ct": "ct", "mr": "mr mri",
}.items():
    for _alias in _aliases.split():
        SERIES_WORDS[_alias] = _canonical
del _canonical, _aliases, _alias

#: the slice normal within this angle of a patient axis names the plane; farther is ``oblique``
OBLIQUE_DEGREES = 30.0
PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # the patient axis the normal points along (x, y, z)

_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
_WITHOUT = re.compile(r"(?<![a-z0-9])w/o(?![a-z0-9])|(?<![a-z0-9])w/out(?![a-z0-9])")  # "W/O" = without (contrast)


def modality(value: object) -> str:
    """A Modality value as the manifest writes it: a defined term, ``OT`` for anything else, ``""`` when absent."""
    text = str(value or "").strip().upper()
    if not text:
        return ""
    return text if text in MODALITIES else "OT"


def _token(value: object) -> str:
    return _SEPARATORS.sub("", str(value or "")).upper()


def body_part(value: object) -> str:
    """BodyPartExamined normalized (``L-Spine`` → ``LSPINE``), or ``""`` when not on :data:`BODY_PARTS`."""
    return BODY_PARTS.get(_token(value), "")


def view(value: object) -> str:
    """ViewPosition normalized, or ``""`` when not on :data:`VIEW_POSITIONS`."""
    return VIEW_POSITIONS.get(_token(value), "")


def orientation(values: object) -> str:
    """``axial``/``coronal``/``sagittal``/``oblique`` from the six direction cosines of ImageOrientationPatient;
    ``""`` for anything else (absent, not six finite numbers, parallel or zero vectors)."""
    try:
        cosines = np.array([float(v) for v in values], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return ""
    if cosines.shape != (6,) or not np.isfinite(cosines).all():
        return ""
    normal = np.cross(cosines[:3], cosines[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return ""
    normal = np.abs(normal) / length
    axis = int(np.argmax(normal))
    return PLANES[axis] if normal[axis] >= np.cos(np.radians(OBLIQUE_DEGREES)) else "oblique"


def series_words(text: object, names: set[str] | frozenset[str] = frozenset()) -> str:
    """The allow-listed words of a SeriesDescription, canonical, sorted, space-separated; ``names``: lower-case
    parts of person names in the same header, dropped even when they are imaging words."""
    words = set()
    lowered = _WITHOUT.sub(" wo ", str(text or "").lower())
    for token in _SEPARATORS.split(lowered):
        word = SERIES_WORDS.get(token)
        if word and token not in names and word not in names:
            words.add(word)
    return " ".join(sorted(words))


def dicom_orientation(ds) -> str:
    """The orientation of a DICOM data set: its ImageOrientationPatient, or that of an enhanced object's
    functional groups (shared first, else the first frame's)."""
    if "ImageOrientationPatient" in ds:
        return orientation(ds.ImageOrientationPatient)
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            item = ds[group].value[0]
            return orientation(item.PlaneOrientationSequence[0].ImageOrientationPatient)
        except (KeyError, IndexError, AttributeError, TypeError):
            continue
    return ""


def header_fields(ds, names: list[str]) -> dict[str, str]:
    """The manifest's header fields of one DICOM data set (``names``: the person-name parts its header holds)."""
    lower = {n.lower() for n in names}
    return {"modality": modality(ds.get("Modality", "")), "body_part": body_part(ds.get("BodyPartExamined", "")),
            "view": view(ds.get("ViewPosition", "")), "orientation": dicom_orientation(ds),
            "series_words": series_words(ds.get("SeriesDescription", ""), lower)}
