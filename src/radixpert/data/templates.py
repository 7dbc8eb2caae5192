"""Report text synthesised from the 14 CheXpert labels, for datasets that ship labels only.

    findings, impression = report_from_labels(study.labels, random.Random(study.id))

The wording varies (several phrasings per observation, negatives sometimes listed together,
sometimes one sentence each) but depends only on the labels and the generator, so a fixed seed
gives a fixed report. Positive (1) observations are stated, negative (0) ones negated,
uncertain (-1) ones hedged, unmentioned (None) ones left out. Such text is marked
`report_source="synthesised-from-labels"` by the readers: it teaches the label vocabulary, not
radiologists' prose, and must not be scored as if it were a real report.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from radixpert.vocab import OBSERVATIONS

__all__ = ["PHRASES", "report_from_labels"]


@dataclass(frozen=True)
class Phrases:
    """Wordings of one observation.

    Attributes:
        positive: sentences stating the finding.
        negative: sentences negating it.
        uncertain: hedged sentences.
        noun: the bare noun phrase, for negatives listed together ("No a, b or c."); "" when
            the negation does not read as "no <noun>" (e.g. normal heart size).
        impression: the impression phrase of a positive finding (capitalised by the caller).
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    uncertain: tuple[str, ...]
    noun: str
    impression: str


# Order of sentences in the findings: devices, lungs, pleura, heart and mediastinum, bones —
# the order most chest radiograph reports follow.
PHRASES: dict[str, Phrases] = {
    "Support Devices": Phrases(
        ("Support devices are in place.", "Lines and tubes are present in standard position.",
         "Monitoring and support devices are noted."),
        ("No support devices are seen.", "There are no lines or tubes."),
        ("Possible support device overlying the chest.",
         "A device may project over the chest."),
        "", "support devices in place",
    ),
    "Lung Opacity": Phrases(
        ("There is an opacity in the lung.", "A pulmonary opacity is present.",
         "Patchy airspace opacity is seen."),
        ("The lungs are clear.", "No focal opacity is seen."),
        ("Possible subtle lung opacity.", "There may be a faint opacity in the lung."),
        "focal opacity", "lung opacity",
    ),
    "Consolidation": Phrases(
        ("There is focal consolidation.", "Consolidation is present."),
        ("There is no focal consolidation.", "No consolidation is seen."),
        ("Possible early consolidation.", "Consolidation cannot be excluded."),
        "focal consolidation", "consolidation",
    ),
    "Pneumonia": Phrases(
        ("Findings are consistent with pneumonia.", "There is pneumonia."),
        ("No evidence of pneumonia.", "There is no pneumonia."),
        ("Pneumonia is possible.", "Infection cannot be excluded."),
        "pneumonia", "pneumonia",
    ),
    "Atelectasis": Phrases(
        ("There is bibasilar atelectasis.", "Atelectasis is present.",
         "Linear atelectasis is seen at the lung base."),
        ("No atelectasis.", "There is no atelectasis."),
        ("Possible mild atelectasis.", "Opacity likely reflects atelectasis."),
        "atelectasis", "atelectasis",
    ),
    "Edema": Phrases(
        ("There is pulmonary edema.", "Interstitial edema is present.",
         "Findings are consistent with pulmonary edema."),
        ("There is no pulmonary edema.", "No pulmonary edema."),
        ("Possible mild pulmonary edema.", "Mild edema cannot be excluded."),
        "pulmonary edema", "pulmonary edema",
    ),
    "Lung Lesion": Phrases(
        ("There is a pulmonary nodule.", "A lung lesion is seen.",
         "A mass is present in the lung."),
        ("No pulmonary nodule or mass.", "No lung lesion is seen."),
        ("Possible pulmonary nodule.", "A nodular density may be present."),
        "pulmonary nodule", "lung lesion",
    ),
    "Pleural Effusion": Phrases(
        ("There is a pleural effusion.", "A pleural effusion is present.",
         "Small pleural effusion is seen."),
        ("There is no pleural effusion.", "No pleural effusion."),
        ("Possible small pleural effusion.", "A trace pleural effusion cannot be excluded."),
        "pleural effusion", "pleural effusion",
    ),
    "Pneumothorax": Phrases(
        ("There is a pneumothorax.", "A pneumothorax is present."),
        ("There is no pneumothorax.", "No pneumothorax is seen."),
        ("Possible small pneumothorax.", "A tiny pneumothorax cannot be excluded."),
        "pneumothorax", "pneumothorax",
    ),
    "Pleural Other": Phrases(
        ("There is pleural thickening.", "Pleural scarring is present."),
        ("No pleural thickening.", "No other pleural abnormality."),
        ("Possible pleural thickening.", "There may be minimal pleural thickening."),
        "pleural thickening", "pleural abnormality",
    ),
    "Enlarged Cardiomediastinum": Phrases(
        ("The cardiomediastinal silhouette is enlarged.", "The mediastinum is widened."),
        ("The cardiomediastinal silhouette is within normal limits.",
         "Normal mediastinal contours."),
        ("The mediastinum may be mildly widened.",
         "Possible enlargement of the cardiomediastinal silhouette."),
        "", "enlarged cardiomediastinum",
    ),
    "Cardiomegaly": Phrases(
        ("The heart is enlarged.", "There is cardiomegaly.", "Moderate cardiomegaly."),
        ("The heart size is normal.", "Heart size is within normal limits."),
        ("The heart may be mildly enlarged.", "Borderline cardiomegaly."),
        "", "cardiomegaly",
    ),
    "Fracture": Phrases(
        ("There is a rib fracture.", "A fracture is seen.", "An osseous fracture is present."),
        ("No acute fracture.", "No acute osseous abnormality."),
        ("Possible rib fracture.", "A fracture cannot be excluded."),
        "acute fracture", "fracture",
    ),
}  # fmt: skip

