"""The toy PACS's DICOM objects: the series headers (SeriesDescription, BodyPartExamined), every
identifying attribute a real archive carries, the CT/MR pixel storage styles, and the broken
objects (truncated pixels, SR and PR without pixels, a file that is not DICOM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .pixels import phantom
from .reports import VOCAB
from .studies import FIRST, LAST, OPERATORS, Series, Study


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
