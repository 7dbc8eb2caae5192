"""Train/validate/test splits at patient level, keeping the publisher's split where given.

    studies = assign_splits(studies, fractions=(0.8, 0.1, 0.1), seed=0, stratify_by=any_positive)
    check_no_leakage(studies)   # raises SplitError naming patients found in two splits

Split names are canonical: "train", "validate" and "test" (MIMIC-CXR's names). Publishers'
spellings are read as follows (case-insensitive): "train"/"training" -> "train";
"validate"/"validation"/"valid"/"val"/"dev" -> "validate"; "test"/"testing" -> "test".
Any other non-empty name is an error, so a typo never becomes a fourth split.

Patients are identified by (source, patient_id), where the source is the cohort the dataset
draws its patients from (`PATIENT_SOURCES`): MIMIC-CXR, MS-CXR, Chest ImaGenome and ReXrank's
MIMIC test set are one cohort, so a patient in MIMIC-CXR's train and in ReXrank-MIMIC's test is
found as a leak; ids of unrelated datasets never meet.

    check_no_leakage(mimic + ms_cxr + imagenome)     # across datasets of one source
    leaks(studies)                                   # the same as data, for reports
    avoided(studies, {"<dicom_id>", ...})            # training studies with excluded images
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Literal

from radixpert.data.study import Study
from radixpert.errors import SplitError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validate", "test")
_ALIASES = {
    "train": "train",
    "training": "train",
    "validate": "validate",
    "validation": "validate",
    "valid": "validate",
    "val": "validate",
    "dev": "validate",
    "test": "test",
    "testing": "test",
}

PatientKey = tuple[str, str]

PATIENT_SOURCES: dict[str, str] = {
    "mimic-cxr": "mimic-cxr",
    "ms-cxr": "mimic-cxr",
    "imagenome": "mimic-cxr",
    "rexrank-mimic-cxr": "mimic-cxr",
    "chexpert": "chexpert",
    "chexpert-plus": "chexpert",
    "rexrank-chexpert-plus": "chexpert",
    "iu-xray": "iu-xray",
    "rexrank-iu-xray": "iu-xray",
    "padchest": "padchest",
    "padchest-gr": "padchest",
    "rexgradient": "rexgradient",
    "rexrank-rexgradient": "rexgradient",
}
"""Dataset -> the cohort its patients come from (the datasets not named are their own)."""

# MIMIC subject ids appear as 10000032, "10000032" and, in paths, "p10000032"; CheXpert's as
# "patient00001" in both CheXpert and CheXpert Plus (the patient folder of the image path; the
# readers keep CheXpert Plus's deid_patient_id in extra).
_MIMIC_ID = re.compile(r"^p?(\d{8})$")


def patient_key(study: Study) -> PatientKey:
    """(source, patient id) of a study: the patient across every dataset of one source."""
    source = PATIENT_SOURCES.get(study.dataset, study.dataset)
    pid = study.patient_id.strip()
    if source == "mimic-cxr":
        m = _MIMIC_ID.match(pid)
        pid = m.group(1) if m else pid
    return source, pid


def normalise_split(name: str) -> str:
    """The canonical name ("train", "validate", "test") of a split, or "" for none.

    Raises:
        SplitError: `name` is not empty and not a known spelling.
    """
    key = name.strip().lower()
    if not key:
        return ""
    if key not in _ALIASES:
        raise SplitError(
            f"unknown split name {name!r}; expected one of {', '.join(sorted(_ALIASES))}"
        )
    return _ALIASES[key]


def any_positive(study: Study) -> bool:
    """Stratification key: whether any of the study's labels is positive (1)."""
    return any(v == 1 for v in study.labels.values())


def _stratum_fn(
    stratify_by: Callable[[Study], Hashable] | str | None,
) -> Callable[[Study], Hashable]:
    if stratify_by is None:
        return lambda s: None
    if isinstance(stratify_by, str):
        name = stratify_by
        # A label name stratifies on "this observation is positive".
        return lambda s: s.labels.get(name) == 1
    return stratify_by


