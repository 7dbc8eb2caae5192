"""A rule-based CheXpert-style labeler: 14 observations from chest X-ray report text.

This is radixpert's own labeler, written from the observation definitions and labelling
conventions of the CheXpert labeler (Irvin et al., 2019) and NegBio. It is not CheXbert
and not the CheXpert labeler itself: it uses regular expressions instead of a dependency
parse, so it needs no model, no Java and no NLP package, and labels about 13,000 reports of
IU X-ray length (270 characters) a second on one core, about 4,000 of 800 characters.

Each report gets, per observation, 1 (positive), 0 (negative), -1 (uncertain) or None (not
mentioned). How a label is reached:

1. Normalisation: lower case; de-identification tokens (MIMIC-CXR ``___``, IU X-ray
   ``XXXX``) become a neutral filler; ``x-XXXX`` reads ``x-ray``; "no change in X" and
   "not changed" read "unchanged X" (X is still there, so CheXpert calls it positive);
   "and/or" and "/" read "or".
2. Clauses: sentences end at ``.`` (not inside numbers), ``;``, ``!``, ``?``, blank lines and
   section headers such as ``IMPRESSION:``; within a sentence, "but", "however", "although",
   "which", "except", "with", "there is", "and the" ... start a new clause. Negation and
   uncertainty never reach across a clause.
3. Mentions: each observation has phrase patterns (synonyms, plurals, abbreviations such as
   "ET tube" and "PICC"). Laterality and location words ("right-sided", "bilateral",
   "left basilar") are not part of the patterns, so they neither block nor trigger anything.
4. Each mention is classified as CheXpert does, in this order: an uncertainty that looks like
   a negation ("cannot exclude", "not excluded", "no new") -> -1; a negation ("no",
   "without", "free of", "negative for", "no evidence of", "resolved", "removed", "not
   seen") -> 0; an uncertainty ("possible", "may", "likely", "suspicious for", "suggestive
   of", "versus", "X or Y" naming two different observations, "borderline") -> -1; else 1.
   A trigger before the mention reaches it through lists ("no pneumothorax, effusion, or
   consolidation"); when several triggers precede a mention the nearest decides ("no
   effusion, possible pneumonia": pneumonia is uncertain). A trigger after the mention
   ("pneumothorax has resolved", "effusion cannot be excluded") reaches back over subject
   lists but not over another verb.
   A negation before the mention does not reach past a verb and a comma ("no pneumothorax
   is seen, a small effusion is present") nor past a comma followed by a size, severity or
   course word when no "or" / "and" makes a list of it ("no pneumothorax, small left
   effusion": the effusion is positive; "no consolidation, large effusion, or pneumothorax":
   negative); a trigger
   after the mention does not reach back over ", and" to another subject of a singular verb
   ("small effusion, and pneumothorax has resolved": the effusion is positive).
5. Size and contour phrases ("heart size", "cardiac silhouette", "cardiomediastinal
   silhouette", "mediastinum") are labelled from their predicate: enlarged / widened /
   prominent -> 1, normal / unremarkable / within normal limits / not enlarged -> 0,
   borderline / obscured / possibly enlarged -> -1, and - the CheXpert convention - stable /
   unchanged / similar to prior -> -1. Without such a word they are not a mention ("leads
   overlie the cardiac silhouette").
6. CheXpert conventions kept: pulmonary vascular congestion, vascular prominence and
   indistinctness are uncertain Edema; "CHF" / "heart failure" is Edema and adds an
   uncertain Cardiomegaly (a positive one elsewhere still wins); "history of X" is negative;
   "lungs are clear" is a negative Lung Opacity; scarring is Lung Opacity; pleural
   thickening / plaque / scar is Pleural Other; a calcified nodule is a granuloma (not a
   Lung Lesion); pericardial effusion is not a Pleural Effusion.
7. One label per observation: positive beats uncertain beats negative (CheXpert's rule).
8. No Finding is 1 when no observation other than Support Devices is positive or uncertain,
   and no other abnormality is positive or uncertain either (emphysema, granuloma, scoliosis,
   degenerative change, hernia, ... - CheXpert's "no finding" exclusion list, our own
   phrasing); otherwise it is None (never 0 and never -1), as in CheXpert's label files.
   One deliberate difference: an empty report (no letters) gets no label at all, where
   CheXpert's labeler would call it No Finding.

Limits: the rules see words, not syntax, so some constructions are mislabelled (in "no
consolidation, edema is present" the negation reaches the edema, and in "no pneumothorax,
small effusion and mild edema" the effusion); the choice of section (findings /
impression) is the caller's. See docs/labeler.md for the agreement
with human MeSH coding of the IU X-ray reports.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from radixpert.vocab import OBSERVATIONS

log = logging.getLogger(__name__)

LABELER_VERSION = "1.1"
LABELER_NAME = f"radixpert rule-based CheXpert-style labeler v{LABELER_VERSION} (not CheXbert)"

# The 14 observations in CheXpert's column order; one definition shared with the F1 scoring.

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

_NF, _EC, _CM, _LO, _LL, _ED, _CO, _PN, _AT, _PX, _PE, _PO, _FR, _SD = range(14)
_OTHER = 14  # an abnormality outside the 13 observations: only blocks No Finding

# Mention kinds.
_FIND = "find"  # a finding: negation and uncertainty rules decide its label
_ATTR = "attr"  # a size / contour phrase: its predicate decides (step 5 above)
_CONG = "cong"  # vascular congestion and the like: a positive reading counts as uncertain
_CHF = "chf"  # heart failure: Edema, plus uncertain Cardiomegaly (CheXpert's exception)
_CLEAR = "clear"  # "lungs are clear": a negative Lung Opacity


def _split_top(pattern: str) -> list[str]:
    """Split a regex at its top-level ``|`` (outside groups and character classes)."""
    parts, depth, in_class, escaped, start = [], 0, False, False, 0
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
    parts.append(pattern[start:])
    return parts


def _expand(phrase: str) -> list[str]:
    """Unfold a leading ``(?:a|b)`` or ``(?:a|b)?`` group so each phrase starts with a letter.

    ``(?:nerve |spinal cord )?stimulator`` -> ``nerve stimulator``, ``spinal cord
    stimulator``, ``stimulator``.
    """
    if not phrase.startswith("(?:"):
        return [phrase] if phrase else []
    depth, close = 0, len(phrase)
    for k, ch in enumerate(phrase):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            close = k
            break
    inner, rest = phrase[3:close], phrase[close + 1 :]
    heads = _split_top(inner)
    if rest.startswith("?"):
        rest = rest[1:]
        heads.append("")
    return [p for head in heads for p in _expand(head + rest)]


def _alternation(
    table: Sequence[tuple[object, Sequence[str]]],
    info: dict[str, Any],
    prefix: str,
) -> str:
    """One regex alternation of all phrases in `table`, grouped by their first letter.

    Each phrase ends with an empty named group, so `match.lastgroup` names the table row that
    matched (`info[name]` is the row's key). Phrases that start with a plain letter are
    grouped under that letter: Python's regex engine skips an alternative whose first letter
    does not fit in one step, so this scans several times faster than a flat alternation.
    Within a letter the table order is kept, so where two phrases could match at the same
    place the earlier one wins.
    """
    by_letter: dict[str, list[str]] = {}
    other: list[str] = []
    n = 0
    for key, items in table:
        for item in items:
            for phrase in (p for alt in _split_top(item) for p in _expand(alt)):
                name = f"{prefix}{n}"
                n += 1
                info[name] = key
                tagged = f"{phrase}(?P<{name}>)"
                first = phrase[0]
                if first.isalpha() and (len(phrase) == 1 or phrase[1] not in "?*+{"):
                    by_letter.setdefault(first, []).append(tagged[1:])
                else:
                    other.append(tagged)
    if other:
        # Not needed by the tables below; kept correct (tried first) should one be added.
        log.debug("%d phrases do not start with a plain letter", len(other))
    parts = other + [f"{c}(?:{'|'.join(alts)})" for c, alts in sorted(by_letter.items())]
    return "|".join(parts)


# ---------------------------------------------------------------------------------------
# Mention phrases: (observations, kind) -> phrases. Where two phrases could match at the
# same place the earlier one wins, so longer and more specific phrases come first. A phrase
# should start with a plain letter (see `_alternation`).
# ---------------------------------------------------------------------------------------
_MENTIONS: list[tuple[tuple[tuple[int, ...], str], tuple[str, ...]]] = [
    # Things that look like a mention of one observation but are something else.
    (
        ((_OTHER,), _FIND),
        (
            r"pericardial effusions?",
            r"calcified (?:\w+ )?(?:nodul\w*|granulom\w*|lymph nodes?|densit\w*)",
            r"vertebral (?:body )?(?:collapse|fractures?)",
            r"compression (?:collapse|fractures?|deformit\w*)",
            r"subcutaneous emphysema",
            r"surgical emphysema",
            r"soft tissue emphysema",
            r"pneumomediastinum|pneumoperitoneum|pneumopericardium",
            r"breast (?:implants?|prosthes[ie]s)",
            # an old granulomatous infection is a granuloma, not a pneumonia
            r"granulomatous (?:\w+ )?infection",
            r"tuberculous (?:\w+ )?infection",
            r"(?:prior|old|remote|previous|healed|past) (?:\w+ )?infection",
        ),
    ),
    # Pleural Other, before Lung Opacity ("pleural scarring") and Pleural Effusion.
    (
        ((_PO,), _FIND),
        (
            r"biapical (?:pleural )?(?:thickening|caps?)",
            r"apical (?:pleural )?(?:thickening|caps?)",
            r"pleural(?: and parenchymal| parenchymal)? (?:thickening|scar\w*|plaques?|"
            r"calcifications?|fibrosis|reaction|caps?)",
            r"pleuro ?parenchymal (?:scar\w*|thickening|changes?|densit\w*|opacit\w*)",
            r"thickening of the (?:\w+ )?pleura",
            r"fibrothorax",
        ),
    ),
    # Enlarged Cardiomediastinum.
    (
        ((_EC,), _FIND),
        (
            r"widen(?:ed|ing) (?:of )?(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al "
            r"(?:silhouette|contours?|shadow))",
            r"enlarge(?:d|ment) (?:of )?(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al "
            r"(?:silhouette|contours?|shadow))",
            r"cardiomediastinal (?:widening|enlargement)",
            r"mediastinal (?:widening|enlargement)",
        ),
    ),
    (
        ((_EC,), _ATTR),
        (
            r"cardiomediastin(?:al|um)(?: (?:silhouettes?|contours?|shadows?|size|structures|"
            r"outlines?|width|borders?|configuration))?",
            r"mediastin(?:um|al (?:silhouettes?|contours?|configuration|shadows?|structures|"
            r"outlines?|width|size|borders?))",
            r"pericardial silhouette",
        ),
    ),
    # Cardiomegaly.
    (
        ((_CM,), _FIND),
        (
            r"cardiomegal\w*",
            r"cardiac enlargement",
            r"heart enlargement",
            r"enlarge(?:d|ment of the) (?:heart|cardiac (?:silhouette|shadow|size))",
        ),
    ),
    (
        ((_CM,), _ATTR),
        (
            r"heart size",
            r"size of the heart",
            r"cardiac (?:size|silhouettes?|shadow|contours?|outline|diameter)",
            r"heart (?:silhouette|shadow|contours?)",
            r"cardiothoracic ratio",
            r"cardiac(?= (?:and|,) (?:mediastinal|hilar))",
            r"heart(?! (?:failure|disease|rate|valves?|borders?|murmur|surgery|attack))",
        ),
    ),
    # Edema.
    (((_ED,), _CHF), (r"congestive heart failure", r"heart failure", r"chf")),
    (
        ((_ED,), _CONG),
        (
            r"pulmonary (?:vascular|venous) (?:congestion|engorgement|prominence|"
            r"redistribution|indistinctness)",
            r"central (?:vascular|venous) (?:congestion|engorgement|prominence|redistribution)",
            r"vascular (?:congestion|engorgement|prominence|redistribution|indistinctness)",
            r"venous (?:congestion|engorgement|prominence|redistribution)",
            r"pulmonary (?:venous )?congestion",
            r"pulmonary venous hypertension",
            r"congestive changes",
            r"indistinct(?:ness)?(?: of the)? (?:pulmonary )?vascul\w*",
            r"cephalization",
            r"fluid overload",
            r"volume overload",
            r"(?:mild|moderate|severe|minimal|slight|early|central|interstitial) congestion",
            r"(?:increased|prominent|prominence of the|engorged|engorgement of the|indistinct|"
            r"cephalized) (?:\w+ )?(?:vascularity|vasculature|vascular markings|vessels)",
        ),
    ),
    (((_ED,), _FIND), (r"edema(?:tous)?", r"oedema", r"kerley b lines", r"septal lines")),
    # Lung Lesion (before Lung Opacity: "nodular opacity" is both).
    (
        ((_LL, _LO), _FIND),
        (r"nodular (?:\w+ )?(?:opacit\w*|densit\w*|infiltrat\w*|airspace disease)",),
    ),
    (
        ((_LL,), _FIND),
        (
            r"nodul(?:e|es|ar lesions?|arity)",
            r"micronodul(?:e|es)",
            r"mass(?:es)?(?! effect)",
            r"tumou?rs?",
            r"neoplasm\w*",
            r"carcinoma\w*",
            r"malignan\w*",
            r"lumps?",
            r"(?:cavitary|cavitating|lung|pulmonary|parenchymal|spiculated|focal|mass|"
            r"space occupying) lesions?",
        ),
    ),
    # Lung Opacity.
    (
        ((_LO,), _FIND),
        (
            r"opaci\w*",
            r"infiltrat\w*",
            r"air ?space (?:disease|process|densit\w*)",
            r"(?:increased|patchy|hazy|streaky|linear|ill defined|airspace|parenchymal|"
            r"retrocardiac|basilar|bibasilar|alveolar|interstitial|focal) densit(?:y|ies)",
            r"interstitial (?:markings?|pattern|prominence|thickening|process|disease|changes?|"
            r"abnormalit\w*|lung disease|fibrosis)",
            r"(?:increased|prominent|coarse(?:ned)?|accentuated) (?:lung |pulmonary )?"
            r"interstitial markings?",
            r"reticula\w*",
            r"scar(?:s|ring|red)?",
            r"peribronchial (?:thickening|cuffing)",
            r"bronchial wall thickening",
            r"ground glass",
            r"haziness",
            r"hazy",
        ),
    ),
    (
        ((_LO,), _CLEAR),
        (
            r"clear lungs?",
            r"lungs? (?:(?:fields?|parenchyma|bases|are|is|appear|appears|remain|remains|now|"
            r"otherwise|grossly|essentially|largely|relatively|both|again|well|expanded|"
            r"inflated|and|bilaterally|fully)[ ,]+){0,5}clear",
        ),
    ),
    # Parenchymal findings.
    (((_CO,), _FIND), (r"consolidat\w*",)),
    (
        ((_PN,), _FIND),
        (r"pneumoni(?:a|as|tis)", r"bronchopneumonia", r"infectio\w*", r"infected"),
    ),
    (
        ((_AT,), _FIND),
        (
            r"atelecta\w*",
            r"(?:lung|lobar|lobe|segmental|subsegmental) collapse",
            r"collapsed? (?:of )?(?:the )?(?:\w+ ){0,2}(?:lung|lobe|segment)",
        ),
    ),
    # Pleura.
    (((_PX, _PE), _FIND), (r"hydro ?pneumothora\w*",)),
    (((_PX,), _FIND), (r"pneumothora(?:x|ces|xes)", r"ptx")),
    (
        ((_PE,), _FIND),
        (r"effusions?", r"pleural fluid", r"hydrothorax", r"fluid in the (?:\w+ )?pleural"),
    ),
    # Fracture.
    (((_FR,), _FIND), (r"fractur\w*",)),
    # Support Devices.
    (
        ((_SD,), _FIND),
        (
            r"tubes?",
            r"tubing",
            r"ett",
            r"picc\w*",
            r"catheters?",
            r"cath",
            r"pacemakers?",
            r"pacers?",
            r"pacing (?:wires?|leads?)",
            r"icds?",
            r"aicds?",
            r"defibrillators?",
            r"(?:transvenous|epicardial|pacer|pacemaker|ventricular|atrial|biventricular|"
            r"cardiac) leads?",
            r"loop recorder",
            r"sternotomy(?: wires?| sutures?)?",
            r"sternal (?:wires?|sutures?|cerclage)",
            r"wires?",
            r"guidewires?",
            r"stents?",
            r"endograft",
            r"ivc filter",
            r"vena cava filter",
            r"hardware",
            r"prosthes[ie]s",
            r"arthroplast\w*",
            r"screws?",
            r"(?:fixation|surgical|orthopedic) (?:plates?|rods?)",
            r"(?:vp|ventriculoperitoneal) shunt",
            r"drains?",
            r"devices?",
            r"lvad",
            r"impella",
            r"balloon pump",
            r"iabp",
            r"ecmo",
            r"coils?",
            r"mediport",
            r"port a cath",
            r"portacath",
            r"ports?",
            r"(?:central|venous|arterial|midline|hickman|dialysis|swan ganz|ij|subclavian|"
            r"jugular|femoral) (?:venous )?lines?",
            r"line tips?",
            r"lines and tubes",
            r"(?:prosthetic|mechanical|bioprosthetic|artificial) (?:\w+ )?valves?",
            r"valve (?:replacement|prosthes[ie]s)",
            r"avr|mvr|tavr|tavi",
            r"annuloplasty ring",
            r"(?:nerve |spinal cord )?stimulator",
            r"electrodes?",
            r"generator",
            r"occluder",
            r"(?:ekg|ecg|monitor|monitoring|telemetry) (?:leads?|wires?|pads?)",
        ),
    ),
    # Abnormalities outside the 13 observations (they keep No Finding blank).
    (
        ((_OTHER,), _FIND),
        (
            r"emphysema\w*",
            r"copd",
            r"chronic obstructive",
            r"obstructive (?:lung|airway)s? disease",
            r"hyper ?(?:inflat|expan|aerat|lucen)\w*",
            r"bullae|bullous|blebs?",
            r"granulom\w*",
            r"calcifi\w*|calcific",
            r"atheroscl\w*|atheromatous",
            r"tortu\w*|ectatic|ectasia|unfold\w*",
            r"aneurysm\w*",
            r"dilated aorta|aortic dilatation",
            r"scoliosis|dextroscoliosis|levoscoliosis|kyphos\w*|kyphotic|lordosis",
            r"dextrocurvature|levocurvature|curvature",
            r"degenerat\w*|spondylos\w*|osteophyt\w*|spurring",
            r"osteopeni\w*|osteoporo\w*|dish",
            r"hernia\w*|eventration",
            r"(?:elevation|elevated)(?: of the)?(?: \w+)? (?:hemi)?diaphragms?",
            r"(?:hemi)?diaphragms? (?:is |are |remains? )?elevated",
            r"blunt\w*",
            r"lymphadenopathy|adenopathy",
            r"bronchiectasis",
            r"fibros\w*|fibrotic",
            r"cysts?|cystic",
            r"cavit\w*",
            r"metasta\w*",
            r"deformit\w*",
            r"hematoma|hemorrhage|contusion",
            r"aspiration",
            r"bronchitis|asthma",
            r"airways? disease",
            r"pulmonary (?:arterial )?hypertension",
            r"enlarged pulmonary arter\w*",
            r"tuberculo\w*",
            r"sarcoid\w*",
            r"dislocat\w*",
            r"pectus",
            r"lytic",
            r"sclerotic lesions?",
            r"volume loss",
            r"densit(?:y|ies)",
            r"(?:prominent|enlarged|increased|coarse(?:ned)?) (?:bronchovascular|lung|pulmonary|"
            r"vascular) markings?",
            r"hil(?:ar|um) (?:prominence|enlargement)",
        ),
    ),
]

_MENTION_INFO: dict[str, Any] = {}
# \b on both sides: a mention is whole words ("tube" is not in "tuberculosis").
_MENTION_RE = re.compile(r"\b(?:" + _alternation(_MENTIONS, _MENTION_INFO, "m") + r")\b")

# ---------------------------------------------------------------------------------------
# Triggers: (kind, reach) -> phrases. Kinds: pneg = an uncertainty that contains a negation
# word (checked first), neg = negation, unc = uncertainty. Reach:
#   pre    before the mention, through lists ("no pneumothorax, effusion, or consolidation")
#   short  before the mention, a few words and no comma ("resolved left effusion")
#   post   after the mention ("pneumonia cannot be excluded")
#   both   post, or short
#   near   a few words either side, no comma ("atelectasis versus consolidation")
#   copre  pre; after the mention only behind a verb and at the end of the clause
#          ("pneumonia is likely."), not "opacity is likely atelectasis"
#   cpost  after the mention, behind a verb ("engorgement appears normal")
# ---------------------------------------------------------------------------------------
_TRIGGERS: list[tuple[tuple[str, str], tuple[str, ...]]] = [
    (
        ("pneg", "post"),
        (
            r"(?:cannot|can not|can't|could not|may not|not) (?:be )?(?:entirely |completely |"
            r"totally |definitely |fully |confidently )?(?:excluded|ruled out)",
        ),
    ),
    (
        ("pneg", "pre"),
        (
            r"(?:cannot|can not|can't|could not|unable to|difficult to|not possible to|hard to) "
            r"(?:entirely |completely |totally |definitely |fully )?(?:exclude|rule out)",
            r"no new",
            r"without new",
            r"no evidence to (?:exclude|rule out)",
            r"not (?:clear|certain|sure)",
            r"unclear|uncertain",
        ),
    ),
    (
        ("unc", "both"),
        (
            r"not (?:well |clearly )?(?:visualized|appreciated|evaluated|assessed)",
            r"not (?:well|clearly) seen",
            r"(?:poorly|incompletely) (?:seen|visualized|evaluated|assessed)",
            r"obscured",
            r"(?:cannot|can not|could not) be (?:assessed|evaluated)",
            r"(?:may|might|could|can) (?:also )?(?:be|have been) (?:present|seen|noted|there|"
            r"developing|forming)",
            r"(?:may|might|can|could) not be (?:demonstrated|seen|visible|evident|apparent|"
            r"detected|identified)",
        ),
    ),
    (("unc", "near"), (r"versus|vs",)),
    (
        ("neg", "both"),
        (
            r"resolved|cleared|removed|withdrawn|discontinued|excluded|ruled out|absent",
            r"(?:not|no longer) (?:(?:clearly|definitely|convincingly|currently|now|again) )?"
            r"(?:seen|identified|demonstrated|present|evident|noted|detected|visible|apparent|"
            r"identifiable|shown|appreciable)",
        ),
    ),
    (
        ("neg", "post"),
        (r"within (?:the )?(?:normal limits|limits of normal|normal range)",),
    ),
    (("neg", "cpost"), (r"normal|unremarkable",)),
    (
        ("neg", "short"),
        (r"resolution|interval resolution|removal|interval removal|clearing|not",),
    ),
    (
        ("neg", "pre"),
        (
            r"no|without|w o|negative for|free of|free from|absence of|lack of|lacks|lacking",
            r"rule out|r o|to exclude|exclude|excluding|never|nor|neither|rather than",
            r"instead of|disappearance of|clear of|resolution of|removal of|clearing of",
            # CheXpert reads a past finding as not present now
            r"history of|hx of|drainage of",
        ),
    ),
    (
        ("unc", "copre"),
        (
            r"possibl[ey]|probabl[ey]|likely|presumabl[ey]|presumed|presumptive",
            r"suspect(?:ed)?|suspicious (?:for|of)|suspicion|concern(?:ing)?|worrisome",
            r"question(?:able|ably|ed)?",
            r"suggest(?<!to suggest)(?:s|ive|ing|ed|ion)?",
            r"may|might|could|can represent|would",
            r"differential|ddx|borderline|equivocal|indeterminate|compatible with",
            r"favou?r(?:ed|s)?|consider(?:ed)?",
            r"raises? (?:the )?(?:possibility|question|concern)",
            r"(?:clinical(?:ly)? )?correlat\w* (?:clinically )?(?:for|with)",
            r"(?:evaluat\w*|assess\w*) for",
        ),
    ),
]

_TRIGGER_INFO: dict[str, Any] = {}
_TRIGGER_RE = re.compile(r"\b(?:" + _alternation(_TRIGGERS, _TRIGGER_INFO, "t") + r")(?![a-z])")

# Between a mention and a trigger after it: a verb of its own means the trigger belongs to
# another statement ("effusion is small, and pneumothorax has resolved").
_VERB_IN_GAP = re.compile(
    r"\b(?:is|are|was|were|be|been|has|have|had|remains?|appears?|seems?|shows?|"
    r"demonstrates?|persists?|represents?|measur\w+)\b"
)
# ... except the verb (and adverbs) the trigger itself leans on ("has since resolved").
_GAP_TAIL = re.compile(
    r"(?:\b(?:is|are|was|were|has|have|had|been|be|remains?|appears?|seems?|now|since|"
    r"completely|nearly|essentially|entirely|largely|almost|totally|also|again|definitely|"
    r"convincingly|currently|still|grossly|otherwise|overall|radiographically|more|most|less|"
    r"quite|very)\s+)+$"
)
_COPULA = re.compile(r"\b(?:is|are|was|were|been|be|remains?|appears?|seems?)\b")
_CLAUSE_END = re.compile(r"\s*(?:[,.;:!?)]|$)")
# A verb and then a comma between a trigger and a mention before it: a new statement
# ("no pneumothorax is seen, a small effusion is present").
_PRE_BREAK = re.compile(r"\b(?:is|are|was|were|seen|identified|noted|present|demonstrated)\b[^,]*,")
# A comma and then a size, severity or course word: a new finding, not one more item of the
# negated list ("no pneumothorax, small left effusion"; "no edema, stable cardiomegaly") -
# unless a conjunction makes it a list ("no consolidation, large effusion, or pneumothorax").
_NEW_ITEM = re.compile(
    r",\s*(?:(?:and|with|a|an)\s+)?(?:small|smaller|moderate|moderately|large|larger|mild|"
    r"mildly|minimal|trace|tiny|severe|severely|new|increased|increasing|decreased|decreasing|"
    r"persistent|persisting|stable|unchanged|worsening|worsened|improving|improved|residual|"
    r"loculated|layering)\b"
)
# ", and" before a subject whose verb is singular: the trigger after it is about that subject
# alone ("small effusion, and pneumothorax has resolved").
_LIST_WORD = re.compile(r"\b(?:or|and|nor)\b")
_AND_SUBJECT = re.compile(r",\s*and\b")
_SINGULAR = re.compile(r"\b(?:is|was|has|remains|appears|seems)\b")
_PRE_MAX, _SHORT_MAX, _POST_MAX = 160, 30, 80
_TRIGGER_MAX = 80  # longer than any trigger phrase
_BEFORE = {"pre", "copre", "short", "both", "near"}  # reaches that look forward
_LONG_BEFORE = {"pre", "copre"}
_AFTER = {"post", "both", "cpost", "copre", "near"}  # reaches that look back

# "X or Y" (and "versus") between two mentions of different observations: both uncertain.
_OR_GAP = re.compile(r"[\s,]*(?:[a-z0-9]+[\s,]+){0,3}?(?:or|versus|vs)\s+(?:[a-z0-9]+\s+){0,3}$")

# ---------------------------------------------------------------------------------------
# Clause boundaries.
# ---------------------------------------------------------------------------------------
# Both kinds end a clause for negation and uncertainty; the names only document them.
_BOUNDARIES: list[tuple[str, tuple[str, ...]]] = [
    (
        "hard",
        (
            r"(?:findings|impression|indication|history|comparison|technique|examination|exam|"
            r"conclusion|recommendations?|clinical information|reason for exam|notification)"
            r"\s*:",
        ),
    ),
    (
        "soft",
        (
            r"but|however|although|though|whereas|while|yet|except|apart from|aside from",
            r"other than|besides|which|where|otherwise|in addition|additionally",
            r"with(?<!compatible with)(?<!consistent with)",
            r"there (?:is|are|was|were|has|have|appears?|remains?|may|might|could|seems?)",
            r"and(?= (?:the|a|an|this|these|it|its|is|are|there|mild|mildly|moderate|moderately|"
            r"severe|severely|small|large|stable|persistent|unchanged|increased|increasing|"
            r"decreased|decreasing|improved|improving|worsened|worsening|interval|minimal|trace|"
            r"slight|slightly|marked|markedly|extensive)\b)",
        ),
    ),
]
_BOUNDARY_RE = re.compile(
    r"\.(?!\d)|(?<!\d)\.|[;!?]|\b(?:" + _alternation(_BOUNDARIES, {}, "b") + r")(?![a-z])"
)

# ---------------------------------------------------------------------------------------
# Predicate cues of size / contour phrases.
# ---------------------------------------------------------------------------------------
_CUE_RE = re.compile(
    r"\b(?:(?P<cneg>not (?:\w+ )?(?:enlarged|widened|increased|large|prominent|dilated)"
    r"|normal\w*|unremarkable|wnl|small|negative|within (?:the )?(?:upper )?(?:limits|range))"
    r"|(?P<cunc>borderline|equivocal|questionab\w*|possibl\w*|probabl\w*|may|might|could"
    r"|likely|suspect\w*|difficult to (?:assess|evaluate)|obscur\w*|exaggerat\w*|accentuat\w*"
    r"|magnif\w*|(?:not|poorly|incompletely) (?:well )?(?:assessed|evaluated|visualized|seen)"
    r"|cannot be (?:assessed|evaluated))"
    r"|(?P<cpos>enlarg\w*|large|larger|prominen\w*|widen\w*|wide|increased|increasing|bigger"
    r"|globular|dilat\w*|cardiomegaly)"
    r"|(?P<cstab>stable|stably|unchanged|similar|persistent|constant))\b"
)
_CUE_LABEL = {"cneg": NEGATIVE, "cunc": UNCERTAIN, "cpos": POSITIVE, "cstab": UNCERTAIN}
_CUE_RANK = {"cneg": 3, "cunc": 2, "cpos": 1, "cstab": 0}  # which cue decides, CheXpert order
_CUE_SEPARATOR = re.compile(r",|\band\b")
# Location words between a size phrase and a cue: the cue is about something else
# ("leads overlie the cardiac silhouette in normal position").
_CUE_BLOCK = re.compile(
    r"\b(?:overl\w*|project\w*|terminat\w*|tips?|over|into|through|across|behind|adjacent"
    r"|near|along|below|above|extend\w*|at the level)\b"
)
_LOCATION_BEFORE = re.compile(
    r"\b(?:overl\w*|over|project\w*|into|in|within|behind|through|across|at|near|along|to"
    r"|from|beyond|obscur\w*|silhouett\w*) (?:the )?(?:(?:right|left|lower|upper) )?$"
)
_ATTR_POST_WORDS, _ATTR_PRE_WORDS = 8, 3
_ATTR_POST_CHARS = 200  # a predicate is read within this many characters

# ---------------------------------------------------------------------------------------
# Normalisation.
# ---------------------------------------------------------------------------------------
# Each rewrite runs only when a cheap substring test says it could apply: most reports need
# none of them, and a substring test costs far less than a regex scan.
_DEID_RE = re.compile(r"x{3,}|_{2,}")  # a literal first character: a fast scan
_ABBREV_RE = re.compile(r"\b(vs|e\.g|i\.e|approx|dr|st)\.(?=\s*[a-z0-9])")
_SLASH_RE = re.compile(r"\bw/o\b|\br/o\b|\bs/p\b|\band/or\b|/")
_SLASH_WORDS = {"w/o": " without ", "r/o": " rule out ", "s/p": " status post "}
# "no change in X" and "X has not changed": X is still there (positive, as in CheXpert).
_NO_CHANGE_RE = re.compile(
    r"\b(?:(?:no|without)\s+(?:(?:significant|substantial|appreciable|definite|interval|major|"
    r"gross|overall|real)\s+)*changes?|(?:has\s+|have\s+)?not\s+(?:significantly\s+|"
    r"substantially\s+)?changed)(?:\s+(?:in|of|from|since|to)\b)?"
)
_BLANK_LINES = re.compile(r"\n\s*\n")
_HAS_LETTER = re.compile(r"[a-z]")


def _deid(m: re.Match[str]) -> str:
    # XXXX (IU X-ray) and ___ (MIMIC-CXR) hide a word: make it a neutral filler word.
    # A run of x inside a word ("maxxx") is left alone.
    text, start, end = m.string, m.start(), m.end()
    if m.group()[0] == "x" and (
        (start > 0 and text[start - 1].isalnum()) or (end < len(text) and text[end].isalnum())
    ):
        return m.group()
    return " ___ "


def _normalise(text: str) -> str:
    """Lower-case the report and rewrite the spellings the rules should not care about."""
    t = text.lower()
    # Reports wrapped at a fixed width (MIMIC-CXR) break sentences across lines: a single
    # newline is a space, a blank line ends a sentence.
    if "\n" in t:
        t = _BLANK_LINES.sub(" ; ", t)
    if "xxx" in t or "__" in t:
        # IU X-ray writes "x-XXXX" for "x-ray" ("normal chest x-XXXX")
        t = _DEID_RE.sub(_deid, t.replace("x-xxxx", "x-ray"))
    if "vs." in t or "e.g" in t or "i.e" in t or "approx." in t or " dr." in t or " st." in t:
        t = _ABBREV_RE.sub(r"\1", t)  # "vs." does not end a sentence
    if "/" in t:
        t = _SLASH_RE.sub(lambda m: _SLASH_WORDS.get(m.group(), " or "), t)
    if "chang" in t:
        t = _NO_CHANGE_RE.sub(" unchanged ", t)
    return " ".join(t.replace("-", " ").split())


# ---------------------------------------------------------------------------------------
# Labelling.
# ---------------------------------------------------------------------------------------
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}  # positive beats uncertain beats negative


def _cue_label(text: str, start: int, end: int, clause_start: int, clause_end: int) -> int | None:
    """The label of a size / contour phrase at [start, end) from the words around it."""
    if _LOCATION_BEFORE.search(text, max(clause_start, start - 40), start):
        return None  # "leads overlie the cardiac silhouette": not about its size
    # Adjectives just before: "normal heart size", "normal and stable mediastinal contours"
    # (within the sentence, not only the clause: "and stable" starts a clause).
    lo = max(0, start - 60)
    lo = max(lo, *(text.rfind(p, lo, start) + 1 for p in ".;!?"))
    pre = text[lo:start]
    before = [
        m.lastgroup or ""
        for m in _CUE_RE.finditer(pre)
        if len(pre[m.end() :].split()) <= _ATTR_PRE_WORDS and "," not in pre[m.end() :]
    ]
    # The predicate after: "heart size is normal", "heart, mediastinum and hila are normal".
    post = text[end : min(clause_end, end + _ATTR_POST_CHARS)]
    found: list[str] = []
    last_end = 0
    for m in _CUE_RE.finditer(post):
        gap = post[last_end : m.start()]
        if found:
            # "stable and within normal limits" is one predicate; "normal, mediastinum is
            # widened" starts another.
            seps = list(_CUE_SEPARATOR.finditer(gap))
            if seps and len(gap[seps[-1].end() :].split()) >= 2:
                break
        elif (
            len(gap.split()) > _ATTR_POST_WORDS
            or _CUE_BLOCK.search(gap)
            or (before and "," in gap)  # "stable heart size, enlarged aorta"
        ):
            break
        found.append(m.lastgroup or "")
        last_end = m.end()
    found = found or before
    if not found:
        return None
    best = max(found, key=_CUE_RANK.__getitem__)
    return _CUE_LABEL[best]


def _new_item(text: str, gap: str, end: int) -> bool:
    """Whether a mention ending at `end` starts a new statement after a negation: a comma and
    a size / course word in `gap`, and no "or" / "and" / "nor" up to the sentence's end."""
    if not _NEW_ITEM.search(gap):
        return False
    stops = [i for i in (text.find(".", end), text.find(";", end)) if i >= 0]
    rest = text[end : min(stops, default=len(text))]
    return not (_LIST_WORD.search(gap) or _LIST_WORD.search(rest))


def _classify(
    text: str,
    start: int,
    end: int,
    triggers: list[tuple[int, int, str, str]],
    or_linked: bool,
) -> int:
    """The label of one finding mention at [start, end) from the triggers of its clause."""
    pre_kind: str | None = None
    pre_end = -1
    post_kind: str | None = None
    post_start = len(text) + 1
    for t_start, t_end, kind, reach in triggers:
        if t_end <= start:  # the trigger is before the mention
            if reach not in _BEFORE or t_end <= pre_end:
                continue
            gap = text[t_end:start]
            if reach in _LONG_BEFORE:
                # "no pneumothorax is seen, a small effusion ...": a new statement
                if len(gap) > _PRE_MAX or (
                    kind == "neg" and (_PRE_BREAK.search(gap) or _new_item(text, gap, end))
                ):
                    continue
            elif len(gap) > _SHORT_MAX or "," in gap:
                continue
            pre_kind, pre_end = kind, t_end
        elif t_start >= end and t_start < post_start and reach in _AFTER:
            gap = text[end:t_start]
            if reach == "near":
                if len(gap) > _SHORT_MAX or "," in gap:
                    continue
            elif len(gap) > _POST_MAX:
                continue
            tail = _GAP_TAIL.search(gap)
            core = gap[: tail.start()] if tail else gap
            if _VERB_IN_GAP.search(core):
                continue
            if tail and _SINGULAR.search(tail.group()) and _AND_SUBJECT.search(core):
                continue
            if reach in ("cpost", "copre") and not (tail and _COPULA.search(tail.group())):
                continue
            if reach == "copre" and not _CLAUSE_END.match(text, t_end):
                continue
            post_kind, post_start = kind, t_start
    kinds = (pre_kind, post_kind)
    if "pneg" in kinds:
        return UNCERTAIN
    if "neg" in kinds:
        return NEGATIVE
    if "unc" in kinds or or_linked:
        return UNCERTAIN
    return POSITIVE


def label_report(text: str | None) -> dict[str, int | None]:
    """Label one report with the 14 CheXpert observations.

    Args:
        text: the report text (findings and/or impression; any case, any line wrapping).
            None or NaN (a blank spreadsheet cell) is an empty report.

    Returns:
        A dict from each name in `OBSERVATIONS` (in that order) to 1 (positive), 0
        (negative), -1 (uncertain) or None (not mentioned). No Finding is 1 or None.

    Raises:
        TypeError: `text` is neither a string nor None / NaN.
    """
    out: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    if not isinstance(text, str):  # None, or NaN from a blank spreadsheet cell
        if text is None or (isinstance(text, float) and math.isnan(text)):
            return out
        raise TypeError(f"a report must be a string, not {type(text).__name__}")
    t = _normalise(text)
    if not _HAS_LETTER.search(t):
        return out  # an empty report says nothing, not "no finding"

    labels: dict[int, int] = {}
    mentions = [(m.start(), m.end(), _MENTION_INFO[m.lastgroup]) for m in _MENTION_RE.finditer(t)]
    if mentions:
        bounds = [(b.start(), b.end()) for b in _BOUNDARY_RE.finditer(t)]
        cuts = [b[0] for b in bounds]
        by_clause: dict[int, list[tuple[int, int, str, str]]] = {}
        for m in _TRIGGER_RE.finditer(t):
            kind, reach = _TRIGGER_INFO[m.lastgroup]
            clause = bisect_right(cuts, m.start())
            by_clause.setdefault(clause, []).append((m.start(), m.end(), kind, reach))
        # Trigger starts per clause, to hand each mention only the triggers within reach
        # (a clause of thousands of words stays linear).
        starts = {c: [tr[0] for tr in trs] for c, trs in by_clause.items()}
        clauses = [bisect_right(cuts, s) for s, _, _ in mentions]
        # "X or Y" between mentions of different observations in one clause.
        or_linked = [False] * len(mentions)
        for i in range(len(mentions) - 1):
            (_, a_end, (a_obs, a_kind)), (b_start, _, (b_obs, b_kind)) = mentions[i : i + 2]
            if (
                clauses[i] == clauses[i + 1]
                and a_kind != _ATTR
                and b_kind != _ATTR
                and not set(a_obs) & set(b_obs)
                and _OR_GAP.match(t, a_end, b_start)
            ):
                or_linked[i] = or_linked[i + 1] = True
        for i, (start, end, (obs, kind)) in enumerate(mentions):
            c = clauses[i]
            if kind == _ATTR:
                c_start = bounds[c - 1][1] if c > 0 else 0
                c_end = cuts[c] if c < len(cuts) else len(t)
                label = _cue_label(t, start, end, c_start, c_end)
                if label is None:
                    continue
            elif kind == _CLEAR:
                label = NEGATIVE
            else:
                near = by_clause.get(c, [])
                if len(near) > 8:
                    lo = bisect_left(starts[c], start - _PRE_MAX - _TRIGGER_MAX)
                    near = near[lo : bisect_right(starts[c], end + _POST_MAX)]
                label = _classify(t, start, end, near, or_linked[i])
                if kind == _CONG and label == POSITIVE:
                    label = UNCERTAIN
            for o in obs:
                if _RANK[label] > _RANK.get(labels.get(o), 0):
                    labels[o] = label
            if kind == _CHF and label != NEGATIVE and _RANK.get(labels.get(_CM), 0) < 2:
                labels[_CM] = UNCERTAIN
    for o, label in labels.items():
        if o < len(OBSERVATIONS):
            out[OBSERVATIONS[o]] = label
    if not any(label != NEGATIVE for o, label in labels.items() if o != _SD):
        out["No Finding"] = POSITIVE
    return out


def label_reports(texts: Iterable[str]) -> list[dict[str, int | None]]:
    """Label many reports; see `label_report`."""
    return [label_report(t) for t in texts]


def _csv_value(label: int | float | None) -> str:
    """``1.0`` / ``0.0`` / ``-1.0``, blank for None (or NaN, as pandas reads a blank)."""
    if label is None:
        return ""
    value = float(label)
    if math.isnan(value):
        return ""
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {label!r} is not 1, 0, -1 or None")
    return f"{value:.1f}"


def write_label_csv(
    ids: Sequence[str], labels: Sequence[dict[str, int | None]], path: str | Path
) -> None:
    """Write labels as a CheXpert-layout CSV: an ``id`` column and one per observation.

    Values are written as the CheXpert label files write them: ``1.0`` positive, ``0.0``
    negative, ``-1.0`` uncertain, blank not mentioned. The file is written to a temporary
    file beside `path` and moved into place, so it is never seen half-written.

    Args:
        ids: one id per report.
        labels: one label dict per report (as from `label_report`), same order as `ids`.
        path: the CSV to write.

    Raises:
        ValueError: `ids` and `labels` differ in length, or a value is not 1, 0, -1 or None
            (the existing file, if any, is left as it was).
    """
    from radixpert.io import atomic_write

    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} label rows")
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *OBSERVATIONS])
        for i, row in zip(ids, labels):
            writer.writerow([i, *(_csv_value(row.get(o)) for o in OBSERVATIONS)])
    log.debug("wrote %d label rows to %s", len(ids), path)
