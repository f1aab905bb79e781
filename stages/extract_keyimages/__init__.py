"""``extract-keyimages``: a DICOM tree + reports (or NIfTI files, or an image folder) → images store.

Two passes over the files, sorted by path. Pass 1 indexes headers (pixel data is not
read) so the key images and their number N are known; pass 2 decodes only the selected
frames, in parallel with ``--workers``, and streams them row by row into the store, so
memory stays flat however large the archive.

Outputs in ``--out DIR``: ``images.h5|zarr`` (``images`` uint8 [N,size,size], ``ids``),
``manifest.csv`` (id,study,patient,series,instance,frame,modality,report_id,sentence,context, and the header
fields body_part,view,orientation,series_words: fixed vocabularies only, see :mod:`.headers`; empty for NIfTI
and image files),
``rejects.csv`` (source,reference,reason), with ``--reports`` ``reports.csv``
(report_id,text,scrubbed: the scrubbed text of every report the manifest names), and
for an image folder with class sub-folders ``truth.csv`` (id,label) and ``classes.csv``
(label,name: ``class-`` and the salted hash of the folder name, since folder names often
name patients; ``--class-names keep`` writes the folder names). The outputs are written together: all of them replace the previous
run's, or (on an error) none does, and a failed run removes the output folder (and its
parents) when it created them itself and they are still empty. ``--out`` follows the one
rule of output folders (:mod:`ldpo.common.files.folders`): new, empty, or an earlier extract's
(its ``.ldpo-output.json`` lists what it wrote); only what that record lists is replaced
or removed, and a folder holding anything else is refused.

No PHI leaves this stage. Ids, study, patient and report keys are salted hashes
(``report_id`` too: reports are often keyed by accession number). The salt is
``--salt``, ``$LDPO_SALT``, or a random key kept in ``.ldpo-salt`` in the output
folder's parent (made on the first run, mode 0600, reused later; see :mod:`.phi`). A
rejected file is ``file:<pseudonym>`` (the same salted hash of its path below SOURCE;
``-v`` logs which path it is), a rejected report reference ``report:<report_id>``;
reasons never carry paths. Report text enters ldpo here, and only here: the
manifest's sentences and context and ``reports.csv`` are scrubbed with every
identifying header attribute of every study of the report's patient (the DICOM basic
de-identification profile: names, IDs, accession numbers, dates, institution …), the
accession numbers and patient IDs of the whole archive, the person names of the whole
archive (another patient, staff of other studies: :class:`ldpo.common.nlp.phi.ArchiveNames`),
and patterns (see :mod:`ldpo.common.nlp.phi`). The stages that read reports later (``topic-label``,
``keywords``, ``hierarchy --affinity reports``) take ``OUT/reports.csv``.

Why this front module is about 580 lines: it is the command and the one walk over the archive
that joins reports, studies and key images; headers, pixels, references, sources and the
scrubbing are in their own modules beside it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ...common.cli import CommonOptions, Tool, opt, positional, progress
from ...common.errors import InputError
from ...common.files.folders import check_output_folder, output_folder
from ...common.files.labels import write_labels
from ...common.files.stores import atomic_paths, create_store, open_store, remove, replace, temporary_name
from ...common.files.tables import write_csv
from ...common.nlp.reports import Report, read_reports
from ...common.nlp.phi import ArchiveNames, ordinary_words
from .headers import BODY_PARTS, HEADER_COLUMNS, SERIES_WORDS
from .phi import (SCRUBBED_COLUMN, SCRUBBED_MARK, UID_LIKE, Pseudonyms, resolve_salt,
                                               scrubber)
from .pixels import parse_window
from .references import mentions
from .sources import Failure, Job, Record, index_file, read_file, walk

log = logging.getLogger("ldpo")

MANIFEST_COLUMNS = ["id", "study", "patient", "series", "instance", "frame", "modality", "report_id", "sentence",
                    "context", *HEADER_COLUMNS]
REJECT_COLUMNS = ["source", "reference", "reason"]
REPORT_COLUMNS = ["report_id", "text", SCRUBBED_COLUMN]
MAX_SIZE = 8192  # a 8192² uint8 image is 64 MiB; larger sides are typos (and would exhaust memory)
OUTPUT_NAMES = ("images.h5", "images.zarr", "manifest.csv", "rejects.csv", "reports.csv", "truth.csv", "classes.csv")


@dataclass(kw_only=True)
class Options(CommonOptions):
    source: str = positional("DICOM tree, NIfTI file/folder, or folder of PNG/JPEG images (class sub-folders optional)",
                             role="input")
    out: str = opt("output folder", role="output-folder")
    reports: str = opt("reports: CSV (report_id,text + accession or study_uid) or a folder of .txt", "",
                       role="input")
    all_slices: bool = opt("every slice (every --every-th) instead of the key images the reports reference "
                           "(the default without --reports)", False)
    every: int = opt("with --all-slices and NIfTI: keep every k-th slice", 1, min=1)
    size: int = opt("output image side in pixels (padded to square with black, then resized)", 256, min=8,
                    max=MAX_SIZE)
    window: str = opt("override the header window: CENTER,WIDTH or a preset (brain, lung, abdomen, bone, ...)", "")
    window_index: int = opt("which value of a multi-valued WindowCenter/Width to use", 0, min=0)
    salt: str = opt("salt (secret key) of the pseudonymous ids (default: $LDPO_SALT, else a random key kept in "
                    ".ldpo-salt beside the output folder, made on the first run and reused)", "")
    format: str = opt("images store format", "h5", choices=["h5", "zarr"])
    class_names: str = opt("image folder with class sub-folders: what classes.csv calls each class: pseudonym "
                           "(class-<salted hash of the folder name>: folder names are often patient names or "
                           "accession numbers) or keep (the folder name as it is, for folders known to name no "
                           "one, such as a public texture set)", "pseudonym", choices=["pseudonym", "keep"])


@dataclass
class Item:
    """One output image: where its pixels are and what the manifest says about it."""

    path: str
    kind: str
    frame: int
    id: str
    study: str = ""
    patient: str = ""
    series: int | str = ""
    instance: int | str = ""
    modality: str = ""
    report_id: str = ""
    sentence: str = ""
    context: str = ""
    label: str = ""
    body_part: str = ""
    view: str = ""
    orientation: str = ""
    series_words: str = ""

    def row(self) -> list:
        return [self.id, self.study, self.patient, self.series, self.instance, self.frame, self.modality,
                self.report_id, self.sentence, self.context, self.body_part, self.view, self.orientation,
                self.series_words]


@dataclass
class Reject:
    source: str
    reference: str
    reason: str


def pool_map(func: Callable, items: list, workers: int, desc: str) -> Iterator:
    """``func`` over ``items`` in order, in ``workers`` processes when asked, with a progress bar."""
    if workers > 0 and len(items) > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            chunk = max(1, min(64, len(items) // (workers * 8)))
            yield from progress(pool.imap(func, items, chunksize=chunk), total=len(items), desc=desc)
    else:
        yield from progress((func(item) for item in items), total=len(items), desc=desc)


class Extractor:
    """One run: index, select, render, write. Holds only headers, never pixels."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.source = Path(opts.source)
        self.out = Path(opts.out)
        self.window = parse_window(opts.window)
        self.pseudo: Pseudonyms | None = None  # set by run(), from the salt
        self.rejects: list[Reject] = []
        # who each study's patient is, and what the headers say about each patient (for scrubbing)
        self.patient_of: dict[str, str] = {}
        self.identity: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.known_ids: set[str] = set()
        self.persons: set[str] = set()  # every person name of the archive's headers (parts joined by ^)
        self.archive_names: ArchiveNames | None = None  # made from them once pass 1 is done
        self.report_studies: dict[str, set[str]] = {}
        self.scrubbers: dict[frozenset[str], Callable[[str], str]] = {}

    # -- pass 1 -----------------------------------------------------------------------
    def check_source_outside_out(self) -> None:
        out = self.out.resolve()
        if out == self.source.resolve() or out in self.source.resolve().parents:
            raise InputError(f"{self.source}: is inside --out {self.out}, whose files are skipped as outputs: "
                             "give an output folder outside the source")

    def index(self) -> list[Record]:
        self.check_source_outside_out()
        out = self.out.resolve()
        files = [f for f in walk(self.source) if out not in Path(f[0]).resolve().parents]  # not our own outputs
        if not files:
            raise InputError(f"{self.source}: holds no DICOM, NIfTI or image files")
        records, sops = [], set()
        for result in pool_map(index_file, files, self.opts.workers, "index"):
            if isinstance(result, Failure):
                if result.identity:
                    self.learn(result.study_uid, result.patient_id, result.identity)
                self.reject_file(result.path, result.reason)
            elif result.kind == "dicom" and result.sop_uid and result.sop_uid in sops:
                self.reject_file(result.path, "duplicate SOP instance (the same object as another file)")
            else:
                sops.add(result.sop_uid)
                records.append(result)
            if isinstance(result, Record) and result.kind == "dicom":
                self.learn(result.study_uid, result.patient_id, {"names": result.names, "persons": result.persons,
                                                                 "ids": result.ids, "dates": result.dates,
                                                                 "phrases": result.phrases})
        log.info("indexed %d files: %d usable objects, %d rejected", len(files), len(records), len(self.rejects))
        return records

    # -- what the headers say about each patient ----------------------------------------
    def learn(self, study_uid: str, patient_id: str, identity: dict[str, list[str]]) -> None:
        """Remember one object's identifying attributes under its patient (all studies of a patient share)."""
        patient = f"id:{patient_id}" if patient_id else f"study:{study_uid}"
        if study_uid:
            self.patient_of.setdefault(study_uid, patient)
        for kind, values in identity.items():
            self.identity[patient][kind].update(values)
        self.known_ids.update(identity.get("ids", ()))
        self.persons.update(identity.get("persons", ()))

    def report_scrubber(self, report_id: str):
        """The scrubber of one report: everything every study of its patient(s) says, plus the archive's ids and
        person names."""
        if self.archive_names is None:
            ordinary = ordinary_words() | {w.lower() for w in (*SERIES_WORDS, *BODY_PARTS)}
            self.archive_names = ArchiveNames(self.persons, ordinary)
            log.debug("%d person name parts in the archive's headers, removed from every report",
                      len(self.archive_names))
        studies = self.report_studies.get(report_id, set())
        patients = frozenset(self.patient_of[uid] for uid in studies if uid in self.patient_of)
        if patients not in self.scrubbers:
            found = defaultdict(set)
            for patient in patients:
                for kind, values in self.identity.get(patient, {}).items():
                    found[kind] |= values
            self.scrubbers[patients] = scrubber(names=found["names"], ids=found["ids"], dates=found["dates"],
                                                phrases=found["phrases"], known_ids=self.known_ids,
                                                archive_names=self.archive_names)
        return self.scrubbers[patients]

    def report_key(self, report_id: str) -> str:
        """A report's pseudonymous id (report ids are often accession numbers); '' stays ''."""
        return self.pseudo("report", report_id, length=12) if report_id else ""

    # -- selection ----------------------------------------------------------------------
    def select(self, records: list[Record], reports: list[Report]) -> list[Item]:
        dicom = [r for r in records if r.kind == "dicom"]
        self.report_studies = self.matching_studies(dicom, reports)
        keyed = self.key_images(dicom, reports) if reports else {}
        study_report = {uid: rid for (uid, rid) in self.linked(dicom, reports)} if reports else {}
        every_slice = self.opts.all_slices or not reports
        if dicom and not reports and not self.opts.all_slices:
            log.info("no --reports: taking every slice (every %d)", self.opts.every)
        items = []
        for record in dicom:
            items += self.dicom_items(record, keyed, study_report, every_slice)
        for record in records:
            if record.kind == "nifti":
                items += self.nifti_items(record)
            elif record.kind == "image":
                items.append(self.image_item(record, reports))
        return sorted(items, key=lambda it: (it.path, it.frame))

    def matching_studies(self, dicom: list[Record], reports: list[Report]) -> dict[str, set[str]]:
        """Every study (of the indexed ones, rejected objects included) each report names by accession or UID."""
        by_accession = defaultdict(set)
        for r in dicom:
            if r.accession:
                by_accession[r.accession].add(r.study_uid)
        uids = set(self.patient_of) | {r.study_uid for r in dicom}
        return {report.report_id: (by_accession.get(report.accession, set()) if report.accession else set())
                | ({report.study_uid} if report.study_uid in uids else set()) for report in reports}

    def linked(self, dicom: list[Record], reports: list[Report]) -> Iterator[tuple[str, str]]:
        """(study_uid, report_id) for every report that matches a study, first report per study wins."""
        by_accession = defaultdict(set)
        uids = set()
        for r in dicom:
            uids.add(r.study_uid)
            if r.accession:
                by_accession[r.accession].add(r.study_uid)
        seen = set()
        for report in reports:
            studies = by_accession.get(report.accession, set()) if report.accession else set()
            if report.study_uid in uids:
                studies = studies | {report.study_uid}
            for uid in sorted(studies - seen):
                seen.add(uid)
                yield uid, report.report_id

    def key_images(self, dicom: list[Record], reports: list[Report]) -> dict[tuple[str, int], tuple[Report, str, str]]:
        """(path, frame) → (report, sentence, context) for every image a report references."""
        studies = defaultdict(list)
        for r in dicom:
            studies[r.study_uid].append(r)
        by_report = defaultdict(list)
        for uid, rid in self.linked(dicom, reports):
            by_report[rid].append(uid)
        chosen: dict[tuple[str, int], tuple[Report, str, str]] = {}
        for report in reports:
            records = [r for uid in by_report.get(report.report_id, []) for r in studies[uid]]
            if not records:
                self.reject_reference(report, "", "no DICOM study matches the report")
                continue
            found = mentions(report.text)
            if not found:
                self.reject_reference(report, "", "report has no image reference")
                continue
            scrub = self.report_scrubber(report.report_id)
            for mention in found:
                for ref in mention.references:
                    for key in self.resolve(report, ref, records):
                        chosen.setdefault(key, (report, scrub(mention.sentence), scrub(mention.context)))
        return chosen

    def resolve(self, report: Report, ref, records: list[Record]) -> list[tuple[str, int]]:
        """The (path, frame) pairs a reference names; what it cannot find becomes a reject."""
        series = defaultdict(list)
        for r in records:
            series[r.series_number].append(r)
        number = ref.series
        if number is None:
            if len(series) != 1:
                self.reject_reference(report, ref.text, f"ambiguous reference: no series given and the study has "
                                                        f"{len(series)} series")
                return []
            number = next(iter(series))
        if number not in series:
            self.reject_reference(report, ref.text, f"reference not found: no series {number} in the study")
            return []
        members = series[number]
        by_instance = defaultdict(list)
        for r in members:
            by_instance[r.instance_number].append(r)
        keys, missing = [], []
        for image in ref.images:
            if image in by_instance:
                keys += [(r.path, f) for r in by_instance[image] for f in range(r.frames)]
            elif len(members) == 1 and 1 <= image <= members[0].frames:  # one multi-frame object: image = frame
                keys.append((members[0].path, image - 1))
            else:
                missing.append(image)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
            self.reject_reference(report, ref.text, f"reference not found: no image {shown} in series {number}")
        return keys

    def dicom_items(self, record: Record, keyed: dict, study_report: dict, every_slice: bool) -> list[Item]:
        if every_slice:
            frames = range(record.frames)
        else:
            frames = [f for f in range(record.frames) if (record.path, f) in keyed]
        items = []
        for frame in frames:
            report, sentence, context = keyed.get((record.path, frame), (None, "", ""))
            items.append(Item(
                path=record.path, kind="dicom", frame=frame,
                id=self.pseudo("image", record.sop_uid or self.relative(record.path), frame, length=16),
                study=self.pseudo("study", record.study_uid), patient=self.pseudo("patient", record.patient_id),
                series="" if record.series_number is None else record.series_number,
                instance="" if record.instance_number is None else record.instance_number,
                modality=record.modality, body_part=record.body_part, view=record.view,
                orientation=record.orientation, series_words=record.series_words,
                report_id=self.report_key(report.report_id if report else study_report.get(record.study_uid, "")),
                sentence=sentence, context=context))
        return items

    def thin_slices(self, items: list[Item]) -> list[Item]:
        """Every ``--every``-th DICOM slice of each series (by instance number, then frame)."""
        every = max(1, self.opts.every)
        if every == 1:
            return items
        groups = defaultdict(list)
        for it in items:
            if it.kind == "dicom":
                groups[(it.study, it.series)].append(it)
        keep = {id(it) for it in items if it.kind != "dicom"}
        for members in groups.values():
            members.sort(key=lambda it: (it.instance if isinstance(it.instance, int) else 0, it.path, it.frame))
            keep.update(id(it) for it in members[::every])
        return [it for it in items if id(it) in keep or it.sentence]

    def nifti_items(self, record: Record) -> list[Item]:
        rel = self.relative(record.path)
        study = self.pseudo("study", "nifti", rel)
        return [Item(path=record.path, kind="nifti", frame=k, id=self.pseudo("nifti", rel, k, length=16), study=study,
                     series=1, instance=k + 1, modality="NIFTI")
                for k in range(0, record.frames, max(1, self.opts.every))]

    def image_item(self, record: Record, reports: list[Report]) -> Item:
        rel = Path(self.relative(record.path))
        stem = rel.name.split(".")[0]
        report_id = self.report_key(stem) if any(r.report_id == stem for r in reports) else ""
        label = rel.parts[0] if len(rel.parts) > 1 else ""
        return Item(path=record.path, kind="image", frame=0, id=self.pseudo("file", rel.as_posix(), length=16),
                    report_id=report_id, label=label)

    # -- pass 2 -------------------------------------------------------------------------
    def render(self, items: list[Item], store_path: Path, final: Path) -> list[Item]:
        """Decode the selected frames into the store at ``store_path`` (the temporary name of ``final``); return
        the items that made it. Nothing is left at ``store_path`` when none did. The rows are written under
        another temporary name beside ``final`` (never a temporary of the temporary)."""
        jobs, rows = [], []
        for it in items:
            if jobs and jobs[-1].path == it.path:
                jobs[-1].frames.append(it.frame)
                rows[-1].append(it)
            else:
                jobs.append(Job(it.path, it.kind, [it.frame], self.opts.size, self.window, self.opts.window_index))
                rows.append([it])
        partial = temporary_name(final)
        size = self.opts.size
        kept: list[Item] = []
        attrs = {"stage": "extract-keyimages", "size": size, "window": self.opts.window or "header",
                 "window_index": self.opts.window_index, "all_slices": bool(self.opts.all_slices),
                 "every": self.opts.every}
        try:
            with create_store(partial, n=len(items), arrays={"images": ((size, size), "uint8")},
                              ids=[it.id for it in items], attrs=attrs) as store:
                row = 0
                for (images, reason), members in zip(pool_map(read_file, jobs, self.opts.workers, "pixels"), rows):
                    if reason or len(images) != len(members):
                        self.reject_file(members[0].path, reason or "fewer frames than the header says")
                        row += len(members)
                        continue
                    for image, it in zip(images, members):
                        if isinstance(image, str):  # this frame cannot be displayed: its reason
                            self.reject_file(it.path, f"frame {it.frame}: {image}")
                        else:
                            store.write("images", row, image[None])
                            kept.append(it)
                        row += 1
            if len(kept) == len(items):
                replace(partial, store_path)
            elif kept:
                self.compact(partial, store_path, items, kept, attrs)
        finally:
            remove(partial)
        return kept

    def compact(self, partial: Path, store_path: Path, items: list[Item], kept: list[Item], attrs: dict) -> None:
        """Copy the rows that decoded into the final store (only when some file failed in pass 2)."""
        keep = {it.id for it in kept}
        rows = [i for i, it in enumerate(items) if it.id in keep]
        size = self.opts.size
        try:
            with open_store(partial, expect="images") as src, \
                    create_store(store_path, n=len(rows), arrays={"images": ((size, size), "uint8")},
                                 ids=[items[i].id for i in rows], attrs=attrs) as dst:
                for start in range(0, len(rows), 256):
                    block = rows[start:start + 256]
                    dst.write("images", start, src.take("images", block))
        finally:
            remove(partial)

    # -- outputs --------------------------------------------------------------------------
    def relative(self, path: str) -> str:
        p = Path(path)
        try:
            rel = p.relative_to(self.source) if self.source.is_dir() else Path(p.name)
        except ValueError:
            rel = p
        return rel.as_posix()

    def file_pseudonym(self, path: str) -> str:
        """``file:<hash>`` for rejects.csv: the salted hash of the path below SOURCE (never the path)."""
        return "file:" + self.pseudo("file", self.relative(path), length=16)

    def scrub_reason(self, path: str, reason: str) -> str:
        """A reason without the file's path or any folder or file name in it (errors often quote them)."""
        pieces = {path, str(Path(path).resolve()), self.relative(path), str(self.source), str(self.source.resolve())}
        pieces |= {part for part in Path(self.relative(path)).parts if len(part) >= 3}
        for piece in sorted((p for p in pieces if p), key=len, reverse=True):
            reason = reason.replace(piece, "[file]")
        return UID_LIKE.sub("[uid]", reason)

    def reject_file(self, path: str, reason: str) -> None:
        source = self.file_pseudonym(path)
        log.debug("rejected %s (%s): %s", path, source, reason)
        self.rejects.append(Reject(source, "", self.scrub_reason(path, reason)))

    def reject_reference(self, report: Report, reference: str, reason: str) -> None:
        self.rejects.append(Reject(f"report:{self.report_key(report.report_id)}", reference, reason))

    def truth(self, items: list[Item]) -> tuple[list[str], list[int], list[list]] | None:
        """Labels from class sub-folders of an image folder: (ids, labels, class table), or None."""
        if not items or any(it.kind != "image" or not it.label for it in items):
            return None
        names = sorted({it.label for it in items})
        index = {name: i for i, name in enumerate(names)}
        return [it.id for it in items], [index[it.label] for it in items], [[i, self.class_name(n)]
                                                                             for i, n in enumerate(names)]

    def class_name(self, folder: str) -> str:
        """What classes.csv calls a class sub-folder: its salted pseudonym, or (``--class-names keep``) its name.
        Pseudonyms, not scrubbing: a folder named ``DOE JANE`` holds no pattern a scrubber could find, and an
        image folder has no headers that would name her."""
        return folder if self.opts.class_names == "keep" else "class-" + self.pseudo("class", folder, length=10)

    def output_paths(self) -> dict[str, Path]:
        return {"images": self.out / f"images.{self.opts.format}", "manifest": self.out / "manifest.csv",
                "rejects": self.out / "rejects.csv", "reports": self.out / "reports.csv",
                "truth": self.out / "truth.csv", "classes": self.out / "classes.csv"}

    def scrubbed_reports(self, reports: list[Report], kept: list[Item]) -> list[list[str]]:
        """``[report_id, scrubbed text, mark]`` of every report the manifest names, in the reports' order."""
        named = {it.report_id for it in kept if it.report_id}
        rows = []
        for report in reports:
            key = self.report_key(report.report_id)
            if key in named:
                rows.append([key, self.report_scrubber(report.report_id)(report.text), SCRUBBED_MARK])
        return rows

    def run(self) -> int:
        """Extract; on a failure remove what this run made itself (the output folder and its parents while
        empty, a new key file), never anything that was there before."""
        made = [p for p in (self.out, *self.out.parents) if not os.path.lexists(p)]
        self.check_source_outside_out()  # said first: the folder rule below would only say "not empty"
        check_output_folder(self.out, "extract-keyimages")  # a folder of other files is refused, never emptied
        salt_made = None
        try:
            salt, key_file, created = resolve_salt(self.opts.salt or os.environ.get("LDPO_SALT", ""), self.out)
            salt_made = key_file if created else None
            self.pseudo = Pseudonyms(salt)
            with output_folder(self.out, "extract-keyimages", OUTPUT_NAMES):
                self.extract()
        except BaseException:
            if salt_made is not None:
                salt_made.unlink(missing_ok=True)
            for folder in made:  # deepest first; rmdir removes only empty folders
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
        if key_file is not None:
            log.info("pseudonyms keyed by %s (%s; keep it private and apart from the outputs: without it no "
                     "pseudonym can be traced back, with it they can)", key_file,
                     "a new random key" if created else "the key of earlier runs")
        return 0

    def extract(self) -> None:
        if not self.source.exists():
            raise InputError(f"{self.source}: no such file or folder")
        reports = read_reports(self.opts.reports) if self.opts.reports else []
        records = self.index()
        items = self.select(records, reports)
        if self.opts.all_slices or not reports:
            items = self.thin_slices(items)
        paths = self.output_paths()
        with atomic_paths(*paths.values()) as tmps:
            tmp = dict(zip(paths, tmps))
            kept = self.render(items, tmp["images"], paths["images"]) if items else []
            if not kept:
                raise InputError(f"{self.source}: nothing usable: {self.reject_summary()} "
                                 f"(nothing written to {self.out}; -v lists the files)")
            write_csv(tmp["rejects"], REJECT_COLUMNS, [[r.source, r.reference, r.reason] for r in self.rejects])
            write_csv(tmp["manifest"], MANIFEST_COLUMNS, (it.row() for it in kept))
            if reports:
                scrubbed = self.scrubbed_reports(reports, kept)
                write_csv(tmp["reports"], REPORT_COLUMNS, scrubbed)
                log.info("wrote %d scrubbed reports to %s: give this file (not the raw reports) to topic-label, "
                         "keywords and the loop", len(scrubbed), paths["reports"])
            truth = self.truth(kept)
            if truth:
                write_labels(tmp["truth"], truth[0], truth[1])
                write_csv(tmp["classes"], ["label", "name"], truth[2])
                log.info("class sub-folders: wrote truth.csv for %d classes", len(truth[2]))
        log.info("wrote %d images to %s (%d rejects)", len(kept), paths["images"], len(self.rejects))

    def reject_summary(self) -> str:
        if not self.rejects:
            return "no image was selected"
        counts = defaultdict(int)
        for r in self.rejects:
            counts[r.reason] += 1
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return f"{len(self.rejects)} rejects (" + "; ".join(f"{n}× {reason}" for reason, n in top) + ")"


class ExtractKeyImagesTool(Tool):
    name = "extract-keyimages"
    description = ("Extract key images (those the reports reference), every slice, NIfTI slices, or an image folder "
                   "into an images store, with a pseudonymous manifest, the reports scrubbed of patient "
                   "identifiers (OUT/reports.csv, for topic-label, keywords and the loop) and a rejects list.")
    example = ("extract-keyimages pacs/dicom --reports pacs/reports.csv --out keys/ --size 256 --workers 4\n"
               "extract-keyimages volumes/ --out slices/ --all-slices --every 5 --window abdomen\n"
               "extract-keyimages texture25-folder/ --out t25/ --size 128")
    Options = Options

    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        """The output folder and every file written in it (so no input can be one of them)."""
        return super().outputs(opts) + [("--out", str(Path(opts.out) / name)) for name in OUTPUT_NAMES]

    def main(self, opts: Options) -> int:
        return Extractor(opts).run()


TOOL = ExtractKeyImagesTool
main = ExtractKeyImagesTool.console