_NORMAL_FINDINGS = (
    "The lungs are clear. The heart size is normal. No pleural effusion or pneumothorax.",
    "Heart size and mediastinal contours are normal. The lungs are clear.",
    "No acute cardiopulmonary abnormality. Lungs are clear and the heart is normal in size.",
)
_NORMAL_IMPRESSION = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
)
_NO_POSITIVE_IMPRESSION = (
    "No acute cardiopulmonary process.",
    "No acute findings.",
)


def _list(nouns: list[str], conjunction: str = "or") -> str:
    if len(nouns) == 1:
        return nouns[0]
    return ", ".join(nouns[:-1]) + f" {conjunction} " + nouns[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def report_from_labels(labels: Mapping[str, int | None], rng: random.Random) -> tuple[str, str]:
    """Findings and impression text for a set of CheXpert labels.

    Args:
        labels: observation -> 1 (positive), 0 (negative), -1 (uncertain), None (not
            mentioned); missing observations count as not mentioned. Unknown names or values
            raise ValueError.
        rng: the source of wording choices; seed it per study for reproducible text.

    Returns:
        `(findings, impression)`; both "" when no observation is mentioned (nothing is known,
        so nothing is claimed — not even a normal study).
    """
    for name, value in labels.items():
        if name not in OBSERVATIONS:
            raise ValueError(f"labels: unknown observation {name!r}")
        if value not in (1, 0, -1, None) or isinstance(value, bool):
            raise ValueError(f"labels[{name!r}] = {value!r}, expected 1, 0, -1 or None")
    mentioned = {o: v for o, v in labels.items() if v is not None and o != "No Finding"}
    normal = labels.get("No Finding") == 1
    if not mentioned:
        if normal:
            return rng.choice(_NORMAL_FINDINGS), rng.choice(_NORMAL_IMPRESSION)
        return "", ""

    sentences: list[str] = []
    listable: list[str] = []  # negatives that may be listed together
    positives: list[str] = []
    uncertain: list[str] = []
    for obs, ph in PHRASES.items():
        value = mentioned.get(obs)
        if value == 1:
            sentences.append(rng.choice(ph.positive))
            positives.append(ph.impression)
        elif value == -1:
            sentences.append(rng.choice(ph.uncertain))
            uncertain.append(ph.impression)
        elif value == 0:
            if ph.noun and rng.random() < 0.6:
                listable.append(ph.noun)
            else:
                sentences.append(rng.choice(ph.negative))
    if listable:
        rng.shuffle(listable)
        template = rng.choice(("There is no {}.", "No {}.", "No {} is seen."))
        sentences.append(template.format(_list(listable)))
    findings = " ".join(sentences)

    parts = []
    if positives:
        parts.append(_sentence(_list(positives, "and")))
    if uncertain:
        hedge = rng.choice(("possible {}", "cannot exclude {}", "questionable {}"))
        parts.append(_sentence(hedge.format(_list(uncertain))))
    if not parts:
        parts.append(rng.choice(_NO_POSITIVE_IMPRESSION))
    return findings, " ".join(parts)
