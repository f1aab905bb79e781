"""No protected health information leaves ``extract-keyimages``: pseudonyms, their key, and scrubbing.

* :class:`Pseudonyms`: salted keyed hashes (HMAC-SHA256) for ids, studies, patients,
  reports and rejected files.
* :func:`resolve_salt`: the key. ``--salt`` or ``$LDPO_SALT`` when given (16 characters or
  more); otherwise a random one (``secrets.token_hex(32)``) kept in the key file
  :data:`SALT_FILE` in the output folder's parent (beside the outputs, never among them: a
  folder handed on with the outputs does not carry the key), created with mode 0600 and
  reused by every later run into that parent, so a patient keeps the same pseudonym across
  runs. An existing key file must be what a created one is (a regular file, not a link,
  mode 0600, 16 characters or more), else exit 2. Without the key a pseudonym cannot be
  reversed by enumerating MRNs; keep the file private.
* :data:`NAME_KEYWORDS`, :data:`ID_KEYWORDS`, :data:`PLACE_KEYWORDS`,
  :data:`DATE_KEYWORDS`: the identifying attributes of the DICOM basic de-identification
  profile (PS3.15 Annex E) whose values are removed from the report text of every study
  of the same patient, by :func:`ldpo.common.nlp.phi.scrubber` (shared with the stages that
  read reports later, see that module for what it removes and why it is ldpo's own code).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from ...common.errors import InputError
from ...common.nlp.phi import (REMOVED, SCRUBBED_COLUMN, SCRUBBED_MARK, TITLE_NAME, UID_LIKE, date_pattern,  # noqa: F401
                             name_parts, place_phrases, scrub_text, scrubber)

log = logging.getLogger("ldpo")

SALT_FILE = ".ldpo-salt"
MIN_SALT = 16

#: person names (PN): every part is removed wherever it stands
NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                 "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
                 "NameOfPhysiciansReadingStudy", "RequestingPhysician", "ConsultingPhysicianName",
                 "ScheduledPerformingPhysicianName", "ResponsiblePerson", "ReviewerName", "VerifyingObserverName",
                 "PersonName", "EvaluatorName", "HumanPerformerName", "NamesOfIntendedRecipientsOfResults",
                 "SecondaryReviewerName", "ContentCreatorName")
#: identifiers: removed whole, and (5 characters or longer) inside longer tokens
ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "IssuerOfPatientID",
               "MedicalRecordLocator", "AdmissionID", "RequestedProcedureID", "PerformedProcedureStepID",
               "ScheduledProcedureStepID", "PlacerOrderNumberImagingServiceRequest",
               "FillerOrderNumberImagingServiceRequest", "DeviceSerialNumber", "MilitaryRank",
               "InsurancePlanIdentification", "StationName", "DetectorID", "ServiceEpisodeID")
#: places, addresses and phone numbers: removed as phrases (and their parts)
PLACE_KEYWORDS = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "PatientAddress",
                  "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PatientTelephoneNumbers",
                  "RegionOfResidence", "PersonAddress", "PersonTelephoneNumbers", "BranchOfService",
                  "PerformedLocation", "ScheduledProcedureStepLocation", "CurrentPatientLocation",
                  "PatientInstitutionResidence")
#: places removed only as a whole (their parts may be medical words: a department "Chest Imaging")
WHOLE_PLACE_KEYWORDS = frozenset({"InstitutionalDepartmentName", "PerformedLocation", "ScheduledProcedureStepLocation",
                                  "CurrentPatientLocation", "BranchOfService"})
#: dates (DA) and date-times (DT): removed in every written form
DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                 "InstanceCreationDate", "OverlayDate", "CurveDate", "AcquisitionDateTime",
                 "PerformedProcedureStepStartDate", "PerformedProcedureStepEndDate",
                 "ScheduledProcedureStepStartDate", "AdmittingDate", "LastMenstrualDate", "DateOfLastCalibration",
                 "DateOfSecondaryCapture", "StudyVerifiedDate", "StudyReadDate", "IssueDateOfImagingServiceRequest",
                 "FrameReferenceDateTime", "DateTime", "Date", "ObservationDateTime", "StudyArrivalDate",
                 "StudyCompletionDate", "RadiopharmaceuticalStartDateTime")


class Pseudonyms:
    """Salted keyed hashes: the same input and salt give the same pseudonym, nothing reverses it."""

    def __init__(self, salt: str):
        self.key = salt.encode("utf-8")

    def __call__(self, kind: str, *parts: object, length: int = 12) -> str:
        message = "\x1f".join([kind, *(str(p) for p in parts)]).encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:length]


def salt_path(out: str | os.PathLike) -> Path:
    """Where the key file of the output folder ``out`` lives: its parent's :data:`SALT_FILE`."""
    return Path(os.path.abspath(out)).parent / SALT_FILE


def resolve_salt(given: str, out: str | os.PathLike) -> tuple[str, Path | None, bool]:
    """``(salt, key file or None, whether this call created the file)``: ``given`` (``--salt`` or ``$LDPO_SALT``)
    when not empty, else the key file beside ``out``, read or (atomically, mode 0600) created."""
    if given:
        if len(given.strip()) < MIN_SALT:
            raise InputError(f"--salt / $LDPO_SALT: the pseudonym key has {len(given.strip())} characters, fewer "
                             f"than {MIN_SALT}: a short key is guessed and every pseudonym reversed (leave both "
                             "unset for a random key kept in .ldpo-salt)")
        return given, None, False
    path = salt_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path.parent}: cannot create the folder for the pseudonym key {path.name} "
                         f"({err.strerror or err}): give --salt") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return _read_salt(path), path, False
    except OSError as err:
        raise InputError(f"{path}: cannot create the pseudonym key ({err.strerror or err}): give --salt") from None
    salt = secrets.token_hex(32)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(salt + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o600)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write the pseudonym key ({err.strerror or err}): give --salt") from None
    return salt, path, True


def _read_salt(path: Path) -> str:
    """An existing key file, under the rules of a created one: a regular file (not a link), mode 0600 (no access
    for group or others), :data:`MIN_SALT` characters or more."""
    try:
        info = path.lstat()
    except OSError as err:
        raise InputError(f"{path}: unreadable pseudonym key ({err.strerror or err}): give --salt or remove it") \
            from None
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"{path}: the pseudonym key is a symbolic link (its target may be public): replace it by "
                         "the file itself (mode 0600), or give --salt")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: the pseudonym key is not a regular file: give --salt or remove it")
    if info.st_mode & 0o077:
        raise InputError(f"{path}: the pseudonym key is readable or writable by others (mode "
                         f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "r", encoding="utf-8") as fh:
            salt = fh.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable pseudonym key ({getattr(err, 'strerror', None) or err}): "
                         "give --salt or remove it") from None
    if len(salt) < MIN_SALT:
        raise InputError(f"{path}: the pseudonym key holds fewer than {MIN_SALT} characters: give --salt, or "
                         "remove the file for a new random key (pseudonyms then change)")
    return salt