def assign_splits(
    studies: Iterable[Study],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify_by: Callable[[Study], Hashable] | str | None = None,
    keep_official: bool = True,
    patient_fallback: Literal["error", "study"] = "error",
    fixed: Mapping[PatientKey, str] | None = None,
) -> list[Study]:
    """Give every study a split, all studies of a patient in the same one.

    Args:
        studies: The records; they are not modified.
        fractions: Target shares of (train, validate, test), non-negative, summing to 1. They
            are honoured on study counts, among the studies that are assigned here (studies
            that keep an official split are not counted), as closely as whole patients allow.
        seed: Seeds the shuffle of patients; the result does not depend on input order.
        stratify_by: None; a callable Study -> hashable key (e.g. `any_positive`); or an
            observation name, meaning "that label is positive". A patient's stratum is the set
            of keys of their studies, and each stratum is split by `fractions` on its own, so
            rates such as "any positive finding" stay close across splits.
        keep_official: Keep the publisher's split (normalised) where a study has one. A
            patient's other, unsplit studies then join that split. If False, every study is
            assigned anew.
        patient_fallback: "error": a study to be assigned without a patient_id raises
            SplitError naming it. "study": such a study counts as its own patient (only
            safe when the dataset has one study per patient).
        fixed: Splits that patients already have elsewhere (``patient_splits`` of other
            prepared datasets of the same source): their studies to be assigned here follow.

    Returns:
        New `Study` records in input order, with `split` set to "train", "validate" or "test".

    Raises:
        SplitError: Bad fractions, an unknown split name, a missing patient_id, or a patient
            whose official studies already lie in two splits while others need assigning.
    """
    studies = list(studies)
    fracs = _check_fractions(fractions)
    if patient_fallback not in ("error", "study"):
        raise ValueError(f"patient_fallback must be 'error' or 'study', got {patient_fallback!r}")
    key_of = _stratum_fn(stratify_by)

    official: list[str] = [normalise_split(s.split) if keep_official else "" for s in studies]
    # Official splits of each patient, to send their unsplit studies the same way.
    patient_official: dict[PatientKey, set[str]] = defaultdict(set)
    for pkey, split in (fixed or {}).items():
        patient_official[pkey].add(normalise_split(split))
    for s, split in zip(studies, official):
        if split and s.patient_id:
            patient_official[patient_key(s)].add(split)

    result: list[str] = list(official)
    groups: dict[PatientKey, list[int]] = defaultdict(list)
    for i, s in enumerate(studies):
        if result[i]:
            continue
        if s.patient_id:
            pkey: PatientKey = patient_key(s)
        elif patient_fallback == "study":
            # "\0" cannot occur in a real patient id, so a study never meets a real patient.
            pkey = (s.dataset, f"\0study:{s.id}")
        else:
            raise SplitError(
                f"study {s.id!r} ({s.dataset}) has no patient_id, so it cannot be split at "
                "patient level; pass patient_fallback='study' to treat it as its own patient"
            )
        known = patient_official.get(pkey)
        if known:
            if len(known) > 1:
                raise SplitError(
                    f"patient {pkey[1]!r} ({pkey[0]}) has official studies in "
                    f"{', '.join(sorted(known))}; cannot place study {s.id!r} without leakage "
                    "(use keep_official=False to reassign)"
                )
            result[i] = next(iter(known))
            continue
        groups[pkey].append(i)

    # Stratum of a patient: the set of its studies' keys.
    strata: dict[frozenset[Hashable], list[PatientKey]] = defaultdict(list)
    for pkey, idx in groups.items():
        strata[frozenset(key_of(studies[i]) for i in idx)].append(pkey)

    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    for stratum in sorted(strata, key=lambda k: sorted(map(repr, k))):
        patients = sorted(strata[stratum])  # input order must not matter
        rng.shuffle(patients)
        done = [0, 0, 0]
        for pkey in patients:
            # The split furthest below its target so far. Measuring before this patient is
            # placed keeps the choice independent of the patient's size: counting the size
            # in would send large patients to the largest split, and so bias the splits'
            # make-up (e.g. positive rates) wherever size and labels correlate. Ties go to
            # the larger fraction, so a split with fraction 0 is never chosen.
            total = sum(done)
            j = max(range(3), key=lambda k: (fracs[k] * total - done[k], fracs[k], -k))
            done[j] += len(groups[pkey])
            for i in groups[pkey]:
                result[i] = SPLITS[j]
        counts.update(dict(zip(SPLITS, done)))

    n_kept = sum(1 for s in official if s)
    logger.info(
        "assign_splits: %d studies kept official splits, %d assigned from %d patients "
        "(train %d, validate %d, test %d)",
        n_kept,
        sum(counts.values()),
        len(groups),
        counts["train"],
        counts["validate"],
        counts["test"],
    )
    return [dataclasses.replace(s, split=split) for s, split in zip(studies, result)]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3:
        raise SplitError(f"fractions must be (train, validate, test), got {fractions!r}")
    if any(not math.isfinite(f) or f < 0 for f in fr) or not math.isclose(
        sum(fr), 1.0, abs_tol=1e-6
    ):
        raise SplitError(f"fractions must be non-negative and sum to 1, got {fractions!r}")
    return fr  # type: ignore[return-value]


