"""The toy PACS's studies and series, and the patients, physicians and institutions they
belong to: what each study is (region, modality, series, slices, windows, storage style)
and whose it is, each from its own random stream."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pixels import CT_WINDOWS, MODALITIES


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
