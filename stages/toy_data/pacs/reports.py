"""The toy PACS's report text: per region the words, findings, hedged (negated, uncertain,
synonym) sentences and filler a report is written from; key-image references in the ways
radiologists write them; the identifier lines (patient, MRN, dates, physicians) around it;
and which findings each referenced key image shows."""

from __future__ import annotations

import numpy as np

from .studies import Study


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
