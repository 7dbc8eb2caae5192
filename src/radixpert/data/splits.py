"""Train/validate/test splits at patient level, keeping the publisher's split where given.

    studies = assign_splits(studies, fractions=(0.8, 0.1, 0.1), seed=0, stratify_by=any_positive)
    check_no_leakage(studies)   # raises SplitError naming patients found in two splits

Split names are canonical: "train", "validate" and "test" (MIMIC-CXR's names). Publishers'
spellings are read as follows (case-insensitive): "train"/"training" -> "train";
"validate"/"validation"/"valid"/"val"/"dev" -> "validate"; "test"/"testing" -> "test".
Any other non-empty name is an error, so a typo never becomes a fourth split.

Patients are identified by (dataset, patient_id), since ids of different datasets may clash.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
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
    for s, split in zip(studies, official):
        if split and s.patient_id:
            patient_official[(s.dataset, s.patient_id)].add(split)

    result: list[str] = list(official)
    groups: dict[PatientKey, list[int]] = defaultdict(list)
    for i, s in enumerate(studies):
        if result[i]:
            continue
        if s.patient_id:
            pkey: PatientKey = (s.dataset, s.patient_id)
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


def check_no_leakage(studies: Iterable[Study], max_listed: int = 20) -> None:
    """Raise SplitError if any patient has studies in more than one split.

    Split names are normalised first ("val" and "validate" are one split); studies without
    a patient_id or without a split are not checked.

    Args:
        studies: The records.
        max_listed: How many offending patients the message lists (all are counted).

    Raises:
        SplitError: Naming each offending patient with its splits and study counts.
    """
    seen: dict[PatientKey, Counter[str]] = defaultdict(Counter)
    for s in studies:
        if s.patient_id and s.split:
            seen[(s.dataset, s.patient_id)][normalise_split(s.split)] += 1
    bad = sorted((k, c) for k, c in seen.items() if len(c) > 1)
    if not bad:
        return
    lines = [
        f"  patient {pid!r} ({ds}): " + ", ".join(f"{sp} ({c[sp]})" for sp in SPLITS if sp in c)
        for (ds, pid), c in bad[:max_listed]
    ]
    more = f"\n  ... and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
    raise SplitError(
        f"{len(bad)} patient(s) have studies in more than one split:\n" + "\n".join(lines) + more
    )


__all__ = [
    "SPLITS",
    "SplitError",
    "any_positive",
    "assign_splits",
    "check_no_leakage",
    "normalise_split",
]