def patient_splits(studies: Iterable[Study]) -> dict[PatientKey, str]:
    """Each patient's split, for ``assign_splits(fixed=...)``; a patient already in two splits
    is left out (``check_no_leakage`` reports it)."""
    seen: dict[PatientKey, set[str]] = defaultdict(set)
    for s in studies:
        if s.patient_id and s.split:
            seen[patient_key(s)].add(normalise_split(s.split))
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}


@dataclasses.dataclass(frozen=True)
class Leak:
    """A patient with studies in more than one split: per split, the datasets and counts."""

    source: str
    patient_id: str
    splits: dict[str, Counter[str]]  # split -> dataset -> studies

    def describe(self) -> str:
        parts = [
            f"{sp} ({', '.join(f'{ds} {n}' for ds, n in sorted(self.splits[sp].items()))})"
            for sp in SPLITS
            if sp in self.splits
        ]
        return f"patient {self.patient_id!r} ({self.source}): " + ", ".join(parts)


def leaks(studies: Iterable[Study]) -> list[Leak]:
    """Patients (by ``patient_key``: across the datasets of one source) in two or more splits.

    Split names are normalised first ("val" and "validate" are one split); studies without a
    patient_id or without a split are not checked.
    """
    seen: dict[PatientKey, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for s in studies:
        if s.patient_id and s.split:
            seen[patient_key(s)][normalise_split(s.split)][s.dataset] += 1
    return [
        Leak(source, pid, {sp: c for sp, c in splits.items()})
        for (source, pid), splits in sorted(seen.items())
        if len(splits) > 1
    ]


def check_no_leakage(studies: Iterable[Study], max_listed: int = 20) -> None:
    """Raise SplitError if any patient has studies in more than one split (``leaks``).

    Args:
        studies: The records, of one dataset or of several that share a source.
        max_listed: How many offending patients the message lists (all are counted).

    Raises:
        SplitError: Naming each offending patient with its splits, datasets and study counts.
    """
    bad = leaks(studies)
    if not bad:
        return
    lines = [f"  {leak.describe()}" for leak in bad[:max_listed]]
    more = f"\n  ... and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
    raise SplitError(
        f"{len(bad)} patient(s) have studies in more than one split:\n" + "\n".join(lines) + more
    )


def image_id(path: str) -> str:
    """The id an exclusion list names an image by: the file name without its extension
    (MIMIC's dicom_id, whether the path ends in .dcm or .jpg)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def avoided(studies: Iterable[Study], image_ids: set[str]) -> list[tuple[Study, list[str]]]:
    """Studies outside the test split that hold an image the publisher asks to keep out of
    training and validation (e.g. Chest ImaGenome's gold-standard ``images_to_avoid.csv``),
    with those images' ids."""
    found = []
    for s in studies:
        if normalise_split(s.split) == "test":
            continue
        hits = [image_id(im.path) for im in s.images if image_id(im.path) in image_ids]
        if hits:
            found.append((s, hits))
    return found


__all__ = [
    "PATIENT_SOURCES",
    "SPLITS",
    "Leak",
    "SplitError",
    "any_positive",
    "assign_splits",
    "avoided",
    "check_no_leakage",
    "image_id",
    "leaks",
    "normalise_split",
    "patient_key",
    "patient_splits",
]
