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

The package, one module per seam: ``studies.py`` (what each study is and whose),
``pixels.py`` (the phantoms and the findings drawn on them), ``reports.py`` (the report text
and what each key image shows), ``headers.py`` (the DICOM objects: headers, pixel storage,
broken files); this front module plans a PACS with them and writes it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....common.cli import CommonOptions, Tool, opt, progress
from ....common.errors import InputError
from ....common.files.folders import output_folder
from ....common.files.tables import write_csv

from .headers import BROKEN, plan_headers, write_broken, write_study
from .pixels import REGIONS
from .reports import report_and_findings
from .studies import plan_other_names, plan_patients, plan_study

log = logging.getLogger("ldpo")

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
